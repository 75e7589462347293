// A tiny TrainTask for the trainer tests: a 2-layer MLP classifying the synthetic images
// (avg-pooled 16x16 -> 8x8, flattened to 192 inputs, tanh hidden layer, one logit per class),
// trained with cross-entropy. Gaussian noise drawn from ctx.rng is added to the inputs, so the
// checkpointed Generator is part of what an exact resume must restore. The task also keeps an
// extra-state counter (images seen) to exercise the "task." checkpoint entries.
#pragma once
#include <cmath>
#include <limits>
#include <memory>
#include <set>
#include <string>

#include "autograd/functions.h"
#include "nn/linear.h"
#include "train/config.h"
#include "train/data/dataset.h"
#include "train/data/loader.h"
#include "train/trainer.h"

namespace psvae::train::test {

class TinyMlp : public nn::Cloneable<TinyMlp> {
 public:
  struct Config {
    int64_t in = 3 * 8 * 8, hidden = 32, classes = 24;
  };
  TinyMlp(const Config& c, Generator& g) : cfg_(c) {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(c.in, c.hidden, true, g));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(c.hidden, c.classes, true, g));
  }
  // x (B, 3, 8, 8) -> logits (B, classes). tanh, not relu: no exactly-zero gradients, so the
  // accumulation test's float comparison is not at the mercy of Adam's sign-like first step.
  ag::Var forward(const ag::Var& x) const {
    ag::Var h = ag::reshape(x, {x.size(0), -1});
    return fc2->forward(ag::tanh(fc1->forward(h)));
  }
  const Config& config() const { return cfg_; }

  std::shared_ptr<nn::Linear> fc1, fc2;

 private:
  Config cfg_;
};

class TinyTask : public TrainTask {
 public:
  explicit TinyTask(uint64_t init_seed, double noise = 0.05) : noise_(noise) {
    Generator g(init_seed);
    model_ = std::make_shared<TinyMlp>(TinyMlp::Config{}, g);
  }
  std::string name() const override { return "tiny"; }
  nn::Module& model() override { return *model_; }
  TinyMlp& mlp() { return *model_; }

  // train.bf16 is accepted only when this is set (the refusal of an unchecked task is tested too).
  bool bf16_ok = false;
  bool supports_bf16() const override { return bf16_ok; }

  // Steps (0-based) whose loss is made NaN; nan_always makes every step NaN.
  std::set<int64_t> nan_steps;
  bool nan_always = false;

  static ag::Var pooled(const Tensor& images) {
    ops::Pool2dParams p;  // 2x2, stride 2: 16x16 -> 8x8
    return ag::avg_pool2d(ag::Var(images), p);
  }

  LossOutput loss(const Batch& batch, const StepContext& ctx) override {
    ag::Var x = pooled(batch.images.to(ctx.device));
    Tensor n = Tensor::empty(x.shape(), DType::F32, ctx.device);
    ctx.rng->normal_(n, 0.0, noise_);
    x = ag::add(x, ag::Var(n));
    ag::Var l = ag::cross_entropy(model_->forward(x), batch.labels.to(ctx.device));
    if (nan_always || nan_steps.count(ctx.step))
      l = ag::mul_scalar(l, std::numeric_limits<double>::quiet_NaN());
    images_seen_ += batch.images.size(0);
    LossOutput out;
    out.loss = l;
    out.terms["ce"] = l.data().item();
    return out;
  }

  // The pooled inputs themselves, upsampled back to 16x16 (a classifier reconstructs nothing).
  Tensor samples(nn::Module&, const Batch& fixed, const StepContext&) override {
    ag::Var x = pooled(fixed.images);
    return ag::upsample_nearest(x, 16, 16).data();
  }

  safetensors::NamedTensors extra_state() override {
    return {{"images_seen", Tensor::from_vector(std::vector<int64_t>{images_seen_}, Shape{})}};
  }
  void load_extra_state(const safetensors::NamedTensors& t) override {
    for (const auto& [n, v] : t)
      if (n == "images_seen") images_seen_ = static_cast<int64_t>(v.item());
  }
  int64_t images_seen() const { return images_seen_; }

 private:
  std::shared_ptr<TinyMlp> model_;
  double noise_;
  int64_t images_seen_ = 0;
};

// A config with the trainer's keys (and nothing else) at test-friendly values.
inline Config tiny_config(const std::string& out_dir) {
  ConfigSchema schema;
  add_trainer_keys(schema);
  Config c(schema);
  c.set("run.out_dir", out_dir);
  c.set("train.steps", "20");
  c.set("train.batch_size", "16");
  c.set("train.lr", "0.01");
  c.set("train.ema_decay", "0.9");
  c.set("train.log_every", "5");
  c.set("train.ckpt_every", "10");
  c.set("train.sample_every", "0");
  return c;
}

// The synthetic dataset at 16x16 (its minimum size); 128 images = 8 batches of 16.
inline std::shared_ptr<const Dataset> tiny_dataset(int64_t n = 128) {
  SyntheticOptions o;
  o.num_images = n;
  o.image_size = 16;
  o.seed = 3;
  return std::shared_ptr<const Dataset>(make_synthetic(o));
}

inline std::unique_ptr<Loader> tiny_loader(std::shared_ptr<const Dataset> ds, const Config& cfg) {
  LoaderOptions o;
  o.global_batch = trainer_micro_batch(cfg);
  o.seed = 11;
  o.workers = 1;
  o.prefetch = 2;
  return std::make_unique<Loader>(std::move(ds), o);
}

}  // namespace psvae::train::test
