// Specs of the fused adaLN-Zero ops (kernels/cpu/adaln.cpp) against naive f64 loops: layernorm
// without affine weights then x (1 + scale) + shift, and the gated residual x + gate h; plus the
// fused ops against their unfused compositions (layernorm + modulate, mul + add) in f32.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <utility>

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

TEST_CASE(
    "fused adaLN ops: a bf16 GEMM side beside f32 equals the f32 op and a cast, bit for bit") {
  // bf16 autocast's form (autograd/autocast.h): layernorm_modulate writes y in bf16 and takes a
  // bf16 gy; gated_residual takes a bf16 h and returns gh in bf16. Widening bf16 is exact and the
  // one rounding to bf16 is of the same f32 value, so the bits are those of the f32 op with the
  // cast written out.
  Generator g(19);
  auto f32 = [](const Tensor& t) { return ops::cast(t, DType::F32); };
  auto bf16 = [](const Tensor& t) { return ops::cast(t, DType::BF16); };
  const Tensor x = f32(normal(g, {3, 9, 40}, 1.0, 2.0)), shift = f32(normal(g, {3, 40}));
  const Tensor scale = f32(normal(g, {3, 40}, 0.0, 0.5));
  const ops::NormOut fused = ops::layernorm_modulate(x, shift, scale, 1e-6, DType::BF16);
  const ops::NormOut plain = ops::layernorm_modulate(x, shift, scale, 1e-6);
  CHECK(fused.y.dtype() == DType::BF16);
  CHECK(bit_mismatches_host(fused.y, bf16(plain.y)) == 0);
  CHECK(bit_mismatches_host(fused.rstd, plain.rstd) == 0);
  const Tensor gy = bf16(normal(g, {3, 9, 40}));
  const ops::ModulateGrads fg = ops::layernorm_modulate_bwd(gy, x, fused.mean, fused.rstd, scale);
  const ops::ModulateGrads pg =
      ops::layernorm_modulate_bwd(f32(gy), x, fused.mean, fused.rstd, scale);
  for (const auto& [a, b] :
       {std::pair{fg.gx, pg.gx}, {fg.gshift, pg.gshift}, {fg.gscale, pg.gscale}}) {
    CHECK(a.dtype() == DType::F32);
    CHECK(bit_mismatches_host(a, b) == 0);
  }

  const Tensor h = bf16(normal(g, {3, 9, 40})), gate = f32(normal(g, {3, 40}));
  const Tensor out = ops::gated_residual(x, gate, h);
  CHECK(out.dtype() == DType::F32);
  CHECK(bit_mismatches_host(out, ops::gated_residual(x, gate, f32(h))) == 0);
  const Tensor gout = f32(normal(g, {3, 9, 40}));
  const ops::GatedResidualGrads gr = ops::gated_residual_bwd(gout, gate, h);
  const ops::GatedResidualGrads pr = ops::gated_residual_bwd(gout, gate, f32(h));
  CHECK(gr.gh.dtype() == DType::BF16);
  CHECK(bit_mismatches_host(gr.gh, bf16(pr.gh)) == 0);
  CHECK(bit_mismatches_host(gr.ggate, pr.ggate) == 0);

  // bf16 goes beside f32 only, and the main operands keep one dtype.
  const Tensor x64 = ops::cast(x, DType::F64);
  CHECK_THROWS_WITH_AS(ops::layernorm_modulate(x, shift, scale, 1e-6, DType::F64),
                       "layernorm_modulate: y must be of x's dtype (f32) or bf16, got f64",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::gated_residual(x64, ops::cast(gate, DType::F64), h),
                       "gated_residual: h must be (3, 9, 40) (f64), got (3, 9, 40) (bf16)",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::gated_residual_bwd(gout, bf16(gate), h),
                       doctest::Contains("gated_residual_bwd: gate must be (3, 40) (f32)"),
                       std::invalid_argument);
}

TEST_CASE("fused adaLN ops: layernorm_modulate_bwd adds gres into gx with a separate add's bits") {
  // gres is the residual stream's gradient that autograd would add to gx after the kernel
  // (autograd/node.h, takes_waiting); gx is rounded to x's dtype first, then the sum once more.
  Generator g(23);
  for (DType dt : {DType::F32, DType::F64}) {
    CAPTURE(std::string(dtype_name(dt)));
    auto as = [dt](const Tensor& t) { return ops::cast(t, dt); };
    const Tensor x = as(normal(g, {2, 5, 70}, 1.0, 2.0)), scale = as(normal(g, {2, 70}));
    const Tensor gy = as(normal(g, {2, 5, 70})), gres = as(normal(g, {2, 5, 70}));
    const ops::NormOut f = ops::layernorm_modulate(x, as(normal(g, {2, 70})), scale, 1e-6);
    const ops::ModulateGrads with = ops::layernorm_modulate_bwd(gy, x, f.mean, f.rstd, scale, gres);
    const ops::ModulateGrads without = ops::layernorm_modulate_bwd(gy, x, f.mean, f.rstd, scale);
    CHECK(bit_mismatches_host(with.gx, ops::add(gres, without.gx)) == 0);
    CHECK(bit_mismatches_host(with.gx, without.gx) > 0);  // gres was really added
    CHECK(bit_mismatches_host(with.gshift, without.gshift) == 0);
    CHECK(bit_mismatches_host(with.gscale, without.gscale) == 0);
  }
  const Tensor x16 = ops::cast(normal(g, {1, 2, 8}), DType::BF16);
  const Tensor nd = ops::cast(normal(g, {1, 8}), DType::BF16);
  const ops::NormOut f = ops::layernorm_modulate(x16, nd, nd, 1e-6);
  CHECK_THROWS_WITH_AS(ops::layernorm_modulate_bwd(x16, x16, f.mean, f.rstd, nd, x16),
                       doctest::Contains("layernorm_modulate_bwd: gres needs an f32 or f64 x"),
                       std::invalid_argument);
}

}  // namespace psvae::test
