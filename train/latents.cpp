// The normalised PS-VAE latent of stage 3 (see latents.h).
#include "train/latents.h"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

#include "autograd/autocast.h"
#include "autograd/grad_mode.h"
#include "kernels/ops.h"

namespace psvae::train {

namespace {

Device model_device(const PSVAE& model) { return model.encoder->cls_token().device(); }

// (L) -> (1, L, 1, 1) f32 on `device`, to broadcast over (N, L, h, w).
Tensor channel_view(const Tensor& v, Device device) {
  return ops::cast(v, DType::F32).reshape({1, v.numel(), 1, 1}).to(device);
}

void check_stats(const LatentStats& stats, int64_t latent_dim, const char* what) {
  if (!stats.defined() || !stats.std.defined())
    throw std::runtime_error(fmt::format("{}: no latent statistics", what));
  if (stats.mean.numel() != latent_dim || stats.std.numel() != latent_dim)
    throw std::runtime_error(
        fmt::format("{}: latent statistics have {} / {} entries for a {}-channel latent", what,
                    stats.mean.numel(), stats.std.numel(), latent_dim));
}

}  // namespace

Tensor encode_latents(const PSVAE& model, const LatentStats& stats, const Tensor& images) {
  const int64_t L = model.config().svae.latent_dim;
  check_stats(stats, L, "encode_latents");
  if (images.rank() != 4 || images.size(1) != 3)
    throw std::invalid_argument(
        fmt::format("encode_latents: expected images (N,3,H,W), got {}", images.str()));
  ag::NoGradGuard no_grad;
  // The latents are the DiT's data: f32 under train.bf16 too, so that a run with the latent cache
  // (encoded once, outside any step) and one without see the same numbers.
  ag::AutocastGuard f32(DType::F32);
  const Device dev = model_device(model);
  // The evaluation path of PSVAE::forward up to the posterior: z = mu.
  ag::Var x = imagenet_normalize(ag::Var(ops::cast(images, DType::F32).to(dev)));
  Tensor mu = model.svae->encode(model.encoder->forward(x).patch).mu.data();  // (N, h, w, L)
  Tensor lat = ops::permute(mu, {0, 3, 1, 2});                                // (N, L, h, w)
  return ops::div(ops::sub(lat, channel_view(stats.mean, dev)), channel_view(stats.std, dev));
}

Tensor decode_latents(const PSVAE& model, const LatentStats& stats, const Tensor& latents) {
  const int64_t L = model.config().svae.latent_dim;
  check_stats(stats, L, "decode_latents");
  if (latents.rank() != 4 || latents.size(1) != L)
    throw std::invalid_argument(
        fmt::format("decode_latents: expected latents (N,{},h,w), got {}", L, latents.str()));
  ag::NoGradGuard no_grad;
  ag::AutocastGuard f32(DType::F32);  // decoded images in f32, whoever calls
  const Device dev = model_device(model);
  Tensor z =
      ops::add(ops::mul(ops::cast(latents, DType::F32).to(dev), channel_view(stats.std, dev)),
               channel_view(stats.mean, dev));
  return model.pix_dec->forward(ag::Var(ops::permute(z, {0, 2, 3, 1}))).data();  // (N, 3, H, W)
}

LatentStats latent_stats_from(const safetensors::NamedTensors& task_state, int64_t latent_dim,
                              const std::string& path) {
  LatentStats s;
  for (const auto& [n, t] : task_state) {
    if (n == "latent_mean") s.mean = ops::cast(t.to(Device::cpu()), DType::F32).clone();
    if (n == "latent_std") s.std = ops::cast(t.to(Device::cpu()), DType::F32).clone();
  }
  if (!s.mean.defined() || !s.std.defined())
    throw std::runtime_error(fmt::format(
        "{}: has no latent statistics (task.latent_mean / task.latent_std): the train-psvae run "
        "did not finish; resume it to the end (--set train.resume=true) before train-dit",
        path));
  if (s.mean.numel() != latent_dim || s.std.numel() != latent_dim)
    throw std::runtime_error(
        fmt::format("{}: task.latent_mean / task.latent_std have {} / {} entries, expected {} "
                    "(model.latent_dim)",
                    path, s.mean.numel(), s.std.numel(), latent_dim));
  s.mean = s.mean.reshape({latent_dim});
  s.std = s.std.reshape({latent_dim});
  for (int64_t i = 0; i < latent_dim; ++i) {
    const float m = s.mean.data<float>()[i], d = s.std.data<float>()[i];
    if (!std::isfinite(m) || !std::isfinite(d) || d <= 0)
      throw std::runtime_error(fmt::format(
          "{}: latent statistics of channel {} are unusable (mean {}, std {})", path, i, m, d));
  }
  return s;
}

}  // namespace psvae::train
