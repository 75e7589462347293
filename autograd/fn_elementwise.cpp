// Differentiable elementwise functions. Broadcasting ops sum each gradient back to its input's
// shape with sum_to (the adjoint of the broadcast); unary functions call their table _bwd entry.
#include "autograd/autocast.h"
#include "autograd/functions.h"

namespace psvae::ag {

using kernels::Op;

namespace {

// ---- binary, broadcasting --------------------------------------------------------------------

struct AddNode : Node {
  Shape a, b;
  const char* name() const override { return "add"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    std::vector<Tensor> r(2);
    if (needs_grad(0)) r[0] = ops::sum_to(g[0], a);
    if (needs_grad(1)) r[1] = ops::sum_to(g[0], b);
    return r;
  }
};

struct SubNode : Node {
  Shape a, b;
  const char* name() const override { return "sub"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    std::vector<Tensor> r(2);
    if (needs_grad(0)) r[0] = ops::sum_to(g[0], a);
    if (needs_grad(1)) r[1] = ops::mul_scalar(ops::sum_to(g[0], b), -1.0);
    return r;
  }
};

struct MulNode : Node {
  Tensor a, b;
  const char* name() const override { return "mul"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    std::vector<Tensor> r(2);
    if (needs_grad(0)) r[0] = ops::sum_to(ops::mul(g[0], b), a.shape());
    if (needs_grad(1)) r[1] = ops::sum_to(ops::mul(g[0], a), b.shape());
    return r;
  }
};

// y = a / b: ga = g / b, gb = -g * y / b (reusing the forward's y instead of a / b^2).
struct DivNode : Node {
  Tensor a, b, y;
  const char* name() const override { return "div"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    std::vector<Tensor> r(2);
    Tensor gb = ops::div(g[0], b);
    if (needs_grad(0)) r[0] = ops::sum_to(gb, a.shape());
    if (needs_grad(1)) r[1] = ops::mul_scalar(ops::sum_to(ops::mul(gb, y), b.shape()), -1.0);
    return r;
  }
};

struct WhereNode : Node {
  Tensor cond;
  Shape a, b;
  const char* name() const override { return "where"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    std::vector<Tensor> r(2);
    Tensor zero = Tensor::zeros(Shape{}, g[0].dtype(), g[0].device());
    if (needs_grad(0)) r[0] = ops::sum_to(ops::where(cond, g[0], zero), a);
    if (needs_grad(1)) r[1] = ops::sum_to(ops::where(cond, zero, g[0]), b);
    return r;
  }
};

// ---- scalar, shape --------------------------------------------------------------------------

struct AddScalarNode : Node {
  const char* name() const override { return "add_scalar"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override { return {g[0]}; }
};

struct MulScalarNode : Node {
  double s = 1;
  const char* name() const override { return "mul_scalar"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::mul_scalar(g[0], s)};
  }
};

struct ExpandNode : Node {
  Shape in;
  const char* name() const override { return "expand"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::sum_to(g[0], in)};
  }
};

struct CastNode : Node {
  DType in = DType::F32;
  const char* name() const override { return "cast"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::cast(g[0], in)};
  }
};

// ---- unary: gx = gy * f'(x) through the table's NAME_bwd entry ------------------------------

struct UnaryNode : Node {
  Op fwd = Op::exp, bwd = Op::exp_bwd;
  Tensor x, y;
  double p0 = 0, p1 = 0;
  const char* name() const override { return kernels::op_name(fwd); }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::unary_bwd(bwd, x, y, g[0], p0, p1)};
  }
};

Var unary(Op fwd, Op bwd, const Var& x, const Tensor& y, double p0 = 0, double p1 = 0) {
  if (!any_requires_grad({x})) return Var(y);
  auto n = std::make_shared<UnaryNode>();
  n->fwd = fwd;
  n->bwd = bwd;
  n->x = x.data();
  n->y = y;
  n->p0 = p0;
  n->p1 = p1;
  return attach(n, {x}, y);
}

}  // namespace

Var add(const Var& a_in, const Var& b_in) {
  const auto [a, b] = autocast::promote(a_in, b_in);
  Tensor out = ops::add(a.data(), b.data());
  if (!any_requires_grad({a, b})) return Var(out);
  auto n = std::make_shared<AddNode>();
  n->a = a.shape();
  n->b = b.shape();
  return attach(n, {a, b}, out);
}

Var sub(const Var& a_in, const Var& b_in) {
  const auto [a, b] = autocast::promote(a_in, b_in);
  Tensor out = ops::sub(a.data(), b.data());
  if (!any_requires_grad({a, b})) return Var(out);
  auto n = std::make_shared<SubNode>();
  n->a = a.shape();
  n->b = b.shape();
  return attach(n, {a, b}, out);
}

Var mul(const Var& a_in, const Var& b_in) {
  const auto [a, b] = autocast::promote(a_in, b_in);
  Tensor out = ops::mul(a.data(), b.data());
  if (!any_requires_grad({a, b})) return Var(out);
  auto n = std::make_shared<MulNode>();
  n->a = a.data();
  n->b = b.data();
  return attach(n, {a, b}, out);
}

Var div(const Var& a_in, const Var& b_in) {
  const auto [a, b] = autocast::promote(a_in, b_in);
  Tensor out = ops::div(a.data(), b.data());
  if (!any_requires_grad({a, b})) return Var(out);
  auto n = std::make_shared<DivNode>();
  n->a = a.data();
  n->b = b.data();
  n->y = out;
  return attach(n, {a, b}, out);
}

Var where(const Tensor& cond, const Var& a_in, const Var& b_in) {
  const auto [a, b] = autocast::promote(a_in, b_in);
  Tensor out = ops::where(cond, a.data(), b.data());
  if (!any_requires_grad({a, b})) return Var(out);
  auto n = std::make_shared<WhereNode>();
  n->cond = cond;
  n->a = a.shape();
  n->b = b.shape();
  return attach(n, {a, b}, out);
}

Var add_scalar(const Var& x, double s) {
  Tensor out = ops::add_scalar(x.data(), s);
  if (!any_requires_grad({x})) return Var(out);
  return attach(std::make_shared<AddScalarNode>(), {x}, out);
}

Var mul_scalar(const Var& x, double s) {
  Tensor out = ops::mul_scalar(x.data(), s);
  if (!any_requires_grad({x})) return Var(out);
  auto n = std::make_shared<MulScalarNode>();
  n->s = s;
  return attach(n, {x}, out);
}

Var neg(const Var& x) { return mul_scalar(x, -1.0); }

Var expand(const Var& x, const Shape& shape) {
  // ops::expand returns x's own tensor when the shape already matches; the graph still gets a
  // node so the result is a fresh Var.
  Tensor out = ops::expand(x.data(), shape);
  if (!any_requires_grad({x})) return Var(out);
  auto n = std::make_shared<ExpandNode>();
  n->in = x.shape();
  return attach(n, {x}, out);
}

Var cast(const Var& x, DType dtype) {
  Tensor out = ops::cast(x.data(), dtype);
  // An integer result carries no gradient (as PyTorch): it leaves the graph.
  if (!any_requires_grad({x}) || !is_floating(dtype)) return Var(out);
  auto n = std::make_shared<CastNode>();
  n->in = x.dtype();
  return attach(n, {x}, out);
}

#define PSVAE_UNARY_FN(op) \
  Var op(const Var& x) { return unary(Op::op, Op::op##_bwd, x, ops::op(x.data())); }
PSVAE_UNARY_FN(exp)
PSVAE_UNARY_FN(log)
PSVAE_UNARY_FN(sqrt)
PSVAE_UNARY_FN(rsqrt)
PSVAE_UNARY_FN(tanh)
PSVAE_UNARY_FN(sigmoid)
PSVAE_UNARY_FN(relu)
PSVAE_UNARY_FN(silu)
PSVAE_UNARY_FN(gelu_tanh)
PSVAE_UNARY_FN(gelu_erf)
PSVAE_UNARY_FN(abs)
#undef PSVAE_UNARY_FN

Var pow_scalar(const Var& x, double p) {
  return unary(Op::pow_scalar, Op::pow_scalar_bwd, x, ops::pow_scalar(x.data(), p), p);
}
Var square(const Var& x) { return pow_scalar(x, 2.0); }
Var clamp(const Var& x, double lo, double hi) {
  return unary(Op::clamp, Op::clamp_bwd, x, ops::clamp(x.data(), lo, hi), lo, hi);
}

}  // namespace psvae::ag
