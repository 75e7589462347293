// Differentiable attention: the forward keeps o and lse, the backward runs attention_bwd
// (FlashAttention-2 formulas) from them. key_mask is data, not a differentiable input.
// Three forms over the same kernels: q, k, v apart (attention); q, k, v inside one packed qkv
// (attention_qkv); q apart, k and v inside one packed kv (attention_kv).
#include "autograd/autocast.h"
#include "autograd/functions.h"

namespace psvae::ag {

namespace {
// What each attention node keeps: its operands as the forward read them (after autocast), the
// output, its logsumexp, the mask and the scale.
struct AttentionSaved : Node {
  std::vector<Tensor> in;
  Tensor out, lse, key_mask;
  double scale = 1.0;
};

struct AttentionNode : AttentionSaved {
  const char* name() const override { return "attention"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    ops::AttnGrads r = ops::attention_bwd(g[0], in[0], in[1], in[2], out, lse, key_mask, scale);
    return {r.gq, r.gk, r.gv};
  }
};

struct AttentionQkvNode : AttentionSaved {
  const char* name() const override { return "attention_qkv"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::attention_qkv_bwd(g[0], in[0], out, lse, key_mask, scale)};
  }
};

struct AttentionKvNode : AttentionSaved {
  const char* name() const override { return "attention_kv"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    ops::AttnKvGrads r = ops::attention_kv_bwd(g[0], in[0], in[1], out, lse, key_mask, scale);
    return {r.gq, r.gkv};
  }
};

// r.out as a Var, with a node N that keeps what its backward needs when any input wants a grad.
template <class N>
Var attach_attention(const std::vector<Var>& inputs, const ops::AttnOut& r, const Tensor& key_mask,
                     double scale) {
  if (!any_requires_grad(inputs)) return Var(r.out);
  auto n = std::make_shared<N>();
  for (const Var& v : inputs) n->in.push_back(v.data());
  n->out = r.out;
  n->lse = r.lse;
  n->key_mask = key_mask;
  n->scale = scale;
  return attach(n, inputs, r.out);
}
}  // namespace

Var attention(const Var& q_in, const Var& k_in, const Var& v_in, const Tensor& key_mask,
              double scale) {
  const auto [q, k, v] = autocast::gemm_inputs(q_in, k_in, v_in);
  return attach_attention<AttentionNode>(
      {q, k, v}, ops::attention(q.data(), k.data(), v.data(), key_mask, scale), key_mask, scale);
}

Var attention_qkv(const Var& qkv_in, const Tensor& key_mask, double scale) {
  const auto [qkv] = autocast::gemm_inputs(qkv_in);
  return attach_attention<AttentionQkvNode>({qkv}, ops::attention_qkv(qkv.data(), key_mask, scale),
                                            key_mask, scale);
}

Var attention_kv(const Var& q_in, const Var& kv_in, const Tensor& key_mask, double scale) {
  const auto [q, kv] = autocast::gemm_inputs(q_in, kv_in);
  return attach_attention<AttentionKvNode>(
      {q, kv}, ops::attention_kv(q.data(), kv.data(), key_mask, scale), key_mask, scale);
}

}  // namespace psvae::ag
