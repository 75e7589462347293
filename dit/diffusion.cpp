#include "dit/diffusion.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kernels/ops.h"

namespace psvae::dit {

namespace {
// numpy.linspace: start + i * step, the last point set to stop exactly.
std::vector<double> linspace(double start, double stop, int n) {
  std::vector<double> v(static_cast<size_t>(n));
  double step = n > 1 ? (stop - start) / (n - 1) : 0.0;
  for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = start + i * step;
  if (n > 1) v.back() = stop;
  return v;
}

// Nichol & Dhariwal's abar for t in [0, 1]: the 0.008 offset keeps beta_0 from being tiny.
double cosine_abar(double t) {
  const double pi = 3.14159265358979323846;
  double c = std::cos((t + 0.008) / 1.008 * pi / 2);
  return c * c;
}
}  // namespace

std::vector<double> make_betas(BetaSchedule schedule, int num_steps) {
  check(num_steps >= 1, fmt::format("make_betas: num_steps {} < 1", num_steps));
  switch (schedule) {
    case BetaSchedule::linear: return linspace(1e-4, 0.02, num_steps);
    case BetaSchedule::scaled_linear: {
      std::vector<double> b = linspace(std::sqrt(0.00085), std::sqrt(0.012), num_steps);
      for (double& x : b) x *= x;
      return b;
    }
    case BetaSchedule::cosine: {
      // beta_i = 1 - abar((i+1)/T) / abar(i/T), capped at 0.999: the last steps would otherwise
      // have beta -> 1 (abar(1) = cos(pi/2)^2 = 0) and a singular posterior.
      std::vector<double> b(static_cast<size_t>(num_steps));
      for (int i = 0; i < num_steps; ++i) {
        double t1 = static_cast<double>(i) / num_steps, t2 = static_cast<double>(i + 1) / num_steps;
        b[static_cast<size_t>(i)] = std::min(1.0 - cosine_abar(t2) / cosine_abar(t1), 0.999);
      }
      return b;
    }
  }
  throw std::invalid_argument("make_betas: unknown schedule");
}

std::vector<double> cumprod_alphas(const std::vector<double>& betas) {
  std::vector<double> a(betas.size());
  double p = 1.0;
  for (size_t i = 0; i < betas.size(); ++i) a[i] = p *= 1.0 - betas[i];
  return a;
}

std::vector<int64_t> space_timesteps(int num_steps, int count) {
  check(count >= 1 && count <= num_steps,
        fmt::format("space_timesteps: cannot take {} steps out of {}", count, num_steps));
  // Upstream: frac_stride = (size - 1) / (count - 1); cur += frac_stride; round(cur). Python's
  // round is half-to-even, which std::nearbyint gives in the default rounding mode. The
  // accumulation (not i * stride) is kept so the rounding sees the same doubles.
  double stride = count > 1 ? static_cast<double>(num_steps - 1) / (count - 1) : 1.0;
  std::vector<int64_t> steps;
  double cur = 0.0;
  for (int i = 0; i < count; ++i) {
    steps.push_back(static_cast<int64_t>(std::nearbyint(cur)));
    cur += stride;
  }
  return steps;
}

Schedule Schedule::make(BetaSchedule schedule, int num_train_steps, int count) {
  std::vector<double> abar = cumprod_alphas(make_betas(schedule, num_train_steps));
  if (count <= 0) count = num_train_steps;
  Schedule s;
  s.num_train_steps = num_train_steps;
  s.timesteps = space_timesteps(num_train_steps, count);
  double last = 1.0;
  for (int64_t t : s.timesteps) {
    double a = abar[static_cast<size_t>(t)];
    s.alphas_cumprod.push_back(a);
    s.betas.push_back(1.0 - a / last);
    last = a;
  }
  return s;
}

double shift_factor(const Shape& sample_shape, double base_dims) {
  return std::sqrt(static_cast<double>(sample_shape.numel()) / base_dims);
}

double shift_time(double s, double k) { return k * s / (1.0 + (k - 1.0) * s); }

Tensor time_tensor(const std::vector<double>& values, Device device) {
  std::vector<float> f(values.begin(), values.end());
  return Tensor::from_vector(f, Shape{static_cast<int64_t>(f.size())}, device);
}

Tensor per_sample(const std::vector<double>& coef, const Tensor& like) {
  check(like.rank() >= 1 && like.size(0) == static_cast<int64_t>(coef.size()),
        fmt::format("per_sample: {} coefficients for a tensor {}", coef.size(), like.str()));
  std::vector<int64_t> dims(static_cast<size_t>(like.rank()), 1);
  dims[0] = static_cast<int64_t>(coef.size());
  Tensor c = Tensor::from_vector(coef, Shape(dims));
  return ops::cast(c, like.dtype()).to(like.device());
}

TrainPair diffusion_pair(Objective objective, const std::vector<double>& alphas_cumprod,
                         const Tensor& x0, const Tensor& noise, const std::vector<int64_t>& t) {
  check(objective != Objective::flow, "diffusion_pair: use flow_pair for rectified flow");
  check(x0.shape() == noise.shape(),
        fmt::format("diffusion_pair: x0 {} and noise {} differ", x0.str(), noise.str()));
  std::vector<double> a(t.size()), b(t.size());
  for (size_t n = 0; n < t.size(); ++n) {
    check(t[n] >= 0 && t[n] < static_cast<int64_t>(alphas_cumprod.size()),
          fmt::format("diffusion_pair: step {} outside [0, {})", t[n], alphas_cumprod.size()));
    a[n] = std::sqrt(alphas_cumprod[static_cast<size_t>(t[n])]);
    b[n] = std::sqrt(1.0 - alphas_cumprod[static_cast<size_t>(t[n])]);
  }
  Tensor ca = per_sample(a, x0), cb = per_sample(b, x0);
  TrainPair p;
  p.x_t = ops::add(ops::mul(ca, x0), ops::mul(cb, noise));  // sqrt(abar) x0 + sqrt(1-abar) eps
  if (objective == Objective::eps)
    p.target = noise;
  else  // v = sqrt(abar) eps - sqrt(1-abar) x0
    p.target = ops::sub(ops::mul(ca, noise), ops::mul(cb, x0));
  return p;
}

TrainPair flow_pair(const Tensor& x0, const Tensor& noise, const std::vector<double>& s) {
  check(x0.shape() == noise.shape(),
        fmt::format("flow_pair: x0 {} and noise {} differ", x0.str(), noise.str()));
  std::vector<double> one_minus(s.size());
  for (size_t n = 0; n < s.size(); ++n) one_minus[n] = 1.0 - s[n];
  TrainPair p;
  p.x_t = ops::add(ops::mul(per_sample(one_minus, x0), x0), ops::mul(per_sample(s, x0), noise));
  p.target = ops::sub(noise, x0);  // v = d x_s / ds = eps - x0
  return p;
}

}  // namespace psvae::dit
