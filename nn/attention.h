// Multi-head attention with timm's parameter names: self-attention with a fused qkv projection,
// and cross-attention with q from x and a fused kv from a context.
#pragma once
#include "nn/linear.h"

namespace psvae::nn {

// x (B, T, D) -> (B, T, D). qkv: Linear(D, 3D), its output rows ordered (q, k, v) and each split
// into heads as (B, T, 3, H, hd), as timm's Attention; softmax scale hd^-0.5. key_mask (B, T) i32
// (1 = attend) or undefined.
class Attention : public Cloneable<Attention> {
 public:
  struct Config {
    int64_t dim = 0;
    int heads = 1;
    bool qkv_bias = true;
  };
  Attention(const Config& c, Generator& g);
  Var forward(const Var& x, const Tensor& key_mask = Tensor()) const;
  Var operator()(const Var& x, const Tensor& key_mask = Tensor()) const {
    return forward(x, key_mask);
  }
  const Config& config() const { return cfg_; }

  std::shared_ptr<Linear> qkv, proj;

 private:
  Config cfg_;
};

// x (B, T, D) attends to context (B, S, Dc) -> (B, T, D). q: Linear(D, D), kv: Linear(Dc, 2D)
// split as (B, S, 2, H, hd), proj: Linear(D, D). key_mask (B, S) i32 or undefined.
class CrossAttention : public Cloneable<CrossAttention> {
 public:
  struct Config {
    int64_t dim = 0, context_dim = 0;
    int heads = 1;
    bool qkv_bias = true;
  };
  CrossAttention(const Config& c, Generator& g);
  Var forward(const Var& x, const Var& context, const Tensor& key_mask = Tensor()) const;
  Var operator()(const Var& x, const Var& context, const Tensor& key_mask = Tensor()) const {
    return forward(x, context, key_mask);
  }
  const Config& config() const { return cfg_; }

  std::shared_ptr<Linear> q, kv, proj;

 private:
  Config cfg_;
};

}  // namespace psvae::nn
