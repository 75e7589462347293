#include "dit/dit.h"

#include <fmt/format.h>

#include <cmath>
#include <map>
#include <stdexcept>

#include "dit/pos_embed.h"
#include "nn/init.h"

namespace psvae::dit {

using ag::Var;
using safetensors::NamedTensors;

// ---- configs ------------------------------------------------------------------------------------
DiTConfig dit_arch(const std::string& name) {
  std::string n = name;
  if (n.rfind("DiT-", 0) == 0) n = n.substr(4);
  const size_t slash = n.find('/');
  DiTConfig c;
  const std::string size = slash == std::string::npos ? "" : n.substr(0, slash);
  const std::string patch = slash == std::string::npos ? "" : n.substr(slash + 1);
  bool ok = patch == "2" || patch == "4" || patch == "8";
  if (size == "S") {
    c.depth = 12, c.hidden = 384, c.heads = 6;
  } else if (size == "B") {
    c.depth = 12, c.hidden = 768, c.heads = 12;
  } else if (size == "L") {
    c.depth = 24, c.hidden = 1024, c.heads = 16;
  } else if (size == "XL") {
    c.depth = 28, c.hidden = 1152, c.heads = 16;
  } else {
    ok = false;
  }
  if (!ok)
    throw std::invalid_argument(fmt::format(
        "dit: unknown arch '{}' (choose DiT-{{S,B,L,XL}}/{{2,4,8}}, e.g. DiT-XL/2)", name));
  c.patch = patch[0] - '0';
  return c;
}

DiTConfig infer_dit_config(const NamedTensors& sd, int heads) {
  std::map<std::string, Tensor> m;
  for (const auto& [k, t] : sd) m.emplace(k, t);
  auto get = [&](const std::string& k, int rank) -> const Tensor& {
    auto it = m.find(k);
    if (it == m.end()) throw std::invalid_argument(fmt::format("dit weights: missing '{}'", k));
    check(it->second.rank() == rank, fmt::format("dit weights: '{}' has shape {}, expected rank {}",
                                                 k, it->second.shape().str(), rank));
    return it->second;
  };
  DiTConfig c;
  const Tensor& pos = get("pos_embed", 3);              // (1, T, D)
  const Tensor& pw = get("x_embedder.proj.weight", 4);  // (D, C, p, p)
  c.hidden = pos.size(2);
  c.in_channels = static_cast<int>(pw.size(1));
  c.patch = static_cast<int>(pw.size(2));
  const int64_t T = pos.size(1);
  const auto g = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(T))));
  check(g * g == T && pw.size(0) == c.hidden && pw.size(3) == c.patch,
        fmt::format("dit weights: pos_embed {} and x_embedder.proj.weight {} do not fit a square "
                    "grid of width {}",
                    pos.shape().str(), pw.shape().str(), c.hidden));
  c.input_size = g * c.patch;
  // Text DiTs may have no label table (num_classes 0); class DiTs have no cross-attention.
  c.num_classes = m.count("y_embedder.embedding_table.weight")
                      ? get("y_embedder.embedding_table.weight", 2).size(0) - 1
                      : 0;
  c.context_dim = m.count("blocks.0.cross_attn.kv.weight")
                      ? get("blocks.0.cross_attn.kv.weight", 2).size(1)
                      : 0;
  c.freq_dim = get("t_embedder.mlp.0.weight", 2).size(1);
  const int64_t out = get("final_layer.linear.weight", 2).size(0);
  const int64_t pp = static_cast<int64_t>(c.patch) * c.patch;
  check(out == pp * c.in_channels || out == 2 * pp * c.in_channels,
        fmt::format("dit weights: final_layer.linear has {} rows, expected {} or {}", out,
                    pp * c.in_channels, 2 * pp * c.in_channels));
  c.learn_sigma = out == 2 * pp * c.in_channels;
  c.depth = 0;
  while (m.count(fmt::format("blocks.{}.attn.qkv.weight", c.depth))) ++c.depth;
  check(c.depth > 0, "dit weights: no blocks.0.attn.qkv.weight");
  c.mlp_ratio = static_cast<double>(get("blocks.0.mlp.fc1.weight", 2).size(0)) /
                static_cast<double>(c.hidden);
  // Heads are not in the weights; the published sizes use 64-wide heads up to B and 16 heads
  // from L on (XL: 1152 / 16 = 72).
  c.heads = heads > 0 ? heads : (c.hidden >= 1024 ? 16 : static_cast<int>(c.hidden / 64));
  check(c.heads > 0 && c.hidden % c.heads == 0,
        fmt::format("dit weights: width {} does not split into {} heads", c.hidden, c.heads));
  return c;
}

// ---- embedders ----------------------------------------------------------------------------------
DiTPatchEmbed::DiTPatchEmbed(const Config& c, Generator& g) : cfg_(c) {
  proj = register_module(
      "proj", std::make_shared<nn::Conv2d>(
                  nn::Conv2d::Config{c.in_channels, c.dim, c.patch, c.patch, 0, true}, g));
}

Var DiTPatchEmbed::forward(const Var& x) const {
  const int64_t N = x.size(0), H = x.size(2), W = x.size(3), p = cfg_.patch;
  Var y = proj->forward(x);  // (N, D, h, w)
  return ag::transpose(ag::reshape(y, Shape{N, cfg_.dim, (H / p) * (W / p)}), 1, 2);  // (N, T, D)
}

TimestepEmbedder::TimestepEmbedder(const Config& c, Generator& g) : cfg_(c) {
  auto mlp = register_module("mlp", std::make_shared<nn::ModuleList>());
  fc0 = mlp->register_module("0", std::make_shared<nn::Linear>(c.freq_dim, c.dim, true, g));
  fc2 = mlp->register_module("2", std::make_shared<nn::Linear>(c.dim, c.dim, true, g));
}

Var TimestepEmbedder::forward(const Tensor& t) const {
  const Var& w = fc0->weight();
  Var f(timestep_embedding(t, cfg_.freq_dim, w.dtype()).to(w.device()));  // (N, 256)
  return fc2->forward(ag::silu(fc0->forward(f)));                         // (N, D)
}

LabelEmbedder::LabelEmbedder(const Config& c, Generator& g) : cfg_(c) {
  embedding_table = register_module("embedding_table",
                                    std::make_shared<nn::Embedding>(c.num_classes + 1, c.dim, g));
}

Var LabelEmbedder::forward(const Tensor& y) const {
  check(y.rank() == 1, fmt::format("dit: labels must be (N), got {}", y.shape().str()));
  return embedding_table->forward(y.to(embedding_table->weight().device()));
}

PoolEmbedder::PoolEmbedder(const Config& c, Generator& g) : cfg_(c) {
  auto mlp = register_module("mlp", std::make_shared<nn::ModuleList>());
  fc0 = mlp->register_module("0", std::make_shared<nn::Linear>(c.context_dim, c.dim, true, g));
  fc2 = mlp->register_module("2", std::make_shared<nn::Linear>(c.dim, c.dim, true, g));
}

Var PoolEmbedder::forward(const Var& pooled) const {
  check(pooled.rank() == 2 && pooled.size(1) == cfg_.context_dim,
        fmt::format("dit: pooled text must be (N, {}), got {}", cfg_.context_dim,
                    pooled.shape().str()));
  return fc2->forward(ag::silu(fc0->forward(pooled)));
}

// ---- blocks -------------------------------------------------------------------------------------
namespace {
// LayerNorm without affine weights (eps 1e-6) then x (1 + scale) + shift per sample: one fused op
// (kernels/cpu/adaln.cpp, kernels/cuda/norm.cu).
Var norm_modulate(const Var& x, const Var& shift, const Var& scale) {
  return ag::layernorm_modulate(x, shift, scale, 1e-6);
}
}  // namespace

DiTBlock::DiTBlock(const Config& c, Generator& g) : cfg_(c) {
  attn = register_module(
      "attn", std::make_shared<nn::Attention>(nn::Attention::Config{c.dim, c.heads, true}, g));
  if (c.context_dim > 0)
    cross_attn = register_module(
        "cross_attn", std::make_shared<nn::CrossAttention>(
                          nn::CrossAttention::Config{c.dim, c.context_dim, c.heads, true}, g));
  const auto hidden = static_cast<int64_t>(static_cast<double>(c.dim) * c.mlp_ratio);
  mlp = register_module(
      "mlp", std::make_shared<nn::Mlp>(
                 nn::Mlp::Config{c.dim, hidden, c.dim, nn::Activation::GeluTanh, true}, g));
  auto seq = register_module("adaLN_modulation", std::make_shared<nn::ModuleList>());
  adaLN = seq->register_module("1", std::make_shared<nn::Linear>(c.dim, 6 * c.dim, true, g));
}

Var DiTBlock::forward(const Var& x, const Var& c, const Var& context,
                      const Tensor& context_mask) const {
  const int64_t D = cfg_.dim;
  // (N, 6D) -> shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, each (N, D).
  auto m = ag::split(adaLN->forward(ag::silu(c)), {D, D, D, D, D, D}, 1);
  // x + gate * f(modulate(LN(x))) for f = attention, then the MLP: the gated residual is fused too.
  Var h = ag::gated_residual(x, m[2], attn->forward(norm_modulate(x, m[0], m[1])));
  // PixArt-alpha: the text enters through a plain residual cross-attention (no norm, no gate).
  if (cross_attn) h = h + cross_attn->forward(h, context, context_mask);
  return ag::gated_residual(h, m[5], mlp->forward(norm_modulate(h, m[3], m[4])));
}

FinalLayer::FinalLayer(const Config& c, Generator& g) : cfg_(c) {
  linear = register_module(
      "linear", std::make_shared<nn::Linear>(
                    c.dim, static_cast<int64_t>(c.patch) * c.patch * c.out_channels, true, g));
  auto seq = register_module("adaLN_modulation", std::make_shared<nn::ModuleList>());
  adaLN = seq->register_module("1", std::make_shared<nn::Linear>(c.dim, 2 * c.dim, true, g));
}

Var FinalLayer::forward(const Var& x, const Var& c) const {
  auto m = ag::split(adaLN->forward(ag::silu(c)), {cfg_.dim, cfg_.dim}, 1);  // shift, scale
  return linear->forward(norm_modulate(x, m[0], m[1]));
}

// ---- the model ----------------------------------------------------------------------------------
DiT::DiT(const Config& c, Generator& g) : cfg_(c) {
  check(
      c.hidden > 0 && c.hidden % 4 == 0 && c.depth > 0 && c.heads > 0 && c.hidden % c.heads == 0 &&
          c.patch > 0 && c.input_size % c.patch == 0 && c.num_classes >= 0 && c.context_dim >= 0,
      fmt::format("dit: bad config (input {}, patch {}, hidden {}, depth {}, heads {}, classes "
                  "{}, context_dim {})",
                  c.input_size, c.patch, c.hidden, c.depth, c.heads, c.num_classes, c.context_dim));
  const int64_t D = c.hidden;
  // Upstream registers pos_embed on the root, so it leads the state_dict.
  Tensor pe = get_2d_sincos_pos_embed(D, c.grid()).reshape({1, c.tokens(), D});
  pos_embed_ = &register_buffer("pos_embed", nn::convert_float(pe, DType::F32));
  x_embedder = register_module(
      "x_embedder",
      std::make_shared<DiTPatchEmbed>(DiTPatchEmbed::Config{c.in_channels, D, c.patch}, g));
  t_embedder = register_module(
      "t_embedder", std::make_shared<TimestepEmbedder>(TimestepEmbedder::Config{D, c.freq_dim}, g));
  if (c.num_classes > 0)
    y_embedder = register_module(
        "y_embedder", std::make_shared<LabelEmbedder>(LabelEmbedder::Config{c.num_classes, D}, g));
  if (c.context_dim > 0)
    pool_embedder = register_module(
        "pool_embedder", std::make_shared<PoolEmbedder>(PoolEmbedder::Config{c.context_dim, D}, g));
  blocks = register_module("blocks", std::make_shared<nn::ModuleList>());
  for (int i = 0; i < c.depth; ++i)
    blocks->push_back(
        std::make_shared<DiTBlock>(DiTBlock::Config{D, c.heads, c.mlp_ratio, c.context_dim}, g));
  final_layer = register_module(
      "final_layer",
      std::make_shared<FinalLayer>(FinalLayer::Config{D, c.patch, c.out_channels()}, g));

  // initialize_weights: _basic_init (xavier_uniform Linear weights, zero biases) ...
  for (auto& [name, v] : named_parameters()) {
    Tensor t = v.data();
    const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (bias)
      nn::init::zeros_(t);
    else if (t.rank() == 2 && name != "y_embedder.embedding_table.weight")
      nn::init::xavier_uniform_(t, g);
  }
  // ... the patch conv like a Linear on its weight viewed (D, C*p*p) ...
  Tensor pw = x_embedder->proj->weight().data().reshape({D, -1});
  nn::init::xavier_uniform_(pw, g);
  // ... embeddings N(0, 0.02) (the pooled-text MLP like the timestep MLP) ...
  if (y_embedder) {
    Tensor table = y_embedder->embedding_table->weight().data();
    nn::init::normal_(table, g, 0.02);
  }
  std::vector<nn::Linear*> small = {t_embedder->fc0.get(), t_embedder->fc2.get()};
  if (pool_embedder)
    small.insert(small.end(), {pool_embedder->fc0.get(), pool_embedder->fc2.get()});
  for (auto* l : small) {
    Tensor w = l->weight().data();
    nn::init::normal_(w, g, 0.02);
  }
  // ... and adaLN-Zero: every modulation and the output projection start at zero. The text
  // cross-attention has no gate, so its output projection starts at zero instead: a fresh text
  // DiT is still exactly 0, and each block starts as the identity on the text path.
  std::vector<nn::Linear*> zero = {final_layer->adaLN.get(), final_layer->linear.get()};
  for (size_t i = 0; i < blocks->size(); ++i) {
    const DiTBlock& b = blocks->at<DiTBlock>(i);
    zero.push_back(b.adaLN.get());
    if (b.cross_attn) zero.push_back(b.cross_attn->proj.get());
  }
  for (nn::Linear* l : zero) {
    Tensor w = l->weight().data(), b = l->bias()->data();
    nn::init::zeros_(w);
    nn::init::zeros_(b);
  }
}

Var DiT::unpatchify(const Var& x) const {
  const int64_t N = x.size(0), c = cfg_.out_channels(), p = cfg_.patch, h = cfg_.grid();
  Var y = ag::reshape(x, Shape{N, h, h, p, p, c});
  y = ag::permute(y, {0, 5, 1, 3, 2, 4});  // nhwpqc -> nchpwq
  return ag::reshape(y, Shape{N, c, h * p, h * p});
}

Var DiT::forward(const Var& x, const Tensor& t, const Tensor& y) const {
  DiTCond cond;
  cond.y = y;
  return forward(x, t, cond);
}

Var DiT::forward(const Var& x, const Tensor& t, const DiTCond& cond) const {
  const int64_t N = x.size(0), S = cfg_.input_size;
  check(x.rank() == 4 && x.size(1) == cfg_.in_channels && x.size(2) == S && x.size(3) == S,
        fmt::format("dit: x must be (N, {}, {}, {}), got {}", cfg_.in_channels, S, S,
                    x.shape().str()));
  check(t.rank() == 1 && t.size(0) == N,
        fmt::format("dit: t must be ({}), got {}", N, t.shape().str()));
  Var h = x_embedder->forward(x) + Var(*pos_embed_);  // (N, T, D)
  Var c = t_embedder->forward(t);                     // (N, D)
  if (y_embedder) {
    check(cond.y.defined() && cond.y.rank() == 1 && cond.y.size(0) == N,
          fmt::format("dit: y must be ({}) labels, got {}", N,
                      cond.y.defined() ? cond.y.shape().str() : "none"));
    c = c + y_embedder->forward(cond.y);
  } else {
    check(!cond.y.defined(), "dit: labels given to a model without classes (num_classes 0)");
  }
  if (pool_embedder) {
    const int64_t Dc = cfg_.context_dim;
    check(cond.context.defined() && cond.context.rank() == 3 && cond.context.size(0) == N &&
              cond.context.size(2) == Dc,
          fmt::format("dit: context must be ({}, S, {}), got {}", N, Dc,
                      cond.context.defined() ? cond.context.shape().str() : "none"));
    const Tensor& mk = cond.context_mask;
    check(!mk.defined() || (mk.rank() == 2 && mk.size(0) == N &&
                            mk.size(1) == cond.context.size(1) && mk.dtype() == DType::I32),
          fmt::format("dit: context_mask must be ({}, {}) i32, got {}", N, cond.context.size(1),
                      mk.defined() ? mk.str() : "none"));
    check(cond.pooled.defined() && cond.pooled.rank() == 2 && cond.pooled.size(0) == N,
          fmt::format("dit: pooled must be ({}, {}), got {}", N, Dc,
                      cond.pooled.defined() ? cond.pooled.shape().str() : "none"));
    c = c + pool_embedder->forward(cond.pooled);
  } else {
    check(!cond.context.defined() && !cond.pooled.defined(),
          "dit: text context given to a model without cross-attention (context_dim 0)");
  }
  const Tensor mask = cond.context_mask.defined() ? cond.context_mask.to(h.device()) : Tensor();
  for (size_t i = 0; i < blocks->size(); ++i)
    h = blocks->at<DiTBlock>(i).forward(h, c, cond.context, mask);
  return unpatchify(final_layer->forward(h, c));  // (N, C_out, H, W)
}

std::shared_ptr<DiT> load_dit(const NamedTensors& sd, int heads) {
  DiTConfig c = infer_dit_config(sd, heads);
  Generator g(0);
  auto m = std::make_shared<DiT>(c, g);
  for (const auto& [k, t] : sd)
    if (k == "pos_embed" && t.dtype() != DType::F32) m->to(t.dtype());
  m->load_state_dict(sd, true);
  return m;
}

}  // namespace psvae::dit
