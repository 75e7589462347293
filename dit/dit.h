// DiT, the diffusion transformer with adaLN-Zero conditioning (Peebles & Xie 2023), exactly as
// facebookresearch/DiT models.py, with its state_dict names so released checkpoints load unchanged.
//
//   x (N, C, H, W), H = W = input_size;  t (N) diffusion steps (float or integer);  y (N) i64
//   labels
//     x_embedder.proj: Conv2d(C, D, p, stride p), flatten, transpose   -> (N, T, D), T = (H/p)^2
//     + pos_embed (1, T, D): fixed 2D sin-cos table, stored in the state_dict
//     c = t_embedder(t) + y_embedder(y)                                   (N, D)
//         t_embedder: 256 sinusoidal features [cos, sin] -> mlp.0 Linear(256, D), SiLU, mlp.2
//         Linear(D, D) y_embedder: embedding_table (num_classes + 1, D); row num_classes is the
//         null label
//     blocks.{i} (depth times), with (shift, scale, gate) x 2 = adaLN_modulation.1(SiLU(c)):
//         x += gate_msa * attn(modulate(norm1 x, shift_msa, scale_msa))
//         x += gate_mlp * mlp(modulate(norm2 x, shift_mlp, scale_mlp))
//     final_layer: modulate(norm_final x, shift, scale) with adaLN_modulation.1 Linear(D, 2D),
//         linear Linear(D, p*p*C_out)                                    -> (N, T, p*p*C_out)
//     unpatchify (N, h, w, p, p, C_out) -> (N, C_out, H, W)
//   All LayerNorms are eps 1e-6 without affine (no state). C_out = 2C with learn_sigma (eps, then
//   the variance interpolation v), else C. Label dropout for CFG is the caller's business: pass
//   the null label num_classes.
#pragma once
#include <memory>
#include <string>

#include "nn/attention.h"
#include "nn/linear.h"
#include "nn/mlp.h"

namespace psvae::dit {

struct DiTConfig {
  int64_t input_size = 32;  // latent H = W
  int patch = 2;
  int in_channels = 4;
  int64_t hidden = 1152;
  int depth = 28;
  int heads = 16;
  double mlp_ratio = 4.0;
  int64_t num_classes = 1000;
  bool learn_sigma = true;
  int64_t freq_dim = 256;  // timestep frequency features
  // Text conditioning (0 = off, the published class-conditional DiT). When > 0 every block gets a
  // cross-attention to the (N, S, context_dim) text tokens after its self-attention, PixArt-alpha
  // style (x += cross_attn(x, tokens), no norm or gate), and c = t_embedder(t) + y_embedder(y)
  // + pool_embedder(pooled) with pooled (N, context_dim). num_classes may then be 0: no
  // y_embedder.
  int64_t context_dim = 0;

  int out_channels() const { return learn_sigma ? 2 * in_channels : in_channels; }
  int64_t grid() const { return input_size / patch; }
  int64_t tokens() const { return grid() * grid(); }
};

// "DiT-S/2" ... "DiT-XL/8" (the "DiT-" prefix is optional): S 12 x 384, 6 heads; B 12 x 768, 12;
// L 24 x 1024, 16; XL 28 x 1152, 16; patch 2, 4 or 8. Other fields keep DiTConfig's defaults
// (input 32, 4 channels, 1000 classes, learn_sigma). Throws naming the choices.
DiTConfig dit_arch(const std::string& name);

// The configuration of a DiT state dict: hidden from pos_embed's D, input_size from its T and the
// patch, channels and patch from x_embedder.proj.weight (D, C, p, p), num_classes from the label
// table rows - 1, learn_sigma from final_layer.linear rows / (p*p*C), depth from the block count,
// mlp_ratio from fc1; a text DiT's context_dim from blocks.0.cross_attn.kv.weight (2D, Dc), and
// num_classes 0 when there is no y_embedder. Heads are not in the weights: `heads` when > 0, else
// the published rule (16 for D >= 1024, else D / 64: S 6, B 12, L 16, XL 16). Throws on missing or
// inconsistent keys.
DiTConfig infer_dit_config(const safetensors::NamedTensors& sd, int heads = 0);

// x_embedder: x (N, C, H, W) -> (N, T, D) via proj (conv, flatten, transpose, as timm PatchEmbed).
class DiTPatchEmbed : public nn::Cloneable<DiTPatchEmbed> {
 public:
  struct Config {
    int in_channels = 4;
    int64_t dim = 0;
    int patch = 2;
  };
  DiTPatchEmbed(const Config& c, Generator& g);
  ag::Var forward(const ag::Var& x) const;
  const Config& config() const { return cfg_; }

  std::shared_ptr<nn::Conv2d> proj;

 private:
  Config cfg_;
};

// t_embedder: t (N) -> (N, D) = mlp.2(SiLU(mlp.0(timestep_embedding(t, freq_dim)))).
class TimestepEmbedder : public nn::Cloneable<TimestepEmbedder> {
 public:
  struct Config {
    int64_t dim = 0, freq_dim = 256;
  };
  TimestepEmbedder(const Config& c, Generator& g);
  ag::Var forward(const Tensor& t) const;
  const Config& config() const { return cfg_; }

  std::shared_ptr<nn::Linear> fc0, fc2;  // state names mlp.0, mlp.2 (mlp.1 is the SiLU)

 private:
  Config cfg_;
};

// y_embedder: y (N) i64 in [0, num_classes] -> (N, D); num_classes is the null (unconditional) row.
class LabelEmbedder : public nn::Cloneable<LabelEmbedder> {
 public:
  struct Config {
    int64_t num_classes = 0, dim = 0;
  };
  LabelEmbedder(const Config& c, Generator& g);
  ag::Var forward(const Tensor& y) const;
  const Config& config() const { return cfg_; }

  std::shared_ptr<nn::Embedding> embedding_table;

 private:
  Config cfg_;
};

// pool_embedder (text conditioning): pooled (N, Dc) -> (N, D) = mlp.2(SiLU(mlp.0(pooled))).
class PoolEmbedder : public nn::Cloneable<PoolEmbedder> {
 public:
  struct Config {
    int64_t context_dim = 0, dim = 0;
  };
  PoolEmbedder(const Config& c, Generator& g);
  ag::Var forward(const ag::Var& pooled) const;
  const Config& config() const { return cfg_; }

  std::shared_ptr<nn::Linear> fc0, fc2;  // state names mlp.0, mlp.2

 private:
  Config cfg_;
};

// What a DiT is conditioned on besides t. Class-conditional: y. Text: context (+ mask) and pooled.
struct DiTCond {
  Tensor y;             // (N) i64 labels in [0, num_classes]; needed iff num_classes > 0
  ag::Var context;      // (N, S, context_dim) text tokens; needed iff context_dim > 0
  Tensor context_mask;  // (N, S) i32, 1 = attend; undefined = every token
  ag::Var pooled;       // (N, context_dim); needed iff context_dim > 0
};

class DiTBlock : public nn::Cloneable<DiTBlock> {
 public:
  struct Config {
    int64_t dim = 0;
    int heads = 1;
    double mlp_ratio = 4.0;
    int64_t context_dim = 0;  // > 0: cross_attn after attn
  };
  DiTBlock(const Config& c, Generator& g);
  // x (N, T, D), c (N, D), context (N, S, Dc) when context_dim > 0 -> (N, T, D)
  ag::Var forward(const ag::Var& x, const ag::Var& c, const ag::Var& context = ag::Var(),
                  const Tensor& context_mask = Tensor()) const;
  const Config& config() const { return cfg_; }

  std::shared_ptr<nn::Attention> attn;
  std::shared_ptr<nn::CrossAttention> cross_attn;  // null unless context_dim > 0
  std::shared_ptr<nn::Mlp> mlp;
  std::shared_ptr<nn::Linear> adaLN;  // adaLN_modulation.1: Linear(D, 6D)

 private:
  Config cfg_;
};

class FinalLayer : public nn::Cloneable<FinalLayer> {
 public:
  struct Config {
    int64_t dim = 0;
    int patch = 2;
    int out_channels = 4;
  };
  FinalLayer(const Config& c, Generator& g);
  // x (N, T, D), c (N, D) -> (N, T, p*p*C_out)
  ag::Var forward(const ag::Var& x, const ag::Var& c) const;
  const Config& config() const { return cfg_; }

  std::shared_ptr<nn::Linear> linear;
  std::shared_ptr<nn::Linear> adaLN;  // adaLN_modulation.1: Linear(D, 2D)

 private:
  Config cfg_;
};

class DiT : public nn::Cloneable<DiT> {
 public:
  using Config = DiTConfig;
  // The published initialisation: every Linear xavier_uniform with zero bias; the patch conv
  // xavier_uniform on its weight viewed (D, -1), zero bias; label table and t-MLP weights
  // N(0, 0.02); every adaLN_modulation last Linear and final_layer.linear zero (adaLN-Zero: a
  // fresh model outputs exactly 0). Text conditioning: cross_attn Linears xavier_uniform with zero
  // bias except cross_attn.proj, which starts at zero (the cross-attention has no gate, so this is
  // what keeps a fresh text DiT at exactly 0); pool_embedder weights N(0, 0.02) as the t-MLP's.
  // pos_embed is the fixed sin-cos table (a buffer: stored in the
  // state_dict first, as upstream's requires_grad=False parameter, but never trained).
  DiT(const Config& c, Generator& g);

  // x (N, C, H, W) with H = W = input_size, t (N) float or integer steps, y (N) i64 labels
  // (num_classes = null) -> (N, C_out, H, W).
  ag::Var forward(const ag::Var& x, const Tensor& t, const Tensor& y) const;
  ag::Var operator()(const ag::Var& x, const Tensor& t, const Tensor& y) const {
    return forward(x, t, y);
  }
  // The general form: class and/or text conditioning (see DiTCond). Throws naming the missing or
  // unexpected input (labels to a model without classes, text to one without cross-attention).
  ag::Var forward(const ag::Var& x, const Tensor& t, const DiTCond& cond) const;
  // (N, T, p*p*C_out) -> (N, C_out, H, W); inside a token the channel varies fastest.
  ag::Var unpatchify(const ag::Var& x) const;

  const Config& config() const { return cfg_; }
  const Tensor& pos_embed() const { return *pos_embed_; }

  std::shared_ptr<DiTPatchEmbed> x_embedder;
  std::shared_ptr<TimestepEmbedder> t_embedder;
  std::shared_ptr<LabelEmbedder> y_embedder;    // null when num_classes == 0
  std::shared_ptr<PoolEmbedder> pool_embedder;  // null unless context_dim > 0
  std::shared_ptr<nn::ModuleList> blocks;
  std::shared_ptr<FinalLayer> final_layer;

 private:
  Config cfg_;
  Tensor* pos_embed_ = nullptr;
};

// infer_dit_config + construct + strict load_state_dict (in the weights' dtype).
std::shared_ptr<DiT> load_dit(const safetensors::NamedTensors& sd, int heads = 0);

}  // namespace psvae::dit
