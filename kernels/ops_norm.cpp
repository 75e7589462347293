// Typed wrappers of the norm family: shape checks and output allocation for layernorm, modulate,
// the fused adaLN pair (layernorm_modulate, gated_residual), groupnorm and their backward entries.
#include <fmt/format.h>

#include "kernels/ops.h"
#include "kernels/ops_common.h"

namespace psvae::ops {

using detail::call_of;

namespace {

// The kernels take the affine pair whole or not at all; a lone weight gets a zero bias and a lone
// bias a unit weight (same result, one code path per kernel).
void complete_affine(const char* op, const Tensor& x, int64_t n, Tensor& w, Tensor& b) {
  if (!w.defined() && !b.defined()) return;
  if (!w.defined()) w = Tensor::full(Shape{n}, 1.0, x.dtype(), x.device());
  if (!b.defined()) b = Tensor::zeros(Shape{n}, x.dtype(), x.device());
  for (const Tensor* t : {&w, &b})
    check(t->rank() == 1 && t->size(0) == n && t->dtype() == x.dtype(),
          fmt::format("{}: affine parameter {} ({}) does not match x {} ({}), expected ({})", op,
                      t->shape().str(), dtype_name(t->dtype()), x.shape().str(),
                      dtype_name(x.dtype()), n));
}

void check_same(const char* op, const char* what, const Tensor& t, const Shape& shape, DType dt) {
  check(t.defined() && t.shape() == shape && t.dtype() == dt,
        fmt::format("{}: {} must be {} ({}), got {}", op, what, shape.str(), dtype_name(dt),
                    t.defined() ? t.shape().str() + " (" + dtype_name(t.dtype()) + ")"
                                : std::string("undefined")));
}

Shape rows_of(const Shape& s) {  // x.shape without its last dim
  Shape r;
  for (int d = 0; d + 1 < s.rank(); ++d) r.push_back(s[d]);
  return r;
}

// layernorm and groupnorm once x is checked: (x[, w, b]) -> (y, mean, rstd), the statistics of
// shape `stats`, the affine pair completed to n channels. ints[0] is groupnorm's group count
// (layernorm passes 0, the default).
NormOut run_norm(Op op, const Tensor& x, const Tensor& w, const Tensor& b, int64_t n,
                 const Shape& stats, double eps, int64_t groups) {
  Tensor wa = w, ba = b;
  complete_affine(kernels::op_name(op), x, n, wa, ba);
  kernels::OpCall c = call_of({x}, {Tensor::empty(x.shape(), x.dtype(), x.device()),
                                    Tensor::empty(stats, x.dtype(), x.device()),
                                    Tensor::empty(stats, x.dtype(), x.device())});
  if (wa.defined()) c.in.insert(c.in.end(), {wa, ba});
  c.ints[0] = groups;
  c.reals[0] = eps;
  kernels::run(op, c);
  return {c.out[0], c.out[1], c.out[2]};
}

// Their backwards once gy, x, mean and rstd are checked: (gy, x, mean, rstd[, w]) -> gx[, gw, gb],
// w checked to be (n).
NormGrads run_norm_bwd(Op op, const Tensor& gy, const Tensor& x, const Tensor& mean,
                       const Tensor& rstd, const Tensor& w, int64_t n, int64_t groups) {
  kernels::OpCall c =
      call_of({gy, x, mean, rstd}, {Tensor::empty(x.shape(), x.dtype(), x.device())});
  if (w.defined()) {
    check_same(kernels::op_name(op), "w", w, Shape{n}, x.dtype());
    c.in.push_back(w);
    c.out.push_back(Tensor::empty(w.shape(), x.dtype(), x.device()));
    c.out.push_back(Tensor::empty(w.shape(), x.dtype(), x.device()));
  }
  c.ints[0] = groups;
  kernels::run(op, c);
  NormGrads g;
  g.gx = c.out[0];
  if (w.defined()) {
    g.gw = c.out[1];
    g.gb = c.out[2];
  }
  return g;
}

}  // namespace

// ---- layernorm --------------------------------------------------------------------------------
NormOut layernorm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  check(x.defined() && x.rank() >= 1 && is_floating(x.dtype()),
        fmt::format("layernorm: x must be a floating tensor of rank >= 1, got {}",
                    x.defined() ? x.str() : "undefined"));
  return run_norm(Op::layernorm, x, w, b, x.size(-1), rows_of(x.shape()), eps, 0);
}

NormGrads layernorm_bwd(const Tensor& gy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                        const Tensor& w) {
  check(x.defined() && x.rank() >= 1, "layernorm_bwd: x must have rank >= 1");
  check_same("layernorm_bwd", "gy", gy, x.shape(), x.dtype());
  Shape rows = rows_of(x.shape());
  check_same("layernorm_bwd", "mean", mean, rows, x.dtype());
  check_same("layernorm_bwd", "rstd", rstd, rows, x.dtype());
  return run_norm_bwd(Op::layernorm_bwd, gy, x, mean, rstd, w, x.size(-1), 0);
}

// ---- modulate ---------------------------------------------------------------------------------
Tensor modulate(const Tensor& x, const Tensor& shift, const Tensor& scale) {
  check(x.defined() && x.rank() == 3 && is_floating(x.dtype()),
        fmt::format("modulate: x must be a floating (N, T, D) tensor, got {}",
                    x.defined() ? x.str() : "undefined"));
  Shape nd{x.size(0), x.size(2)};
  check_same("modulate", "shift", shift, nd, x.dtype());
  check_same("modulate", "scale", scale, nd, x.dtype());
  kernels::OpCall c;
  c.in = {x, shift, scale};
  c.out = {Tensor::empty(x.shape(), x.dtype(), x.device())};
  kernels::run(Op::modulate, c);
  return c.out[0];
}

ModulateGrads modulate_bwd(const Tensor& gy, const Tensor& x, const Tensor& scale) {
  check(x.defined() && x.rank() == 3, "modulate_bwd: x must be (N, T, D)");
  Shape nd{x.size(0), x.size(2)};
  check_same("modulate_bwd", "gy", gy, x.shape(), x.dtype());
  check_same("modulate_bwd", "scale", scale, nd, x.dtype());
  kernels::OpCall c;
  c.in = {gy, x, scale};
  c.out = {Tensor::empty(x.shape(), x.dtype(), x.device()),
           Tensor::empty(nd, x.dtype(), x.device()), Tensor::empty(nd, x.dtype(), x.device())};
  kernels::run(Op::modulate_bwd, c);
  return {c.out[0], c.out[1], c.out[2]};
}

// ---- the fused adaLN path -----------------------------------------------------------------------
namespace {
// x must be a floating (N, T, D) tensor; returns (N, D), the shape of its per-sample operands.
Shape check_ntd(const char* op, const Tensor& x, const char* name = "x") {
  check(x.defined() && x.rank() == 3 && is_floating(x.dtype()),
        fmt::format("{}: {} must be a floating (N, T, D) tensor, got {}", op, name,
                    x.defined() ? x.str() : "undefined"));
  return Shape{x.size(0), x.size(2)};
}

// t of `shape` and of a dtype kernels::gemm_side_dtype_ok beside `main`.
void check_side(const char* op, const char* what, const Tensor& t, const Shape& shape, DType main) {
  check(t.defined() && t.shape() == shape && kernels::gemm_side_dtype_ok(t.dtype(), main),
        fmt::format("{}: {} must be {} ({}{}), got {}", op, what, shape.str(), dtype_name(main),
                    main == DType::F32 ? " or bf16" : "",
                    t.defined() ? t.shape().str() + " (" + dtype_name(t.dtype()) + ")"
                                : std::string("undefined")));
}
}  // namespace

NormOut layernorm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, double eps,
                           std::optional<DType> y_dtype) {
  const Shape nd = check_ntd("layernorm_modulate", x);
  check_same("layernorm_modulate", "shift", shift, nd, x.dtype());
  check_same("layernorm_modulate", "scale", scale, nd, x.dtype());
  const DType ydt = y_dtype.value_or(x.dtype());
  check(kernels::gemm_side_dtype_ok(ydt, x.dtype()),
        fmt::format("layernorm_modulate: y must be of x's dtype ({}){}, got {}",
                    dtype_name(x.dtype()), x.dtype() == DType::F32 ? " or bf16" : "",
                    dtype_name(ydt)));
  const Shape rows{x.size(0), x.size(1)};
  kernels::OpCall c = call_of({x, shift, scale}, {Tensor::empty(x.shape(), ydt, x.device()),
                                                  Tensor::empty(rows, x.dtype(), x.device()),
                                                  Tensor::empty(rows, x.dtype(), x.device())});
  c.reals[0] = eps;
  kernels::run(Op::layernorm_modulate, c);
  return {c.out[0], c.out[1], c.out[2]};
}

ModulateGrads layernorm_modulate_bwd(const Tensor& gy, const Tensor& x, const Tensor& mean,
                                     const Tensor& rstd, const Tensor& scale, const Tensor& gres) {
  const Shape nd = check_ntd("layernorm_modulate_bwd", x);
  const Shape rows{x.size(0), x.size(1)};
  check_side("layernorm_modulate_bwd", "gy", gy, x.shape(), x.dtype());
  check_same("layernorm_modulate_bwd", "mean", mean, rows, x.dtype());
  check_same("layernorm_modulate_bwd", "rstd", rstd, rows, x.dtype());
  check_same("layernorm_modulate_bwd", "scale", scale, nd, x.dtype());
  std::vector<Tensor> in = {gy, x, mean, rstd, scale};
  if (gres.defined()) {
    check_same("layernorm_modulate_bwd", "gres", gres, x.shape(), x.dtype());
    // bf16 calls run widened to f32 on the CPU, which would round gx + gres once instead of
    // twice (gx, then the sum), unlike a separate add.
    check(x.dtype() != DType::BF16,
          "layernorm_modulate_bwd: gres needs an f32 or f64 x (the sum is rounded in x's dtype), "
          "got bf16");
    in.push_back(gres);
  }
  kernels::OpCall c = call_of(std::move(in), {Tensor::empty(x.shape(), x.dtype(), x.device()),
                                              Tensor::empty(nd, x.dtype(), x.device()),
                                              Tensor::empty(nd, x.dtype(), x.device())});
  kernels::run(Op::layernorm_modulate_bwd, c);
  return {c.out[0], c.out[1], c.out[2]};
}

Tensor gated_residual(const Tensor& x, const Tensor& gate, const Tensor& h) {
  const Shape nd = check_ntd("gated_residual", x);
  check_same("gated_residual", "gate", gate, nd, x.dtype());
  check_side("gated_residual", "h", h, x.shape(), x.dtype());
  kernels::OpCall c = call_of({x, gate, h}, {Tensor::empty(x.shape(), x.dtype(), x.device())});
  kernels::run(Op::gated_residual, c);
  return c.out[0];
}

GatedResidualGrads gated_residual_bwd(const Tensor& gout, const Tensor& gate, const Tensor& h) {
  const Shape nd = check_ntd("gated_residual_bwd", gout, "gout");
  check_same("gated_residual_bwd", "gate", gate, nd, gout.dtype());
  check_side("gated_residual_bwd", "h", h, gout.shape(), gout.dtype());
  kernels::OpCall c = call_of({gout, gate, h}, {Tensor::empty(h.shape(), h.dtype(), h.device()),
                                                Tensor::empty(nd, gout.dtype(), h.device())});
  kernels::run(Op::gated_residual_bwd, c);
  return {c.out[0], c.out[1]};
}

// ---- groupnorm --------------------------------------------------------------------------------
namespace {
void check_groups(const char* op, const Tensor& x, int groups) {
  check(x.defined() && x.rank() >= 2 && is_floating(x.dtype()),
        fmt::format("{}: x must be a floating (N, C, ...) tensor, got {}", op,
                    x.defined() ? x.str() : "undefined"));
  check(groups > 0 && x.size(1) % groups == 0,
        fmt::format("{}: {} groups do not divide the {} channels of x {}", op, groups, x.size(1),
                    x.shape().str()));
}
}  // namespace

NormOut groupnorm(const Tensor& x, int groups, const Tensor& w, const Tensor& b, double eps) {
  check_groups("groupnorm", x, groups);
  return run_norm(Op::groupnorm, x, w, b, x.size(1), Shape{x.size(0), groups}, eps, groups);
}

NormGrads groupnorm_bwd(const Tensor& gy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                        int groups, const Tensor& w) {
  check_groups("groupnorm_bwd", x, groups);
  check_same("groupnorm_bwd", "gy", gy, x.shape(), x.dtype());
  Shape ng{x.size(0), groups};
  check_same("groupnorm_bwd", "mean", mean, ng, x.dtype());
  check_same("groupnorm_bwd", "rstd", rstd, ng, x.dtype());
  return run_norm_bwd(Op::groupnorm_bwd, gy, x, mean, rstd, w, x.size(1), groups);
}

}  // namespace psvae::ops
