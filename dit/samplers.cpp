#include "dit/samplers.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kernels/ops.h"

namespace psvae::dit {

namespace {
// a x + b y
Tensor lincomb(double a, const Tensor& x, double b, const Tensor& y) {
  return ops::add(ops::mul_scalar(x, a), ops::mul_scalar(y, b));
}

// The same time for every sample of the batch x (N, ...).
Tensor batch_time(double t, const Tensor& x) {
  return time_tensor(std::vector<double>(static_cast<size_t>(x.size(0)), t), x.device());
}

// The model output at noise level abar, turned into both parametrisations the updates need.
// x_t = a x0 + b eps with a = sqrt(abar), b = sqrt(1 - abar):
//   eps objective: x0 = (x_t - b eps) / a;
//   v objective (v = a eps - b x0): x0 = a x_t - b v, eps = b x_t + a v (a^2 + b^2 = 1).
struct Prediction {
  Tensor x0, eps;
};
Prediction predict(Objective objective, const Tensor& out, const Tensor& x, double abar) {
  check(out.shape() == x.shape(),
        fmt::format("sampler: model output {} does not match x {}", out.str(), x.str()));
  double a = std::sqrt(abar), b = std::sqrt(1.0 - abar);
  if (objective == Objective::eps) return {lincomb(1.0 / a, x, -b / a, out), out};
  check(objective == Objective::v, "sampler: the discrete samplers take the eps or v objective");
  return {lincomb(a, x, -b, out), lincomb(b, x, a, out)};
}

// x after a step with `left` steps still to run, passed through the caller's hook.
Tensor after(const StepHook& hook, Tensor x, int left) { return hook ? hook(x, left) : x; }

void check_batch(const Tensor& x, const char* who) {
  check(x.defined() && x.rank() >= 1 && x.size(0) >= 1,
        fmt::format("{}: x must be a batch (N, ...), got {}", who, x.str()));
}
}  // namespace

Denoiser classifier_free_guidance(Denoiser cond, Denoiser uncond, const GuidanceConfig& cfg) {
  return [cond = std::move(cond), uncond = std::move(uncond), cfg](const Tensor& x,
                                                                   const Tensor& t) -> Tensor {
    Tensor c = cond(x, t);
    if (cfg.scale == 1.0) return c;  // u + 1 (c - u) = c, exactly
    // out = u + w (c - u) = c + (w - 1)(c - u), with (w - 1) zeroed per sample outside the
    // interval.
    std::vector<double> ts = ops::cast(t, DType::F64).to(Device::cpu()).to_vector<double>();
    std::vector<double> gain(ts.size());
    bool any = false;
    for (size_t n = 0; n < ts.size(); ++n) {
      double tn = ts[n] / cfg.time_scale;
      bool inside = tn >= cfg.t_lo && tn <= cfg.t_hi;
      gain[n] = inside ? cfg.scale - 1.0 : 0.0;
      any = any || inside;
    }
    if (!any) return c;
    Tensor u = uncond(x, t);
    return ops::add(c, ops::mul(per_sample(gain, c), ops::sub(c, u)));
  };
}

Tensor initial_noise(const Shape& shape, DType dtype, Device device, Generator& gen) {
  Tensor x = Tensor::empty(shape, dtype, device);
  gen.normal_(x);
  return x;
}

Tensor ddpm_sample(const Denoiser& model, Objective objective, const Schedule& schedule, Tensor x,
                   Generator& gen, const StepHook& hook) {
  check_batch(x, "ddpm_sample");
  for (int i = schedule.size() - 1; i >= 0; --i) {
    double abar = schedule.abar(i), abar_prev = schedule.abar_prev(i);
    double beta = schedule.betas[static_cast<size_t>(i)], alpha = 1.0 - beta;
    Prediction p = predict(objective, model(x, batch_time(schedule.timesteps[i], x)), x, abar);
    // Posterior q(x_prev | x, x0) (Ho et al. eq. 7): mean coef1 x0 + coef2 x.
    double coef1 = beta * std::sqrt(abar_prev) / (1.0 - abar);
    double coef2 = (1.0 - abar_prev) * std::sqrt(alpha) / (1.0 - abar);
    x = lincomb(coef1, p.x0, coef2, x);
    if (i > 0) {
      double var = beta * (1.0 - abar_prev) / (1.0 - abar);
      Tensor z = initial_noise(x.shape(), x.dtype(), x.device(), gen);
      x = ops::add(x, ops::mul_scalar(z, std::sqrt(var)));
    }
    x = after(hook, x, i);
  }
  return x;
}

Tensor ddim_sample(const Denoiser& model, Objective objective, const Schedule& schedule, Tensor x,
                   double eta, Generator& gen, const StepHook& hook) {
  check_batch(x, "ddim_sample");
  for (int i = schedule.size() - 1; i >= 0; --i) {
    double abar = schedule.abar(i), abar_prev = schedule.abar_prev(i);
    Prediction p = predict(objective, model(x, batch_time(schedule.timesteps[i], x)), x, abar);
    // Song et al. eq. 12: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma
    // z, sigma = eta sqrt((1 - abar_prev)/(1 - abar)) sqrt(1 - abar/abar_prev); sigma = 0 at the
    // last step (abar_prev = 1) by the formula itself.
    double sigma =
        eta * std::sqrt((1.0 - abar_prev) / (1.0 - abar)) * std::sqrt(1.0 - abar / abar_prev);
    double dir = std::sqrt(std::max(0.0, 1.0 - abar_prev - sigma * sigma));
    x = lincomb(std::sqrt(abar_prev), p.x0, dir, p.eps);
    if (i > 0 && sigma > 0.0) {
      Tensor z = initial_noise(x.shape(), x.dtype(), x.device(), gen);
      x = ops::add(x, ops::mul_scalar(z, sigma));
    }
    x = after(hook, x, i);
  }
  return x;
}

Tensor ddim_invert(const Denoiser& model, Objective objective, const Schedule& schedule, Tensor x) {
  check_batch(x, "ddim_invert");
  // Levels: -1 is the data (abar = 1), 0..K-1 the schedule's steps. ddim_sample goes from level i
  // to i-1 with the model evaluated at level i; the inversion goes from i-1 to i with the model at
  // level i-1 (the only point it has). From the data the model is evaluated at step 0 and the data
  // itself is the x0 estimate, so the first inverted step undoes ddim_sample's last step exactly
  // up to the change of the model's input.
  for (int i = 0; i < schedule.size(); ++i) {
    int src = i == 0 ? 0 : i - 1;
    Prediction p =
        predict(objective, model(x, batch_time(schedule.timesteps[src], x)), x, schedule.abar(src));
    Tensor x0 = i == 0 ? x : p.x0;
    double abar = schedule.abar(i);
    x = lincomb(std::sqrt(abar), x0, std::sqrt(1.0 - abar), p.eps);
  }
  return x;
}

Tensor dpmpp_2m_sample(const Denoiser& model, Objective objective, const Schedule& schedule,
                       Tensor x, const StepHook& hook) {
  check_batch(x, "dpmpp_2m_sample");
  // VP parametrisation: alpha_i = sqrt(abar_i), sigma_i = sqrt(1 - abar_i), half log-SNR
  // lambda_i = log(alpha_i / sigma_i), increasing towards the data.
  auto alpha = [&](int i) { return std::sqrt(schedule.abar(i)); };
  auto sigma = [&](int i) { return std::sqrt(1.0 - schedule.abar(i)); };
  auto lambda = [&](int i) { return std::log(alpha(i)) - std::log(sigma(i)); };
  Tensor m_prev;  // data prediction of the previous step (m1), undefined on the first step
  for (int i = schedule.size() - 1; i >= 0; --i) {
    Tensor m =
        predict(objective, model(x, batch_time(schedule.timesteps[i], x)), x, schedule.abar(i)).x0;
    if (i == 0) return after(hook, m, 0);  // to abar = 1: sigma = 0, lambda = inf, x = D
    int j = i - 1;                         // target level
    double h = lambda(j) - lambda(i);
    // D = m0 + D1/2 with D1 = (m0 - m1)/r0, r0 = h_prev / h; first order (D = m0) at the start.
    Tensor d = m;
    if (m_prev.defined()) {
      double r = (lambda(i) - lambda(i + 1)) / h;
      d = lincomb(1.0 + 0.5 / r, m, -0.5 / r, m_prev);
    }
    // x_t = (sigma_t / sigma_s) x - alpha_t (e^-h - 1) D
    x = after(hook, lincomb(sigma(j) / sigma(i), x, -alpha(j) * std::expm1(-h), d), i);
    m_prev = m;
  }
  return x;
}

std::vector<double> flow_times(int steps, double shift) {
  check(steps >= 1, fmt::format("flow sampler: steps {} < 1", steps));
  std::vector<double> s(static_cast<size_t>(steps + 1));
  for (int i = 0; i <= steps; ++i)
    s[static_cast<size_t>(i)] = shift_time(1.0 - static_cast<double>(i) / steps, shift);
  s.back() = 0.0;
  return s;
}

Tensor euler_sample(const Denoiser& model, int steps, double shift, Tensor x) {
  return euler_sample(model, flow_times(steps, shift), std::move(x));
}

Tensor heun_sample(const Denoiser& model, int steps, double shift, Tensor x) {
  return heun_sample(model, flow_times(steps, shift), std::move(x));
}

namespace {
void check_times(const std::vector<double>& s, const char* who) {
  check(
      s.size() >= 2 && s.back() == 0.0,
      fmt::format("{}: the time grid needs at least 2 points ending at 0, got {}", who, s.size()));
  for (size_t i = 0; i + 1 < s.size(); ++i)
    check(s[i] > s[i + 1],
          fmt::format("{}: times must decrease, got {} then {}", who, s[i], s[i + 1]));
}
}  // namespace

Tensor euler_sample(const Denoiser& model, const std::vector<double>& s, Tensor x,
                    const StepHook& hook) {
  check_batch(x, "euler_sample");
  check_times(s, "euler_sample");
  int last = static_cast<int>(s.size()) - 1;
  for (int i = 0; i < last; ++i) {
    // x_{s'} = x_s + (s' - s) v(x_s, s), s' < s
    Tensor v = model(x, batch_time(s[i], x));
    x = after(hook, ops::add(x, ops::mul_scalar(v, s[i + 1] - s[i])), last - 1 - i);
  }
  return x;
}

Tensor heun_sample(const Denoiser& model, const std::vector<double>& s, Tensor x,
                   const StepHook& hook) {
  check_batch(x, "heun_sample");
  check_times(s, "heun_sample");
  int last = static_cast<int>(s.size()) - 1;
  for (int i = 0; i < last; ++i) {
    double dt = s[i + 1] - s[i];
    Tensor v1 = model(x, batch_time(s[i], x));
    Tensor x_euler = ops::add(x, ops::mul_scalar(v1, dt));
    if (s[i + 1] == 0.0) {
      x = after(hook, x_euler, 0);
      break;
    }
    // Trapezoid: x + dt (v(x, s) + v(x_euler, s')) / 2
    Tensor v2 = model(x_euler, batch_time(s[i + 1], x));
    x = after(hook, ops::add(x, ops::mul_scalar(ops::add(v1, v2), 0.5 * dt)), last - 1 - i);
  }
  return x;
}

}  // namespace psvae::dit
