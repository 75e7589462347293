#include "nn/transformer_block.h"

namespace psvae::nn {

int64_t TransformerBlock::mlp_hidden() const {
  auto h = static_cast<int64_t>(cfg_.mlp_ratio * static_cast<double>(cfg_.dim));
  if (!cfg_.swiglu) return h;
  // DINOv2 ViT-g: 1536 * 4 = 6144 -> 4096; keeps the parameter count of the 2-matrix MLP.
  return (h * 2 / 3 + 7) / 8 * 8;
}

TransformerBlock::TransformerBlock(const Config& c, Generator& g) : cfg_(c) {
  // Registration order = state_dict order, as in timm's Block.__init__.
  norm1 = register_module("norm1", std::make_shared<LayerNorm>(LayerNorm::Config{c.dim, c.eps}, g));
  attn = register_module(
      "attn", std::make_shared<Attention>(Attention::Config{c.dim, c.heads, c.qkv_bias}, g));
  if (c.layerscale)
    ls1 = register_module(
        "ls1", std::make_shared<LayerScale>(LayerScale::Config{c.dim, *c.layerscale}, g));
  norm2 = register_module("norm2", std::make_shared<LayerNorm>(LayerNorm::Config{c.dim, c.eps}, g));
  if (c.swiglu)
    swiglu = register_module(
        "mlp", std::make_shared<SwiGLU>(SwiGLU::Config{c.dim, mlp_hidden(), c.dim}, g));
  else
    mlp = register_module("mlp",
                          std::make_shared<Mlp>(Mlp::Config{c.dim, mlp_hidden(), c.dim, c.act}, g));
  if (c.layerscale)
    ls2 = register_module(
        "ls2", std::make_shared<LayerScale>(LayerScale::Config{c.dim, *c.layerscale}, g));
}

Var TransformerBlock::forward(const Var& x, const Tensor& key_mask) const {
  Var a = attn->forward(norm1->forward(x), key_mask);
  if (ls1) a = ls1->forward(a);
  Var h = ag::add(x, a);
  Var n2 = norm2->forward(h);
  Var m = swiglu ? swiglu->forward(n2) : mlp->forward(n2);
  if (ls2) m = ls2->forward(m);
  return ag::add(h, m);
}

}  // namespace psvae::nn
