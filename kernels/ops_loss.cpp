// Typed wrappers of the loss family: every loss returns a rank-0 tensor of the inputs' dtype, and
// every backward takes the rank-0 gradient of that scalar.
#include <fmt/format.h>

#include "kernels/ops.h"
#include "kernels/ops_common.h"

namespace psvae::ops {

using detail::call_of;
using detail::check_defined;

namespace {

Tensor scalar_like(const Tensor& x) { return Tensor::empty(Shape{}, x.dtype(), x.device()); }

// Two same-shape, same-dtype, non-empty floating inputs (a mean over 0 elements is 0/0).
void check_pair(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, a, b);
  check(is_floating(a.dtype()),
        fmt::format("{}: needs floating inputs, got {}", op, dtype_name(a.dtype())));
  check(a.shape() == b.shape(), fmt::format("{}: inputs must have the same shape, got {} and {}",
                                            op, a.shape().str(), b.shape().str()));
  check(a.dtype() == b.dtype(), fmt::format("{}: inputs must have the same dtype, got {} and {}",
                                            op, dtype_name(a.dtype()), dtype_name(b.dtype())));
  check(a.numel() > 0, fmt::format("{}: empty inputs of shape {}", op, a.shape().str()));
}

// The gradient of a scalar loss: one element of the loss dtype.
void check_gy(const char* op, const Tensor& gy, const Tensor& x) {
  check(gy.defined() && gy.numel() == 1,
        fmt::format("{}: gy must be a one-element gradient of the scalar loss, got {}", op,
                    gy.defined() ? gy.shape().str() : "undefined"));
  check(gy.dtype() == x.dtype(), fmt::format("{}: gy is {} but the inputs are {}", op,
                                             dtype_name(gy.dtype()), dtype_name(x.dtype())));
}

// The elementwise pair losses (mse, l1): checked (a, b) -> scalar, and (gy, a, b) -> ga.
Tensor run_pair(Op op, const Tensor& a, const Tensor& b) {
  check_pair(kernels::op_name(op), a, b);
  Tensor y = scalar_like(a);
  kernels::run(op, call_of({a, b}, {y}));
  return y;
}

Tensor run_pair_bwd(Op op, const Tensor& gy, const Tensor& a, const Tensor& b) {
  const char* name = kernels::op_name(op);
  check_pair(name, a, b);
  check_gy(name, gy, a);
  Tensor ga = Tensor::empty(a.shape(), a.dtype(), a.device());
  kernels::run(op, call_of({gy, a, b}, {ga}));
  return ga;
}

void check_normaliser(const char* op, double normaliser) {
  check(normaliser > 0, fmt::format("{}: normaliser must be > 0, got {}", op, normaliser));
}

void check_ce(const char* op, const Tensor& logits, const Tensor& target) {
  check_defined(op, logits, target);
  check(logits.rank() == 2,
        fmt::format("{}: logits must be (N, C), got {}", op, logits.shape().str()));
  check(is_floating(logits.dtype()),
        fmt::format("{}: logits must be floating, got {}", op, dtype_name(logits.dtype())));
  check(target.dtype() == DType::I64 || target.dtype() == DType::I32,
        fmt::format("{}: target must be i64 or i32 class ids, got {}", op,
                    dtype_name(target.dtype())));
  check(target.rank() == 1 && target.size(0) == logits.size(0),
        fmt::format("{}: target must be (N) = ({}) for logits {}, got {}", op, logits.size(0),
                    logits.shape().str(), target.shape().str()));
  check(logits.size(0) > 0 && logits.size(1) > 0,
        fmt::format("{}: empty logits {}", op, logits.shape().str()));
}

}  // namespace

Tensor mse_loss(const Tensor& a, const Tensor& b) { return run_pair(Op::mse_loss, a, b); }

Tensor mse_loss_bwd(const Tensor& gy, const Tensor& a, const Tensor& b) {
  return run_pair_bwd(Op::mse_loss_bwd, gy, a, b);
}

Tensor l1_loss(const Tensor& a, const Tensor& b) { return run_pair(Op::l1_loss, a, b); }

Tensor l1_loss_bwd(const Tensor& gy, const Tensor& a, const Tensor& b) {
  return run_pair_bwd(Op::l1_loss_bwd, gy, a, b);
}

Tensor kl_gauss(const Tensor& mu, const Tensor& logvar, double normaliser) {
  check_pair("kl_gauss", mu, logvar);
  check_normaliser("kl_gauss", normaliser);
  Tensor y = scalar_like(mu);
  kernels::OpCall c;
  c.in = {mu, logvar};
  c.out = {y};
  c.reals[0] = normaliser;
  kernels::run(Op::kl_gauss, c);
  return y;
}

std::pair<Tensor, Tensor> kl_gauss_bwd(const Tensor& gy, const Tensor& mu, const Tensor& logvar,
                                       double normaliser) {
  check_pair("kl_gauss_bwd", mu, logvar);
  check_gy("kl_gauss_bwd", gy, mu);
  check_normaliser("kl_gauss_bwd", normaliser);
  Tensor gmu = Tensor::empty(mu.shape(), mu.dtype(), mu.device());
  Tensor glv = Tensor::empty(mu.shape(), mu.dtype(), mu.device());
  kernels::OpCall c;
  c.in = {gy, mu, logvar};
  c.out = {gmu, glv};
  c.reals[0] = normaliser;
  kernels::run(Op::kl_gauss_bwd, c);
  return {gmu, glv};
}

// Target values are checked by the kernel (they may live on the GPU): an id outside [0, C) throws
// naming the row, the id and C.
CrossEntropyOut cross_entropy(const Tensor& logits, const Tensor& target) {
  check_ce("cross_entropy", logits, target);
  CrossEntropyOut r;
  r.loss = scalar_like(logits);
  r.lse = Tensor::empty(Shape{logits.size(0)}, logits.dtype(), logits.device());
  kernels::OpCall c;
  c.in = {logits, target};
  c.out = {r.loss, r.lse};
  kernels::run(Op::cross_entropy, c);
  return r;
}

Tensor cross_entropy_bwd(const Tensor& gy, const Tensor& logits, const Tensor& target,
                         const Tensor& lse) {
  check_ce("cross_entropy_bwd", logits, target);
  check_gy("cross_entropy_bwd", gy, logits);
  check(lse.defined() && lse.shape() == Shape{logits.size(0)} && lse.dtype() == logits.dtype(),
        fmt::format("cross_entropy_bwd: lse must be ({}) {} as saved by the forward, got {}",
                    logits.size(0), dtype_name(logits.dtype()), lse.str()));
  Tensor gx = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  kernels::OpCall c;
  c.in = {gy, logits, target, lse};
  c.out = {gx};
  kernels::run(Op::cross_entropy_bwd, c);
  return gx;
}

namespace {

// f0, f1 (N,C,H,W) floating, same shape and dtype, N and H*W > 0; w (C) of their dtype.
void check_lpips(const char* op, const Tensor& f0, const Tensor& f1, const Tensor& w,
                 double norm_eps, double sqrt_floor) {
  check_defined(op, f0, f1, w);
  check(f0.rank() == 4, fmt::format("{}: f0 must be (N, C, H, W), got {}", op, f0.shape().str()));
  check_pair(op, f0, f1);
  check(w.dtype() == f0.dtype() && w.shape() == Shape{f0.size(1)},
        fmt::format("{}: w must be ({}) {} for features {}, got {}", op, f0.size(1),
                    dtype_name(f0.dtype()), f0.str(), w.str()));
  check(norm_eps >= 0 && sqrt_floor >= 0 && norm_eps + sqrt_floor > 0,
        fmt::format("{}: norm_eps {} and sqrt_floor {} must be >= 0, not both 0", op, norm_eps,
                    sqrt_floor));
}

kernels::OpCall lpips_call(std::vector<Tensor> in, std::vector<Tensor> out, double norm_eps,
                           double sqrt_floor) {
  kernels::OpCall c = call_of(std::move(in), std::move(out));
  c.reals[0] = norm_eps;
  c.reals[1] = sqrt_floor;
  return c;
}

}  // namespace

Tensor lpips_tap(const Tensor& f0, const Tensor& f1, const Tensor& w, double norm_eps,
                 double sqrt_floor) {
  check_lpips("lpips_tap", f0, f1, w, norm_eps, sqrt_floor);
  Tensor d = Tensor::empty(Shape{f0.size(0)}, f0.dtype(), f0.device());
  kernels::run(Op::lpips_tap, lpips_call({f0, f1, w}, {d}, norm_eps, sqrt_floor));
  return d;
}

std::pair<Tensor, Tensor> lpips_tap_bwd(const Tensor& gd, const Tensor& f0, const Tensor& f1,
                                        const Tensor& w, double norm_eps, double sqrt_floor) {
  check_lpips("lpips_tap_bwd", f0, f1, w, norm_eps, sqrt_floor);
  check(gd.defined() && gd.shape() == Shape{f0.size(0)} && gd.dtype() == f0.dtype(),
        fmt::format("lpips_tap_bwd: gd must be ({}) {}, got {}", f0.size(0), dtype_name(f0.dtype()),
                    gd.defined() ? gd.str() : "undefined"));
  Tensor g0 = Tensor::empty(f0.shape(), f0.dtype(), f0.device());
  Tensor g1 = Tensor::empty(f0.shape(), f0.dtype(), f0.device());
  kernels::run(Op::lpips_tap_bwd, lpips_call({gd, f0, f1, w}, {g0, g1}, norm_eps, sqrt_floor));
  return {g0, g1};
}

}  // namespace psvae::ops
