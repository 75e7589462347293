// Stage 1, `psvae train-svae`: the S-VAE learns to compress the frozen encoder's patch tokens to
// an L-channel Gaussian latent per token and to decode them back (psvae/psvae.h, SVAEModel).
//
//   image -> encoder (frozen) -> tokens (N,h,w,D) -> svae -> mu, logvar, z, semantic
//   loss = MSE(semantic, tokens) + beta * KL          terms "sem", "kl" (psvae/losses.h)
//
// The encoder comes from init.from (a train-encoder checkpoint: its "encoder.*" weights, EMA when
// present) or weights.encoder (a DINOv2 file, the paper setting). No samples: the reconstruction
// is a feature map, not an image.
#pragma once
#include <memory>
#include <string>

#include "psvae/losses.h"
#include "psvae/psvae.h"
#include "train/tasks/model_keys.h"
#include "train/trainer.h"

namespace psvae::train {

// model.latent_dim, model.svae.* for an encoder of width enc_dim.
SVAEConfig svae_config(const Config& cfg, int64_t enc_dim);

class SVAETask : public TrainTask {
 public:
  // `cfg` is updated with the architecture keys inherited from init.from (model_keys.h), so the
  // run's saved config describes the model actually trained. Throws naming init.from /
  // weights.encoder when neither (or both) is given.
  SVAETask(Config& cfg, Device device);
  std::string name() const override { return "svae"; }
  bool supports_bf16() const override { return true; }  // train.bf16: tests/train
  nn::Module& model() override { return *model_; }
  LossOutput loss(const Batch& batch, const StepContext& ctx) override;

  SVAEModel& svae_model() { return *model_; }
  // Where the encoder came from, for the command's summary line.
  const std::string& encoder_source() const { return encoder_source_; }

 private:
  std::shared_ptr<SVAEModel> model_;
  double beta_;
  KlNorm kl_norm_;
  std::string encoder_source_;
};

}  // namespace psvae::train
