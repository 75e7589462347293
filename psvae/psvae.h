// The two training stages of the PS-VAE (spec "PS-VAE module", psvae_spec.md).
//
// Stage 1, SVAEModel: `encoder` (DINOv2, frozen) + `svae`.
//   image (N,3,H,W) in [-1,1] -> imagenet_normalize -> encoder -> tokens (N,h,w,D)
//     -> svae -> mu, logvar, z (N,h,w,L), semantic (N,h,w,D); target = tokens (no graph).
// Stage 2, PSVAE: `encoder` (trainable), `encoder_ref` (frozen copy of the stage-1 encoder, the
//   semantic target; saved so resume is exact), `svae`, `pix_dec`.
//   image -> encoder -> svae -> mu, logvar, z, semantic; pixels = pix_dec(z) (N,3,H,W);
//   target = encoder_ref(image) computed under NoGradGuard.
// state_dict names: "encoder.blocks.0.attn.qkv.weight", "encoder_ref....", "svae.proj....",
// "svae.sem_dec....", "pix_dec.levels.1.res.0.nin_shortcut.weight", ...
#pragma once
#include <memory>

#include "psvae/dinov2.h"
#include "psvae/pixel_decoder.h"
#include "psvae/svae.h"

namespace psvae {

struct SVAEModelConfig {
  Dinov2Config encoder;
  SVAEConfig svae;
};

struct PSVAEConfig {
  Dinov2Config encoder;
  SVAEConfig svae;
  PixelDecoderConfig pix;
};

struct SVAEModelOutput {
  ag::Var mu, logvar, z;  // (N,h,w,L)
  ag::Var semantic;       // (N,h,w,D)
  ag::Var target;         // (N,h,w,D): the features `semantic` is trained to match; no graph
};

struct PSVAEOutput : SVAEModelOutput {
  ag::Var pixels;  // (N,3,H,W)
};

// Stage 1. The encoder is frozen (requires_grad false) at construction.
class SVAEModel : public nn::Cloneable<SVAEModel> {
 public:
  using Config = SVAEModelConfig;
  SVAEModel(const Config& c, Generator& g);

  // image (N,3,H,W) in [-1,1]. rng null: evaluation (z = mu); else eps is drawn from rng.
  SVAEModelOutput forward(const ag::Var& image, Generator* rng) const;
  // With a given eps (N,h,w,L): deterministic (gradcheck, parity).
  SVAEModelOutput forward_eps(const ag::Var& image, const Tensor& eps) const;
  // Encoder patch tokens (N,h,w,D) of an image in [-1,1], under NoGradGuard.
  ag::Var features(const ag::Var& image) const;

  const Config& config() const { return cfg_; }

  std::shared_ptr<Dinov2> encoder;
  std::shared_ptr<SVAE> svae;

 private:
  Config cfg_;
};

// Stage 2. encoder trainable, encoder_ref frozen; built from scratch encoder_ref is a copy of
// encoder.
class PSVAE : public nn::Cloneable<PSVAE> {
 public:
  using Config = PSVAEConfig;
  PSVAE(const Config& c, Generator& g);

  // Stage 2 from a trained stage 1: encoder and encoder_ref both copies of stage1.encoder, svae a
  // copy of stage1.svae, pix_dec freshly initialised from g.
  static std::shared_ptr<PSVAE> from_stage1(const SVAEModel& stage1, const PixelDecoderConfig& pix,
                                            Generator& g);

  // image (N,3,H,W) in [-1,1]. rng null: evaluation (z = mu); else eps is drawn from rng.
  PSVAEOutput forward(const ag::Var& image, Generator* rng) const;
  // With a given eps (N,h,w,L): deterministic (gradcheck, parity).
  PSVAEOutput forward_eps(const ag::Var& image, const Tensor& eps) const;
  // encoder_ref's patch tokens (N,h,w,D) under NoGradGuard: the semantic target.
  ag::Var reference_features(const ag::Var& image) const;

  const Config& config() const { return cfg_; }

  std::shared_ptr<Dinov2> encoder;
  std::shared_ptr<Dinov2> encoder_ref;
  std::shared_ptr<SVAE> svae;
  std::shared_ptr<PixelDecoder> pix_dec;

 private:
  PSVAEOutput finish(const ag::Var& image, const SVAEOutput& s) const;
  Config cfg_;
};

}  // namespace psvae
