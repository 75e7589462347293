// Inference with the trained stack: the PS-VAE of stage 2 and the DiT of stage 3, loaded from their
// checkpoints, and everything `psvae generate | edit | inpaint | eval | demo` does with them.
//
// The DiT checkpoint (a train-dit run folder or file) names its PS-VAE in its saved config
// (init.from); `psvae_override` replaces that path (the run was moved). Weights are the EMA ones
// when the checkpoint has them.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "dit/conditional_dit.h"
#include "dit/sampling.h"
#include "psvae/psvae.h"
#include "train/config.h"
#include "train/latents.h"

namespace psvae::train {

struct Pipeline {
  std::shared_ptr<PSVAE> psvae;
  std::shared_ptr<dit::ConditionalDiT> model;
  dit::DiffusionSetup setup;
  LatentStats stats;
  int image_size = 0;  // pixels
  Shape latent_shape;  // (L, h, w)
  std::string dit_path, psvae_path;
  Config dit_config;  // the DiT run's saved config
  Device device;
  // The DiT's compute dtype: F32, or BF16 for bf16 autocast (--bf16; autograd/autocast.h). The
  // sampler's arithmetic, the latents and the PS-VAE decode stay f32 either way.
  DType compute = DType::F32;
  // DiT evaluations so far, one per image per model call (a guided step counts two): what the
  // commands report and what the tests count (CFG scale 1 must not run the unconditional model).
  mutable int64_t evaluations = 0;

  static Pipeline load(const std::string& dit_checkpoint, const std::string& psvae_override,
                       Device device);

  Tensor encode(const Tensor& images) const { return encode_latents(*psvae, stats, images); }
  Tensor decode(const Tensor& latents) const { return decode_latents(*psvae, stats, latents); }
};

// What to generate: prompts (text/external models) or class labels (class models), one entry per
// image (the commands repeat a prompt --num times).
struct GenerateRequest {
  dit::Condition cond;
  std::string negative_prompt;  // the unconditional branch of CFG uses it instead of "" (text)
  dit::SampleOptions sampling;
  dit::GuidanceConfig guidance;  // scale 1 = no guidance (the unconditional model is not run)
  uint64_t seed = 0;
  int64_t batch = 16;  // images per model call
};

// The guided denoiser for one batch of conditions (CFG from the null condition or the negative
// prompt).
dit::Denoiser make_denoiser(const Pipeline& p, const dit::Condition& cond,
                            const std::string& negative_prompt, const dit::GuidanceConfig& g);

// Images (N,3,H,W) in [-1,1] (clamped). Image i uses the noise of (seed, i): the same seed gives
// the same images whatever the batch size (stochastic samplers included; see pipeline.cpp for the
// layout of the random streams). r.sampling.strength is ignored (generation starts from noise).
Tensor generate(const Pipeline& p, const GenerateRequest& r);
// SDEdit: images (N,3,H,W) in [-1,1] -> encode -> noise to r.sampling.strength -> denoise with
// r.cond -> decode.
Tensor edit_sdedit(const Pipeline& p, const Tensor& images, const GenerateRequest& r);
// DDIM inversion with source_cond (unguided) to r.sampling.strength's level, then guided
// regeneration with r.cond from there. Needs a deterministic sampler (ddim with eta 0, dpmpp-2m,
// euler, heun).
Tensor edit_invert(const Pipeline& p, const Tensor& images, const dit::Condition& source_cond,
                   const GenerateRequest& r);
// mask (N,1,H,W) in pixels, 1 = keep; it is downsampled to the latent grid (a latent cell is kept
// when its whole pixel block is kept). The kept pixels are pasted back into the output.
Tensor inpaint(const Pipeline& p, const Tensor& images, const Tensor& mask,
               const GenerateRequest& r);

}  // namespace psvae::train
