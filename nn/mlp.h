// Feed-forward blocks: timm's Mlp (fc1, act, fc2) and DINOv2's SwiGLU (w12, w3).
#pragma once
#include "nn/linear.h"

namespace psvae::nn {

// gelu_tanh: DiT's GELU(approximate="tanh"); gelu_erf: nn.GELU() as in ViT and DINOv2.
enum class Activation { GeluTanh, GeluErf, Silu, Relu, Tanh };
Var activate(const Var& x, Activation a);

// x (..., in) -> fc1 -> (..., hidden) -> act -> fc2 -> (..., out).
class Mlp : public Cloneable<Mlp> {
 public:
  struct Config {
    int64_t in = 0, hidden = 0, out = 0;
    Activation act = Activation::GeluTanh;
    bool bias = true;
  };
  Mlp(const Config& c, Generator& g);
  Var forward(const Var& x) const;
  Var operator()(const Var& x) const { return forward(x); }
  const Config& config() const { return cfg_; }

  std::shared_ptr<Linear> fc1, fc2;

 private:
  Config cfg_;
};

// DINOv2's SwiGLUFFNFused: x (..., in) -> w12 -> (..., 2H) split into x1, x2 (halves of the last
// dim) -> w3(silu(x1) * x2) -> (..., out). H is taken as given here; DINOv2's rounding of the
// hidden width (H = ceil8(2/3 * mlp_ratio * D)) is applied by TransformerBlock.
class SwiGLU : public Cloneable<SwiGLU> {
 public:
  struct Config {
    int64_t in = 0, hidden = 0, out = 0;
    bool bias = true;
  };
  SwiGLU(const Config& c, Generator& g);
  Var forward(const Var& x) const;
  Var operator()(const Var& x) const { return forward(x); }
  const Config& config() const { return cfg_; }

  std::shared_ptr<Linear> w12, w3;

 private:
  Config cfg_;
};

}  // namespace psvae::nn
