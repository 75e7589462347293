// The latent space stage 3 works in, one definition shared by training (DiTTask) and inference
// (train/pipeline.h): the PS-VAE posterior mean mu, laid out as an image and normalised per channel
// with the statistics stage 2 stored (task.latent_mean / task.latent_std).
//
//   image (N,3,H,W) in [-1,1] -> encoder -> svae.encode -> mu (N,h,w,L)      (no graph, z = mu)
//   latent = (permute(mu, N,L,h,w) - mean[c]) / std[c]                       (N, L, h, w)
//   decode: z = latent * std[c] + mean[c] -> permute (N,h,w,L) -> pix_dec   (N,3,H,W)
// Why normalise: the DiT's noise schedules assume unit-variance data; the raw latent's channels
// differ in scale by an order of magnitude (see docs/diffusion.md).
#pragma once
#include <string>

#include "psvae/psvae.h"
#include "tensor/tensor.h"

namespace psvae::train {

struct LatentStats {
  Tensor mean, std;  // (L) f32, CPU
  bool defined() const { return mean.defined(); }
};

// images (N,3,H,W) on any device -> normalised latents (N,L,h,w) on the model's device, under
// NoGradGuard, in evaluation mode (z = mu).
Tensor encode_latents(const PSVAE& model, const LatentStats& stats, const Tensor& images);
// Normalised latents (N,L,h,w) -> images (N,3,H,W) (not clamped), under NoGradGuard.
Tensor decode_latents(const PSVAE& model, const LatentStats& stats, const Tensor& latents);

// The stage-2 checkpoint's statistics; throws naming the file when it has none (a train-psvae run
// that did not finish) or when they do not have L entries.
LatentStats latent_stats_from(const safetensors::NamedTensors& task_state, int64_t latent_dim,
                              const std::string& path);

}  // namespace psvae::train
