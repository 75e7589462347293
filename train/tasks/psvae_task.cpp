// Stage 2: the PS-VAE from a trained S-VAE, and its latent statistics (see psvae_task.h).
#include "train/tasks/psvae_task.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "train/data/loader.h"
#include "train/metrics.h"
#include "train/tasks/svae_task.h"

namespace psvae::train {

PSVAEConfig psvae_config(const Config& cfg) {
  PSVAEConfig c;
  c.encoder = encoder_config(cfg);
  c.svae = svae_config(cfg, c.encoder.dim);
  c.pix.latent_dim = c.svae.latent_dim;
  c.pix.channels = pixdec_channels(cfg);
  c.pix.res_blocks = static_cast<int>(cfg.get_int("model.pixdec.res_blocks"));
  c.pix.out_h = c.pix.out_w = cfg.get_int("data.image_size");
  return c;
}

PSVAETask::PSVAETask(Config& cfg, int image_size, Device device) {
  weights_.alpha = cfg.get_float("loss.alpha");
  weights_.gamma = cfg.get_float("loss.gamma");
  weights_.lambda = cfg.get_float("loss.lambda");
  weights_.beta = cfg.get_float("loss.beta");
  weights_.kl_norm = parse_kl_norm(cfg.get_string("loss.kl_norm"));

  StageCheckpoint ck = read_stage_checkpoint(cfg, "init.from", "svae", "train-svae checkpoint");
  inherit_arch_keys(cfg, ck, {"model.encoder.", "model.latent_dim", "model.svae."});
  stage1_source_ = fmt::format("{} ({} weights)", ck.path, ck.used_ema ? "EMA" : "model");

  SVAEModelConfig c1;
  c1.encoder = encoder_config(cfg);
  c1.svae = svae_config(cfg, c1.encoder.dim);
  Generator g(static_cast<uint64_t>(cfg.get_int("train.seed")));
  SVAEModel stage1(c1, g);
  try {
    stage1.load_state_dict(ck.model);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("init.from: {}: {}", ck.path, e.what()));
  }
  PixelDecoderConfig pc;
  pc.latent_dim = c1.svae.latent_dim;
  pc.channels = pixdec_channels(cfg);
  pc.res_blocks = static_cast<int>(cfg.get_int("model.pixdec.res_blocks"));
  pc.out_h = pc.out_w = image_size;
  model_ = PSVAE::from_stage1(stage1, pc, g);
  model_->to(device);

  // Without lambda there is nothing to load (and nothing to warn about).
  if (weights_.lambda > 0) {
    lpips_ = LPIPS::load(LPIPS::Config{}, lpips_files(cfg));
    lpips_->to(device);
  }
}

LossOutput PSVAETask::loss(const Batch& batch, const StepContext& ctx) {
  ag::Var image(batch.images.to(ctx.device));
  PSVAEOutput o = model_->forward(image, ctx.rng);
  LossResult r = psvae_loss(o, image, weights_, lpips_on() ? lpips_.get() : nullptr);
  return LossOutput{r.total, r.terms};
}

Tensor PSVAETask::samples(nn::Module& m, const Batch& fixed, const StepContext& ctx) {
  auto& model = dynamic_cast<PSVAE&>(m);
  ag::NoGradGuard no_grad;
  ag::Var image(fixed.images.to(ctx.device));
  ag::Var pixels = ag::clamp(model.forward(image, nullptr).pixels, -1.0, 1.0);
  return ag::concat({image, pixels}, 3).data();  // original | reconstruction, per image
}

void PSVAETask::set_latent_stats(const Tensor& mean, const Tensor& std) {
  latent_mean_ = mean;
  latent_std_ = std;
}

safetensors::NamedTensors PSVAETask::extra_state() {
  if (!latent_mean_.defined()) return {};
  return {{"latent_mean", latent_mean_}, {"latent_std", latent_std_}};
}

void PSVAETask::load_extra_state(const safetensors::NamedTensors& t) {
  for (const auto& [n, x] : t) {
    if (n == "latent_mean") latent_mean_ = x.to(Device::cpu());
    if (n == "latent_std") latent_std_ = x.to(Device::cpu());
  }
}

PsvaeFinish finish_psvae_run(PSVAETask& task, const std::string& checkpoint,
                             std::shared_ptr<const Dataset> data, const Dataset& eval_data,
                             int64_t batch, int workers, int64_t eval_count) {
  PsvaeFinish f;
  StageCheckpoint ck = read_stage_checkpoint_file(checkpoint);
  f.used_ema = ck.used_ema;
  auto model = std::dynamic_pointer_cast<PSVAE>(task.psvae().clone());
  model->load_state_dict(ck.model);
  model->eval();
  const Device dev = model->encoder->cls_token().device();
  ag::NoGradGuard no_grad;

  // mu over the dataset in order; the loader decodes in the background.
  LoaderOptions lo;
  lo.global_batch = std::max<int64_t>(1, std::min<int64_t>(batch, data->size()));
  lo.shuffle = false;
  lo.workers = workers;
  Loader loader(data, lo);
  LatentStats stats;
  for (int64_t b = 0; b < loader.batches_per_epoch(); ++b) {
    Batch x = loader.next();
    ag::Var tokens = model->encoder->forward(imagenet_normalize(ag::Var(x.images.to(dev)))).patch;
    stats.add(model->svae->encode(tokens).mu.data());
    f.stat_images += x.images.size(0);
  }
  f.latent_mean = stats.mean();
  f.latent_std = stats.std();
  task.set_latent_stats(f.latent_mean, f.latent_std);

  // The final checkpoint gains task.latent_mean / task.latent_std (replacing older ones).
  safetensors::Metadata meta;
  safetensors::NamedTensors all = safetensors::load(checkpoint, &meta), kept;
  for (auto& [n, t] : all)
    if (n != "task.latent_mean" && n != "task.latent_std") kept.emplace_back(n, t.clone());
  kept.emplace_back("task.latent_mean", f.latent_mean);
  kept.emplace_back("task.latent_std", f.latent_std);
  safetensors::save(checkpoint, kept, meta);

  // Reconstruction quality with z = mu.
  const int64_t n = std::min<int64_t>(eval_count, eval_data.size());
  std::vector<double> p, s;
  for (int64_t i0 = 0; i0 < n; i0 += lo.global_batch) {
    const int64_t m = std::min<int64_t>(lo.global_batch, n - i0);
    std::vector<Sample> got;
    for (int64_t i = i0; i < i0 + m; ++i) got.push_back(eval_data.get(i));
    const Shape sh = got.front().image.shape();
    Tensor images = Tensor::empty({m, sh[0], sh[1], sh[2]}, DType::F32);
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(images.data<float>() + i * sh.numel(),
                  got[static_cast<size_t>(i)].image.data<float>(),
                  static_cast<size_t>(sh.numel()) * sizeof(float));
    ag::Var pixels = ag::clamp(model->forward(ag::Var(images.to(dev)), nullptr).pixels, -1.0, 1.0);
    Tensor rec = pixels.data().to(Device::cpu());
    for (double v : psnr(rec, images)) p.push_back(v);
    if (sh[1] >= 11 && sh[2] >= 11)
      for (double v : ssim(rec, images)) s.push_back(v);
  }
  f.eval_images = n;
  f.psnr = p.empty() ? 0 : mean_of(p);
  f.ssim = s.empty() ? 0 : mean_of(s);
  return f;
}

}  // namespace psvae::train
