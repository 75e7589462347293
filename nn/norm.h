// LayerNorm, GroupNorm and LayerScale with PyTorch / timm parameter names.
#pragma once
#include "autograd/functions.h"
#include "nn/module.h"

namespace psvae::nn {

// Over the last dim: x (..., D) -> (..., D); weight (D) = 1, bias (D) = 0 when affine.
// eps: PyTorch's default is 1e-5; ViT/DiT/DINOv2 blocks use 1e-6.
class LayerNorm : public Cloneable<LayerNorm> {
 public:
  struct Config {
    int64_t dim = 0;
    double eps = 1e-5;
    bool affine = true;
  };
  LayerNorm(const Config& c, Generator& g);
  Var forward(const Var& x) const;
  Var operator()(const Var& x) const { return forward(x); }
  const Config& config() const { return cfg_; }

 private:
  Config cfg_;
  Var* weight_ = nullptr;
  Var* bias_ = nullptr;
};

// x (N, C, ...) normalised over each group of C / groups channels and all positions; weight (C),
// bias (C) when affine.
class GroupNorm : public Cloneable<GroupNorm> {
 public:
  struct Config {
    int groups = 32;
    int64_t channels = 0;
    double eps = 1e-5;
    bool affine = true;
  };
  GroupNorm(const Config& c, Generator& g);
  Var forward(const Var& x) const;
  Var operator()(const Var& x) const { return forward(x); }
  const Config& config() const { return cfg_; }

 private:
  Config cfg_;
  Var* weight_ = nullptr;
  Var* bias_ = nullptr;
};

// x (..., D) * gamma (D), gamma initialised to init_value (CaiT / DINOv2 "ls1.gamma").
class LayerScale : public Cloneable<LayerScale> {
 public:
  struct Config {
    int64_t dim = 0;
    double init_value = 1e-5;
  };
  LayerScale(const Config& c, Generator& g);
  Var forward(const Var& x) const { return ag::mul(x, *gamma_); }
  Var operator()(const Var& x) const { return forward(x); }
  const Config& config() const { return cfg_; }

 private:
  Config cfg_;
  Var* gamma_ = nullptr;
};

}  // namespace psvae::nn
