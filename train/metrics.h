// Image-quality metrics, on images given as tensors (N,3,H,W) in [-1,1]; both are computed after
// mapping to [0,1] (data range 1), in f64, per image, then averaged over the batch.
// LPIPS (psvae/lpips) and Frechet distance (train/frechet) join these in later issues with the
// same shape of interface: a function from two batches to a per-image vector.
#pragma once
#include <vector>

#include "tensor/tensor.h"

namespace psvae::train {

// PSNR = 10 log10(1 / MSE) per image; an exact match gives +inf.
std::vector<double> psnr(const Tensor& a, const Tensor& b);

// SSIM of Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data
// range 1, computed per channel over the 'valid' positions (no padding) and averaged over
// positions and channels. Images must be at least 11x11.
std::vector<double> ssim(const Tensor& a, const Tensor& b);

double mean_of(const std::vector<double>& v);  // arithmetic mean (an inf entry gives inf)

}  // namespace psvae::train
