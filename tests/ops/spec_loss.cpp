// Specs of the loss family (mse, l1, Gaussian KL, cross-entropy) against naive f64 loops, plus
// the behaviours the harness cannot see: l1's zero gradient at ties, the target range error and
// thread-count independence of the reductions.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "common/test_util.h"
#include "op_harness.h"

namespace psvae::test {

namespace {

using kernels::Op;

Tensor scalar64(double v) { return Tensor::scalar(v, DType::F64); }

// b = a + d with |d| in [0.05, 1): l1's kink at a == b stays far from the gradcheck's 1e-6 steps.
Tensor away_from(Generator& g, const Tensor& a) {
  Tensor d = uniform(g, a.shape(), 0.05, 1.0);
  Tensor sgn = uniform(g, a.shape());
  Tensor b = Tensor::empty(a.shape(), DType::F64);
  for (int64_t i = 0; i < a.numel(); ++i)
    b.data<double>()[i] =
        a.data<double>()[i] + (sgn.data<double>()[i] < 0 ? -1 : 1) * d.data<double>()[i];
  return b;
}

// The (a, b) cases shared by mse and l1. The 70001-element case crosses kParallelGrain, so the
// chunked parallel sum runs (and its last chunk is partial).
std::vector<OpCase> pair_cases(Generator& g) {
  std::vector<OpCase> cs;
  for (Shape s : {Shape{7}, Shape{2, 3, 5}, Shape{1, 1}, Shape{4, 1, 9}}) {
    OpCase c;
    c.label = s.str();
    Tensor a = uniform(g, s, -2, 2);
    c.inputs = {a, away_from(g, a)};
    cs.push_back(c);
  }
  OpCase big;
  big.label = "(70001) forward only";
  Tensor a = uniform(g, Shape{70001});
  big.inputs = {a, uniform(g, Shape{70001})};
  big.gradcheck = false;
  cs.push_back(big);
  return cs;
}

template <class F>
Tensor mean_of(const Tensor& a, const Tensor& b, F f) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += f(a.data<double>()[i] - b.data<double>()[i]);
  return scalar64(s / static_cast<double>(a.numel()));
}

}  // namespace

PSVAE_OP_SPEC(mse_loss) {
  OpSpec s;
  s.name = "mse_loss";
  s.covers = {Op::mse_loss, Op::mse_loss_bwd};
  s.cases = pair_cases;
  s.apply =
      single([](const std::vector<ag::Var>& v, const OpCase&) { return ag::mse_loss(v[0], v[1]); });
  s.reference = [](const std::vector<Tensor>& in, const OpCase&) {
    return std::vector<Tensor>{mean_of(in[0], in[1], [](double d) { return d * d; })};
  };
  return s;
}

PSVAE_OP_SPEC(l1_loss) {
  OpSpec s;
  s.name = "l1_loss";
  s.covers = {Op::l1_loss, Op::l1_loss_bwd};
  s.cases = pair_cases;
  s.apply =
      single([](const std::vector<ag::Var>& v, const OpCase&) { return ag::l1_loss(v[0], v[1]); });
  s.reference = [](const std::vector<Tensor>& in, const OpCase&) {
    return std::vector<Tensor>{mean_of(in[0], in[1], [](double d) { return std::fabs(d); })};
  };
  return s;
}

// reals[0] is the normaliser: the batch size ("per sample", as the PS-VAE's KL term) or numel
// ("per element").
PSVAE_OP_SPEC(kl_gauss) {
  OpSpec s;
  s.name = "kl_gauss";
  s.covers = {Op::kl_gauss, Op::kl_gauss_bwd};
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs;
    auto add = [&](const Shape& sh, double norm, const char* how, bool grad) {
      OpCase c;
      c.label = fmt::format("{} / {} ({})", sh.str(), norm, how);
      c.inputs = {normal(g, sh), uniform(g, sh, -2, 2)};
      c.reals = {norm};
      c.gradcheck = grad;
      cs.push_back(c);
    };
    add(Shape{7}, 7, "per element", true);
    add(Shape{2, 3, 5}, 2, "per sample", true);
    add(Shape{1, 1}, 1, "per sample", true);
    add(Shape{3, 4, 1, 5}, 60, "per element", true);
    add(Shape{5, 20001}, 5, "per sample, forward only", false);
    return cs;
  };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase& c) {
    return ag::kl_gauss(v[0], v[1], c.reals[0]);
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const double* mu = in[0].data<double>();
    const double* lv = in[1].data<double>();
    double sum = 0;
    for (int64_t i = 0; i < in[0].numel(); ++i) sum += mu[i] * mu[i] + std::exp(lv[i]) - 1 - lv[i];
    return std::vector<Tensor>{scalar64(0.5 * sum / c.reals[0])};
  };
  return s;
}

// Inputs: logits (N, C) f64 and target (N) i64 or i32. C = 1 makes the loss identically 0 (its
// gradient too); logits of +-30 would overflow e^x in f32 without the max shift.
PSVAE_OP_SPEC(cross_entropy) {
  OpSpec s;
  s.name = "cross_entropy";
  s.covers = {Op::cross_entropy, Op::cross_entropy_bwd};
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs;
    auto add = [&](int64_t n, int64_t classes, double range, DType tdt, bool grad) {
      OpCase c;
      c.label = fmt::format("N={} C={} logits +-{} target {}{}", n, classes, range, dtype_name(tdt),
                            grad ? "" : " forward only");
      Tensor u = uniform(g, Shape{n}, 0.0, 1.0);
      std::vector<int64_t> t64(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i)
        t64[static_cast<size_t>(i)] = std::min<int64_t>(
            classes - 1, static_cast<int64_t>(u.data<double>()[i] * static_cast<double>(classes)));
      Tensor target;
      if (tdt == DType::I64) {
        target = Tensor::from_vector(t64, Shape{n});
      } else {
        std::vector<int32_t> t32(t64.begin(), t64.end());
        target = Tensor::from_vector(t32, Shape{n});
      }
      c.inputs = {uniform(g, Shape{n, classes}, -range, range), target};
      c.gradcheck = grad;
      cs.push_back(c);
    };
    add(1, 1, 3, DType::I64, true);
    add(5, 1, 3, DType::I64, true);
    add(1, 3, 3, DType::I64, true);
    add(5, 3, 3, DType::I32, true);
    add(5, 10, 3, DType::I64, true);
    add(5, 10, 30, DType::I64, true);
    add(7, 13, 30, DType::I32, true);
    add(64, 1000, 30, DType::I64, false);
    return cs;
  };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase&) {
    return ag::cross_entropy(v[0], v[1].data());
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase&) {
    const int64_t n = in[0].size(0), classes = in[0].size(1);
    std::vector<double> t = as_doubles(in[1]);
    double total = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double* row = in[0].data<double>() + i * classes;
      double mx = row[0];
      for (int64_t k = 1; k < classes; ++k) mx = std::max(mx, row[k]);
      double z = 0;
      for (int64_t k = 0; k < classes; ++k) z += std::exp(row[k] - mx);
      total += mx + std::log(z) - row[static_cast<int64_t>(t[static_cast<size_t>(i)])];
    }
    return std::vector<Tensor>{scalar64(total / static_cast<double>(n))};
  };
  return s;
}

TEST_CASE("l1_loss_bwd: sign(a-b) gy / n, and 0 where a == b (as PyTorch)") {
  Tensor a = Tensor::from_vector<double>({1.0, 2.0, -3.0, 0.5}, Shape{4});
  Tensor b = Tensor::from_vector<double>({1.0, 1.0, -1.0, 0.5}, Shape{4});
  Tensor ga = ops::l1_loss_bwd(scalar64(2.0), a, b);
  CHECK(ga.to_vector<double>() == std::vector<double>{0.0, 0.5, -0.5, 0.0});
  // Through autograd: gb is exactly -ga.
  ag::Var va(a, true), vb(b, true);
  ag::l1_loss(va, vb).backward();
  CHECK(va.grad().to_vector<double>() == std::vector<double>{0.0, 0.25, -0.25, 0.0});
  CHECK(vb.grad().to_vector<double>() == std::vector<double>{0.0, -0.25, 0.25, 0.0});
}

TEST_CASE("cross_entropy: a target outside [0, C) is an error naming it and C") {
  Tensor logits = Tensor::zeros(Shape{2, 3}, DType::F64);
  CHECK_THROWS_WITH_AS(ops::cross_entropy(logits, Tensor::from_vector<int64_t>({0, 3}, Shape{2})),
                       "cross_entropy: target[1] = 3 is outside [0, C) with C = 3",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::cross_entropy(logits, Tensor::from_vector<int32_t>({-1, 0}, Shape{2})),
                       "cross_entropy: target[0] = -1 is outside [0, C) with C = 3",
                       std::invalid_argument);
  // Uniform logits: the loss is log C and lse is log C in every row.
  auto out = ops::cross_entropy(logits, Tensor::from_vector<int64_t>({0, 2}, Shape{2}));
  CHECK(out.loss.item() == doctest::Approx(std::log(3.0)).epsilon(1e-15));
  CHECK(out.lse.to_vector<double>()[1] == doctest::Approx(std::log(3.0)).epsilon(1e-15));
}

TEST_CASE("losses: the scalar is bit-identical for any thread count") {
  Generator g(77);
  const Shape sh{1 << 20};  // 256 chunks of 4096, well past the parallel threshold
  Tensor a = Tensor::empty(sh, DType::F32), b = Tensor::empty(sh, DType::F32);
  g.normal_(a);
  g.normal_(b);
  auto bits = [](const Tensor& t) {
    float f = t.data<float>()[0];
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  };
  const int prev = omp_get_max_threads();
  omp_set_num_threads(1);
  uint32_t mse1 = bits(ops::mse_loss(a, b)), l11 = bits(ops::l1_loss(a, b));
  uint32_t kl1 = bits(ops::kl_gauss(a, b, 4.0));
  omp_set_num_threads(5);
  uint32_t mse5 = bits(ops::mse_loss(a, b)), l15 = bits(ops::l1_loss(a, b));
  uint32_t kl5 = bits(ops::kl_gauss(a, b, 4.0));
  omp_set_num_threads(prev);
  CHECK(mse1 == mse5);
  CHECK(l11 == l15);
  CHECK(kl1 == kl5);
}

}  // namespace psvae::test
