#include "psvae/interpolate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "autograd/functions.h"

namespace psvae::interp {

namespace {

// Keys' cubic convolution kernel W(|x|) with parameter a: (a+2)|x|^3 - (a+3)|x|^2 + 1 on [0, 1),
// a|x|^3 - 5a|x|^2 + 8a|x| - 4a on [1, 2), 0 beyond.
double cubic(double x, double a) {
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
  return 0.0;
}

// area_pixel_compute_scale (align_corners=False): 1/scale_factor when one was given, else in/out.
double source_scale(int64_t in, int64_t out, double scale_factor) {
  return scale_factor > 0 ? 1.0 / scale_factor : static_cast<double>(in) / static_cast<double>(out);
}

// upsample_bicubic2d: four taps at floor(src) - 1 .. + 2 with a = -0.75, indices clamped to the
// edge (so an out-of-range tap adds its weight to the border sample).
void fill_plain(std::vector<double>& m, int64_t in, int64_t out, double scale) {
  constexpr double kA = -0.75;
  for (int64_t o = 0; o < out; ++o) {
    double src = scale * (static_cast<double>(o) + 0.5) - 0.5;
    // guard_index_and_lambda: the base index never passes the last sample, t stays in [0, 1].
    auto base = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
    double t = std::clamp(src - static_cast<double>(base), 0.0, 1.0);
    const double w[4] = {cubic(t + 1.0, kA), cubic(t, kA), cubic(1.0 - t, kA), cubic(2.0 - t, kA)};
    for (int k = 0; k < 4; ++k) {
      int64_t i = std::clamp<int64_t>(base - 1 + k, 0, in - 1);
      m[static_cast<size_t>(o * in + i)] += w[k];
    }
  }
}

// _upsample_bicubic2d_aa (_compute_weights_aa): taps within `support` of the centre, the kernel
// stretched by the downscale factor, weights renormalised over the taps inside the input.
void fill_antialias(std::vector<double>& m, int64_t in, int64_t out, double scale) {
  constexpr double kA = -0.5;  // PIL's bicubic, not PyTorch's plain -0.75
  const double support = scale >= 1.0 ? 2.0 * scale : 2.0;
  const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
  for (int64_t o = 0; o < out; ++o) {
    double center = scale * (static_cast<double>(o) + 0.5);
    // static_cast truncates toward zero, as the C++ in ATen does.
    int64_t lo = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), 0);
    int64_t hi = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), in);
    double total = 0;
    for (int64_t i = lo; i < hi; ++i) {
      double w = cubic((static_cast<double>(i) - center + 0.5) * invscale, kA);
      m[static_cast<size_t>(o * in + i)] = w;
      total += w;
    }
    if (total != 0.0)
      for (int64_t i = lo; i < hi; ++i) m[static_cast<size_t>(o * in + i)] /= total;
  }
}

// M (out x in) as a constant Var in dtype.
ag::Var matrix_var(int64_t in, int64_t out, double scale_factor, bool antialias, DType dtype,
                   Device device) {
  check(dtype == DType::F32 || dtype == DType::F64, "resize_bicubic: the grid must be f32 or f64");
  std::vector<double> m = bicubic_matrix(in, out, scale_factor, antialias);
  Tensor t = dtype == DType::F64
                 ? Tensor::from_vector(m, Shape{out, in})
                 : Tensor::from_vector(std::vector<float>(m.begin(), m.end()), Shape{out, in});
  return ag::Var(t.to(device));
}

}  // namespace

int64_t output_size(int64_t in, double scale_factor) {
  return static_cast<int64_t>(std::floor(static_cast<double>(in) * scale_factor));
}

std::vector<double> bicubic_matrix(int64_t in, int64_t out, double scale_factor, bool antialias) {
  check(in > 0 && out > 0,
        fmt::format("bicubic_matrix: sizes must be positive, got {} -> {}", in, out));
  std::vector<double> m(static_cast<size_t>(in * out), 0.0);
  const double scale = source_scale(in, out, scale_factor);
  if (antialias)
    fill_antialias(m, in, out, scale);
  else
    fill_plain(m, in, out, scale);
  return m;
}

ag::Var resize_bicubic(const ag::Var& x, int64_t out_h, int64_t out_w, const BicubicOptions& o) {
  check(x.rank() == 3,
        fmt::format("resize_bicubic: expected a (H, W, C) grid, got {}", x.shape().str()));
  const int64_t H = x.size(0), W = x.size(1), C = x.size(2);
  if (H == out_h && W == out_w && o.scale_h <= 0 && o.scale_w <= 0) return x;
  ag::Var mh = matrix_var(H, out_h, o.scale_h, o.antialias, x.dtype(), x.device());
  ag::Var mw = matrix_var(W, out_w, o.scale_w, o.antialias, x.dtype(), x.device());
  // Rows: (out_h x H) @ (H, W*C) -> (out_h, W, C).
  ag::Var y = ag::matmul(mh, ag::reshape(x, Shape{H, W * C}));
  // Columns: bring W to the front, (out_w x W) @ (W, out_h*C), and back -> (out_h, out_w, C).
  y = ag::reshape(ag::permute(ag::reshape(y, Shape{out_h, W, C}), {1, 0, 2}), Shape{W, out_h * C});
  y = ag::matmul(mw, y);
  return ag::permute(ag::reshape(y, Shape{out_w, out_h, C}), {1, 0, 2});
}

}  // namespace psvae::interp
