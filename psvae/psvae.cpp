#include "psvae/psvae.h"

#include <fmt/format.h>

#include "autograd/grad_mode.h"

namespace psvae {

using ag::Var;

namespace {
void check_config(const Dinov2Config& enc, const SVAEConfig& s) {
  check(s.enc_dim == enc.dim,
        fmt::format("psvae: svae.enc_dim {} must equal the encoder width {}", s.enc_dim, enc.dim));
}
void check_image(const Var& image, const Dinov2Config& enc) {
  check(
      image.rank() == 4 && image.size(1) == enc.in_chans && image.size(2) % enc.patch == 0 &&
          image.size(3) % enc.patch == 0,
      fmt::format("psvae: image must be (N, {}, H, W) with H, W multiples of the patch {}, got {}",
                  enc.in_chans, enc.patch, image.shape().str()));
}
// Patch tokens (N,h,w,D) of an image in [-1,1] (the encoder normalises as DINOv2 expects).
Var encode_image(const Dinov2& encoder, const Var& image) {
  return encoder.forward(imagenet_normalize(image)).patch;
}
}  // namespace

// ---- stage 1 ------------------------------------------------------------------------------------
SVAEModel::SVAEModel(const Config& c, Generator& g) : cfg_(c) {
  check_config(c.encoder, c.svae);
  encoder = register_module("encoder", std::make_shared<Dinov2>(c.encoder, g));
  svae = register_module("svae", std::make_shared<SVAE>(c.svae, g));
  encoder->set_requires_grad(false);
}

Var SVAEModel::features(const Var& image) const {
  check_image(image, cfg_.encoder);
  ag::NoGradGuard no_grad;  // the encoder is frozen: its tokens are inputs, not a graph
  return encode_image(*encoder, image).detach();
}

SVAEModelOutput SVAEModel::forward(const Var& image, Generator* rng) const {
  Var tokens = features(image);  // (N, h, w, D)
  SVAEOutput s = svae->forward(tokens, rng);
  return {s.mu, s.logvar, s.z, s.semantic, tokens};
}

SVAEModelOutput SVAEModel::forward_eps(const Var& image, const Tensor& eps) const {
  Var tokens = features(image);
  SVAEOutput s = svae->forward_eps(tokens, eps);
  return {s.mu, s.logvar, s.z, s.semantic, tokens};
}

// ---- stage 2 ------------------------------------------------------------------------------------
PSVAE::PSVAE(const Config& c, Generator& g) : cfg_(c) {
  check_config(c.encoder, c.svae);
  check(c.pix.latent_dim == c.svae.latent_dim,
        fmt::format("psvae: pix.latent_dim {} must equal svae.latent_dim {}", c.pix.latent_dim,
                    c.svae.latent_dim));
  encoder = register_module("encoder", std::make_shared<Dinov2>(c.encoder, g));
  encoder_ref = register_module("encoder_ref", std::static_pointer_cast<Dinov2>(encoder->clone()));
  encoder_ref->set_requires_grad(false);
  svae = register_module("svae", std::make_shared<SVAE>(c.svae, g));
  pix_dec = register_module("pix_dec", std::make_shared<PixelDecoder>(c.pix, g));
}

std::shared_ptr<PSVAE> PSVAE::from_stage1(const SVAEModel& stage1, const PixelDecoderConfig& pix,
                                          Generator& g) {
  Config c{stage1.config().encoder, stage1.config().svae, pix};
  // The encoders and the S-VAE drawn here are overwritten below; only pix_dec keeps its draw.
  Generator scratch(0);
  auto m = std::make_shared<PSVAE>(c, scratch);
  m->pix_dec->load_state_dict(PixelDecoder(pix, g).state_dict());
  const safetensors::NamedTensors enc = stage1.encoder->state_dict();
  m->encoder->load_state_dict(enc);
  m->encoder_ref->load_state_dict(enc);
  m->svae->load_state_dict(stage1.svae->state_dict());
  m->encoder->set_requires_grad(true);
  m->encoder_ref->set_requires_grad(false);
  m->train(stage1.is_training());
  return m;
}

Var PSVAE::reference_features(const Var& image) const {
  check_image(image, cfg_.encoder);
  ag::NoGradGuard no_grad;
  return encode_image(*encoder_ref, image).detach();
}

PSVAEOutput PSVAE::finish(const Var& image, const SVAEOutput& s) const {
  PSVAEOutput o;
  o.mu = s.mu;
  o.logvar = s.logvar;
  o.z = s.z;
  o.semantic = s.semantic;
  o.target = reference_features(image);
  o.pixels = pix_dec->forward(s.z);  // (N, 3, H, W)
  return o;
}

PSVAEOutput PSVAE::forward(const Var& image, Generator* rng) const {
  check_image(image, cfg_.encoder);
  return finish(image, svae->forward(encode_image(*encoder, image), rng));
}

PSVAEOutput PSVAE::forward_eps(const Var& image, const Tensor& eps) const {
  check_image(image, cfg_.encoder);
  return finish(image, svae->forward_eps(encode_image(*encoder, image), eps));
}

}  // namespace psvae
