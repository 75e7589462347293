// Pre-norm ViT block (timm / DINOv2 names):
//   x = x + ls1(attn(norm1(x)))
//   x = x + ls2(mlp(norm2(x)))
// x (B, T, D) -> (B, T, D). ls1/ls2 exist only with a LayerScale init value; mlp is timm's Mlp
// (fc1, fc2) or DINOv2's SwiGLU (w12, w3).
#pragma once
#include <optional>

#include "nn/attention.h"
#include "nn/mlp.h"
#include "nn/norm.h"

namespace psvae::nn {

class TransformerBlock : public Cloneable<TransformerBlock> {
 public:
  struct Config {
    int64_t dim = 0;
    int heads = 1;
    double mlp_ratio = 4.0;
    double eps = 1e-6;  // timm's ViT/DiT and DINOv2 use LayerNorm(eps=1e-6)
    Activation act = Activation::GeluErf;
    // SwiGLU hidden width as DINOv2's SwiGLUFFNFused: H = ceil8(int(mlp_ratio * D * 2 / 3)).
    bool swiglu = false;
    std::optional<double> layerscale;  // LayerScale init value (DINOv2: 1e-5), or none
    bool qkv_bias = true;
  };
  TransformerBlock(const Config& c, Generator& g);
  Var forward(const Var& x, const Tensor& key_mask = Tensor()) const;
  Var operator()(const Var& x, const Tensor& key_mask = Tensor()) const {
    return forward(x, key_mask);
  }
  const Config& config() const { return cfg_; }
  int64_t mlp_hidden() const;

  std::shared_ptr<LayerNorm> norm1, norm2;
  std::shared_ptr<Attention> attn;
  std::shared_ptr<LayerScale> ls1, ls2;  // null without layerscale
  std::shared_ptr<Mlp> mlp;              // one of mlp / swiglu is set; both are named "mlp"
  std::shared_ptr<SwiGLU> swiglu;

 private:
  Config cfg_;
};

}  // namespace psvae::nn
