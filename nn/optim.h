// Optimisation: AdamW, gradient clipping, learning-rate schedules and an EMA of the weights.
// All updates run through table ops (ops::adamw_step, ops::ema_update, ...) so they run on the
// parameters' device; only scalars come back to the host.
#pragma once
#include <string>
#include <vector>

#include "nn/module.h"

namespace psvae::nn {

struct AdamWOptions {
  double lr = 1e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

// Decoupled weight decay (Loshchilov & Hutter 2019), PyTorch's torch.optim.AdamW:
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * (m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + wd * p)
// m and v live on the parameter's device in its dtype (f32 for our f32 master weights), created
// at construction, so a checkpoint can be loaded before the first step; build the optimiser after
// Module::to(device). One step counter t for all parameters (1-based at the first step), as every
// parameter of our models gets a gradient every step. On a GPU (f32 parameters and gradients) the
// whole step is one multi-tensor launch, bit-identical to ops::adamw_step per tensor.
class AdamW {
 public:
  AdamW(NamedVars params, const AdamWOptions& opt);
  // One update of every parameter that has a gradient (others are skipped, state untouched),
  // with each gradient multiplied by grad_scale first (rounded to f32, as ops::mul_scalar): pass
  // clip_coefficient(grad_norm(...), max_norm) to clip without rewriting the gradients. On a GPU
  // the factor is applied inside the multi-tensor kernel (no extra pass over the gradients), with
  // the same bits as scaling them first.
  void step(double grad_scale = 1.0);
  void zero_grad();
  void set_lr(double lr) { opt_.lr = lr; }
  double lr() const { return opt_.lr; }
  int64_t steps_taken() const { return step_; }
  const AdamWOptions& options() const { return opt_; }

  // "optim.<param>.m", "optim.<param>.v" and "optim.step" (i64 scalar).
  NamedTensors state_dict() const;
  // Strict: every key must be present with the right shape; values copied into the state.
  void load_state_dict(const NamedTensors& sd);

 private:
  struct Slot {
    std::string name;
    Var param;
    Tensor m, v;
  };
  std::vector<Slot> slots_;
  AdamWOptions opt_;
  int64_t step_ = 0;
};

// Scales all gradients so their global L2 norm is at most max_norm (coefficient
// max_norm / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_) and returns the norm before
// clipping. Deterministic either way: on the CPU each gradient's sum of squares is computed in f64
// with ops and the sums are combined on the host in parameter order; on a GPU one multi-tensor
// pass (kernels/cuda/optim_fused.h) sums fixed chunks in f64 and adds the partials in order.
double clip_grad_norm(const std::vector<Var>& params, double max_norm);
double clip_grad_norm(const NamedVars& params, double max_norm);
// The same norm without touching the gradients (the training loop folds the clip into
// AdamW::step instead), and the coefficient clip_grad_norm applies: min(1, max_norm / (norm +
// 1e-6)); 1 when max_norm is infinite or the norm is NaN, 0 when only the norm is infinite.
double grad_norm(const std::vector<Var>& params);
double clip_coefficient(double norm, double max_norm);

// ---- learning-rate schedules (step is 0-based: the lr for the update about to happen) --------
inline double constant_lr(int64_t /*step*/, double base_lr) { return base_lr; }
// Linear warmup then cosine decay:
//   step < warmup:          lr = base * step / warmup                      (0 at step 0)
//   warmup <= step < total: p = (step - warmup) / (total - warmup)
//                           lr = min + (base - min) * (1 + cos(pi p)) / 2  (base at p = 0)
//   step >= total:          lr = min
double warmup_cosine(int64_t step, double base_lr, int64_t warmup_steps, int64_t total_steps,
                     double min_lr = 0.0);

// Exponential moving average of a module's parameters (DiT keeps one with decay 0.9999):
//   shadow = decay * shadow + (1 - decay) * param
// The shadows are deep copies taken at construction, on the parameters' device and dtype.
class EMA {
 public:
  explicit EMA(const Module& model);
  void update(double decay);
  // Copies the shadows into a module with the same parameter names (e.g. the model for
  // evaluation, or a clone of it).
  void copy_to(Module& target) const;
  NamedTensors state_dict() const;  // "ema.<param>"
  void load_state_dict(const NamedTensors& sd);
  const NamedTensors& shadows() const { return shadows_; }

 private:
  NamedVars params_;
  NamedTensors shadows_;
};

}  // namespace psvae::nn
