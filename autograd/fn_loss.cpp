// Differentiable losses. Each backward calls its op's _bwd kernel with what forward saved. For the
// two-input losses the gradient of b is the kernel called with a and b swapped: d/db f(a-b) =
// -d/da f(a-b), and the kernels form the difference so that the swap negates the result exactly.
#include "autograd/autocast.h"
#include "autograd/functions.h"

namespace psvae::ag {

namespace {

// mse and l1 share everything but the backward op.
struct PairLossNode : Node {
  const char* op_name;
  Tensor (*bwd)(const Tensor&, const Tensor&, const Tensor&);
  Tensor a, b;
  PairLossNode(const char* n, Tensor (*f)(const Tensor&, const Tensor&, const Tensor&))
      : op_name(n), bwd(f) {}
  const char* name() const override { return op_name; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    std::vector<Tensor> r(2);
    if (needs_grad(0)) r[0] = bwd(g[0], a, b);
    if (needs_grad(1)) r[1] = bwd(g[0], b, a);
    return r;
  }
};

Var pair_loss(const char* name, Tensor (*fwd)(const Tensor&, const Tensor&),
              Tensor (*bwd)(const Tensor&, const Tensor&, const Tensor&), const Var& a_in,
              const Var& b_in) {
  const auto [a, b] = autocast::f32_inputs(a_in, b_in);
  Tensor out = fwd(a.data(), b.data());
  if (!any_requires_grad({a, b})) return Var(out);
  auto n = std::make_shared<PairLossNode>(name, bwd);
  n->a = a.data();
  n->b = b.data();
  return attach(n, {a, b}, out);
}

struct KlGaussNode : Node {
  Tensor mu, logvar;
  double normaliser = 1;
  const char* name() const override { return "kl_gauss"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    auto [gmu, glv] = ops::kl_gauss_bwd(g[0], mu, logvar, normaliser);
    return {gmu, glv};
  }
};

struct CrossEntropyNode : Node {
  Tensor logits, target, lse;  // lse (N) saved by forward, so backward skips the row reductions
  const char* name() const override { return "cross_entropy"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::cross_entropy_bwd(g[0], logits, target, lse)};
  }
};

struct LpipsTapNode : Node {
  Tensor f0, f1, w;
  double norm_eps = 0, sqrt_floor = 0;
  const char* name() const override { return "lpips_tap"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    auto [g0, g1] = ops::lpips_tap_bwd(g[0], f0, f1, w, norm_eps, sqrt_floor);
    return {g0, g1};
  }
};

}  // namespace

Var mse_loss(const Var& a, const Var& b) {
  return pair_loss("mse_loss", &ops::mse_loss, &ops::mse_loss_bwd, a, b);
}

Var l1_loss(const Var& a, const Var& b) {
  return pair_loss("l1_loss", &ops::l1_loss, &ops::l1_loss_bwd, a, b);
}

Var kl_gauss(const Var& mu_in, const Var& logvar_in, double normaliser) {
  const auto [mu, logvar] = autocast::f32_inputs(mu_in, logvar_in);
  Tensor out = ops::kl_gauss(mu.data(), logvar.data(), normaliser);
  if (!any_requires_grad({mu, logvar})) return Var(out);
  auto n = std::make_shared<KlGaussNode>();
  n->mu = mu.data();
  n->logvar = logvar.data();
  n->normaliser = normaliser;
  return attach(n, {mu, logvar}, out);
}

Var cross_entropy(const Var& logits_in, const Tensor& target) {
  const auto [logits] = autocast::f32_inputs(logits_in);
  ops::CrossEntropyOut out = ops::cross_entropy(logits.data(), target);
  if (!any_requires_grad({logits})) return Var(out.loss);
  auto n = std::make_shared<CrossEntropyNode>();
  n->logits = logits.data();
  n->target = target;
  n->lse = out.lse;
  return attach(n, {logits}, out.loss);
}

Var lpips_tap(const Var& f0_in, const Var& f1_in, const Tensor& w, double norm_eps,
              double sqrt_floor) {
  const auto [f0, f1] = autocast::f32_inputs(f0_in, f1_in);
  Tensor out = ops::lpips_tap(f0.data(), f1.data(), w, norm_eps, sqrt_floor);
  if (!any_requires_grad({f0, f1})) return Var(out);
  auto n = std::make_shared<LpipsTapNode>();
  n->f0 = f0.data();
  n->f1 = f1.data();
  n->w = w;
  n->norm_eps = norm_eps;
  n->sqrt_floor = sqrt_floor;
  return attach(n, {f0, f1}, out);
}

}  // namespace psvae::ag
