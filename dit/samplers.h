// Samplers for the objectives of dit/diffusion.h: DDPM ancestral, DDIM (with eta, and its
// inversion), DPM-Solver++(2M) for the discrete diffusion; Euler and Heun for rectified flow.
// Classifier-free guidance is a wrapper around two denoisers, so every sampler gets it for free.
//
// All samplers take the batch x (N, ...) of starting noise and return the batch of samples;
// per-step noise comes from the caller's Generator (Philox), so a fixed seed reproduces a batch
// exactly. Every update is a Tensor op on x's device; the per-step coefficients are host doubles.
#pragma once
#include <functional>
#include <vector>

#include "dit/diffusion.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

namespace psvae::dit {

// x (N, ...) and t_model (N) f32 -> model output in the objective's parametrisation (eps, v or
// flow velocity), same shape as x. t_model holds original step indices (0..T-1) for the diffusion
// objectives and the flow time s in [0, 1] for rectified flow.
using Denoiser = std::function<Tensor(const Tensor& x, const Tensor& t_model)>;

// Classifier-free guidance (Ho & Salimans 2022): out = u + w (c - u). Guidance is applied only
// while the normalised time t_model / time_scale lies in [t_lo, t_hi] (Kynkaanniemi et al. 2024:
// guiding only the middle of the trajectory helps FID); outside it the conditional output is
// returned and the unconditional model is not run. time_scale is T (1000) for the diffusion
// objectives and 1 for flow. w == 1 returns the conditional output unchanged.
struct GuidanceConfig {
  double scale = 1.0;  // w
  double t_lo = 0.0, t_hi = 1.0;
  double time_scale = 1000.0;
};
Denoiser classifier_free_guidance(Denoiser cond, Denoiser uncond, const GuidanceConfig& cfg);

// Standard normal tensor of `shape` from gen: the starting noise x_T (or x_1 for flow).
Tensor initial_noise(const Shape& shape, DType dtype, Device device, Generator& gen);

// Optional hook every sampler calls after each step with the new x and the number of steps still
// to run (0 after the last step); its return value replaces x. dit/sampling.h builds the
// inpainting blend on it. An empty hook costs nothing.
using StepHook = std::function<Tensor(const Tensor& x, int steps_left)>;

// ---- discrete diffusion (objective eps or v)
// ------------------------------------------------------ `schedule` is the respaced schedule
// (Schedule::make(..., count)); one model call per step.

// Ancestral sampling with the posterior q(x_{i-1} | x_i, x0_hat): mean coef1 x0_hat + coef2 x_i,
// variance beta_i (1 - abar_{i-1}) / (1 - abar_i); no noise added at the last step.
Tensor ddpm_sample(const Denoiser& model, Objective objective, const Schedule& schedule, Tensor x,
                   Generator& gen, const StepHook& hook = {});

// DDIM (Song et al. 2021). eta = 0 is the deterministic probability-flow-like sampler, eta = 1
// matches DDPM's variance. gen is used only when eta > 0.
Tensor ddim_sample(const Denoiser& model, Objective objective, const Schedule& schedule, Tensor x,
                   double eta, Generator& gen, const StepHook& hook = {});

// Runs the eta = 0 DDIM update backwards: data x0 -> the x at the noisiest step, such that
// ddim_sample(eta = 0) of the result returns approximately x0 (each step uses the model at the
// starting point of the step instead of its end; the error shrinks with the step count).
Tensor ddim_invert(const Denoiser& model, Objective objective, const Schedule& schedule, Tensor x0);

// DPM-Solver++(2M) (Lu et al. 2022): multistep second order in log-SNR on the data prediction;
// the first step is first order, and the last step (to abar = 1) returns the data prediction.
Tensor dpmpp_2m_sample(const Denoiser& model, Objective objective, const Schedule& schedule,
                       Tensor x, const StepHook& hook = {});

// ---- rectified flow (objective flow)
// --------------------------------------------------------------- Integrates dx/ds = v(x, s) from s
// = 1 (noise) to s = 0 over the grid s_i = shift_time(1 - i/steps, shift), i = 0..steps (shift = 1:
// uniform).
std::vector<double> flow_times(int steps, double shift);
Tensor euler_sample(const Denoiser& model, int steps, double shift, Tensor x);
// Heun's method (trapezoid on the two slopes): two model calls per step, except the last step to
// s = 0, which is an Euler step (as in EDM) because v = (x - E[x0|x]) / s is 0/0 at s = 0.
Tensor heun_sample(const Denoiser& model, int steps, double shift, Tensor x);
// The same integrators over an explicit decreasing time grid (times[0] = the start, times.back() =
// 0), e.g. a tail of flow_times() for SDEdit; the hook gets times.size() - 1 - (steps done).
Tensor euler_sample(const Denoiser& model, const std::vector<double>& times, Tensor x,
                    const StepHook& hook = {});
Tensor heun_sample(const Denoiser& model, const std::vector<double>& times, Tensor x,
                   const StepHook& hook = {});

}  // namespace psvae::dit
