// Linear, Conv2d and Embedding with PyTorch's parameter names, layouts and default inits.
#pragma once
#include "autograd/functions.h"
#include "nn/module.h"

namespace psvae::nn {

// y = x W^T + b. x (..., in) -> (..., out); weight (out, in), bias (out).
// Init as torch.nn.Linear: W and b ~ U(-1/sqrt(in), 1/sqrt(in)).
class Linear : public Cloneable<Linear> {
 public:
  struct Config {
    int64_t in = 0, out = 0;
    bool bias = true;
  };
  Linear(const Config& c, Generator& g);
  Linear(int64_t in, int64_t out, bool bias, Generator& g) : Linear(Config{in, out, bias}, g) {}
  Var forward(const Var& x) const;
  Var operator()(const Var& x) const { return forward(x); }

  const Config& config() const { return cfg_; }
  Var& weight() const { return *weight_; }
  Var* bias() const { return bias_; }  // null without bias

 private:
  Config cfg_;
  Var* weight_ = nullptr;
  Var* bias_ = nullptr;
};

// x (N, C, H, W) -> (N, O, Ho, Wo), Ho = (H + 2 pad - k) / stride + 1; weight (O, C, k, k),
// bias (O). Init as torch.nn.Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C k k.
class Conv2d : public Cloneable<Conv2d> {
 public:
  struct Config {
    int64_t in = 0, out = 0;
    int kernel = 1, stride = 1, pad = 0;
    bool bias = true;
  };
  Conv2d(const Config& c, Generator& g);
  Var forward(const Var& x) const;
  Var operator()(const Var& x) const { return forward(x); }

  const Config& config() const { return cfg_; }
  Var& weight() const { return *weight_; }
  Var* bias() const { return bias_; }

 private:
  Config cfg_;
  Var* weight_ = nullptr;
  Var* bias_ = nullptr;
};

// ids i64 (...) -> (..., D); weight (V, D) ~ N(0, 1) as torch.nn.Embedding.
class Embedding : public Cloneable<Embedding> {
 public:
  struct Config {
    int64_t num = 0, dim = 0;
  };
  Embedding(const Config& c, Generator& g);
  Embedding(int64_t num, int64_t dim, Generator& g) : Embedding(Config{num, dim}, g) {}
  Var forward(const Tensor& ids) const { return ag::embedding(*weight_, ids); }
  Var operator()(const Tensor& ids) const { return forward(ids); }

  const Config& config() const { return cfg_; }
  Var& weight() const { return *weight_; }

 private:
  Config cfg_;
  Var* weight_ = nullptr;
};

}  // namespace psvae::nn
