// Frechet distance (train/eval/frechet.h): closed forms (identical statistics, 1-D, diagonal and
// rotated diagonal covariances), the golden value of tests/reference/frechet_golden.py (torch,
// computed two ways), rank-deficient covariances, and errors.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <array>
#include <cmath>
#include <map>
#include <vector>

#include "common/test_util.h"
#include "tensor/safetensors.h"
#include "train/eval/frechet.h"

using namespace psvae;
using namespace psvae::train;

namespace {

FeatureStats diagonal(const std::vector<double>& mean, const std::vector<double>& var) {
  FeatureStats s;
  s.mean = mean;
  s.cov.assign(mean.size() * mean.size(), 0.0);
  for (size_t i = 0; i < mean.size(); ++i) s.cov[i * mean.size() + i] = var[i];
  s.count = 100;
  return s;
}

double trace(const FeatureStats& s) {
  double t = 0;
  for (size_t i = 0; i < s.mean.size(); ++i) t += s.cov[i * s.mean.size() + i];
  return t;
}

// q^T A q for a row-major d x d A.
std::vector<double> rotate(const std::vector<double>& a, const std::vector<double>& q, size_t d) {
  std::vector<double> t(d * d, 0.0), out(d * d, 0.0);
  for (size_t i = 0; i < d; ++i)
    for (size_t j = 0; j < d; ++j)
      for (size_t k = 0; k < d; ++k) t[i * d + j] += a[i * d + k] * q[k * d + j];
  for (size_t i = 0; i < d; ++i)
    for (size_t j = 0; j < d; ++j)
      for (size_t k = 0; k < d; ++k) out[i * d + j] += q[k * d + i] * t[k * d + j];
  return out;
}

// An orthonormal d x d matrix: Gram-Schmidt on seeded random columns.
std::vector<double> random_orthonormal(size_t d, uint64_t seed) {
  Generator g(seed);
  std::vector<double> a =
      test::as_doubles(test::normal(g, {static_cast<int64_t>(d), static_cast<int64_t>(d)}));
  for (size_t j = 0; j < d; ++j) {
    for (size_t p = 0; p < j; ++p) {
      double dot = 0;
      for (size_t i = 0; i < d; ++i) dot += a[i * d + j] * a[i * d + p];
      for (size_t i = 0; i < d; ++i) a[i * d + j] -= dot * a[i * d + p];
    }
    double norm = 0;
    for (size_t i = 0; i < d; ++i) norm += a[i * d + j] * a[i * d + j];
    for (size_t i = 0; i < d; ++i) a[i * d + j] /= std::sqrt(norm);
  }
  return a;
}

}  // namespace

TEST_CASE("frechet: identical statistics give 0") {
  Generator g(3);
  Tensor f = test::normal(g, {200, 16});
  // Correlate the features so the covariance is not diagonal.
  for (int64_t i = 0; i < 200; ++i)
    for (int64_t j = 1; j < 16; ++j)
      f.data<double>()[i * 16 + j] += 0.7 * f.data<double>()[i * 16 + j - 1];
  FeatureStats s = feature_stats(f);
  const double fd = frechet_distance(s, s);
  MESSAGE("FD(x, x) = ", fd, " with tr(S) = ", trace(s));
  CHECK(fd >= 0);
  CHECK(fd <= 1e-9 * 2 * trace(s));
}

TEST_CASE("frechet: 1-D closed form (m1 - m2)^2 + (s1 - s2)^2") {
  const double m1 = 0.3, m2 = -1.1, s1 = 2.0, s2 = 0.5;
  const double fd = frechet_distance(diagonal({m1}, {s1 * s1}), diagonal({m2}, {s2 * s2}));
  const double expect = (m1 - m2) * (m1 - m2) + (s1 - s2) * (s1 - s2);
  CHECK(fd == doctest::Approx(expect).epsilon(1e-12));
}

TEST_CASE("frechet: diagonal covariances, and their common rotation") {
  const std::vector<double> m1 = {0.1, 2.0, -1.0, 0.5, 0.0}, m2 = {0.4, 1.0, -1.5, 0.5, 3.0};
  const std::vector<double> v1 = {1.0, 4.0, 0.25, 9.0, 0.01}, v2 = {2.0, 1.0, 0.25, 16.0, 1.0};
  double expect = 0;
  for (size_t i = 0; i < m1.size(); ++i)
    expect += (m1[i] - m2[i]) * (m1[i] - m2[i]) +
              (std::sqrt(v1[i]) - std::sqrt(v2[i])) * (std::sqrt(v1[i]) - std::sqrt(v2[i]));
  FeatureStats a = diagonal(m1, v1), b = diagonal(m2, v2);
  CHECK(frechet_distance(a, b) == doctest::Approx(expect).epsilon(1e-12));
  CHECK(frechet_distance(b, a) == doctest::Approx(expect).epsilon(1e-12));

  // FD is invariant under a rotation of the feature space applied to both sets: the rotated
  // covariances are full matrices (S1 S2 no longer diagonal) with the same answer.
  const std::vector<double> q = random_orthonormal(5, 11);
  FeatureStats ra = a, rb = b;
  ra.cov = rotate(a.cov, q, 5);
  rb.cov = rotate(b.cov, q, 5);
  for (size_t j = 0; j < 5; ++j) {
    ra.mean[j] = rb.mean[j] = 0;
    for (size_t i = 0; i < 5; ++i) {
      ra.mean[j] += q[i * 5 + j] * a.mean[i];
      rb.mean[j] += q[i * 5 + j] * b.mean[i];
    }
  }
  CHECK(std::fabs(ra.cov[1]) > 0.01);  // really off-diagonal
  CHECK(frechet_distance(ra, rb) == doctest::Approx(expect).epsilon(1e-10));
}

TEST_CASE("frechet: statistics and distance against torch (tests/reference/frechet_golden.py)") {
  std::map<std::string, Tensor> g =
      test::as_map(safetensors::load(test::golden("frechet_8d.safetensors")));
  FeatureStats a = feature_stats(g["f1"]), b = feature_stats(g["f2"]);
  CHECK(a.count == 60);
  CHECK(b.count == 45);
  auto close = [](const std::vector<double>& v, const Tensor& ref) {
    test::Comparison c = test::compare(Tensor::from_vector(v, ref.shape()), ref, 1e-12);
    CHECK_MESSAGE(c.ok, c.why);
  };
  close(a.mean, g["mu1"]);
  close(b.mean, g["mu2"]);
  close(a.cov, g["sigma1"]);
  close(b.cov, g["sigma2"]);
  const double ref = g["fd"].data<double>()[0];
  const double fd = frechet_distance(a, b);
  MESSAGE("FD ", fd, " torch ", ref, " (general sqrtm ", g["fd_eigvals"].data<double>()[0], ")");
  CHECK(fd == doctest::Approx(ref).epsilon(1e-10));
  CHECK(frechet_distance(b, a) == doctest::Approx(ref).epsilon(1e-10));  // symmetric

  // f32 features give the same statistics to f32 precision.
  Tensor f32 = Tensor::empty(g["f1"].shape(), DType::F32);
  for (int64_t i = 0; i < f32.numel(); ++i)
    f32.data<float>()[i] = static_cast<float>(g["f1"].data<double>()[i]);
  FeatureStats a32 = feature_stats(f32);
  CHECK(frechet_distance(a32, b) == doctest::Approx(ref).epsilon(1e-5));
}

TEST_CASE("frechet: rank-deficient covariances (fewer samples than dimensions)") {
  Generator g(5);
  FeatureStats a = feature_stats(test::normal(g, {6, 32})),
               b = feature_stats(test::normal(g, {9, 32}));
  const double fd = frechet_distance(a, b);
  CHECK(std::isfinite(fd));
  CHECK(fd > 0);
  CHECK(frechet_distance(a, a) <= 1e-9 * 2 * trace(a));
  // Bounded by the triangle-free upper bound |mu1 - mu2|^2 + tr S1 + tr S2 (tr sqrt(.) >= 0).
  double diff2 = 0;
  for (size_t i = 0; i < 32; ++i) diff2 += (a.mean[i] - b.mean[i]) * (a.mean[i] - b.mean[i]);
  CHECK(fd <= diff2 + trace(a) + trace(b));
}

TEST_CASE("frechet: errors name the problem") {
  Generator g(1);
  CHECK_THROWS_WITH_AS(feature_stats(test::normal(g, {1, 4})), doctest::Contains("n >= 2"),
                       std::invalid_argument);
  CHECK_THROWS_AS(feature_stats(test::normal(g, {8})), std::invalid_argument);
  Tensor bad = test::normal(g, {4, 3});
  bad.data<double>()[5] = std::nan("");
  CHECK_THROWS_WITH_AS(feature_stats(bad), doctest::Contains("feature 2 of sample 1"),
                       std::runtime_error);
  FeatureStats a = feature_stats(test::normal(g, {5, 3})),
               b = feature_stats(test::normal(g, {5, 4}));
  CHECK_THROWS_WITH_AS(frechet_distance(a, b), doctest::Contains("different"),
                       std::invalid_argument);
}

TEST_CASE("frechet: from the feature sets, with fewer samples than dimensions (nuclear norm)") {
  Generator g(9);
  auto correlated = [&](int64_t n, int64_t d, double mean, double std) {
    Tensor t = test::normal(g, {n, d}, mean, std);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 1; j < d; ++j)
        t.data<double>()[i * d + j] += 0.8 * t.data<double>()[i * d + j - 1];
    return t;
  };
  // Zero columns change nothing, so 16-d sets of 40 and 30 samples (full-rank covariances: the
  // statistics path is accurate) padded to 64 dimensions (the sample-space formula) must agree to
  // rounding.
  Tensor a16 = correlated(40, 16, 0.0, 1.0), b16 = correlated(30, 16, 0.3, 1.5);
  auto pad = [](const Tensor& t, int64_t d) {
    Tensor p = Tensor::zeros({t.size(0), d}, DType::F64);
    for (int64_t i = 0; i < t.size(0); ++i)
      for (int64_t j = 0; j < t.size(1); ++j)
        p.data<double>()[i * d + j] = t.data<double>()[i * t.size(1) + j];
    return p;
  };
  const double ref16 = frechet_distance(feature_stats(a16), feature_stats(b16));
  CHECK(frechet_distance(a16, b16) == doctest::Approx(ref16).epsilon(1e-12));  // same path
  const double padded = frechet_distance(pad(a16, 64), pad(b16, 64));
  MESSAGE(fmt::format("16-d {:.15g}, padded to 64-d (sample space) {:.15g}", ref16, padded));
  CHECK(padded == doctest::Approx(ref16).epsilon(1e-10));

  // Rank-deficient covariances through the D x D path: its square roots of the ~1e-16 zero
  // eigenvalues add ~1e-8 each, so the two paths agree to 1e-7, not to rounding (the sample-space
  // one is the exact one, as the padded case shows).
  for (auto [n1, n2, d] : {std::array<int64_t, 3>{40, 30, 64}, std::array<int64_t, 3>{2, 5, 3}}) {
    Tensor a = correlated(n1, d, 0.0, 1.0), b = correlated(n2, d, 0.3, 1.5);
    const double ref = frechet_distance(feature_stats(a), feature_stats(b));
    const double fd = frechet_distance(a, b);
    MESSAGE(fmt::format("n {}/{} D {}: sets {:.15g} statistics {:.15g} rel {:.2e}", n1, n2, d, fd,
                        ref, std::fabs(fd - ref) / ref));
    CHECK(fd == doctest::Approx(ref).epsilon(1e-7));
    CHECK(frechet_distance(b, a) == doctest::Approx(fd).epsilon(1e-12));
    CHECK(frechet_distance(a, a) <= 1e-12 * ref);
  }
  // The golden sets (more samples than dimensions).
  std::map<std::string, Tensor> gold =
      test::as_map(safetensors::load(test::golden("frechet_8d.safetensors")));
  CHECK(frechet_distance(gold["f1"], gold["f2"]) ==
        doctest::Approx(gold["fd"].data<double>()[0]).epsilon(1e-10));
  CHECK_THROWS_WITH_AS(frechet_distance(test::normal(g, {4, 3}), test::normal(g, {4, 5})),
                       doctest::Contains("different dimensions"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(frechet_distance(test::normal(g, {1, 3}), test::normal(g, {4, 3})),
                       doctest::Contains("n >= 2"), std::invalid_argument);
}
