// Differentiable linalg functions. Both backward passes are matmuls with transpose flags, so the
// only kernels they need are the GEMMs of kernels/cpu/linalg.cpp (and later the CUDA ones).
//
// With C = op(A) op(B):  d op(A) = dC op(B)^T,  d op(B) = op(A)^T dC, and a transposed operand
// gets the transpose of its op-gradient. Written out per flag pair in MatmulNode::backward.
#include "autograd/autocast.h"
#include "autograd/functions.h"

namespace psvae::ag {

namespace {

// Sum over the leading dim of t (n, ...) as ones(1, n) @ t(n, rest): a GEMM with M = 1, so it
// stays inside our deterministic kernels.
Tensor sum_leading(const Tensor& t) {
  int64_t n = t.size(0);
  Tensor ones = Tensor::full(Shape{1, n}, 1.0, t.dtype(), t.device());
  Shape rest;
  for (int d = 1; d < t.rank(); ++d) rest.push_back(t.size(d));
  return ops::matmul(ones, t.reshape(Shape{n, rest.numel()})).reshape(rest);
}

Tensor rows2d(const Tensor& t) {  // (..., D) -> (R, D)
  int64_t d = t.size(-1);
  return t.reshape(Shape{d > 0 ? t.numel() / d : 0, d});
}

struct MatmulNode : Node {
  Tensor a, b;
  bool ta = false, tb = false;
  const char* name() const override { return "matmul"; }

  // b (2-D) shared by every batch entry of a: its gradient sums over the batch.
  bool shared() const { return b.rank() == 2 && a.rank() > 2; }

  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const Tensor& gc = g[0];
    std::vector<Tensor> r(2);
    if (needs_grad(0)) r[0] = grad_a(gc);
    if (needs_grad(1)) r[1] = shared() ? grad_b_shared(gc) : grad_b(gc, a);
    return r;
  }

  Tensor grad_a(const Tensor& gc) const {
    if (!ta) return ops::matmul(gc, b, false, !tb);  // dC op(B)^T
    // A stored (K, M): dA = (dC op(B)^T)^T = op(B) dC^T, i.e. B dC^T or B^T dC^T.
    if (!shared()) return ops::matmul(b, gc, tb, true);
    // A batched but B shared: our matmul shares only its second operand, so go entry by entry.
    Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
    int64_t M = gc.size(-2), N = gc.size(-1), K = a.size(-2), batch = gc.numel() / (M * N);
    Tensor gc3 = gc.reshape(Shape{batch, M, N}), out3 = out.reshape(Shape{batch, K, M});
    for (int64_t i = 0; i < batch; ++i)
      out3.slice0(i, i + 1)
          .reshape(Shape{K, M})
          .copy_from(ops::matmul(b, gc3.slice0(i, i + 1).reshape(Shape{M, N}), tb, true));
    return out;
  }

  // Per batch entry: dB = op(A)^T dC (or its transpose when B is stored transposed).
  Tensor grad_b(const Tensor& gc, const Tensor& av) const {
    if (!tb) return ops::matmul(av, gc, !ta, false);  // A^T dC, or A dC when A stored (K, M)
    return ops::matmul(gc, av, true, ta);             // dC^T A, or dC^T A^T
  }

  Tensor grad_b_shared(const Tensor& gc) const {
    if (!ta)  // rows of A and dC line up: one GEMM over all batch rows at once
      return grad_b(rows2d(gc), rows2d(a));
    if (b.numel() == 0) return Tensor::zeros(b.shape(), b.dtype(), b.device());
    Tensor per = grad_b(gc, a);  // (..., K, N) per batch entry
    return sum_leading(per.reshape(Shape{per.numel() / b.numel(), b.size(0), b.size(1)}));
  }
};

struct LinearNode : Node {
  Tensor x, w;
  const char* name() const override { return "linear"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    Tensor g2 = rows2d(g[0]);  // (R, N)
    std::vector<Tensor> r(3);
    if (needs_grad(0)) r[0] = ops::matmul(g2, w).reshape(x.shape());  // g W
    if (needs_grad(1)) r[1] = ops::matmul(g2, rows2d(x), true);       // g^T x
    if (needs_grad(2)) r[2] = sum_leading(g2);                        // column sums of g
    return r;
  }
};

// y = a W2^T + b2 with a = gelu_tanh(p), p = x W1^T + b1. Backward, from g = dy:
//   dW2 = g^T a, db2 = sum g, gp = (g W2) gelu'(p) and db1 = sum gp (one fused op),
//   dW1 = gp^T x, dx = gp W1.
struct MlpGeluNode : Node {
  Tensor x, w1, w2, pre, a;
  const char* name() const override { return "mlp_gelu"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    Tensor g2 = rows2d(g[0]);  // (R, N)
    std::vector<Tensor> r(5);
    if (needs_grad(3)) r[3] = ops::matmul(g2, rows2d(a), true);  // g^T a
    if (needs_grad(4)) r[4] = sum_leading(g2);
    if (needs_grad(0) || needs_grad(1) || needs_grad(2)) {
      ops::LinearGeluGrads gp = ops::linear_gelu_bwd(g2, w2, rows2d(pre));
      if (needs_grad(0)) r[0] = ops::matmul(gp.gpre, w1).reshape(x.shape());  // gp W1
      if (needs_grad(1)) r[1] = ops::matmul(gp.gpre, rows2d(x), true);        // gp^T x
      if (needs_grad(2)) r[2] = gp.gbias;
    }
    return r;
  }
};

}  // namespace

Var matmul(const Var& a_in, const Var& b_in, bool trans_a, bool trans_b) {
  const auto [a, b] = autocast::gemm_inputs(a_in, b_in);
  Tensor out = ops::matmul(a.data(), b.data(), trans_a, trans_b);
  if (!any_requires_grad({a, b})) return Var(out);
  auto n = std::make_shared<MatmulNode>();
  n->a = a.data();
  n->b = b.data();
  n->ta = trans_a;
  n->tb = trans_b;
  return attach(n, {a, b}, out);
}

Var linear(const Var& x_in, const Var& w_in, const Var& b_in) {
  const auto [x, w, b] = autocast::gemm_inputs(x_in, w_in, b_in);
  Tensor out = ops::linear(x.data(), w.data(), b.defined() ? b.data() : Tensor());
  if (!any_requires_grad({x, w, b})) return Var(out);
  auto n = std::make_shared<LinearNode>();
  n->x = x.data();
  n->w = w.data();
  return attach(n, {x, w, b}, out);
}

Var mlp_gelu(const Var& x_in, const Var& w1_in, const Var& b1_in, const Var& w2_in,
             const Var& b2_in) {
  const auto [x, w1, b1, w2, b2] = autocast::gemm_inputs(x_in, w1_in, b1_in, w2_in, b2_in);
  ops::LinearGeluOut h = ops::linear_gelu(x.data(), w1.data(), b1.data());
  Tensor out = ops::linear(h.y, w2.data(), b2.defined() ? b2.data() : Tensor());
  if (!any_requires_grad({x, w1, b1, w2, b2})) return Var(out);
  auto n = std::make_shared<MlpGeluNode>();
  n->x = x.data();
  n->w1 = w1.data();
  n->w2 = w2.data();
  n->pre = h.pre;
  n->a = h.y;
  return attach(n, {x, w1, b1, w2, b2}, out);
}

}  // namespace psvae::ag
