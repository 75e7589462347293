// Frechet distance between two sets of feature vectors (Heusel et al. 2017), the statistic behind
// FID, FD-DINOv2 and the demo's FD on encoder features:
//   FD = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))
// computed in double; tr((S1 S2)^(1/2)) = sum of sqrt of the eigenvalues of S1^(1/2) S2 S1^(1/2)
// (symmetric PSD, so a self-adjoint eigensolver is exact and stable where the general sqrtm of
// pytorch-fid needs its eps fallback).
#pragma once
#include <vector>

#include "tensor/tensor.h"

namespace psvae::train {

struct FeatureStats {
  std::vector<double> mean;  // (D)
  std::vector<double> cov;   // (D*D) row-major, unbiased (divides by n - 1) as numpy.cov
  int64_t count = 0;
};
// features (n, D) any float dtype; n >= 2.
FeatureStats feature_stats(const Tensor& features);
double frechet_distance(const FeatureStats& a, const FeatureStats& b);

// The same distance from the feature sets themselves (n1, D) and (n2, D). With fewer samples than
// dimensions (FID's 2048-d features of a few hundred images) the covariances have rank < D and
// the D x D eigenproblems (seconds each at D = 2048) are avoided: with A1, A2 the centred features,
//   tr (S1 S2)^(1/2) = ||A1 A2^T||_* / sqrt((n1 - 1)(n2 - 1))      (nuclear norm: sum of singular
// values), since the nonzero eigenvalues of S1 S2 are the squared singular values of that
// n1 x n2 matrix; tr S = ||A||_F^2 / (n - 1). Otherwise it is frechet_distance of the statistics.
double frechet_distance(const Tensor& features_a, const Tensor& features_b);

}  // namespace psvae::train
