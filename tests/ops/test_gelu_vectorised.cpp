// The f32 gelu_tanh kernels take a vectorised path (Eigen's rational tanh, kernels/cpu/
// elementwise.cpp): check it on a size that spans many blocks and the parallel threshold, element
// by element against the formula in double, and for bit-identity across thread counts.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "common/test_util.h"
#include "kernels/ops.h"

namespace psvae {

TEST_CASE("gelu_tanh f32: vectorised path matches the formula and is thread-count invariant") {
  Generator g(11);
  const int64_t n = 3 * 16384 + 1037;  // > kParallelGrain, not a multiple of the 1024 block
  Tensor x = Tensor::empty({n}, DType::F32), gy = Tensor::empty({n}, DType::F32);
  g.normal_(x, 0.0, 1.0);
  g.normal_(gy, 0.0, 1.0);
  for (int64_t i = 0; i < n; ++i) x.data<float>()[i] *= 3.0f;  // into the tanh's curved range
  auto run = [&](int threads) {
    int prev = omp_get_max_threads();
    omp_set_num_threads(threads);
    Tensor y = ops::gelu_tanh(x);
    Tensor gx = ops::unary_bwd(kernels::Op::gelu_tanh_bwd, x, y, gy);
    omp_set_num_threads(prev);
    return std::make_pair(y, gx);
  };
  auto [y1, g1] = run(1);
  auto [y4, g4] = run(4);
  CHECK(std::memcmp(y1.raw_data(), y4.raw_data(), y1.nbytes()) == 0);
  CHECK(std::memcmp(g1.raw_data(), g4.raw_data(), g1.nbytes()) == 0);
  // The criteria of the op harness (relative norm error < 1e-5 against double) plus a max absolute
  // error bound. Element-relative error is the wrong yardstick here: for x < -4, y = 0.5 x (1 + t)
  // cancels (t -> -1) in any f32 evaluation, std::tanh included (printed for comparison).
  const double kS = 0.79788456080286535588, kA = 0.044715;
  double ey = 0, ny = 0, eg = 0, ng = 0, max_y = 0, max_g = 0, scalar_max_y = 0, scalar_max_g = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = x.data<float>()[i], go = gy.data<float>()[i];
    const double t = std::tanh(kS * (v + kA * v * v * v));
    const double y = 0.5 * v * (1 + t);
    const double gd = go * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * kS * (1 + 3 * kA * v * v));
    const double dy = y1.data<float>()[i] - y, dg = g1.data<float>()[i] - gd;
    ey += dy * dy, ny += y * y, eg += dg * dg, ng += gd * gd;
    max_y = std::max(max_y, std::abs(dy)), max_g = std::max(max_g, std::abs(dg));
    const float vf = static_cast<float>(v), sf = static_cast<float>(kS),
                af = static_cast<float>(kA);
    const float tf = std::tanh(sf * (vf + af * vf * vf * vf));
    const float yf = 0.5f * vf * (1 + tf);
    const float gf = static_cast<float>(go) *
                     (0.5f * (1 + tf) + 0.5f * vf * (1 - tf * tf) * sf * (1 + 3 * af * vf * vf));
    scalar_max_y = std::max(scalar_max_y, std::abs(yf - y));
    scalar_max_g = std::max(scalar_max_g, std::abs(gf - gd));
  }
  const double rel_y = std::sqrt(ey / ny), rel_g = std::sqrt(eg / ng);
  MESSAGE("relative norm error: forward ", rel_y, ", backward ", rel_g, "; max abs error ", max_y,
          ", ", max_g, " (scalar std::tanh path: ", scalar_max_y, ", ", scalar_max_g, ")");
  CHECK(rel_y < 1e-6);
  CHECK(rel_g < 1e-6);
  CHECK(max_y < 2e-6);
  CHECK(max_g < 2e-5);
}

}  // namespace psvae
