// Spec of the fused LPIPS tap (kernels/cpu/lpips.cpp) against naive f64 loops that follow
// upstream's normalize_tensor, squared difference, 1x1 lin and spatial mean step by step; plus a
// dead feature vector (all channels 0 after a ReLU), whose forward must stay finite.
#include <doctest/doctest.h>

#include <cmath>

#include "common/test_util.h"
#include "op_harness.h"

namespace psvae::test {

namespace {

using kernels::Op;

constexpr double kEps = 1e-10, kFloor = 1e-20;  // LPIPS's normalize_tensor eps, our sqrt floor

Tensor lpips_reference(const Tensor& f0, const Tensor& f1, const Tensor& w, double eps,
                       double floor) {
  const int64_t N = f0.size(0), C = f0.size(1), HW = f0.size(2) * f0.size(3);
  const double *a = f0.data<double>(), *b = f1.data<double>(), *lin = w.data<double>();
  Tensor d = Tensor::empty(Shape{N}, DType::F64);
  for (int64_t n = 0; n < N; ++n) {
    double total = 0;
    for (int64_t p = 0; p < HW; ++p) {
      auto at = [&](const double* f, int64_t c) { return f[(n * C + c) * HW + p]; };
      double s0 = 0, s1 = 0;
      for (int64_t c = 0; c < C; ++c) s0 += at(a, c) * at(a, c), s1 += at(b, c) * at(b, c);
      const double n0 = std::sqrt(s0 + floor) + eps, n1 = std::sqrt(s1 + floor) + eps;
      for (int64_t c = 0; c < C; ++c) {
        const double diff = at(a, c) / n0 - at(b, c) / n1;
        total += lin[c] * diff * diff;
      }
    }
    d.data<double>()[n] = total / static_cast<double>(HW);
  }
  return d;
}

}  // namespace

PSVAE_OP_SPEC(lpips_tap) {
  OpSpec s;
  s.name = "lpips_tap";
  s.covers = {Op::lpips_tap, Op::lpips_tap_bwd};
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs;
    auto add = [&](const Shape& sh, bool grad) {
      OpCase c;
      c.label = sh.str() + (grad ? "" : " forward only");
      // Post-ReLU features are >= 0, but the op must not depend on it: signed values.
      c.inputs = {normal(g, sh), normal(g, sh), uniform(g, Shape{sh[1]}, 0.0, 1.0)};
      c.wrt = {true, true, false};
      c.reals = {kEps, kFloor};
      c.gradcheck = grad;
      cs.push_back(c);
    };
    add(Shape{2, 3, 4, 5}, true);
    add(Shape{1, 1, 1, 1}, true);  // one channel: every unit vector is +-1
    add(Shape{3, 8, 7, 9}, true);
    add(Shape{2, 64, 33, 35}, false);  // several position chunks per sample
    // A dead vector at position 0 of sample 0 in f0: finite forward (its unit vector is 0).
    OpCase dead = cs[0];
    dead.label = "(2, 3, 4, 5) with a zero feature vector, forward only";
    dead.inputs[0] = dead.inputs[0].clone();
    for (int64_t ch = 0; ch < 3; ++ch) dead.inputs[0].data<double>()[ch * 20] = 0.0;
    dead.gradcheck = false;
    cs.push_back(dead);
    return cs;
  };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase& c) {
    return ag::lpips_tap(v[0], v[1], v[2].data(), c.reals[0], c.reals[1]);
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    return std::vector<Tensor>{lpips_reference(in[0], in[1], in[2], c.reals[0], c.reals[1])};
  };
  return s;
}

TEST_CASE("lpips_tap: identical features give exactly 0; bad inputs name the op and shape") {
  Generator g(3);
  const Tensor f = normal(g, {2, 5, 3, 3}), w = uniform(g, {5}, 0.0, 1.0);
  const Tensor d = ops::lpips_tap(f, f, w, kEps, kFloor);
  CHECK(d.data<double>()[0] == 0.0);
  CHECK(d.data<double>()[1] == 0.0);
  CHECK_THROWS_WITH_AS(ops::lpips_tap(f, f, uniform(g, {4}), kEps, kFloor),
                       doctest::Contains("lpips_tap: w must be (5)"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::lpips_tap(f.reshape({2, 5, 9}), f.reshape({2, 5, 9}), w, kEps, kFloor),
                       doctest::Contains("lpips_tap: f0 must be (N, C, H, W)"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::lpips_tap(f, f, w, 0.0, 0.0), doctest::Contains("not both 0"),
                       std::invalid_argument);
}

}  // namespace psvae::test
