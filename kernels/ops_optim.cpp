// Typed wrappers of the optimiser family. Both update their tensors in place, so the checks here
// also refuse aliasing between the updated tensors: the kernels read and write element i of each
// in one pass, and a shared buffer would make the update order-dependent.
#include <fmt/format.h>

#include "kernels/ops.h"

namespace psvae::ops {

namespace {

void check_like(const char* op, const char* what, const Tensor& t, const Tensor& param) {
  check(t.defined(), fmt::format("{}: {} is undefined", op, what));
  check(t.shape() == param.shape() && t.dtype() == param.dtype(),
        fmt::format("{}: {} is {} {} but param is {} {}", op, what, dtype_name(t.dtype()),
                    t.shape().str(), dtype_name(param.dtype()), param.shape().str()));
}

}  // namespace

void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p) {
  check(param.defined() && is_floating(param.dtype()),
        "adamw_step: param must be a defined floating tensor");
  check_like("adamw_step", "grad", grad, param);
  check_like("adamw_step", "m (exp_avg)", m, param);
  check_like("adamw_step", "v (exp_avg_sq)", v, param);
  check(!param.overlaps(m) && !param.overlaps(v) && !m.overlaps(v) && !grad.overlaps(param) &&
            !grad.overlaps(m) && !grad.overlaps(v),
        "adamw_step: param, grad, m and v must not share memory");
  check(p.step >= 1, fmt::format("adamw_step: step is 1-based, got {}", p.step));
  check(p.beta1 >= 0 && p.beta1 < 1 && p.beta2 >= 0 && p.beta2 < 1,
        fmt::format("adamw_step: betas must lie in [0, 1), got ({}, {})", p.beta1, p.beta2));
  check(p.eps > 0, fmt::format("adamw_step: eps must be > 0, got {}", p.eps));
  kernels::OpCall c;
  c.in = {grad};
  c.out = {param, m, v};
  c.reals[0] = p.lr;
  c.reals[1] = p.beta1;
  c.reals[2] = p.beta2;
  c.reals[3] = p.eps;
  c.reals[4] = p.weight_decay;
  c.ints[0] = p.step;
  kernels::run(Op::adamw_step, c);
}

void ema_update(Tensor& ema, const Tensor& param, double decay) {
  check(ema.defined() && is_floating(ema.dtype()),
        "ema_update: ema must be a defined floating tensor");
  check_like("ema_update", "param", param, ema);
  check(!ema.overlaps(param), "ema_update: ema and param must not share memory");
  check(decay >= 0 && decay <= 1,
        fmt::format("ema_update: decay must lie in [0, 1], got {}", decay));
  kernels::OpCall c;
  c.in = {param};
  c.out = {ema};
  c.reals[0] = decay;
  kernels::run(Op::ema_update, c);
}

}  // namespace psvae::ops
