#include "train/eval/frechet.h"

#include <fmt/format.h>

// As kernels/cpu/eigen_util.h: every file instantiating Eigen's templates agrees on the serial
// configuration (ODR), and GCC 12's false '-Wmaybe-uninitialized' inside its AVX-512 intrinsics
// (PR 105593) is silenced around the include only.
#define EIGEN_DONT_PARALLELIZE
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Dense>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace psvae::train {

namespace {

using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

Mat as_matrix(const std::vector<double>& v, size_t d) {
  return Eigen::Map<const Mat>(v.data(), static_cast<Eigen::Index>(d),
                               static_cast<Eigen::Index>(d));
}

// features (n, D) as doubles on the host; throws naming the caller on a bad shape, dtype or a
// non-finite value.
Mat host_features(const Tensor& features, const char* who) {
  if (features.rank() != 2 || features.size(0) < 2 || features.size(1) < 1)
    throw std::invalid_argument(fmt::format("{}: expected features (n, D) with n >= 2, got {}", who,
                                            features.shape().str()));
  const int64_t n = features.size(0), d = features.size(1);
  Tensor h = features.to(Device::cpu());
  Mat x(n, d);
  for (int64_t i = 0; i < n * d; ++i) {
    double v;
    switch (h.dtype()) {
      case DType::F32: v = h.data<float>()[i]; break;
      case DType::F64: v = h.data<double>()[i]; break;
      case DType::BF16: v = static_cast<float>(h.data<bf16>()[i]); break;
      default:
        throw std::invalid_argument(
            fmt::format("{}: expected floating features, got {}", who, h.str()));
    }
    if (!std::isfinite(v))
      throw std::runtime_error(
          fmt::format("{}: feature {} of sample {} is {}", who, i % d, i / d, v));
    x.data()[i] = v;
  }
  return x;
}

}  // namespace

FeatureStats feature_stats(const Tensor& features) {
  Mat x = host_features(features, "feature_stats");
  const int64_t n = x.rows(), d = x.cols();
  FeatureStats s;
  s.count = n;
  Eigen::RowVectorXd mean = x.colwise().mean();
  x.rowwise() -= mean;
  Mat cov = (x.transpose() * x) / static_cast<double>(n - 1);
  s.mean.assign(mean.data(), mean.data() + d);
  s.cov.assign(cov.data(), cov.data() + d * d);
  return s;
}

double frechet_distance(const FeatureStats& a, const FeatureStats& b) {
  const size_t d = a.mean.size();
  if (d == 0 || b.mean.size() != d || a.cov.size() != d * d || b.cov.size() != d * d)
    throw std::invalid_argument(fmt::format(
        "frechet_distance: statistics of different or broken dimensions: mean {} / cov {} "
        "against mean {} / cov {}",
        a.mean.size(), a.cov.size(), b.mean.size(), b.cov.size()));
  double diff2 = 0;
  for (size_t i = 0; i < d; ++i) diff2 += (a.mean[i] - b.mean[i]) * (a.mean[i] - b.mean[i]);
  Mat s1 = as_matrix(a.cov, d), s2 = as_matrix(b.cov, d);
  // Symmetrise: the covariances are symmetric up to rounding, and the solver reads one triangle.
  s1 = 0.5 * (s1 + s1.transpose()).eval();
  s2 = 0.5 * (s2 + s2.transpose()).eval();

  // S1^(1/2) = V diag(sqrt(max(l, 0))) V^T; rounding can leave tiny negative eigenvalues on a
  // rank-deficient covariance (n <= D), which are zero.
  Eigen::SelfAdjointEigenSolver<Mat> e1(s1);
  if (e1.info() != Eigen::Success)
    throw std::runtime_error("frechet_distance: eigendecomposition of the first covariance failed");
  const Eigen::VectorXd r1 = e1.eigenvalues().cwiseMax(0.0).cwiseSqrt();
  const Mat root1 = e1.eigenvectors() * r1.asDiagonal() * e1.eigenvectors().transpose();
  Mat m = root1 * s2 * root1;
  m = 0.5 * (m + m.transpose()).eval();
  Eigen::SelfAdjointEigenSolver<Mat> em(m, Eigen::EigenvaluesOnly);
  if (em.info() != Eigen::Success)
    throw std::runtime_error("frechet_distance: eigendecomposition of S1^1/2 S2 S1^1/2 failed");
  const double tr_covmean = em.eigenvalues().cwiseMax(0.0).cwiseSqrt().sum();
  const double fd = diff2 + s1.trace() + s2.trace() - 2.0 * tr_covmean;
  // Mathematically >= 0; identical statistics give a rounding residue of either sign.
  return std::max(0.0, fd);
}

double frechet_distance(const Tensor& features_a, const Tensor& features_b) {
  if (features_a.rank() == 2 && features_b.rank() == 2 && features_a.size(1) != features_b.size(1))
    throw std::invalid_argument(
        fmt::format("frechet_distance: feature sets of different dimensions: {} and {}",
                    features_a.shape().str(), features_b.shape().str()));
  Mat a = host_features(features_a, "frechet_distance");
  Mat b = host_features(features_b, "frechet_distance");
  const Eigen::Index n1 = a.rows(), n2 = b.rows(), d = a.cols();
  if (std::min(n1, n2) >= d)
    return frechet_distance(feature_stats(features_a), feature_stats(features_b));
  const Eigen::RowVectorXd m1 = a.colwise().mean(), m2 = b.colwise().mean();
  a.rowwise() -= m1;
  b.rowwise() -= m2;
  const double c1 = static_cast<double>(n1 - 1), c2 = static_cast<double>(n2 - 1);
  const Mat cross = a * b.transpose();  // (n1, n2)
  Eigen::BDCSVD<Mat> svd(cross);        // singular values only
  const double tr_covmean = svd.singularValues().sum() / std::sqrt(c1 * c2);
  const double fd =
      (m1 - m2).squaredNorm() + a.squaredNorm() / c1 + b.squaredNorm() / c2 - 2.0 * tr_covmean;
  return std::max(0.0, fd);  // >= 0 mathematically; a rounding residue of either sign
}

}  // namespace psvae::train
