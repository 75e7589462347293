#include "dit/sampling.h"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

#include "kernels/ops.h"

namespace psvae::dit {

namespace {
const char* objective_name(Objective o) {
  switch (o) {
    case Objective::eps: return "eps";
    case Objective::v: return "v";
    case Objective::flow: return "flow";
  }
  return "?";
}

bool is_flow(const DiffusionSetup& setup) { return setup.objective == Objective::flow; }

// The first k steps of a respaced schedule: the least noisy k levels, so sampling it starts at
// level k - 1 of the full grid. Respaced betas only depend on the previous level, so a prefix is
// itself a valid schedule.
Schedule prefix(const Schedule& full, int k) {
  Schedule s;
  s.num_train_steps = full.num_train_steps;
  s.timesteps.assign(full.timesteps.begin(), full.timesteps.begin() + k);
  s.betas.assign(full.betas.begin(), full.betas.begin() + k);
  s.alphas_cumprod.assign(full.alphas_cumprod.begin(), full.alphas_cumprod.begin() + k);
  return s;
}

Schedule full_schedule(const DiffusionSetup& setup, const SampleOptions& opt) {
  return Schedule::make(setup.schedule, setup.num_train_steps, opt.steps);
}

// The last k + 1 points of the flow grid: k steps ending at s = 0.
std::vector<double> tail_times(const DiffusionSetup& setup, const SampleOptions& opt, int k) {
  std::vector<double> s = flow_times(opt.steps, setup.shift);
  return std::vector<double>(s.end() - (k + 1), s.end());
}

Tensor lincomb(double a, const Tensor& x, double b, const Tensor& y) {
  return ops::add(ops::mul_scalar(x, a), ops::mul_scalar(y, b));
}

Tensor batch_time(double t, const Tensor& x) {
  return time_tensor(std::vector<double>(static_cast<size_t>(x.size(0)), t), x.device());
}

// Runs k = steps_to_run(opt) steps from x, which already sits at the start level.
Tensor run(const Denoiser& model, const DiffusionSetup& setup, const SampleOptions& opt,
           const Tensor& x, Generator& gen,
           const std::function<Tensor(const Tensor&, double)>& after) {
  int k = steps_to_run(opt);
  StepHook hook;
  if (after) {
    double steps = opt.steps;
    hook = [&after, steps](const Tensor& xs, int left) { return after(xs, left / steps); };
  }
  if (is_flow(setup)) {
    std::vector<double> times = tail_times(setup, opt, k);
    if (opt.sampler == SamplerKind::euler) return euler_sample(model, times, x, hook);
    return heun_sample(model, times, x, hook);
  }
  Schedule sch = prefix(full_schedule(setup, opt), k);
  switch (opt.sampler) {
    case SamplerKind::ddpm: return ddpm_sample(model, setup.objective, sch, x, gen, hook);
    case SamplerKind::ddim: return ddim_sample(model, setup.objective, sch, x, opt.eta, gen, hook);
    case SamplerKind::dpmpp_2m: return dpmpp_2m_sample(model, setup.objective, sch, x, hook);
    default: break;
  }
  throw std::logic_error("sample: unreachable sampler dispatch");
}
}  // namespace

SamplerKind parse_sampler(const std::string& name) {
  if (name == "ddpm") return SamplerKind::ddpm;
  if (name == "ddim") return SamplerKind::ddim;
  if (name == "dpmpp-2m" || name == "dpm++2m") return SamplerKind::dpmpp_2m;
  if (name == "euler") return SamplerKind::euler;
  if (name == "heun") return SamplerKind::heun;
  throw std::invalid_argument(fmt::format(
      "unknown sampler '{}': choose ddpm, ddim, dpmpp-2m (dpm++2m), euler or heun", name));
}

std::string sampler_name(SamplerKind k) {
  switch (k) {
    case SamplerKind::ddpm: return "ddpm";
    case SamplerKind::ddim: return "ddim";
    case SamplerKind::dpmpp_2m: return "dpmpp-2m";
    case SamplerKind::euler: return "euler";
    case SamplerKind::heun: return "heun";
  }
  return "?";
}

bool sampler_fits(SamplerKind k, Objective objective) {
  bool flow_sampler = k == SamplerKind::euler || k == SamplerKind::heun;
  return flow_sampler == (objective == Objective::flow);
}

int steps_to_run(const SampleOptions& opt) {
  return std::max(1, static_cast<int>(std::lround(opt.strength * opt.steps)));
}

void check_options(const DiffusionSetup& setup, const SampleOptions& opt) {
  if (!sampler_fits(opt.sampler, setup.objective))
    throw std::invalid_argument(fmt::format(
        "sampler '{}' does not fit the objective '{}' (eps and v take ddpm, ddim or dpmpp-2m; flow "
        "takes euler or heun)",
        sampler_name(opt.sampler), objective_name(setup.objective)));
  if (opt.steps < 1) throw std::invalid_argument(fmt::format("sampling steps {} < 1", opt.steps));
  if (!is_flow(setup) && opt.steps > setup.num_train_steps)
    throw std::invalid_argument(fmt::format("sampling steps {} exceed the {} training steps",
                                            opt.steps, setup.num_train_steps));
  if (!(opt.strength > 0.0 && opt.strength <= 1.0))
    throw std::invalid_argument(fmt::format("strength {} outside (0, 1]", opt.strength));
  if (!(opt.eta >= 0.0)) throw std::invalid_argument(fmt::format("eta {} < 0", opt.eta));
  if (opt.eta != 0.0 && opt.sampler != SamplerKind::ddim)
    throw std::invalid_argument(fmt::format("eta {} applies to ddim only, not to '{}'", opt.eta,
                                            sampler_name(opt.sampler)));
}

namespace {
// x_level = a x0 + b eps at the grid level nearest to `time`; false at the data (level 0).
bool level_coefficients(const DiffusionSetup& setup, const SampleOptions& opt, double time,
                        double* a, double* b) {
  check(opt.steps >= 1, fmt::format("noise_to: steps {} < 1", opt.steps));
  check(time >= 0.0 && time <= 1.0, fmt::format("noise_to: time {} outside [0, 1]", time));
  int level = static_cast<int>(std::lround(time * opt.steps));
  if (level == 0) return false;
  if (is_flow(setup)) {
    double s = flow_times(opt.steps, setup.shift)[static_cast<size_t>(opt.steps - level)];
    *a = 1.0 - s;
    *b = s;
  } else {
    double abar = full_schedule(setup, opt).abar(level - 1);
    *a = std::sqrt(abar);
    *b = std::sqrt(1.0 - abar);
  }
  return true;
}
}  // namespace

Tensor noise_to(const DiffusionSetup& setup, const SampleOptions& opt, const Tensor& x0,
                double time, Generator& gen) {
  double a, b;
  if (!level_coefficients(setup, opt, time, &a, &b)) return x0;
  return lincomb(a, x0, b, initial_noise(x0.shape(), x0.dtype(), x0.device(), gen));
}

Tensor noise_to(const DiffusionSetup& setup, const SampleOptions& opt, const Tensor& x0,
                double time, const Tensor& eps) {
  check(eps.defined() && eps.shape() == x0.shape(),
        fmt::format("noise_to: noise {} does not match x0 {}", eps.str(), x0.str()));
  double a, b;
  if (!level_coefficients(setup, opt, time, &a, &b)) return x0;
  return lincomb(a, x0, b, eps);
}

Tensor model_time(const DiffusionSetup& setup, const Tensor& t) {
  return is_flow(setup) ? ops::mul_scalar(t, setup.flow_time_scale) : t;
}

Tensor sample(const Denoiser& model, const DiffusionSetup& setup, const SampleOptions& opt,
              const Tensor& x, Generator& gen) {
  check_options(setup, opt);
  Tensor start = x;
  if (opt.strength < 1.0 && !opt.x_noised)
    start = noise_to(setup, opt, x, static_cast<double>(steps_to_run(opt)) / opt.steps, gen);
  return run(model, setup, opt, start, gen, opt.after_step);
}

Tensor invert(const Denoiser& model, const DiffusionSetup& setup, const SampleOptions& opt,
              const Tensor& x0) {
  check_options(setup, opt);
  int k = steps_to_run(opt);
  if (!is_flow(setup))
    return ddim_invert(model, setup.objective, prefix(full_schedule(setup, opt), k), x0);
  // Euler backwards along the sampler's grid: x_{s_i} = x_{s_{i+1}} + (s_i - s_{i+1}) v(x,
  // s_{i+1}), starting at s = 0 where v(x0, 0) = E[eps - x0 | x0] = -x0 for a perfect model.
  std::vector<double> s = tail_times(setup, opt, k);
  Tensor x = x0;
  for (int i = k; i >= 1; --i) {
    Tensor v = model(x, batch_time(s[static_cast<size_t>(i)], x));
    x = ops::add(x, ops::mul_scalar(v, s[static_cast<size_t>(i - 1)] - s[static_cast<size_t>(i)]));
  }
  return x;
}

Tensor inpaint(const Denoiser& model, const DiffusionSetup& setup, const SampleOptions& opt,
               const Tensor& x_T, const Tensor& x0, const Tensor& mask, Generator& gen) {
  check_options(setup, opt);
  check(x_T.defined() && x_T.shape() == x0.shape(),
        fmt::format("inpaint: x_T {} does not match x0 {}", x_T.str(), x0.str()));
  check(mask.defined() && mask.rank() == x0.rank() &&
            ops::broadcast_shapes(mask.shape(), x0.shape()) == x0.shape(),
        fmt::format("inpaint: mask {} does not broadcast to x0 {}", mask.str(), x0.str()));
  Tensor keep = ops::cast(mask, x0.dtype()).to(x0.device());
  Tensor free = ops::add_scalar(ops::mul_scalar(keep, -1.0), 1.0);  // 1 - mask
  // mask * known + (1 - mask) * x: exactly `known` where mask = 1 and exactly x where mask = 0.
  auto blend = [&](const Tensor& x, double time) {
    Tensor known = noise_to(setup, opt, x0, time, x_T);
    return ops::add(ops::mul(keep, known), ops::mul(free, x));
  };
  double t_start = static_cast<double>(steps_to_run(opt)) / opt.steps;
  Tensor start = opt.strength < 1.0 && !opt.x_noised ? noise_to(setup, opt, x0, t_start, x_T)
                                                     : blend(x_T, t_start);
  auto after = [&](const Tensor& x, double time) {
    Tensor y = blend(x, time);
    return opt.after_step ? opt.after_step(y, time) : y;
  };
  return run(model, setup, opt, start, gen, after);
}

}  // namespace psvae::dit
