// Differentiable attention: the forward keeps o and lse, the backward runs attention_bwd
// (FlashAttention-2 formulas) from them. key_mask is data, not a differentiable input.
#include "autograd/autocast.h"
#include "autograd/functions.h"

namespace psvae::ag {

namespace {
struct AttentionNode : Node {
  Tensor q, k, v, out, lse, key_mask;
  double scale = 1.0;
  const char* name() const override { return "attention"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    ops::AttnGrads r = ops::attention_bwd(g[0], q, k, v, out, lse, key_mask, scale);
    return {r.gq, r.gk, r.gv};
  }
};

struct AttentionQkvNode : Node {
  Tensor qkv, out, lse, key_mask;
  double scale = 1.0;
  const char* name() const override { return "attention_qkv"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::attention_qkv_bwd(g[0], qkv, out, lse, key_mask, scale)};
  }
};

struct AttentionKvNode : Node {
  Tensor q, kv, out, lse, key_mask;
  double scale = 1.0;
  const char* name() const override { return "attention_kv"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    ops::AttnKvGrads r = ops::attention_kv_bwd(g[0], q, kv, out, lse, key_mask, scale);
    return {r.gq, r.gkv};
  }
};
}  // namespace

Var attention(const Var& q_in, const Var& k_in, const Var& v_in, const Tensor& key_mask,
              double scale) {
  const auto [q, k, v] = autocast::gemm_inputs(q_in, k_in, v_in);
  ops::AttnOut r = ops::attention(q.data(), k.data(), v.data(), key_mask, scale);
  if (!any_requires_grad({q, k, v})) return Var(r.out);
  auto n = std::make_shared<AttentionNode>();
  n->q = q.data();
  n->k = k.data();
  n->v = v.data();
  n->out = r.out;
  n->lse = r.lse;
  n->key_mask = key_mask;
  n->scale = scale;
  return attach(n, {q, k, v}, r.out);
}

Var attention_qkv(const Var& qkv_in, const Tensor& key_mask, double scale) {
  const auto [qkv] = autocast::gemm_inputs(qkv_in);
  ops::AttnOut r = ops::attention_qkv(qkv.data(), key_mask, scale);
  if (!any_requires_grad({qkv})) return Var(r.out);
  auto n = std::make_shared<AttentionQkvNode>();
  n->qkv = qkv.data();
  n->out = r.out;
  n->lse = r.lse;
  n->key_mask = key_mask;
  n->scale = scale;
  return attach(n, {qkv}, r.out);
}

Var attention_kv(const Var& q_in, const Var& kv_in, const Tensor& key_mask, double scale) {
  const auto [q, kv] = autocast::gemm_inputs(q_in, kv_in);
  ops::AttnOut r = ops::attention_kv(q.data(), kv.data(), key_mask, scale);
  if (!any_requires_grad({q, kv})) return Var(r.out);
  auto n = std::make_shared<AttentionKvNode>();
  n->q = q.data();
  n->kv = kv.data();
  n->out = r.out;
  n->lse = r.lse;
  n->key_mask = key_mask;
  n->scale = scale;
  return attach(n, {q, kv}, r.out);
}

}  // namespace psvae::ag
