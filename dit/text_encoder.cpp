#include "dit/text_encoder.h"

#include <fmt/format.h>

#include <vector>

#include "nn/init.h"

namespace psvae::dit {

using ag::Var;

TextEncoder::TextEncoder(const Config& c, Generator& g) : cfg_(c) {
  check(c.vocab > 0 && c.max_len > 0 && c.dim > 0 && c.depth >= 0 && c.heads > 0 &&
            c.dim % c.heads == 0,
        fmt::format("text encoder: bad config (vocab {}, max_len {}, dim {}, depth {}, heads {})",
                    c.vocab, c.max_len, c.dim, c.depth, c.heads));
  token_embedding =
      register_module("token_embedding", std::make_shared<nn::Embedding>(c.vocab, c.dim, g));
  pos_embed_ = &register_parameter("pos_embed", Tensor::zeros(Shape{1, c.max_len, c.dim}));
  blocks = register_module("blocks", std::make_shared<nn::ModuleList>());
  // LayerNorm eps 1e-6 as the DiT's; GELU tanh as the DiT's MLP (one activation kernel for both).
  nn::TransformerBlock::Config bc;
  bc.dim = c.dim, bc.heads = c.heads, bc.mlp_ratio = c.mlp_ratio, bc.eps = 1e-6;
  bc.act = nn::Activation::GeluTanh;
  for (int i = 0; i < c.depth; ++i)
    blocks->push_back(std::make_shared<nn::TransformerBlock>(bc, g));
  norm = register_module(
      "norm", std::make_shared<nn::LayerNorm>(nn::LayerNorm::Config{c.dim, 1e-6, true}, g));

  // Linears xavier_uniform with zero bias (the DiT's rule); LayerNorms keep (1, 0).
  for (auto& [name, v] : blocks->named_parameters()) {
    Tensor t = v.data();
    if (t.rank() == 2)
      nn::init::xavier_uniform_(t, g);
    else if (name.find("norm") == std::string::npos)
      nn::init::zeros_(t);
  }
  Tensor emb = token_embedding->weight().data();
  nn::init::normal_(emb, g, 0.02);
  Tensor pe = pos_embed_->data();
  nn::init::normal_(pe, g, 0.02);
}

TextEncoder::Output TextEncoder::forward(const Tensor& ids, const Tensor& mask) const {
  check(ids.rank() == 2 && ids.dtype() == DType::I64,
        fmt::format("text encoder: ids must be (N, L) i64, got {}", ids.str()));
  const int64_t N = ids.size(0), L = ids.size(1);
  check(L >= 1 && L <= cfg_.max_len,
        fmt::format("text encoder: {} tokens, expected 1 to max_len {}", L, cfg_.max_len));
  check(mask.rank() == 2 && mask.size(0) == N && mask.size(1) == L && mask.dtype() == DType::I32,
        fmt::format("text encoder: mask must be ({}, {}) i32, got {}", N, L, mask.str()));
  const Var& pe = *pos_embed_;
  const Device dev = pe.device();
  // The mask as weights for the pooled mean, built on the host (N x L numbers).
  std::vector<int32_t> mv = mask.to_vector<int32_t>();
  std::vector<double> w(mv.size());
  for (int64_t n = 0; n < N; ++n) {
    int64_t real = 0;
    for (int64_t l = 0; l < L; ++l) {
      const int32_t m = mv[static_cast<size_t>(n * L + l)];
      check(m == 0 || m == 1,
            fmt::format("text encoder: mask row {} holds {}, expected 0 or 1", n, m));
      real += m;
      w[static_cast<size_t>(n * L + l)] = m;
    }
    check(real > 0, fmt::format("text encoder: mask row {} has no token ([BOS] is always one)", n));
  }
  const Tensor key_mask = mask.to(dev);

  Var h = token_embedding->forward(ids.to(dev)) + ag::narrow(pe, 1, 0, L);  // (N, L, D)
  for (size_t i = 0; i < blocks->size(); ++i)
    h = blocks->at<nn::TransformerBlock>(i).forward(h, key_mask);
  Var tokens = norm->forward(h);

  Var mw(nn::convert_float(Tensor::from_vector(w, Shape{N, L, 1}), pe.dtype()).to(dev));
  Var count = ag::sum(mw, 1);                    // (N, 1)
  Var pooled = ag::sum(tokens * mw, 1) / count;  // (N, D)
  return {tokens, pooled};
}

}  // namespace psvae::dit
