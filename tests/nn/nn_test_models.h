// Small composite models shared by the nn tests.
#pragma once
#include "nn/init.h"
#include "nn/linear.h"
#include "nn/norm.h"
#include "nn/transformer_block.h"

namespace psvae::nn::test {

// ids (B, T) -> logits (B, T, vocab): token embedding + learned positions, `depth` pre-norm
// blocks, final LayerNorm, linear head. Names follow timm's ViT ("blocks.0.attn.qkv.weight").
class TinyTransformer : public Cloneable<TinyTransformer> {
 public:
  struct Config {
    int64_t vocab = 11, seq = 8, dim = 32;
    int heads = 2, depth = 2;
  };
  TinyTransformer(const Config& c, Generator& g) : cfg_(c) {
    embed = register_module("embed", std::make_shared<Embedding>(c.vocab, c.dim, g));
    Tensor pos = Tensor::empty({1, c.seq, c.dim});
    init::trunc_normal_(pos, g, 0.02);
    pos_embed_ = &register_parameter("pos_embed", pos);
    blocks = register_module("blocks", std::make_shared<ModuleList>());
    TransformerBlock::Config bc;
    bc.dim = c.dim;
    bc.heads = c.heads;
    for (int i = 0; i < c.depth; ++i) blocks->push_back(std::make_shared<TransformerBlock>(bc, g));
    norm = register_module("norm", std::make_shared<LayerNorm>(LayerNorm::Config{c.dim, 1e-6}, g));
    head = register_module("head", std::make_shared<Linear>(c.dim, c.vocab, true, g));
  }
  Var forward(const Tensor& ids) const {
    Var x = ag::add(embed->forward(ids), *pos_embed_);  // (B,T,D)
    for (size_t i = 0; i < blocks->size(); ++i) x = blocks->at<TransformerBlock>(i).forward(x);
    return head->forward(norm->forward(x));  // (B,T,V)
  }
  const Config& config() const { return cfg_; }

  std::shared_ptr<Embedding> embed;
  std::shared_ptr<ModuleList> blocks;
  std::shared_ptr<LayerNorm> norm;
  std::shared_ptr<Linear> head;

 private:
  Config cfg_;
  Var* pos_embed_ = nullptr;
};

}  // namespace psvae::nn::test
