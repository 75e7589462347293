// Differentiable reductions. sum/mean spread the gradient back with expand; max routes it to the
// argmax (max_dim_bwd); var, softmax and log_softmax call their table _bwd entries with what the
// forward saved (mean, y).
#include "autograd/autocast.h"
#include "autograd/functions.h"

namespace psvae::ag {

namespace {

// The output's gradient with the reduced dim restored as 1, so it broadcasts against x.
Tensor with_dim(const Tensor& g, const Shape& x, int dim) {
  Shape s = x;
  s[dim] = 1;
  return g.reshape(s);
}

struct SumNode : Node {
  Shape x;
  int dim = 0;
  double scale = 1;  // 1 for sum, 1/n for mean
  const char* name() const override { return scale == 1 ? "sum" : "mean"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    Tensor gs = scale == 1 ? g[0] : ops::mul_scalar(g[0], scale);
    return {ops::expand(with_dim(gs, x, dim), x)};
  }
};

struct SumAllNode : Node {
  Shape x;
  double scale = 1;
  const char* name() const override { return scale == 1 ? "sum_all" : "mean_all"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    Tensor gs = scale == 1 ? g[0] : ops::mul_scalar(g[0], scale);
    return {ops::expand(gs, x)};
  }
};

struct MaxNode : Node {
  Tensor argmax;
  Shape x;
  int dim = 0;
  const char* name() const override { return "max"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::max_bwd(g[0], argmax, x, dim)};
  }
};

struct VarNode : Node {
  Tensor x, mean;
  int dim = 0, correction = 1;
  const char* name() const override { return "var"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::var_bwd(g[0], x, mean, dim, correction)};
  }
};

struct SoftmaxNode : Node {
  Tensor y;
  bool log = false;
  const char* name() const override { return log ? "log_softmax" : "softmax"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {log ? ops::log_softmax_bwd(y, g[0]) : ops::softmax_bwd(y, g[0])};
  }
};

Var sum_like(const Var& x, int dim, bool keepdim, bool is_mean) {
  Tensor out = is_mean ? ops::mean(x.data(), dim, keepdim) : ops::sum(x.data(), dim, keepdim);
  if (!any_requires_grad({x})) return Var(out);
  auto n = std::make_shared<SumNode>();
  n->x = x.shape();
  n->dim = x.shape().norm(dim);
  n->scale = is_mean ? 1.0 / static_cast<double>(x.size(n->dim)) : 1.0;
  return attach(n, {x}, out);
}

Var sum_all_like(const Var& x, bool is_mean) {
  Tensor out = is_mean ? ops::mean_all(x.data()) : ops::sum_all(x.data());
  if (!any_requires_grad({x})) return Var(out);
  auto n = std::make_shared<SumAllNode>();
  n->x = x.shape();
  n->scale = is_mean ? 1.0 / static_cast<double>(x.numel()) : 1.0;
  return attach(n, {x}, out);
}

Var softmax_like(const Var& x_in, bool log) {
  const auto [x] = autocast::f32_inputs(x_in);
  Tensor out = log ? ops::log_softmax(x.data()) : ops::softmax(x.data());
  if (!any_requires_grad({x})) return Var(out);
  auto n = std::make_shared<SoftmaxNode>();
  n->y = out;
  n->log = log;
  return attach(n, {x}, out);
}

}  // namespace

Var sum(const Var& x, int dim, bool keepdim) { return sum_like(x, dim, keepdim, false); }
Var mean(const Var& x, int dim, bool keepdim) { return sum_like(x, dim, keepdim, true); }
Var sum_all(const Var& x) { return sum_all_like(x, false); }
Var mean_all(const Var& x) { return sum_all_like(x, true); }

Var max(const Var& x, int dim, bool keepdim) {
  auto [values, argmax] = ops::max(x.data(), dim, keepdim);
  if (!any_requires_grad({x})) return Var(values);
  auto n = std::make_shared<MaxNode>();
  n->argmax = argmax;
  n->x = x.shape();
  n->dim = x.shape().norm(dim);
  return attach(n, {x}, values);
}

Var var(const Var& x, int dim, int correction, bool keepdim) {
  auto [v, mu] = ops::var_mean(x.data(), dim, correction, keepdim);
  if (!any_requires_grad({x})) return Var(v);
  auto n = std::make_shared<VarNode>();
  n->x = x.data();
  n->mean = mu;
  n->dim = x.shape().norm(dim);
  n->correction = correction;
  return attach(n, {x}, v);
}

Var softmax(const Var& x) { return softmax_like(x, false); }
Var log_softmax(const Var& x) { return softmax_like(x, true); }

}  // namespace psvae::ag
