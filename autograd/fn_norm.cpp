// Differentiable normalisation functions. Each backward calls its fused _bwd table entry with the
// mean and rstd that forward saved, as PyTorch's native_layer_norm does: one pass over x instead
// of re-deriving the statistics through a dozen elementwise ops.
#include <array>
#include <optional>

#include "autograd/autocast.h"
#include "autograd/functions.h"

namespace psvae::ag {

namespace {

Tensor data_or_empty(const Var& v) { return v.defined() ? v.data() : Tensor(); }

// The _bwd kernels return gw and gb together when the forward had an affine weight. A bias
// without a weight still needs its gb, so the backward then passes a unit weight (the forward
// wrapper does the same, see ops_norm.cpp).
Tensor weight_for_bwd(const Tensor& w, bool has_b, int64_t n, const Tensor& x) {
  if (w.defined() || !has_b) return w;
  return Tensor::full(Shape{n}, 1.0, x.dtype(), x.device());
}

struct LayerNormNode : Node {
  Tensor x, w, mean, rstd;
  bool has_b = false;
  const char* name() const override { return "layer_norm"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    ops::NormGrads d =
        ops::layernorm_bwd(g[0], x, mean, rstd, weight_for_bwd(w, has_b, x.size(-1), x));
    return {d.gx, d.gw, d.gb};
  }
};

struct GroupNormNode : Node {
  Tensor x, w, mean, rstd;
  int groups = 1;
  bool has_b = false;
  const char* name() const override { return "group_norm"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    ops::NormGrads d =
        ops::groupnorm_bwd(g[0], x, mean, rstd, groups, weight_for_bwd(w, has_b, x.size(1), x));
    return {d.gx, d.gw, d.gb};
  }
};

struct ModulateNode : Node {
  Tensor x, scale;
  const char* name() const override { return "modulate"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    ops::ModulateGrads d = ops::modulate_bwd(g[0], x, scale);
    return {d.gx, d.gshift, d.gscale};
  }
};

// In the DiT block x also feeds the gated residual, whose backward (later in the forward, so
// earlier in the reverse pass) has already left the residual stream's gradient waiting for x: the
// kernel adds it into gx (ops::layernorm_modulate_bwd's gres) instead of the engine adding after.
struct LayerNormModulateNode : Node {
  Tensor x, scale, mean, rstd;
  const char* name() const override { return "layernorm_modulate"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    std::vector<Tensor> none(3);
    return backward_with_waiting(g, none);
  }
  bool takes_waiting() const override { return x.dtype() != DType::BF16; }  // as the op allows
  std::vector<Tensor> backward_with_waiting(const std::vector<Tensor>& g,
                                            std::vector<Tensor>& waiting) override {
    Tensor gres;
    const Tensor& w = waiting[0];
    if (w.defined() && w.shape() == x.shape() && w.dtype() == x.dtype() &&
        w.device() == x.device()) {
      gres = w;
      waiting[0] = Tensor();
    }
    ops::ModulateGrads d = ops::layernorm_modulate_bwd(g[0], x, mean, rstd, scale, gres);
    return {d.gx, d.gshift, d.gscale};
  }
};

struct GatedResidualNode : Node {
  Tensor gate, h;
  const char* name() const override { return "gated_residual"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    ops::GatedResidualGrads d = ops::gated_residual_bwd(g[0], gate, h);
    return {g[0], d.ggate, d.gh};
  }
};

}  // namespace

Var layernorm_modulate(const Var& x_in, const Var& shift_in, const Var& scale_in, double eps) {
  const auto [x, shift, scale] = autocast::f32_inputs(x_in, shift_in, scale_in);
  // Under bf16 autocast y is written in bf16: every use of this function feeds a GEMM (the DiT
  // block's attention and MLP, its final layer), which would cast y to bf16 first. The gradient
  // then comes back in bf16 from that GEMM and the backward kernel reads it as it is.
  std::optional<DType> y_dtype;
  if (autocast_dtype() == DType::BF16 && x.dtype() == DType::F32) y_dtype = DType::BF16;
  ops::NormOut o = ops::layernorm_modulate(x.data(), shift.data(), scale.data(), eps, y_dtype);
  if (!any_requires_grad({x, shift, scale})) return Var(o.y);
  auto n = std::make_shared<LayerNormModulateNode>();
  n->x = x.data();
  n->scale = scale.data();
  n->mean = o.mean;
  n->rstd = o.rstd;
  return attach(n, {x, shift, scale}, o.y);
}

Var gated_residual(const Var& x_in, const Var& gate_in, const Var& h_in) {
  // Under bf16 autocast the branch output h comes from a bf16 GEMM: it stays bf16 beside the f32
  // stream (the kernel widens it exactly, as the cast would, without the cast's pass) and its
  // gradient goes back in bf16. Anything else is promoted to one dtype.
  const bool bf16_branch = autocast_dtype() == DType::BF16 && h_in.defined() &&
                           h_in.dtype() == DType::BF16 &&
                           autocast::widest({&x_in, &gate_in}) == DType::F32;
  const auto [x, gate, h] = bf16_branch
                                ? std::array<Var, 3>{autocast::to(x_in, DType::F32),
                                                     autocast::to(gate_in, DType::F32), h_in}
                                : autocast::promote(x_in, gate_in, h_in);
  Tensor out = ops::gated_residual(x.data(), gate.data(), h.data());
  if (!any_requires_grad({x, gate, h})) return Var(out);
  auto n = std::make_shared<GatedResidualNode>();
  n->gate = gate.data();
  n->h = h.data();
  return attach(n, {x, gate, h}, out);
}

Var layer_norm(const Var& x_in, const Var& w_in, const Var& b_in, double eps) {
  const auto [x, w, b] = autocast::f32_inputs(x_in, w_in, b_in);
  ops::NormOut o = ops::layernorm(x.data(), data_or_empty(w), data_or_empty(b), eps);
  if (!any_requires_grad({x, w, b})) return Var(o.y);
  auto n = std::make_shared<LayerNormNode>();
  n->x = x.data();
  n->w = data_or_empty(w);
  n->has_b = b.defined();
  n->mean = o.mean;
  n->rstd = o.rstd;
  return attach(n, {x, w, b}, o.y);
}

Var modulate(const Var& x_in, const Var& shift_in, const Var& scale_in) {
  const auto [x, shift, scale] = autocast::promote(x_in, shift_in, scale_in);
  Tensor out = ops::modulate(x.data(), shift.data(), scale.data());
  if (!any_requires_grad({x, shift, scale})) return Var(out);
  auto n = std::make_shared<ModulateNode>();
  n->x = x.data();
  n->scale = scale.data();
  return attach(n, {x, shift, scale}, out);
}

Var group_norm(const Var& x_in, int groups, const Var& w_in, const Var& b_in, double eps) {
  const auto [x, w, b] = autocast::f32_inputs(x_in, w_in, b_in);
  ops::NormOut o = ops::groupnorm(x.data(), groups, data_or_empty(w), data_or_empty(b), eps);
  if (!any_requires_grad({x, w, b})) return Var(o.y);
  auto n = std::make_shared<GroupNormNode>();
  n->x = x.data();
  n->w = data_or_empty(w);
  n->has_b = b.defined();
  n->groups = groups;
  n->mean = o.mean;
  n->rstd = o.rstd;
  return attach(n, {x, w, b}, o.y);
}

}  // namespace psvae::ag
