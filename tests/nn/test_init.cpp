// Initialisers: PyTorch's bounds and statistics, reproducibility from a seed.
#include <doctest/doctest.h>

#include <cmath>

#include "nn/init.h"
#include "nn/linear.h"
#include "nn/norm.h"

using namespace psvae;
using namespace psvae::nn;

namespace {
std::pair<double, double> mean_std(const std::vector<float>& v) {
  double s = 0, s2 = 0;
  for (float x : v) s += x;
  double m = s / static_cast<double>(v.size());
  for (float x : v) s2 += (x - m) * (x - m);
  return {m, std::sqrt(s2 / static_cast<double>(v.size()))};
}
}  // namespace

TEST_CASE("erfinv inverts erf") {
  for (double x : {-0.999999, -0.9, -0.3, 0.0, 1e-9, 0.5, 0.97, 0.9999999})
    CHECK(std::erf(init::erfinv(x)) == doctest::Approx(x).epsilon(1e-14));
}

TEST_CASE("fans and default Linear / Conv2d bounds as PyTorch") {
  CHECK(init::fans({384, 4, 2, 2}) == std::pair<int64_t, int64_t>{16, 1536});
  CHECK(init::fans({10, 20}) == std::pair<int64_t, int64_t>{20, 10});
  Generator g(5);
  Linear lin(64, 32, true, g);
  for (float w : lin.weight().data().to_vector<float>()) CHECK(std::fabs(w) <= 0.125f);
  for (float b : lin.bias()->data().to_vector<float>()) CHECK(std::fabs(b) <= 0.125f);
  // U(-a, a) has std a / sqrt(3): 0.0722 for a = 1/8; 2048 samples give ~2% noise.
  CHECK(mean_std(lin.weight().data().to_vector<float>()).second ==
        doctest::Approx(0.125 / std::sqrt(3.0)).epsilon(0.05));
  Conv2d conv({4, 8, 3, 1, 1, true}, g);
  double bound = 1.0 / 6.0;  // fan_in = 4 * 3 * 3 = 36
  for (float w : conv.weight().data().to_vector<float>()) CHECK(std::fabs(w) <= bound);
  LayerNorm ln({16, 1e-5, true}, g);
  CHECK(ln.named_parameters()[0].second.data().to_vector<float>() == std::vector<float>(16, 1.0f));
  CHECK(ln.named_parameters()[1].second.data().to_vector<float>() == std::vector<float>(16, 0.0f));
}

TEST_CASE("xavier_uniform_ and trunc_normal_") {
  Generator g(6);
  Tensor w = Tensor::empty({96, 32});
  init::xavier_uniform_(w, g);
  double a = std::sqrt(6.0 / 128.0);
  auto v = w.to_vector<float>();
  for (float x : v) CHECK(std::fabs(x) <= a);
  CHECK(mean_std(v).second == doctest::Approx(a / std::sqrt(3.0)).epsilon(0.05));

  Tensor t = Tensor::empty({4096});
  init::trunc_normal_(t, g, 0.02);
  auto tv = t.to_vector<float>();
  for (float x : tv) CHECK(std::fabs(x) <= 0.04f + 1e-9f);
  // Normal truncated at +-2 sigma has std 0.8796 sigma.
  auto [m, s] = mean_std(tv);
  CHECK(std::fabs(m) < 0.002);
  CHECK(s == doctest::Approx(0.02 * 0.8796).epsilon(0.05));
}

TEST_CASE("the same seed builds the same weights") {
  Generator g1(42), g2(42), g3(43);
  Linear a(5, 7, true, g1), b(5, 7, true, g2), c(5, 7, true, g3);
  CHECK(a.weight().data().to_vector<float>() == b.weight().data().to_vector<float>());
  CHECK(a.bias()->data().to_vector<float>() == b.bias()->data().to_vector<float>());
  CHECK(a.weight().data().to_vector<float>() != c.weight().data().to_vector<float>());
  Embedding e(11, 4, g1);
  auto [m, s] = mean_std(e.weight().data().to_vector<float>());
  CHECK(std::fabs(m) < 0.5);
  CHECK(s > 0.6);
  CHECK(s < 1.4);
}
