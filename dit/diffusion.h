// Noise schedules and training objectives for latent diffusion.
//
// Two families share this file:
//  - discrete-time diffusion (DDPM, Ho et al. 2020; DiT's setup): T = 1000 steps, betas in
//    float64, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, the model predicts eps or v;
//  - rectified flow (Liu et al. 2022; SD3, RAE): x_s = (1 - s) x0 + s eps, s in [0, 1], the model
//    predicts the velocity v = eps - x0.
// The schedule arithmetic is host-side double (a few thousand numbers); the per-sample training
// pairs are Tensor ops (kernels/ops.h) so they run on the tensors' device.
#pragma once
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace psvae::dit {

enum class BetaSchedule {
  linear,         // linspace(1e-4, 0.02, T): DDPM and DiT's default
  scaled_linear,  // linspace(sqrt(0.00085), sqrt(0.012), T)^2: Stable Diffusion
  cosine,         // Nichol & Dhariwal 2021, abar(t) = cos((t/T + 0.008)/1.008 * pi/2)^2
};

enum class Objective {
  eps,   // model predicts the noise eps
  v,     // model predicts v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022)
  flow,  // rectified flow: model predicts v = eps - x0 at time s
};

std::vector<double> make_betas(BetaSchedule schedule, int num_steps = 1000);
std::vector<double> cumprod_alphas(const std::vector<double>& betas);  // abar_t = prod (1 - beta)

// Upstream's space_timesteps (guided-diffusion respace.py) with a single section: K original
// steps spaced by (T-1)/(K-1) from 0, each rounded half-to-even as Python's round().
// 1000 -> 10 gives 0, 111, 222, ..., 999 (stride exactly 111).
std::vector<int64_t> space_timesteps(int num_steps, int count);

// A discrete diffusion, possibly respaced. Step i (0 = least noisy) is original step
// timesteps[i]; the model always sees timesteps[i]. Respacing keeps abar at the kept steps and
// recomputes beta_i = 1 - abar_i / abar_{i-1} (abar_{-1} = 1), as upstream.
struct Schedule {
  std::vector<int64_t> timesteps;
  std::vector<double> betas;
  std::vector<double> alphas_cumprod;
  int num_train_steps = 0;  // T of the unrespaced schedule

  // count <= 0 or count == T keeps every step.
  static Schedule make(BetaSchedule schedule, int num_train_steps = 1000, int count = 0);
  int size() const { return static_cast<int>(timesteps.size()); }
  double abar(int i) const { return alphas_cumprod[static_cast<size_t>(i)]; }
  double abar_prev(int i) const { return i == 0 ? 1.0 : abar(i - 1); }
};

// ---- rectified-flow time shift ------------------------------------------------------------------
// Larger latents keep more signal at a given noise level, so the sampler should spend more time
// at high noise (SD3, RAE): s' = k s / (1 + (k - 1) s), k = sqrt(C*H*W / 4096) by default
// (k = 1 at 64x64x1 = 4096 dims, k = 2 at 16x16x64). Monotone, fixes 0 and 1.
double shift_factor(const Shape& sample_shape, double base_dims = 4096.0);  // shape (C, H, W)
double shift_time(double s, double k);

// ---- training pairs
// ------------------------------------------------------------------------------
struct TrainPair {
  Tensor x_t;     // the noised input, same shape as x0
  Tensor target;  // what the model should output
};

// Diffusion objectives (eps or v): x0 and noise (N, ...), t[n] = original step index of sample n.
TrainPair diffusion_pair(Objective objective, const std::vector<double>& alphas_cumprod,
                         const Tensor& x0, const Tensor& noise, const std::vector<int64_t>& t);
// Rectified flow: s[n] in [0, 1] (already shifted if the caller wants the shift).
TrainPair flow_pair(const Tensor& x0, const Tensor& noise, const std::vector<double>& s);

// (N) f32 tensor on `device` holding the values: the t_model a denoiser receives.
Tensor time_tensor(const std::vector<double>& values, Device device);

// A (N, 1, ..., 1) tensor of per-sample coefficients, broadcastable against `like` (N, ...),
// with like's dtype and device.
Tensor per_sample(const std::vector<double>& coef, const Tensor& like);

}  // namespace psvae::dit
