// Stage 0 of the demo pipeline, `psvae train-encoder`: a small DINOv2-architecture ViT trained
// from scratch as the representation encoder the S-VAE then compresses.
//
//   image (N,3,H,W) in [-1,1] -> imagenet_normalize -> encoder (Dinov2) -> CLS token (N,D)
//     -> head Linear(D, num_classes) -> logits -> cross-entropy with the labels
//
// Why label-supervised (not DINO self-distillation): it is a stand-in for the published DINOv2
// weights at a scale that trains in minutes on 2 CPU cores. The synthetic dataset's classes are
// shape x colour, exactly the semantics the later analyser checks in the latent space, and a
// supervised CLS objective over patch tokens that attend to each other makes those semantics
// linearly readable from the tokens; self-distillation would need far more steps to get there.
// At paper scale this stage is skipped: the S-VAE reads the released DINOv2 weights.
#pragma once
#include <memory>
#include <string>

#include "nn/linear.h"
#include "psvae/dinov2.h"
#include "train/trainer.h"

namespace psvae::train {

class EncoderClassifier : public nn::Cloneable<EncoderClassifier> {
 public:
  struct Config {
    Dinov2Config encoder;
    int64_t classes = 24;
  };
  EncoderClassifier(const Config& c, Generator& g);
  // image (N,3,H,W) in [-1,1] -> logits (N, classes).
  ag::Var forward(const ag::Var& image) const;
  const Config& config() const { return cfg_; }

  std::shared_ptr<Dinov2> encoder;
  std::shared_ptr<nn::Linear> head;

 private:
  Config cfg_;
};

class EncoderTask : public TrainTask {
 public:
  // Reads model.encoder.*, weights.encoder (optional initial weights) and train.seed (init).
  EncoderTask(const Config& cfg, int64_t num_classes, Device device);
  std::string name() const override { return "encoder"; }
  bool supports_bf16() const override { return true; }  // train.bf16: tests/train
  nn::Module& model() override { return *model_; }
  // Terms: "ce" (cross-entropy) and "acc" (batch accuracy, logged only).
  LossOutput loss(const Batch& batch, const StepContext& ctx) override;

  EncoderClassifier& classifier() { return *model_; }

 private:
  std::shared_ptr<EncoderClassifier> model_;
};

}  // namespace psvae::train
