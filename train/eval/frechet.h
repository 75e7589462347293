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

}  // namespace psvae::train
