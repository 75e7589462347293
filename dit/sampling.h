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
};

struct SampleOptions {
  SamplerKind sampler = SamplerKind::ddim;
  int steps = 50;
  double eta = 0.0;  // ddim only
  // SDEdit strength in (0, 1]: the fraction of the trajectory that is run. 1 starts from pure
  // noise; 0.6 starts at the step whose noise level is 60% along the (respaced) step grid, from
  // x = the caller's x0 noised to that level (noise drawn from gen).
  double strength = 1.0;
  // Called after every step with the new x and the normalised time it now sits at (1 = pure noise,
  // 0 = data; for discrete diffusion the respaced index / count); its return value replaces x.
  // The final call has time 0. Inpainting uses it to paste the re-noised known region.
  std::function<Tensor(const Tensor& x, double time)> after_step;
};

// Starting from x: the noise x_T when strength == 1, else the clean x0 that is first noised to the
// strength's level. Returns the samples. gen draws every random number (noise of the start, of
// ancestral steps).
Tensor sample(const Denoiser& model, const DiffusionSetup& setup, const SampleOptions& opt,
              const Tensor& x, Generator& gen);

// x0 noised to normalised time `time` of the sampler grid of `opt` (the forward process:
// sqrt(abar) x0 + sqrt(1 - abar) eps, or (1 - s) x0 + s eps for flow), with eps from gen. Used by
// SDEdit and by the inpainting blend.
Tensor noise_to(const DiffusionSetup& setup, const SampleOptions& opt, const Tensor& x0,
                double time, Generator& gen);

// DDIM inversion (eta 0) of x0 to the noisiest step of the grid (eps/v) or Euler inversion from
// s = 0 to 1 (flow): the x_T that regenerates x0 with the same model and sampler options.
Tensor invert(const Denoiser& model, const DiffusionSetup& setup, const SampleOptions& opt,
              const Tensor& x0);

// Inpainting: mask (N, 1, H, W) or (N, C, H, W), 1 = keep the known x0, 0 = generate. After every
// step the known region is replaced by x0 noised to the step's level (the blend of RePaint /
// SD inpainting without retraining); the last step pastes x0 itself.
Tensor inpaint(const Denoiser& model, const DiffusionSetup& setup, const SampleOptions& opt,
               const Tensor& x_T, const Tensor& x0, const Tensor& mask, Generator& gen);

}  // namespace psvae::dit
