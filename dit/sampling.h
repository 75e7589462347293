// One entry point over every sampler, plus what editing needs from a sampler: starting part-way
// along the trajectory (SDEdit) and a hook after each step (inpainting's blend of the known
// region). The individual samplers stay in dit/samplers.h; this file chooses between them.
#pragma once
#include <functional>
#include <string>

#include "dit/samplers.h"

namespace psvae::dit {

enum class SamplerKind { ddpm, ddim, dpmpp_2m, euler, heun };
// "ddpm" | "ddim" | "dpmpp-2m" (also "dpm++2m") | "euler" | "heun"; throws naming the choices.
SamplerKind parse_sampler(const std::string& name);
std::string sampler_name(SamplerKind k);
// Whether the sampler belongs to the objective (euler/heun <-> flow; the others <-> eps or v).
bool sampler_fits(SamplerKind k, Objective objective);

// The diffusion a model was trained with.
struct DiffusionSetup {
  Objective objective = Objective::eps;
  BetaSchedule schedule = BetaSchedule::linear;  // eps / v
  int num_train_steps = 1000;                    // eps / v
  double shift = 1.0;                            // flow: time shift factor k (1 = none)
  // flow: the model is given t = flow_time_scale * s for s in [0, 1]. The timestep embedder's
  // sinusoids (DiT's, periods 2 pi .. 2 pi 10^4) were laid out for t in [0, 1000): fed s itself,
  // the fastest one turns by one radian over the whole trajectory and the embedding barely
  // changes with time (SD3 and FLUX scale by 1000 for this reason).
  double flow_time_scale = 1000.0;
};

// The time tensor a model of this setup is given for the sampler's time t: the step index for
// eps / v, flow_time_scale * s for flow.
Tensor model_time(const DiffusionSetup& setup, const Tensor& t);

struct SampleOptions {
  SamplerKind sampler = SamplerKind::ddim;
  int steps = 50;
  double eta = 0.0;  // ddim only
  // SDEdit strength in (0, 1]: the fraction of the trajectory that is run. 1 starts from pure
  // noise; 0.6 starts at the step whose noise level is 60% along the (respaced) step grid, from
  // x = the caller's x0 noised to that level (noise drawn from gen).
  double strength = 1.0;
  // Called after every step with the new x and the normalised time it now sits at (1 = pure noise,
  // 0 = data): the grid level j / steps, j = the steps still to run from there (discrete: x is at
  // respaced step j - 1; flow: at s = shift_time(j / steps), the unshifted fraction is reported).
  // Its return value replaces x. The final call has time 0. Inpainting uses it to paste the
  // re-noised known region.
  std::function<Tensor(const Tensor& x, double time)> after_step;
  // With strength < 1: x is already at the strength's noise level (the output of invert() with the
  // same options, for inversion editing) rather than a clean x0 to be noised first.
  bool x_noised = false;
};

// Steps a sampler runs for these options: round(strength * steps), at least 1. The run starts at
// normalised time steps_to_run / steps of the grid.
int steps_to_run(const SampleOptions& opt);
// Throws std::invalid_argument when the options do not fit the setup: a sampler of the other
// family (naming both), steps < 1 or more than the training steps, strength outside (0, 1],
// eta < 0 or eta != 0 with a sampler other than ddim.
void check_options(const DiffusionSetup& setup, const SampleOptions& opt);

// Starting from x: the noise x_T when strength == 1, else the clean x0 that is first noised to the
// strength's level. Returns the samples. gen draws every random number (noise of the start, of
// ancestral steps).
Tensor sample(const Denoiser& model, const DiffusionSetup& setup, const SampleOptions& opt,
              const Tensor& x, Generator& gen);

// x0 noised to normalised time `time` of the sampler grid of `opt` (the forward process:
// sqrt(abar) x0 + sqrt(1 - abar) eps, or (1 - s) x0 + s eps for flow), with eps from gen. Used by
// SDEdit and by the inpainting blend. `time` is rounded to the nearest grid level j / steps (the
// level after_step reports), so the noise level equals the sampler's own at that level: abar of
// the respaced step j - 1, or s = flow_times(steps, shift)[steps - j]. time 0 returns x0 itself
// and draws nothing.
Tensor noise_to(const DiffusionSetup& setup, const SampleOptions& opt, const Tensor& x0,
                double time, Generator& gen);
// The same with the noise given (eps has x0's shape): a x0 + b eps.
Tensor noise_to(const DiffusionSetup& setup, const SampleOptions& opt, const Tensor& x0,
                double time, const Tensor& eps);

// DDIM inversion (eta 0) of x0 to the noisiest step of the grid (eps/v) or Euler inversion from
// s = 0 to 1 (flow): the x_T that regenerates x0 with the same model and sampler options.
// With strength < 1 it stops at the strength's level; sample() with x_noised = true continues
// from there. Only the deterministic samplers (ddim eta 0, dpmpp-2m, euler, heun) regenerate x0;
// the inversion itself is first order (each step evaluates the model at its known end).
Tensor invert(const Denoiser& model, const DiffusionSetup& setup, const SampleOptions& opt,
              const Tensor& x0);

// Inpainting: mask (N, 1, H, W) or (N, C, H, W), 1 = keep the known x0, 0 = generate. After every
// step the known region is replaced by x0 noised to the step's level (the blend of RePaint /
// SD inpainting without retraining); the last step pastes x0 itself. The noise of the known
// region is x_T itself at every level, a x0 + b x_T (as diffusers' legacy inpainting: the known
// region follows one forward trajectory; fresh noise per step measured no better on the 2-D test
// of tests/dit/test_sampling.cpp), so inpainting draws nothing from gen beyond what the sampler
// draws, and an all-zero mask is the plain sampler bit for bit. The start x_T gets the same blend.
// With strength < 1 (and not x_noised) the run starts from a x0 + b x_T everywhere at the
// strength's level (SDEdit of the masked region). opt.after_step, if any, runs after the blend.
Tensor inpaint(const Denoiser& model, const DiffusionSetup& setup, const SampleOptions& opt,
               const Tensor& x_T, const Tensor& x0, const Tensor& mask, Generator& gen);

}  // namespace psvae::dit
