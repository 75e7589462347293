#include "psvae/svae.h"

#include <fmt/format.h>

#include "autograd/autocast.h"

namespace psvae {

using ag::Var;

// ---- proj / sem_dec -----------------------------------------------------------------------------
TokenTransformer::TokenTransformer(const Config& c, Generator& g) : cfg_(c) {
  check(
      c.in > 0 && c.width > 0 && c.out > 0 && c.depth >= 0 && c.heads > 0 && c.width % c.heads == 0,
      fmt::format("svae: bad transformer config (in {}, width {}, out {}, depth {}, heads {})",
                  c.in, c.width, c.out, c.depth, c.heads));
  in_proj = register_module("in_proj", std::make_shared<nn::Linear>(c.in, c.width, true, g));
  nn::TransformerBlock::Config bc;
  bc.dim = c.width;
  bc.heads = c.heads;
  bc.mlp_ratio = 4.0;
  bc.eps = 1e-6;
  bc.act = nn::Activation::GeluTanh;
  bc.swiglu = false;
  bc.layerscale.reset();
  bc.qkv_bias = true;
  blocks = register_module("blocks", std::make_shared<nn::ModuleList>());
  for (int i = 0; i < c.depth; ++i)
    blocks->push_back(std::make_shared<nn::TransformerBlock>(bc, g));
  norm = register_module("norm",
                         std::make_shared<nn::LayerNorm>(nn::LayerNorm::Config{c.width, 1e-6}, g));
  out = register_module("out", std::make_shared<nn::Linear>(c.width, c.out, true, g));
}

Var TokenTransformer::forward(const Var& x) const {
  Var y = in_proj->forward(x);  // (B, T, C_w)
  for (size_t i = 0; i < blocks->size(); ++i) y = blocks->at<nn::TransformerBlock>(i).forward(y);
  return out->forward(norm->forward(y));  // (B, T, out)
}

// ---- S-VAE --------------------------------------------------------------------------------------
SVAE::SVAE(const Config& c, Generator& g) : cfg_(c) {
  check(c.enc_dim > 0 && c.latent_dim > 0,
        fmt::format("svae: bad config (enc_dim {}, latent_dim {})", c.enc_dim, c.latent_dim));
  proj = register_module(
      "proj",
      std::make_shared<TokenTransformer>(
          TokenTransformer::Config{c.enc_dim, c.width, 2 * c.latent_dim, c.depth, c.heads}, g));
  sem_dec = register_module(
      "sem_dec",
      std::make_shared<TokenTransformer>(
          TokenTransformer::Config{c.latent_dim, c.width, c.enc_dim, c.depth, c.heads}, g));
}

SVAEPosterior SVAE::encode(const Var& tokens) const {
  check(tokens.rank() == 4 && tokens.size(3) == cfg_.enc_dim,
        fmt::format("svae: tokens must be (N, h, w, {}), got {}", cfg_.enc_dim,
                    tokens.shape().str()));
  const int64_t N = tokens.size(0), h = tokens.size(1), w = tokens.size(2), L = cfg_.latent_dim;
  Var moments = proj->forward(ag::reshape(tokens, Shape{N, h * w, cfg_.enc_dim}));  // (N,hw,2L)
  moments = ag::reshape(moments, Shape{N, h, w, 2 * L});
  SVAEPosterior p;
  p.mu = ag::narrow(moments, 3, 0, L);
  p.logvar = ag::clamp(ag::narrow(moments, 3, L, L), kLogvarMin, kLogvarMax);
  return p;
}

Var SVAE::decode(const Var& z) const {
  check(z.rank() == 4 && z.size(3) == cfg_.latent_dim,
        fmt::format("svae: z must be (N, h, w, {}), got {}", cfg_.latent_dim, z.shape().str()));
  const int64_t N = z.size(0), h = z.size(1), w = z.size(2);
  Var s = sem_dec->forward(ag::reshape(z, Shape{N, h * w, cfg_.latent_dim}));  // (N, hw, D)
  return ag::reshape(s, Shape{N, h, w, cfg_.enc_dim});
}

Var SVAE::reparameterize(const Var& mu, const Var& logvar, const Tensor& eps) {
  // Under bf16 autocast mu is bf16 and eps f32: the sum is formed in f32 (autograd/autocast.h).
  check(eps.shape() == mu.shape() &&
            (eps.dtype() == mu.dtype() || (ag::autocast_enabled() && is_floating(eps.dtype()))),
        fmt::format("svae: eps must match mu {} {}, got {} {}", mu.shape().str(),
                    dtype_name(mu.dtype()), eps.shape().str(), dtype_name(eps.dtype())));
  return ag::add(mu, ag::mul(ag::exp(ag::mul_scalar(logvar, 0.5)), Var(eps.to(mu.device()))));
}

SVAEOutput SVAE::decode_all(const SVAEPosterior& post, const Var& z) const {
  SVAEOutput o;
  o.mu = post.mu;
  o.logvar = post.logvar;
  o.z = z;
  o.semantic = decode(z);
  return o;
}

SVAEOutput SVAE::forward(const Var& tokens, Generator* rng) const {
  SVAEPosterior post = encode(tokens);
  if (!rng) return decode_all(post, post.mu);
  // The noise never in bf16: under autocast mu is bf16 but z = mu + sigma eps is formed in f32
  // (and a bf16 run draws the same numbers as an f32 one).
  const DType dt = post.mu.dtype() == DType::BF16 ? DType::F32 : post.mu.dtype();
  Tensor eps = Tensor::empty(post.mu.shape(), dt, post.mu.device());
  rng->normal_(eps);
  return decode_all(post, reparameterize(post.mu, post.logvar, eps));
}

SVAEOutput SVAE::forward_eps(const Var& tokens, const Tensor& eps) const {
  SVAEPosterior post = encode(tokens);
  return decode_all(post, reparameterize(post.mu, post.logvar, eps));
}

}  // namespace psvae
