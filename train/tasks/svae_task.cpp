// Stage 1: the S-VAE on a frozen encoder (see svae_task.h).
#include "train/tasks/svae_task.h"

#include <fmt/format.h>

namespace psvae::train {

SVAEConfig svae_config(const Config& cfg, int64_t enc_dim) {
  SVAEConfig c;
  c.enc_dim = enc_dim;
  c.latent_dim = cfg.get_int("model.latent_dim");
  c.width = cfg.get_int("model.svae.width");
  c.depth = static_cast<int>(cfg.get_int("model.svae.depth"));
  c.heads = static_cast<int>(cfg.get_int("model.svae.heads"));
  if (c.width % c.heads != 0)
    throw std::runtime_error(fmt::format(
        "model.svae.width = {} is not a multiple of model.svae.heads = {}", c.width, c.heads));
  return c;
}

SVAETask::SVAETask(Config& cfg, Device device) {
  beta_ = cfg.get_float("loss.beta");
  kl_norm_ = parse_kl_norm(cfg.get_string("loss.kl_norm"));
  const std::string from = cfg.get_string("init.from"), weights = cfg.get_string("weights.encoder");
  if (from.empty() && weights.empty())
    throw std::runtime_error(
        "init.from is not set: give the train-encoder checkpoint or run folder to take the "
        "encoder from (--set init.from=runs/encoder), or DINOv2 weights with weights.encoder");
  if (!from.empty() && !weights.empty())
    throw std::runtime_error(
        fmt::format("init.from = {} and weights.encoder = {} both name an encoder; set only one",
                    from, weights));

  safetensors::NamedTensors enc;
  if (!from.empty()) {
    StageCheckpoint ck =
        read_stage_checkpoint(cfg, "init.from", "encoder", "train-encoder checkpoint");
    inherit_arch_keys(cfg, ck, {"model.encoder."});
    enc = sub_state(ck.model, "encoder.");
    encoder_source_ = fmt::format("{} ({} weights)", ck.path, ck.used_ema ? "EMA" : "model");
  } else {
    enc = safetensors::load(weights);
    encoder_source_ = weights;
  }
  SVAEModelConfig c;
  c.encoder = encoder_config(cfg);
  c.svae = svae_config(cfg, c.encoder.dim);
  Generator g(static_cast<uint64_t>(cfg.get_int("train.seed")));
  model_ = std::make_shared<SVAEModel>(c, g);
  try {
    load_dinov2(*model_->encoder, enc);
  } catch (const std::exception& e) {
    throw std::runtime_error(
        fmt::format("{}: the encoder does not fit model.encoder.*: {}", encoder_source_, e.what()));
  }
  model_->encoder->set_requires_grad(false);  // stage 1 trains the S-VAE only
  model_->to(device);
}

LossOutput SVAETask::loss(const Batch& batch, const StepContext& ctx) {
  SVAEModelOutput o = model_->forward(ag::Var(batch.images.to(ctx.device)), ctx.rng);
  LossResult r = svae_loss(o, beta_, kl_norm_);
  return LossOutput{r.total, r.terms};
}

}  // namespace psvae::train
