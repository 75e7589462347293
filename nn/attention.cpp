#include "nn/attention.h"

#include <fmt/format.h>

#include <cmath>

namespace psvae::nn {

namespace {
int64_t head_dim(int64_t dim, int heads) {
  check(heads > 0 && dim % heads == 0,
        fmt::format("attention: width {} does not split into {} heads", dim, heads));
  return dim / heads;
}
}  // namespace

Attention::Attention(const Config& c, Generator& g) : cfg_(c) {
  head_dim(c.dim, c.heads);
  qkv = register_module("qkv", std::make_shared<Linear>(c.dim, 3 * c.dim, c.qkv_bias, g));
  proj = register_module("proj", std::make_shared<Linear>(c.dim, c.dim, true, g));
}

// q, k and v stay in the projection's rows (B,T,3,H,hd): attention_qkv reads them in place and
// writes their gradients into one tensor, where split heads would copy three slices out and
// concatenate three gradients back (24 bytes per token and channel in bf16), same bits.
Var Attention::forward(const Var& x, const Tensor& key_mask) const {
  const int64_t B = x.size(0), T = x.size(1), hd = head_dim(cfg_.dim, cfg_.heads);
  Var qkv_rows = ag::reshape(qkv->forward(x), Shape{B, T, 3, cfg_.heads, hd});
  Var o = ag::attention_qkv(qkv_rows, key_mask,
                            1.0 / std::sqrt(static_cast<double>(hd)));  // (B,T,H,hd)
  return proj->forward(ag::reshape(o, Shape{B, T, cfg_.dim}));
}

CrossAttention::CrossAttention(const Config& c, Generator& g) : cfg_(c) {
  head_dim(c.dim, c.heads);
  q = register_module("q", std::make_shared<Linear>(c.dim, c.dim, c.qkv_bias, g));
  kv = register_module("kv", std::make_shared<Linear>(c.context_dim, 2 * c.dim, c.qkv_bias, g));
  proj = register_module("proj", std::make_shared<Linear>(c.dim, c.dim, true, g));
}

// k and v stay in the kv projection's rows (B,S,2,H,hd), read in place by attention_kv.
Var CrossAttention::forward(const Var& x, const Var& context, const Tensor& key_mask) const {
  const int64_t B = x.size(0), T = x.size(1), S = context.size(1);
  const int64_t hd = head_dim(cfg_.dim, cfg_.heads);
  Var qh = ag::reshape(q->forward(x), Shape{B, T, cfg_.heads, hd});
  Var kv_rows = ag::reshape(kv->forward(context), Shape{B, S, 2, cfg_.heads, hd});
  Var o = ag::attention_kv(qh, kv_rows, key_mask, 1.0 / std::sqrt(static_cast<double>(hd)));
  return proj->forward(ag::reshape(o, Shape{B, T, cfg_.dim}));
}

}  // namespace psvae::nn
