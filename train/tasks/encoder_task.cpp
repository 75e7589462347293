// Stage 0: the demo's representation encoder, trained to classify (see encoder_task.h for why).
#include "train/tasks/encoder_task.h"

#include <fmt/format.h>

#include "autograd/functions.h"
#include "train/tasks/model_keys.h"

namespace psvae::train {

EncoderClassifier::EncoderClassifier(const Config& c, Generator& g) : cfg_(c) {
  encoder = register_module("encoder", std::make_shared<Dinov2>(c.encoder, g));
  head = register_module("head", std::make_shared<nn::Linear>(c.encoder.dim, c.classes, true, g));
}

ag::Var EncoderClassifier::forward(const ag::Var& image) const {
  Dinov2Output o = encoder->forward(imagenet_normalize(image));
  return head->forward(o.cls);  // (N, D) -> (N, classes)
}

EncoderTask::EncoderTask(const Config& cfg, int64_t num_classes, Device device) {
  EncoderClassifier::Config c;
  c.encoder = encoder_config(cfg);
  c.classes = num_classes;
  Generator g(static_cast<uint64_t>(cfg.get_int("train.seed")));
  model_ = std::make_shared<EncoderClassifier>(c, g);
  const std::string w = cfg.get_string("weights.encoder");
  if (!w.empty()) {
    try {
      load_dinov2(*model_->encoder, safetensors::load(w));
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("weights.encoder = {}: {}", w, e.what()));
    }
  }
  model_->to(device);
}

LossOutput EncoderTask::loss(const Batch& batch, const StepContext& ctx) {
  ag::Var logits = model_->forward(ag::Var(batch.images.to(ctx.device)));
  Tensor labels = batch.labels.to(ctx.device);
  LossOutput out;
  out.loss = ag::cross_entropy(logits, labels);
  out.terms["ce"] = out.loss.data().item();
  // Accuracy on the host: a handful of logits, logged so a run shows when the classes separate.
  // (f32 whatever the logits' dtype: under train.bf16 the classifier head returns bf16.)
  Tensor l = ops::cast(logits.data(), DType::F32).to(Device::cpu());
  Tensor y = batch.labels.to(Device::cpu());
  const int64_t n = l.size(0), k = l.size(1);
  int64_t right = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* row = l.data<float>() + i * k;
    int64_t best = 0;
    for (int64_t j = 1; j < k; ++j)
      if (row[j] > row[best]) best = j;
    right += best == y.data<int64_t>()[i];
  }
  out.terms["acc"] = static_cast<double>(right) / static_cast<double>(n);
  return out;
}

}  // namespace psvae::train
