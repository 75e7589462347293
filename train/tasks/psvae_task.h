// Stage 2, `psvae train-psvae`: the PS-VAE (psvae/psvae.h) built from a trained stage 1
// (PSVAE::from_stage1): the encoder is unfrozen, a pixel decoder learns to draw the image from the
// latent, and the semantic reconstruction is held to a frozen copy of the stage-1 encoder.
//
//   image -> encoder -> svae -> mu, logvar, z, semantic;  pixels = pix_dec(z)
//   loss = alpha MSE(semantic, encoder_ref(image)) + gamma (0.5 L1 + 0.5 MSE)(pixels, image)
//          + lambda LPIPS(pixels, image) + beta KL       terms "sem", "l1", "mse", "lpips", "kl"
//
// Latent statistics. After the last step the command calls finish_psvae_run(), which computes the
// per-channel mean and std of mu over the dataset (evaluation mode, z = mu, under NoGradGuard,
// with the checkpoint's stage weights: EMA when present) and rewrites the final step checkpoint
// with them as task.latent_mean / task.latent_std (L values each). Why after the run and not in
// extra_state during it: the statistics describe the finished model, one full pass over the data
// costs more than many training steps, and the trainer's checkpoint file is the one place a later
// stage (the DiT) reads. An interrupted run has no statistics until it is resumed to the end.
#pragma once
#include <memory>
#include <string>

#include "psvae/losses.h"
#include "psvae/lpips.h"
#include "psvae/psvae.h"
#include "train/data/dataset.h"
#include "train/tasks/model_keys.h"
#include "train/trainer.h"

namespace psvae::train {

// The PS-VAE a stage-2 config describes (model.encoder.*, model.latent_dim, model.svae.*,
// model.pixdec.*), drawing images of data.image_size: what train-psvae built, for the readers of
// its checkpoints (train-dit, generate, eval) after inherit_arch_keys.
PSVAEConfig psvae_config(const Config& cfg);

class PSVAETask : public TrainTask {
 public:
  // Reads init.from (required: a train-svae checkpoint), inheriting its architecture keys into
  // `cfg`; model.pixdec.*, loss.*, weights.lpips; pixels are decoded to image_size.
  PSVAETask(Config& cfg, int image_size, Device device);
  std::string name() const override { return "psvae"; }
  bool supports_bf16() const override { return true; }  // train.bf16: tests/train
  nn::Module& model() override { return *model_; }
  LossOutput loss(const Batch& batch, const StepContext& ctx) override;
  // Each fixed image beside its reconstruction: (N,3,H,2W), pixels clamped to [-1,1].
  Tensor samples(nn::Module& m, const Batch& fixed_batch, const StepContext& ctx) override;
  // latent_mean, latent_std once computed (or resumed); nothing before.
  safetensors::NamedTensors extra_state() override;
  void load_extra_state(const safetensors::NamedTensors& t) override;

  PSVAE& psvae() { return *model_; }
  const std::string& stage1_source() const { return stage1_source_; }
  bool lpips_on() const { return lpips_ && lpips_->enabled() && weights_.lambda > 0; }
  void set_latent_stats(const Tensor& mean, const Tensor& std);

 private:
  std::shared_ptr<PSVAE> model_;
  std::shared_ptr<LPIPS> lpips_;
  PsvaeLossWeights weights_;
  std::string stage1_source_;
  Tensor latent_mean_, latent_std_;
};

struct PsvaeFinish {
  Tensor latent_mean, latent_std;  // (L) f32
  int64_t stat_images = 0;         // images the statistics were computed over
  double psnr = 0, ssim = 0;       // reconstruction quality on the evaluation images (z = mu)
  int64_t eval_images = 0;
  bool used_ema = false;
};

// Computes the latent statistics over `data` (in order, full batches of `batch`) with the weights
// of `checkpoint`, writes them into that file (atomically) and into the task, and measures PSNR /
// SSIM on the first `eval_count` images of `eval_data` (held-out images when the caller has them).
PsvaeFinish finish_psvae_run(PSVAETask& task, const std::string& checkpoint,
                             std::shared_ptr<const Dataset> data, const Dataset& eval_data,
                             int64_t batch, int workers, int64_t eval_count = 64);

}  // namespace psvae::train
