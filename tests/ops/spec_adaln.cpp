// Specs of the fused adaLN-Zero ops (kernels/cpu/adaln.cpp) against naive f64 loops: layernorm
// without affine weights then x (1 + scale) + shift, and the gated residual x + gate h; plus the
// fused ops against their unfused compositions (layernorm + modulate, mul + add) in f32.
#include <doctest/doctest.h>

#include <cmath>

#include "common/test_util.h"
#include "op_harness.h"

namespace psvae::test {

namespace {

using kernels::Op;

// (N,T,D) x and (N,D) per-sample operands; the row statistics in the reference are independent
// two-pass loops.
Tensor layernorm_modulate_reference(const Tensor& x, const Tensor& shift, const Tensor& scale,
                                    double eps) {
  const int64_t N = x.size(0), T = x.size(1), D = x.size(2);
  Tensor y = Tensor::empty(x.shape(), DType::F64);
  const double *px = x.data<double>(), *sh = shift.data<double>(), *sc = scale.data<double>();
  double* py = y.data<double>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t t = 0; t < T; ++t) {
      const double* row = px + (n * T + t) * D;
      double mean = 0, var = 0;
      for (int64_t d = 0; d < D; ++d) mean += row[d] / static_cast<double>(D);
      for (int64_t d = 0; d < D; ++d) var += (row[d] - mean) * (row[d] - mean);
      var /= static_cast<double>(D);
      for (int64_t d = 0; d < D; ++d)
        py[(n * T + t) * D + d] =
            (row[d] - mean) / std::sqrt(var + eps) * (1 + sc[n * D + d]) + sh[n * D + d];
    }
  }
  return y;
}

Tensor gated_residual_reference(const Tensor& x, const Tensor& gate, const Tensor& h) {
  const int64_t T = x.size(1), D = x.size(2);
  Tensor out = Tensor::empty(x.shape(), DType::F64);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t n = i / (T * D), d = i % D;
    out.data<double>()[i] =
        x.data<double>()[i] + gate.data<double>()[n * D + d] * h.data<double>()[i];
  }
  return out;
}

const Shape kShapes[] = {{2, 3, 5}, {1, 1, 1}, {3, 7, 33}, {2, 4, 1}};

}  // namespace

PSVAE_OP_SPEC(layernorm_modulate) {
  OpSpec s;
  s.name = "layernorm_modulate";
  s.covers = {Op::layernorm_modulate, Op::layernorm_modulate_bwd};
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs;
    for (const Shape& sh : kShapes) {
      OpCase c;
      c.label = sh.str();
      // A mean far from 0 (offset 3) checks the two-pass variance.
      c.inputs = {normal(g, sh, 3.0, 1.5), normal(g, {sh[0], sh[2]}),
                  normal(g, {sh[0], sh[2]}, 0.0, 0.5)};
      c.reals = {1e-6};
      cs.push_back(c);
    }
    OpCase big;
    big.label = "(4, 64, 1152) forward only";
    big.inputs = {normal(g, {4, 64, 1152}), normal(g, {4, 1152}), normal(g, {4, 1152})};
    big.reals = {1e-6};
    big.gradcheck = false;
    cs.push_back(big);
    return cs;
  };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase& c) {
    return ag::layernorm_modulate(v[0], v[1], v[2], c.reals[0]);
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    return std::vector<Tensor>{layernorm_modulate_reference(in[0], in[1], in[2], c.reals[0])};
  };
  return s;
}

PSVAE_OP_SPEC(gated_residual) {
  OpSpec s;
  s.name = "gated_residual";
  s.covers = {Op::gated_residual, Op::gated_residual_bwd};
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs;
    for (const Shape& sh : kShapes) {
      OpCase c;
      c.label = sh.str();
      c.inputs = {normal(g, sh), normal(g, {sh[0], sh[2]}), normal(g, sh)};
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase&) {
    return ag::gated_residual(v[0], v[1], v[2]);
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase&) {
    return std::vector<Tensor>{gated_residual_reference(in[0], in[1], in[2])};
  };
  return s;
}

TEST_CASE("fused adaLN ops agree with their unfused compositions, forward and backward (f32)") {
  Generator g(17);
  auto f32 = [](const Tensor& t) { return ops::cast(t, DType::F32); };
  const Tensor x = f32(normal(g, {3, 9, 40}, 1.0, 2.0)), shift = f32(normal(g, {3, 40}));
  const Tensor scale = f32(normal(g, {3, 40}, 0.0, 0.5)), gy = f32(normal(g, {3, 9, 40}));
  const ops::NormOut fused = ops::layernorm_modulate(x, shift, scale, 1e-6);
  const ops::NormOut ln = ops::layernorm(x, Tensor(), Tensor(), 1e-6);
  CHECK(compare(fused.y, ops::modulate(ln.y, shift, scale), 1e-6).ok);
  CHECK(bit_mismatches_host(fused.mean, ln.mean) == 0);
  CHECK(bit_mismatches_host(fused.rstd, ln.rstd) == 0);
  const ops::ModulateGrads fg = ops::layernorm_modulate_bwd(gy, x, fused.mean, fused.rstd, scale);
  const ops::ModulateGrads mg = ops::modulate_bwd(gy, ln.y, scale);
  const ops::NormGrads lg = ops::layernorm_bwd(mg.gx, x, ln.mean, ln.rstd, Tensor());
  CHECK(compare(fg.gx, lg.gx, 1e-5).ok);
  CHECK(compare(fg.gshift, mg.gshift, 1e-6).ok);
  CHECK(compare(fg.gscale, mg.gscale, 1e-5).ok);

  const Tensor h = f32(normal(g, {3, 9, 40})), gate = f32(normal(g, {3, 40}));
  CHECK(compare(ops::gated_residual(x, gate, h), ops::add(x, ops::mul(gate.reshape({3, 1, 40}), h)),
                1e-6)
            .ok);
  const ops::GatedResidualGrads gg = ops::gated_residual_bwd(gy, gate, h);
  CHECK(compare(gg.gh, ops::mul(gy, gate.reshape({3, 1, 40})), 1e-6).ok);
  CHECK(compare(gg.ggate, ops::sum(ops::mul(gy, h), 1), 1e-5).ok);
  // Shapes are checked, naming the op and the operand.
  CHECK_THROWS_WITH_AS(ops::gated_residual(x, gate.reshape({40, 3}), h),
                       doctest::Contains("gated_residual: gate must be (3, 40)"),
                       std::invalid_argument);
}

}  // namespace psvae::test
