// Differentiable normalisation functions. Each backward calls its fused _bwd table entry with the
// mean and rstd that forward saved, as PyTorch's native_layer_norm does: one pass over x instead
// of re-deriving the statistics through a dozen elementwise ops.
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

struct LayerNormModulateNode : Node {
  Tensor x, scale, mean, rstd;
  const char* name() const override { return "layernorm_modulate"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    ops::ModulateGrads d = ops::layernorm_modulate_bwd(g[0], x, mean, rstd, scale);
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
  ops::NormOut o = ops::layernorm_modulate(x.data(), shift.data(), scale.data(), eps);
  if (!any_requires_grad({x, shift, scale})) return Var(o.y);
  auto n = std::make_shared<LayerNormModulateNode>();
  n->x = x.data();
  n->scale = scale.data();
  n->mean = o.mean;
  n->rstd = o.rstd;
  return attach(n, {x, shift, scale}, o.y);
}

Var gated_residual(const Var& x_in, const Var& gate_in, const Var& h_in) {
  const auto [x, gate, h] = autocast::promote(x_in, gate_in, h_in);
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
