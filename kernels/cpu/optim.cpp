// CPU kernels: optimiser updates, in place, one independent element at a time (so any thread
// split gives the same bits).
//
// Both follow PyTorch's single-tensor code paths operation by operation, so a run started here
// tracks one started in PyTorch as closely as the arithmetic allows: the step's scalars are
// computed in double (as Python floats are) and rounded to T once, and the per-element arithmetic
// is done in T in PyTorch's order. Bit identity with PyTorch's vectorised kernels is not promised
// (its lerp uses FMA there); the difference is one rounding per step.
#include <cmath>

#include "kernels/cpu/cpu_common.h"

namespace psvae::kernels::cpu {

namespace {

// torch.optim.AdamW, foreach=False (torch/optim/adamw.py, _single_tensor_adamw):
//   param.mul_(1 - lr*wd)
//   exp_avg.lerp_(grad, 1 - beta1)                    m = b1 m + (1-b1) g, as a lerp
//   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
//   denom = (exp_avg_sq.sqrt() / sqrt(1 - beta2^step)).add_(eps)
//   param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1^step))
void adamw_step_cpu(const OpCall& c) {
  const Tensor& grad = c.in[0];
  const Tensor &param = c.out[0], &m = c.out[1], &v = c.out[2];
  const double lr = c.reals[0], beta1 = c.reals[1], beta2 = c.reals[2], eps = c.reals[3],
               wd = c.reals[4];
  const double step = static_cast<double>(c.ints[0]);
  dispatch_float(param.dtype(), "adamw_step", [&](auto tag) {
    using T = decltype(tag);
    const T decay = static_cast<T>(1.0 - lr * wd);
    const T w1 = static_cast<T>(1.0 - beta1);
    const T b2 = static_cast<T>(beta2), w2 = static_cast<T>(1.0 - beta2);
    const T bc2_sqrt = static_cast<T>(std::sqrt(1.0 - std::pow(beta2, step)));
    const T neg_step_size = static_cast<T>(-lr / (1.0 - std::pow(beta1, step)));
    const T teps = static_cast<T>(eps);
    // ATen's lerp switches form at weight 0.5 so that the result is exact at both ends.
    const bool small_w1 = std::fabs(w1) < T(0.5);
    const T* g = grad.data<T>();
    T* p = param.data<T>();
    T* pm = m.data<T>();
    T* pv = v.data<T>();
    const int64_t n = param.numel();
#pragma omp parallel for if (n > kParallelGrain)
    for (int64_t i = 0; i < n; ++i) {
      const T gi = g[i];
      const T mi = small_w1 ? pm[i] + w1 * (gi - pm[i]) : gi - (gi - pm[i]) * (T(1) - w1);
      const T vi = pv[i] * b2 + w2 * gi * gi;
      const T denom = std::sqrt(vi) / bc2_sqrt + teps;
      p[i] = p[i] * decay + neg_step_size * mi / denom;
      pm[i] = mi;
      pv[i] = vi;
    }
  });
}

// ema.mul_(decay).add_(param, alpha=1 - decay), as DiT's update_ema.
void ema_update_cpu(const OpCall& c) {
  const Tensor& param = c.in[0];
  const Tensor& ema = c.out[0];
  const double decay = c.reals[0];
  dispatch_float(param.dtype(), "ema_update", [&](auto tag) {
    using T = decltype(tag);
    const T d = static_cast<T>(decay), w = static_cast<T>(1.0 - decay);
    const T* p = param.data<T>();
    T* e = ema.data<T>();
    const int64_t n = param.numel();
#pragma omp parallel for if (n > kParallelGrain)
    for (int64_t i = 0; i < n; ++i) e[i] = e[i] * d + w * p[i];
  });
}

}  // namespace

void register_optim(OpTable& t) {
  t[Op::adamw_step].cpu = &adamw_step_cpu;
  t[Op::ema_update].cpu = &ema_update_cpu;
}

}  // namespace psvae::kernels::cpu
