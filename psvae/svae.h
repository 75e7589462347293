// S-VAE (spec "S-VAE", psvae_spec.md): compresses encoder patch tokens to a KL-regularised
// latent and decodes them back to the encoder's feature space.
//
//   tokens (N,h,w,D)
//     proj:    in_proj Linear(D,C_w) -> blocks.{i} (pre-norm ViT) -> norm -> out Linear(C_w,2L)
//              -> mu = [:L], logvar = clamp([L:], -30, 20)                       (N,h,w,L) each
//     reparameterisation: z = mu + exp(0.5 logvar) * eps (training), z = mu (evaluation)
//     sem_dec: in_proj Linear(L,C_w) -> blocks.{i} -> norm -> out Linear(C_w,D)  semantic (N,h,w,D)
//
// Blocks are nn::TransformerBlock(C_w, heads, mlp_ratio 4, GELU tanh, qkv bias, no LayerScale,
// LayerNorm eps 1e-6). No position embedding: the encoder's tokens already carry position.
#pragma once
#include <memory>

#include "nn/linear.h"
#include "nn/norm.h"
#include "nn/transformer_block.h"

namespace psvae {

struct SVAEConfig {
  int64_t enc_dim = 384;    // D: the encoder's width
  int64_t latent_dim = 96;  // L
  int64_t width = 384;      // C_w: projector / semantic decoder width
  int depth = 3;            // blocks on each side
  int heads = 6;
};

// One side of the S-VAE (the spec's `proj` and `sem_dec`, same structure):
// x (B,T,in) -> in_proj -> blocks.{i} -> norm -> out -> (B,T,out).
class TokenTransformer : public nn::Cloneable<TokenTransformer> {
 public:
  struct Config {
    int64_t in = 0, width = 0, out = 0;
    int depth = 1;
    int heads = 1;
  };
  TokenTransformer(const Config& c, Generator& g);
  ag::Var forward(const ag::Var& x) const;
  ag::Var operator()(const ag::Var& x) const { return forward(x); }
  const Config& config() const { return cfg_; }

  std::shared_ptr<nn::Linear> in_proj;
  std::shared_ptr<nn::ModuleList> blocks;  // of nn::TransformerBlock
  std::shared_ptr<nn::LayerNorm> norm;
  std::shared_ptr<nn::Linear> out;

 private:
  Config cfg_;
};

struct SVAEPosterior {
  ag::Var mu, logvar;  // (N,h,w,L); logvar clamped to [-30, 20]
};

struct SVAEOutput {
  ag::Var mu, logvar, z;  // (N,h,w,L)
  ag::Var semantic;       // (N,h,w,D)
};

// Submodules `proj` and `sem_dec` (state_dict "proj.blocks.0.attn.qkv.weight", ...; inside the
// PS-VAE they are prefixed "svae.").
class SVAE : public nn::Cloneable<SVAE> {
 public:
  using Config = SVAEConfig;
  static constexpr double kLogvarMin = -30.0, kLogvarMax = 20.0;  // LDM's DiagonalGaussian

  SVAE(const Config& c, Generator& g);

  // tokens (N,h,w,D) -> mu, logvar (N,h,w,L).
  SVAEPosterior encode(const ag::Var& tokens) const;
  // z (N,h,w,L) -> semantic (N,h,w,D).
  ag::Var decode(const ag::Var& z) const;
  // rng null: evaluation, z = mu. Otherwise eps ~ N(0,1) of mu's shape, dtype and device is drawn
  // from rng (advancing it) and z = mu + exp(0.5 logvar) * eps.
  SVAEOutput forward(const ag::Var& tokens, Generator* rng) const;
  // The same with a given eps (N,h,w,L) (gradcheck, parity tests): deterministic.
  SVAEOutput forward_eps(const ag::Var& tokens, const Tensor& eps) const;

  // mu + exp(0.5 logvar) * eps.
  static ag::Var reparameterize(const ag::Var& mu, const ag::Var& logvar, const Tensor& eps);

  const Config& config() const { return cfg_; }

  std::shared_ptr<TokenTransformer> proj, sem_dec;

 private:
  SVAEOutput decode_all(const SVAEPosterior& post, const ag::Var& z) const;
  Config cfg_;
};

}  // namespace psvae
