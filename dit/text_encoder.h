// The small transformer text encoder trained jointly with the DiT (the text branch of stage 3).
//
//   ids (N, L) i64, mask (N, L) i32
//   h = token_embedding(ids) + pos_embed[:, :L]                       (N, L, D)
//   blocks.{i}: pre-norm TransformerBlock (LayerNorm eps 1e-6, self-attention with the key
//               padding mask, MLP with GELU tanh as the DiT's), depth times
//   tokens = norm(h)                                                  (N, L, D)
//   pooled = sum_l mask * tokens / sum_l mask                         (N, D)  masked mean
// Padding never changes a real token's output (real queries see only real keys; LayerNorm and the
// MLP act per token), so a batch may be padded to any length <= max_len. Every mask row needs at
// least one token ([BOS]); forward throws otherwise.
// Initialisation: embeddings and pos_embed N(0, 0.02), Linears xavier_uniform with zero bias.
#pragma once
#include <memory>

#include "nn/linear.h"
#include "nn/norm.h"
#include "nn/transformer_block.h"

namespace psvae::dit {

struct TextEncoderConfig {
  int64_t vocab = 0;     // tokenizer.vocab_size()
  int64_t max_len = 16;  // pos_embed rows; longer captions are cut
  int64_t dim = 128;
  int depth = 2;
  int heads = 4;
  double mlp_ratio = 4.0;
};

class TextEncoder : public nn::Cloneable<TextEncoder> {
 public:
  using Config = TextEncoderConfig;
  TextEncoder(const Config& c, Generator& g);

  struct Output {
    ag::Var tokens;  // (N, L, dim)
    ag::Var pooled;  // (N, dim)
  };
  // ids on any device (moved to the weights'); L <= max_len.
  Output forward(const Tensor& ids, const Tensor& mask) const;
  const Config& config() const { return cfg_; }

  std::shared_ptr<nn::Embedding> token_embedding;
  std::shared_ptr<nn::ModuleList> blocks;
  std::shared_ptr<nn::LayerNorm> norm;

 private:
  Config cfg_;
  ag::Var* pos_embed_ = nullptr;  // parameter "pos_embed" (1, max_len, dim)
};

}  // namespace psvae::dit
