// Stage 3, `psvae train-dit`: a DiT (dit/conditional_dit.h) learns to denoise the normalised PS-VAE
// latent (train/latents.h) of the dataset's images, conditioned on their class labels or captions.
//
//   image, caption -> frozen PS-VAE -> latent x0 (N, L, h, w)  (or read from the latent cache)
//   caption -> "" with probability train.cond_dropout (label -> null class): CFG's unconditional
//   t ~ U{0..T-1} (eps, v) or s = shift_time(u, k), u ~ U(0,1) (flow); noise ~ N(0, 1)
//   loss = MSE(model(x_t, t, cond), target)                    term "mse"
//
// Config keys (train_dit_schema):
//   init.from            the train-psvae run folder or checkpoint (required; must hold latent
//   stats) model.cond           class | text | external model.dit.*          arch (custom or
//   DiT-S/2 ...), hidden, depth, heads, patch, mlp_ratio,
//                        learn_sigma
//   model.text.*         dim, depth, heads, max_len, min_count (the tokenizer's word threshold)
//   data.embeddings      the ExternalEmbeddings file (model.cond = external)
//   diffusion.objective  eps | v | flow;  diffusion.schedule linear | scaled_linear | cosine
//   diffusion.shift      flow time shift k; 0 = sqrt(L*h*w / 4096)
//   train.cond_dropout   probability of the null condition (default 0.1)
//   data.latent_cache    "" encodes on the fly; "auto" caches in run.out_dir/latents.safetensors
//                        (reused when the dataset and PS-VAE checkpoint match); or a file path
//
// Checkpoint contract (read by train/pipeline.h): model.* / ema.* = ConditionalDiT state
// ("dit.*", "text_encoder.*"); task.latent_mean, task.latent_std (the stage-2 statistics used);
// metadata task.tokenizer (WordTokenizer JSON, kind text) and psvae.config (every key above).
#pragma once
#include <memory>
#include <string>

#include "dit/conditional_dit.h"
#include "dit/sampling.h"
#include "train/config.h"
#include "train/data/dataset.h"
#include "train/latents.h"
#include "train/trainer.h"

namespace psvae::train {

ConfigSchema dit_stage_schema();  // = train_dit_schema()

// The model config of a DiT run for a latent (L, h, w): model.dit.*, model.cond, model.text.*
// (text.vocab is filled in by the ConditionalDiT constructor from the tokenizer).
dit::ConditionalDiTConfig conditional_dit_config(const Config& cfg, const Shape& latent_shape);
// diffusion.* (the shift resolved for the latent shape).
dit::DiffusionSetup diffusion_setup(const Config& cfg, const Shape& latent_shape);

class DiTTask : public TrainTask {
 public:
  // Loads the PS-VAE of init.from (frozen) and its statistics, trains the tokenizer on `data`'s
  // captions (kind text), builds the model; prepares the latent cache when configured.
  DiTTask(Config& cfg, std::shared_ptr<const Dataset> data, Device device);
  std::string name() const override { return "dit"; }
  nn::Module& model() override { return *model_; }
  LossOutput loss(const Batch& batch, const StepContext& ctx) override;
  // A grid of generations for the fixed batch's conditions (DDIM 25 steps, CFG 4).
  Tensor samples(nn::Module& m, const Batch& fixed_batch, const StepContext& ctx) override;
  safetensors::NamedTensors extra_state() override;
  void load_extra_state(const safetensors::NamedTensors& t) override;
  safetensors::Metadata extra_metadata() override;
  void load_extra_metadata(const safetensors::Metadata& m) override;

  dit::ConditionalDiT& dit_model() { return *model_; }
  const PSVAE& psvae() const { return *psvae_; }
  const LatentStats& stats() const { return stats_; }

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
  std::shared_ptr<dit::ConditionalDiT> model_;
  std::shared_ptr<PSVAE> psvae_;
  LatentStats stats_;
};

}  // namespace psvae::train
