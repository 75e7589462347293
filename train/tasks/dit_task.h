// Stage 3, `psvae train-dit`: a DiT (dit/conditional_dit.h) learns to denoise the normalised PS-VAE
// latent (train/latents.h) of the dataset's images, conditioned on their class labels or captions.
//
//   image, caption -> frozen PS-VAE -> latent x0 (N, L, h, w)  (or read from the latent cache)
//   caption -> "" with probability train.cond_dropout (label -> null class): CFG's unconditional
//   t ~ U{0..T-1} (eps, v) or s = shift_time(u, k), u ~ U(0,1) (flow); noise ~ N(0, 1)
//   loss = MSE(model(x_t, t, cond), target)                    term "mse"
//   (train.min_snr_gamma > 0: each sample's squared error weighted, see min_snr_weights)
//
// With model.dit.learn_sigma the loss gains upstream's variational-bound term "vb" (see
// hybrid_vb_term below). Randomness: every draw comes from the trainer's checkpointed stream
// (ctx.rng) in a fixed order - dropout (N uniforms), time (N uniforms), noise (N*L*h*w normals) -
// so N steps and N/2 + resume + N/2 steps give the same weights bit for bit.
//
// Config keys (train_dit_schema; `psvae train-dit --help` lists them all with their defaults):
//   init.from              the train-psvae run folder or checkpoint (required; it must hold the
//                          latent statistics). The PS-VAE is frozen and not part of model().
//   model.cond             class | text | external
//   model.dit.*            arch (custom or DiT-S/2 ... DiT-XL/8), hidden, depth, heads, patch,
//                          mlp_ratio, learn_sigma, num_classes (0 = the dataset's; the run's
//                          saved config holds the number used)
//   model.text.*           dim, depth, heads, mlp_ratio, max_len; tokenizer: min_count,
//                          max_vocab, tokenizer_captions
//   data.embeddings        the ExternalEmbeddings file (model.cond = external)
//   data.latent_cache      "" encodes every batch; "auto" caches in run.out_dir/latents.safetensors
//                          (reused while the dataset and PS-VAE checkpoint match, else
//                          re-encoded); or a file path (a mismatch is an error naming the field)
//   diffusion.objective    eps | v | flow; diffusion.schedule linear | scaled_linear | cosine;
//   diffusion.steps        T; diffusion.shift flow time shift k (0 = sqrt(L*h*w / 4096))
//   train.cond_dropout     probability of the null condition (default 0.1)
//   sample.steps, sample.cfg_scale   the periodic sample grids (DDIM / Euler, CFG)
//
// Latent cache file: latents (M, L, h, w) f32 (normalised), indices (M) i64 (dataset index of
// each row); metadata latent_cache.{format, dataset (describe()), data.seed, size,
// psvae_checkpoint (canonical path), psvae_step, latent_shape}.
//
// Checkpoint contract (read by train/pipeline.h): model.* / ema.* = ConditionalDiT state
// ("dit.*", "text_encoder.*"); task.latent_mean, task.latent_std (the stage-2 statistics used);
// metadata task.tokenizer (WordTokenizer JSON, kind text), task.psvae_checkpoint (the PS-VAE file
// actually used, canonical path), task.psvae_step, task.latent_shape ("(48, 4, 4)") and
// psvae.config (every key above).
#pragma once
#include <memory>
#include <string>
#include <vector>

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

// ---- learn_sigma: the hybrid loss of Improved DDPM, as facebookresearch/DiT trains with it -----
// loss = mse (on the prediction) + vb, where vb is the variational bound term of the learned
// variance with the mean stopped (upstream's frozen_out): per sample, in bits per dimension,
//   t > 0: KL(q(x_{t-1} | x_t, x0) || N(mu_theta, exp(lv))), mean over dims / ln 2
//   t = 0: -log p(x0) under the discretised Gaussian decoder (bins 2/255), mean over dims / ln 2
// with lv = frac log(beta_t) + (1 - frac) log(beta~_t) (beta~_0 clipped to beta~_1),
// frac = (v + 1) / 2, v the model's second C channels; vb is not rescaled (upstream's
// LossType.MSE).
struct HybridTables {
  std::vector<double> betas, alphas_cumprod;
  std::vector<double> coef1, coef2;     // posterior mean = coef1 x0 + coef2 x_t
  std::vector<double> log_var_clipped;  // log of the posterior variance, entry 0 = entry 1
  static HybridTables make(dit::BetaSchedule schedule, int num_steps);
};
// x0, x_t, prediction (the model's eps or v, no graph) (N, C, H, W); var_values (N, C, H, W) with
// graph; t original steps. Returns the batch mean of the per-sample vb terms.
ag::Var hybrid_vb_term(const HybridTables& h, dit::Objective objective, const Tensor& x0,
                       const Tensor& x_t, const std::vector<int64_t>& t, const Tensor& prediction,
                       const ag::Var& var_values);

// Min-SNR-gamma loss weights (Hang et al. 2023), one per sample of step t[i] (train.min_snr_gamma):
// min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1) for v, SNR = abar / (1 - abar).
// Plain eps-MSE is dominated by the nearly clean steps, which decide no structure; the weights
// move the gradient to the noise levels that do. Throws for flow (no noise-schedule SNR).
std::vector<float> min_snr_weights(dit::Objective objective,
                                   const std::vector<double>& alphas_cumprod,
                                   const std::vector<int64_t>& t, double gamma);

class DiTTask : public TrainTask {
 public:
  // Loads the PS-VAE of init.from (frozen) and its statistics, trains the tokenizer on `data`'s
  // captions (kind text), builds the model; prepares the latent cache when configured.
  DiTTask(Config& cfg, std::shared_ptr<const Dataset> data, Device device);
  std::string name() const override { return "dit"; }
  bool supports_bf16() const override { return true; }  // train.bf16: tests/train
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
