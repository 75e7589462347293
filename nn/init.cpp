#include "nn/init.h"

#include <fmt/format.h>

#include "nn/module.h"

namespace psvae::nn::init {

namespace {
// Draws into an f64 host tensor of t's shape, then converts and copies into t.
template <class Fill>
void fill_via_host(Tensor& t, Fill fill) {
  check(t.defined() && is_floating(t.dtype()), "init: needs a defined floating tensor");
  Tensor h = Tensor::empty(t.shape(), DType::F64, Device::cpu());
  fill(h);
  t.copy_from(convert_float(h, t.dtype()).to(t.device()));
}
}  // namespace

std::pair<int64_t, int64_t> fans(const Shape& s) {
  check(s.rank() >= 2, fmt::format("init: fan in/out need a tensor of rank >= 2, got {}", s.str()));
  int64_t r = s.prod(2, s.rank());
  return {s[1] * r, s[0] * r};
}

void uniform_(Tensor& t, Generator& g, double lo, double hi) {
  fill_via_host(t, [&](Tensor& h) { g.uniform_(h, lo, hi); });
}

void normal_(Tensor& t, Generator& g, double std, double mean) {
  fill_via_host(t, [&](Tensor& h) { g.normal_(h, mean, std); });
}

double erfinv(double x) {
  if (x <= -1) return -INFINITY;
  if (x >= 1) return INFINITY;
  // Winitzki's approximation (a = 0.147) gives ~2e-3 relative error; Newton on erf(y) = x then
  // converges quadratically: three steps reach double precision.
  const double a = 0.147, pi = 3.14159265358979323846;
  double ln = std::log(1 - x * x);
  double t1 = 2 / (pi * a) + ln / 2;
  double y = std::copysign(std::sqrt(std::sqrt(t1 * t1 - ln / a) - t1), x);
  for (int i = 0; i < 3; ++i) {
    double err = std::erf(y) - x;
    y -= err / (2 / std::sqrt(pi) * std::exp(-y * y));
  }
  return y;
}

void trunc_normal_(Tensor& t, Generator& g, double std, double mean, double a, double b) {
  if (std::isnan(a)) a = mean - 2 * std;
  if (std::isnan(b)) b = mean + 2 * std;
  check(a < b && std > 0,
        fmt::format("trunc_normal_: need a < b and std > 0 (a {}, b {}, std {})", a, b, std));
  // Phi(z) = (1 + erf(z / sqrt 2)) / 2; work with erf values in [-1, 1] directly.
  const double lo = std::erf((a - mean) / (std * std::sqrt(2.0)));
  const double hi = std::erf((b - mean) / (std * std::sqrt(2.0)));
  fill_via_host(t, [&](Tensor& h) {
    g.uniform_(h, 0.0, 1.0);
    double* p = h.data<double>();
    for (int64_t i = 0; i < h.numel(); ++i) {
      double e = lo + (hi - lo) * p[i];
      double v = mean + std * std::sqrt(2.0) * erfinv(e);
      p[i] = std::min(std::max(v, a), b);  // guards rounding at the edges
    }
  });
}

void xavier_uniform_(Tensor& t, Generator& g, double gain) {
  auto [fan_in, fan_out] = fans(t.shape());
  double bound = gain * std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  uniform_(t, g, -bound, bound);
}

void kaiming_uniform_default_(Tensor& t, Generator& g) {
  double bound = 1.0 / std::sqrt(static_cast<double>(fans(t.shape()).first));
  uniform_(t, g, -bound, bound);
}

void constant_(Tensor& t, double v) { t.fill_(v); }

}  // namespace psvae::nn::init
