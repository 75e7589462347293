// PSNR and SSIM per image, in f64 on the host. Images arrive as (N,3,H,W) in [-1,1] and are mapped
// to [0,1] first, so the data range L is 1 and the constants match the published numbers
// (scikit-image, pytorch-msssim and the original MATLAB code all use L = data range).
#include "train/metrics.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace psvae::train {
namespace {

// Both batches as [0,1] doubles, after checking they are (N,3,H,W) float tensors of one shape.
struct Pair {
  int64_t n = 0, c = 0, h = 0, w = 0;
  std::vector<double> a, b;
};

std::vector<double> unit_range(const Tensor& t) {
  Tensor h = t.to(Device::cpu());
  std::vector<double> v(static_cast<size_t>(h.numel()));
  if (h.dtype() == DType::F32) {
    const float* p = h.data<float>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = (static_cast<double>(p[i]) + 1.0) * 0.5;
  } else {
    const double* p = h.data<double>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = (p[i] + 1.0) * 0.5;
  }
  return v;
}

Pair load_pair(const char* metric, const Tensor& a, const Tensor& b, int64_t min_side) {
  check(a.defined() && b.defined(), fmt::format("{}: undefined image tensor", metric));
  check(a.rank() == 4 && a.size(1) == 3,
        fmt::format("{}: expected images (N,3,H,W), got {}", metric, a.shape().str()));
  check(a.shape() == b.shape(), fmt::format("{}: image batches differ in shape: {} vs {}", metric,
                                            a.shape().str(), b.shape().str()));
  for (const Tensor* t : {&a, &b})
    check(t->dtype() == DType::F32 || t->dtype() == DType::F64,
          fmt::format("{}: expected f32 or f64 images, got {}", metric, dtype_name(t->dtype())));
  check(a.size(2) >= min_side && a.size(3) >= min_side,
        fmt::format("{}: images must be at least {}x{}, got {}x{}", metric, min_side, min_side,
                    a.size(2), a.size(3)));
  Pair p;
  p.n = a.size(0);
  p.c = a.size(1);
  p.h = a.size(2);
  p.w = a.size(3);
  p.a = unit_range(a);
  p.b = unit_range(b);
  return p;
}

// SSIM window: 11 taps, sigma 1.5, as in Wang et al. 2004. The 2-D window is the outer product of
// this 1-D one; normalising the 1-D taps to sum 1 makes the 2-D window sum to 1 as well, so the
// filter can run separably (rows, then columns): 22 multiply-adds per output instead of 121.
constexpr int kWin = 11;
constexpr double kSigma = 1.5;

std::vector<double> gaussian_taps() {
  std::vector<double> g(kWin);
  double sum = 0;
  for (int i = 0; i < kWin; ++i) {
    double d = i - kWin / 2;
    g[static_cast<size_t>(i)] = std::exp(-d * d / (2 * kSigma * kSigma));
    sum += g[static_cast<size_t>(i)];
  }
  for (double& v : g) v /= sum;
  return g;
}

// 'valid' Gaussian filter of one h x w plane into (h-10) x (w-10).
void filter_valid(const double* in, int64_t h, int64_t w, const std::vector<double>& g,
                  std::vector<double>& tmp, std::vector<double>& out) {
  const int64_t ow = w - (kWin - 1), oh = h - (kWin - 1);
  tmp.assign(static_cast<size_t>(h * ow), 0.0);
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < ow; ++x) {
      double s = 0;
      for (int k = 0; k < kWin; ++k) s += g[static_cast<size_t>(k)] * in[y * w + x + k];
      tmp[static_cast<size_t>(y * ow + x)] = s;
    }
  out.assign(static_cast<size_t>(oh * ow), 0.0);
  for (int64_t y = 0; y < oh; ++y)
    for (int64_t x = 0; x < ow; ++x) {
      double s = 0;
      for (int k = 0; k < kWin; ++k)
        s += g[static_cast<size_t>(k)] * tmp[static_cast<size_t>((y + k) * ow + x)];
      out[static_cast<size_t>(y * ow + x)] = s;
    }
}

}  // namespace

std::vector<double> psnr(const Tensor& a, const Tensor& b) {
  Pair p = load_pair("psnr", a, b, 1);
  const int64_t per = p.c * p.h * p.w;
  std::vector<double> out(static_cast<size_t>(p.n));
  for (int64_t i = 0; i < p.n; ++i) {
    double se = 0;
    for (int64_t j = i * per; j < (i + 1) * per; ++j) {
      double d = p.a[static_cast<size_t>(j)] - p.b[static_cast<size_t>(j)];
      se += d * d;
    }
    double mse = se / static_cast<double>(per);
    // log10(1/0) is +inf: an exact match is reported as such rather than capped at some 100 dB.
    out[static_cast<size_t>(i)] =
        mse == 0 ? std::numeric_limits<double>::infinity() : 10.0 * std::log10(1.0 / mse);
  }
  return out;
}

std::vector<double> ssim(const Tensor& a, const Tensor& b) {
  Pair p = load_pair("ssim", a, b, kWin);
  // C1 = (K1 L)^2, C2 = (K2 L)^2 with K1 = 0.01, K2 = 0.03, L = 1: they keep the ratios finite on
  // flat (zero-variance) or black (zero-mean) windows.
  const double C1 = 0.01 * 0.01, C2 = 0.03 * 0.03;
  const std::vector<double> g = gaussian_taps();
  const int64_t plane = p.h * p.w;
  std::vector<double> out(static_cast<size_t>(p.n));
  std::vector<double> xx(static_cast<size_t>(plane)), yy(xx), xy(xx), tmp;
  std::vector<double> mx, my, exx, eyy, exy;
  for (int64_t i = 0; i < p.n; ++i) {
    double total = 0;
    int64_t count = 0;
    for (int64_t c = 0; c < p.c; ++c) {
      const double* x = &p.a[static_cast<size_t>((i * p.c + c) * plane)];
      const double* y = &p.b[static_cast<size_t>((i * p.c + c) * plane)];
      for (int64_t k = 0; k < plane; ++k) {
        xx[static_cast<size_t>(k)] = x[k] * x[k];
        yy[static_cast<size_t>(k)] = y[k] * y[k];
        xy[static_cast<size_t>(k)] = x[k] * y[k];
      }
      filter_valid(x, p.h, p.w, g, tmp, mx);
      filter_valid(y, p.h, p.w, g, tmp, my);
      filter_valid(xx.data(), p.h, p.w, g, tmp, exx);
      filter_valid(yy.data(), p.h, p.w, g, tmp, eyy);
      filter_valid(xy.data(), p.h, p.w, g, tmp, exy);
      for (size_t k = 0; k < mx.size(); ++k) {
        // Population (Gaussian-weighted) moments, E[x^2] - mu^2, as the paper and
        // scikit-image's use_sample_covariance=False.
        double sx = exx[k] - mx[k] * mx[k];
        double sy = eyy[k] - my[k] * my[k];
        double sxy = exy[k] - mx[k] * my[k];
        double num = (2 * mx[k] * my[k] + C1) * (2 * sxy + C2);
        double den = (mx[k] * mx[k] + my[k] * my[k] + C1) * (sx + sy + C2);
        total += num / den;
      }
      count += static_cast<int64_t>(mx.size());
    }
    out[static_cast<size_t>(i)] = total / static_cast<double>(count);
  }
  return out;
}

double mean_of(const std::vector<double>& v) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

}  // namespace psvae::train
