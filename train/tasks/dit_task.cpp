// Stage 3: the DiT in the PS-VAE latent (see dit_task.h).
#include "train/tasks/dit_task.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <stdexcept>

#include "autograd/autocast.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "kernels/ops.h"
#include "train/data/loader.h"
#include "train/tasks/model_keys.h"
#include "train/tasks/psvae_task.h"
#include "train/tasks/svae_task.h"

namespace psvae::train {

namespace fs = std::filesystem;

// ---- schema -------------------------------------------------------------------------------------

ConfigSchema dit_stage_schema() {
  ConfigSchema s;
  s.add_string("init.from", "",
               "required: the train-psvae run folder or checkpoint whose frozen PS-VAE encodes the "
               "images (EMA weights when it has them); it must hold the latent statistics");
  s.add_choice("model.cond", "text", {"class", "text", "external"},
               "condition: class (labels, the published DiT), text (captions through the "
               "built-in tokenizer and text encoder, trained with the DiT) or external "
               "(precomputed caption embeddings, data.embeddings)");
  s.add_choice("model.dit.arch", "custom",
               {"custom", "DiT-S/2", "DiT-S/4", "DiT-S/8", "DiT-B/2", "DiT-B/4", "DiT-B/8",
                "DiT-L/2", "DiT-L/4", "DiT-L/8", "DiT-XL/2", "DiT-XL/4", "DiT-XL/8"},
               "a published DiT size (its hidden, depth, heads and patch) or 'custom' = the "
               "model.dit.* sizes below");
  // Custom defaults: DiT-S width and depth with patch 1, the PS-VAE paper's choice for its
  // 16x16x96 latent (patch 2 would give only 64 tokens of 384 values each).
  s.add_int("model.dit.hidden", 384, "custom DiT: token width D (a multiple of heads)", 8, 8192);
  s.add_int("model.dit.depth", 12, "custom DiT: blocks", 1, 128);
  s.add_int("model.dit.heads", 6, "custom DiT: attention heads", 1, 128);
  s.add_int("model.dit.patch", 1, "custom DiT: patch size on the latent grid (1, 2, 4 or 8)", 1, 8);
  s.add_float("model.dit.mlp_ratio", 4.0, "DiT MLP hidden width / D", 0.25, 16);
  s.exclusive("model.dit.mlp_ratio", false, false);
  s.add_bool("model.dit.learn_sigma", false,
             "also predict the variance interpolation (C_out = 2L) and train it with the "
             "Improved-DDPM hybrid loss, as the published DiT; the samplers here use fixed "
             "variances, so false (eps only) is the better default for new runs");
  s.add_int("model.dit.num_classes", 0,
            "model.cond class: label count (0 = the dataset's, filled in when the run starts)", 0);
  s.add_int("model.text.dim", 256, "text encoder width (a multiple of model.text.heads)", 8, 8192);
  s.add_int("model.text.depth", 2, "text encoder transformer blocks", 0, 64);
  s.add_int("model.text.heads", 4, "text encoder attention heads", 1, 64);
  s.add_float("model.text.mlp_ratio", 4.0, "text encoder MLP hidden width / dim", 0.25, 16);
  s.add_int("model.text.max_len", 32, "tokens per caption including [BOS]; longer ones are cut", 1,
            4096);
  s.add_int("model.text.min_count", 1,
            "tokenizer: a word enters the vocabulary when it occurs this often in the captions", 1);
  s.add_int("model.text.max_vocab", 0, "tokenizer: vocabulary size cap (0 = no cap)", 0);
  s.add_int("model.text.tokenizer_captions", 100000,
            "tokenizer: captions it is trained on, spread evenly over the dataset (0 = all; "
            "reading a caption decodes its image)",
            0);
  s.add_string("data.embeddings", "",
               "model.cond external: the safetensors file of precomputed caption embeddings "
               "(dit/external_embeddings.h); it must hold \"\" when train.cond_dropout > 0");
  s.add_string("data.latent_cache", "",
               "\"\" encodes every batch with the PS-VAE; \"auto\" caches the latents of the whole "
               "dataset in run.out_dir/latents.safetensors (reused while the dataset and PS-VAE "
               "checkpoint match); or a file path (created when missing, an error when it was "
               "made for other data). Needs N*L*h*w*4 bytes of memory and data.hflip=false");
  s.add_choice("diffusion.objective", "eps", {"eps", "v", "flow"},
               "eps (noise prediction, DDPM and DiT), v (v prediction) or flow (rectified flow, "
               "velocity eps - x0)");
  s.add_choice("diffusion.schedule", "linear", {"linear", "scaled_linear", "cosine"},
               "beta schedule of eps / v: linear 1e-4..0.02 (DiT), scaled_linear (Stable "
               "Diffusion) or cosine (Improved DDPM)");
  s.add_int("diffusion.steps", 1000, "eps / v: diffusion steps T of the training schedule", 2,
            100000);
  s.add_float("diffusion.shift", 0.0,
              "flow: time shift k, s' = k s / (1 + (k - 1) s); 0 = sqrt(L*h*w / 4096)", 0);
  s.add_float("diffusion.flow_time_scale", 1000.0,
              "flow: the model's time input is this times s in [0, 1] (the timestep embedder's "
              "sinusoids are laid out for 0..1000)",
              1e-6);
  s.add_float("train.cond_dropout", 0.1,
              "probability that a training sample gets the null condition (empty caption or "
              "null label): what classifier-free guidance needs",
              0, 1);
  s.add_float("train.min_snr_gamma", 0.0,
              "eps / v: weight each sample's MSE by min(SNR, gamma) / SNR (eps) or "
              "min(SNR, gamma) / (SNR + 1) (v), Min-SNR-gamma; 0 = unweighted (DiT); 5 is the "
              "paper's choice",
              0);
  s.add_int("sample.steps", 25,
            "sample grids: sampler steps (DDIM eta 0 for eps / v, Euler for flow)", 1, 1000);
  s.add_float("sample.cfg_scale", 4.0, "sample grids: classifier-free guidance scale (1 = off)", 0);
  add_trainer_keys_with_out_dir(s, "runs/dit");
  add_data_keys(s);
  return s;
}

// ---- model and diffusion configs ----------------------------------------------------------------

dit::ConditionalDiTConfig conditional_dit_config(const Config& cfg, const Shape& latent_shape) {
  if (latent_shape.rank() != 3 || latent_shape[1] != latent_shape[2])
    throw std::runtime_error(fmt::format(
        "train-dit: the latent must be a square grid (L, h, h), got {}", latent_shape.str()));
  dit::ConditionalDiTConfig c;
  c.kind = dit::parse_cond_kind(cfg.get_string("model.cond"));
  const std::string arch = cfg.get_string("model.dit.arch");
  if (arch != "custom") {
    c.dit = dit::dit_arch(arch);
  } else {
    c.dit.hidden = cfg.get_int("model.dit.hidden");
    c.dit.depth = static_cast<int>(cfg.get_int("model.dit.depth"));
    c.dit.heads = static_cast<int>(cfg.get_int("model.dit.heads"));
    c.dit.patch = static_cast<int>(cfg.get_int("model.dit.patch"));
    if (c.dit.hidden % c.dit.heads != 0)
      throw std::runtime_error(
          fmt::format("model.dit.hidden = {} is not a multiple of model.dit.heads = {}",
                      c.dit.hidden, c.dit.heads));
  }
  c.dit.mlp_ratio = cfg.get_float("model.dit.mlp_ratio");
  c.dit.learn_sigma = cfg.get_bool("model.dit.learn_sigma");
  c.dit.input_size = latent_shape[1];
  c.dit.in_channels = static_cast<int>(latent_shape[0]);
  if (c.dit.input_size % c.dit.patch != 0)
    throw std::runtime_error(
        fmt::format("model.dit.patch = {} does not divide the {}x{} latent grid of the PS-VAE",
                    c.dit.patch, c.dit.input_size, c.dit.input_size));
  if (c.kind == dit::CondKind::class_label) {
    c.dit.num_classes = cfg.get_int("model.dit.num_classes");
    if (c.dit.num_classes < 1)
      throw std::runtime_error(
          "model.dit.num_classes = 0: model.cond class needs the label count (train-dit fills it "
          "in from the dataset)");
  } else {
    c.dit.num_classes = 0;  // conditioned on text only: no y_embedder
  }
  c.text.dim = cfg.get_int("model.text.dim");
  c.text.depth = static_cast<int>(cfg.get_int("model.text.depth"));
  c.text.heads = static_cast<int>(cfg.get_int("model.text.heads"));
  c.text.mlp_ratio = cfg.get_float("model.text.mlp_ratio");
  c.text.max_len = cfg.get_int("model.text.max_len");
  if (c.kind == dit::CondKind::text && c.text.dim % c.text.heads != 0)
    throw std::runtime_error(
        fmt::format("model.text.dim = {} is not a multiple of model.text.heads = {}", c.text.dim,
                    c.text.heads));
  return c;
}

dit::DiffusionSetup diffusion_setup(const Config& cfg, const Shape& latent_shape) {
  dit::DiffusionSetup d;
  const std::string obj = cfg.get_string("diffusion.objective");
  d.objective = obj == "eps" ? dit::Objective::eps
                : obj == "v" ? dit::Objective::v
                             : dit::Objective::flow;
  const std::string sch = cfg.get_string("diffusion.schedule");
  d.schedule = sch == "linear"          ? dit::BetaSchedule::linear
               : sch == "scaled_linear" ? dit::BetaSchedule::scaled_linear
                                        : dit::BetaSchedule::cosine;
  d.num_train_steps = static_cast<int>(cfg.get_int("diffusion.steps"));
  const double k = cfg.get_float("diffusion.shift");
  d.shift = k > 0 ? k : dit::shift_factor(latent_shape);
  d.flow_time_scale = cfg.get_float("diffusion.flow_time_scale");
  return d;
}

// ---- the hybrid loss's variational bound (learn_sigma) ----------------------------------------

namespace {

// ln N(x; mean, exp(log_scale)^2) integrated over the bin of width 2/255 around x (edges open at
// +-0.999), with upstream's tanh approximation of the normal CDF.
ag::Var discretized_gaussian_log_likelihood(const Tensor& x, const Tensor& means,
                                            const ag::Var& log_scales) {
  const double c = std::sqrt(2.0 / 3.14159265358979323846);
  auto approx_cdf = [&](const ag::Var& v) {  // 0.5 (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3)))
    ag::Var inner = ag::mul_scalar(ag::add(v, ag::mul_scalar(ag::pow_scalar(v, 3.0), 0.044715)), c);
    return ag::mul_scalar(ag::add_scalar(ag::tanh(inner), 1.0), 0.5);
  };
  const Tensor centered = ops::sub(x, means);
  ag::Var inv_stdv = ag::exp(ag::neg(log_scales));
  ag::Var cdf_plus = approx_cdf(ag::mul(inv_stdv, ag::Var(ops::add_scalar(centered, 1.0 / 255))));
  ag::Var cdf_min = approx_cdf(ag::mul(inv_stdv, ag::Var(ops::add_scalar(centered, -1.0 / 255))));
  const double inf = std::numeric_limits<double>::infinity();
  ag::Var log_cdf_plus = ag::log(ag::clamp(cdf_plus, 1e-12, inf));
  ag::Var log_one_minus_cdf_min =
      ag::log(ag::clamp(ag::add_scalar(ag::neg(cdf_min), 1.0), 1e-12, inf));
  ag::Var log_cdf_delta = ag::log(ag::clamp(ag::sub(cdf_plus, cdf_min), 1e-12, inf));
  // The bin masks, computed on the host (x is data, no gradient).
  Tensor xh = x.to(Device::cpu());
  Tensor low = Tensor::empty(xh.shape(), DType::F32), high = Tensor::empty(xh.shape(), DType::F32);
  Tensor xf = ops::cast(xh, DType::F32);
  for (int64_t i = 0; i < xf.numel(); ++i) {
    low.data<float>()[i] = xf.data<float>()[i] < -0.999f ? 1.0f : 0.0f;
    high.data<float>()[i] = xf.data<float>()[i] > 0.999f ? 1.0f : 0.0f;
  }
  return ag::where(low.to(x.device()), log_cdf_plus,
                   ag::where(high.to(x.device()), log_one_minus_cdf_min, log_cdf_delta));
}

// Per-sample mean over every dim but the first: (N, ...) -> (N).
ag::Var mean_flat(const ag::Var& x) { return ag::mean(ag::reshape(x, {x.shape()[0], -1}), 1); }

}  // namespace

HybridTables HybridTables::make(dit::BetaSchedule schedule, int num_steps) {
  HybridTables h;
  h.betas = dit::make_betas(schedule, num_steps);
  h.alphas_cumprod = dit::cumprod_alphas(h.betas);
  const size_t T = h.betas.size();
  std::vector<double> post_var(T);
  h.coef1.resize(T);
  h.coef2.resize(T);
  h.log_var_clipped.resize(T);
  for (size_t t = 0; t < T; ++t) {
    const double abar = h.alphas_cumprod[t], abar_prev = t == 0 ? 1.0 : h.alphas_cumprod[t - 1];
    post_var[t] = h.betas[t] * (1.0 - abar_prev) / (1.0 - abar);
    h.coef1[t] = h.betas[t] * std::sqrt(abar_prev) / (1.0 - abar);
    h.coef2[t] = (1.0 - abar_prev) * std::sqrt(1.0 - h.betas[t]) / (1.0 - abar);
  }
  // Upstream clips the log of the posterior variance at t = 0 (where it is 0) to that of t = 1.
  for (size_t t = 0; t < T; ++t) h.log_var_clipped[t] = std::log(post_var[T > 1 && t == 0 ? 1 : t]);
  return h;
}

ag::Var hybrid_vb_term(const HybridTables& h, dit::Objective objective, const Tensor& x0,
                       const Tensor& x_t, const std::vector<int64_t>& t, const Tensor& prediction,
                       const ag::Var& var_values) {
  if (objective == dit::Objective::flow)
    throw std::invalid_argument("hybrid_vb_term: learned variances need objective eps or v");
  const size_t n = t.size();
  std::vector<double> min_log(n), max_log(n), c1(n), c2(n), a(n), b(n), w0(n), w1(n);
  bool any_zero = false;
  for (size_t i = 0; i < n; ++i) {
    const size_t k = static_cast<size_t>(t[i]);
    min_log[i] = h.log_var_clipped[k];
    max_log[i] = std::log(h.betas[k]);
    c1[i] = h.coef1[k];
    c2[i] = h.coef2[k];
    const double abar = h.alphas_cumprod[k];
    if (objective == dit::Objective::eps) {  // x0 = x_t / sqrt(abar) - sqrt(1/abar - 1) eps
      a[i] = std::sqrt(1.0 / abar);
      b[i] = -std::sqrt(1.0 / abar - 1.0);
    } else {  // v: x0 = sqrt(abar) x_t - sqrt(1 - abar) v
      a[i] = std::sqrt(abar);
      b[i] = -std::sqrt(1.0 - abar);
    }
    w0[i] = t[i] == 0 ? 1.0 : 0.0;
    w1[i] = 1.0 - w0[i];
    any_zero = any_zero || t[i] == 0;
  }
  using dit::per_sample;
  // The mean is stopped (upstream's frozen_out): only the variance interpolation learns here.
  const Tensor pred_x0 =
      ops::add(ops::mul(per_sample(a, x_t), x_t), ops::mul(per_sample(b, x_t), prediction));
  const Tensor model_mean =
      ops::add(ops::mul(per_sample(c1, x_t), pred_x0), ops::mul(per_sample(c2, x_t), x_t));
  const Tensor true_mean =
      ops::add(ops::mul(per_sample(c1, x_t), x0), ops::mul(per_sample(c2, x_t), x_t));
  // log var = frac max_log + (1 - frac) min_log, frac = (v + 1) / 2.
  const Tensor lo = per_sample(min_log, x_t);
  std::vector<double> span(n);
  for (size_t i = 0; i < n; ++i) span[i] = max_log[i] - min_log[i];
  ag::Var frac = ag::mul_scalar(ag::add_scalar(var_values, 1.0), 0.5);
  ag::Var log_var = ag::add(ag::mul(frac, ag::Var(per_sample(span, x_t))), ag::Var(lo));
  // KL(q || p) = 0.5 (-1 + lv2 - lv1 + exp(lv1 - lv2) + (m1 - m2)^2 exp(-lv2)), lv1 = min_log.
  const Tensor diff = ops::sub(true_mean, model_mean);
  const Tensor num = ops::add(ops::exp(lo), ops::mul(diff, diff));  // exp(lv1) + (m1 - m2)^2
  ag::Var kl =
      ag::mul_scalar(ag::add(ag::add(log_var, ag::mul(ag::Var(num), ag::exp(ag::neg(log_var)))),
                             ag::Var(ops::add_scalar(ops::mul_scalar(lo, -1.0), -1.0))),
                     0.5);
  const double ln2 = std::log(2.0);
  ag::Var per = ag::mul(ag::mul_scalar(mean_flat(kl), 1.0 / ln2),
                        ag::Var(dit::time_tensor(w1, x_t.device())));
  if (any_zero) {  // t = 0: the decoder's negative log-likelihood instead of a KL
    ag::Var nll = ag::mul_scalar(mean_flat(discretized_gaussian_log_likelihood(
                                     x0, model_mean, ag::mul_scalar(log_var, 0.5))),
                                 -1.0 / ln2);
    per = ag::add(per, ag::mul(nll, ag::Var(dit::time_tensor(w0, x_t.device()))));
  }
  return ag::mean_all(per);
}

// ---- the task -----------------------------------------------------------------------------------

namespace {

std::string psvae_step_of(const StageCheckpoint& ck) {
  auto it = ck.meta.find("psvae.step");
  return it == ck.meta.end() ? "?" : it->second;
}

// The fields a latent cache is valid for, in the order they are checked.
std::vector<std::pair<std::string, std::string>> cache_fields(const Dataset& data,
                                                              const Config& cfg,
                                                              const std::string& psvae_path,
                                                              const std::string& psvae_step,
                                                              const Shape& latent_shape) {
  return {{"format", "1"},
          {"dataset", data.describe()},
          {"data.seed", std::to_string(cfg.get_int("data.seed"))},
          {"size", std::to_string(data.size())},
          {"psvae_checkpoint", psvae_path},
          {"psvae_step", psvae_step},
          {"latent_shape", latent_shape.str()}};
}

}  // namespace

struct DiTTask::Impl {
  dit::DiffusionSetup setup;
  dit::CondKind kind = dit::CondKind::text;
  Shape latent_shape;  // (L, h, w)
  int64_t num_classes = 0;
  double cond_dropout = 0.1;
  double min_snr_gamma = 0;  // 0: plain MSE; else Min-SNR-gamma loss weights (eps / v)
  bool learn_sigma = false;
  int sample_steps = 25;
  double sample_cfg = 4.0;
  std::vector<double> alphas_cumprod;  // of the training schedule (eps / v)
  HybridTables hybrid;                 // learn_sigma only
  std::string psvae_path, psvae_step, tokenizer_json;

  // Latent cache: rows of `latents` by dataset index (-1 = not cached).
  Tensor latents;  // (M, L, h, w) f32, CPU
  std::vector<int64_t> row_of;
  std::string cache_path;

  bool cached() const { return latents.defined(); }

  Tensor lookup(const std::vector<int64_t>& indices) const {
    const int64_t per = latent_shape.numel(), n = static_cast<int64_t>(indices.size());
    Tensor out = Tensor::empty({n, latent_shape[0], latent_shape[1], latent_shape[2]}, DType::F32);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t idx = indices[static_cast<size_t>(i)];
      const int64_t r = idx >= 0 && idx < static_cast<int64_t>(row_of.size())
                            ? row_of[static_cast<size_t>(idx)]
                            : -1;
      if (r < 0)
        throw std::runtime_error(
            fmt::format("{}: dataset index {} is not in the latent cache", cache_path, idx));
      std::memcpy(out.data<float>() + i * per, latents.data<float>() + r * per,
                  static_cast<size_t>(per) * sizeof(float));
    }
    return out;
  }
};

namespace {

// One no-grad pass over the dataset in index order: (M, L, h, w) normalised latents and the
// dataset index of each row (entries that fail to decode are left out; the loader skips them too).
std::pair<Tensor, std::vector<int64_t>> encode_dataset(const PSVAE& model, const LatentStats& stats,
                                                       std::shared_ptr<const Dataset> data,
                                                       const Shape& latent_shape, int64_t batch,
                                                       int workers) {
  const int64_t size = data->size(), per = latent_shape.numel();
  Tensor all = Tensor::empty({size, latent_shape[0], latent_shape[1], latent_shape[2]});
  std::vector<int64_t> idx;
  auto put = [&](const Tensor& images, const std::vector<int64_t>& which) {
    Tensor lat = ops::cast(encode_latents(model, stats, images), DType::F32).to(Device::cpu());
    for (size_t i = 0; i < which.size(); ++i) {
      std::memcpy(all.data<float>() + static_cast<int64_t>(idx.size()) * per,
                  lat.data<float>() + static_cast<int64_t>(i) * per,
                  static_cast<size_t>(per) * sizeof(float));
      idx.push_back(which[i]);
    }
  };
  LoaderOptions lo;
  lo.global_batch = std::max<int64_t>(1, std::min(batch, size));
  lo.shuffle = false;
  lo.workers = workers;
  int64_t covered = 0;
  {
    Loader loader(data, lo);
    for (int64_t b = 0; b < loader.batches_per_epoch(); ++b) {
      Batch x = loader.next();
      put(x.images, x.indices);
    }
    covered = loader.batches_per_epoch() * lo.global_batch;
  }
  // The loader drops the last partial batch; encode it here.
  for (int64_t i = covered; i < size; ++i) {
    Sample s;
    try {
      s = data->get(i);
    } catch (const std::exception&) {
      continue;  // the training loader skips it as well
    }
    put(s.image.reshape({1, s.image.size(0), s.image.size(1), s.image.size(2)}), {i});
  }
  const int64_t m = static_cast<int64_t>(idx.size());
  return {m == size ? all : all.slice0(0, m).clone(), idx};
}

// Reads a latent cache file. false with *stale naming the first field that differs when it was
// made for other data or another PS-VAE; throws when the file is not a cache of this shape.
bool read_cache(const std::string& path,
                const std::vector<std::pair<std::string, std::string>>& fields,
                const Shape& latent_shape, int64_t dataset_size, Tensor* latents,
                std::vector<int64_t>* row_of, std::string* stale) {
  safetensors::Metadata meta;
  safetensors::NamedTensors t = safetensors::load(path, &meta);
  for (const auto& [k, v] : fields) {
    auto it = meta.find("latent_cache." + k);
    const std::string have = it == meta.end() ? "(missing)" : it->second;
    if (have != v) {
      *stale = fmt::format("it was made for {} = '{}', this run has '{}'", k, have, v);
      return false;
    }
  }
  Tensor lat, idx;
  for (auto& [n, x] : t) {
    if (n == "latents") lat = x;
    if (n == "indices") idx = x;
  }
  const auto bad = [&](const std::string& what) {
    return std::runtime_error(fmt::format(
        "{}: not a latent cache of this run ({}; expected 'latents' (M, {}, {}, {}) f32 and "
        "'indices' (M) i64)",
        path, what, latent_shape[0], latent_shape[1], latent_shape[2]));
  };
  if (!lat.defined() || !idx.defined()) throw bad("a tensor is missing");
  if (lat.dtype() != DType::F32 || lat.rank() != 4 ||
      Shape{lat.size(1), lat.size(2), lat.size(3)} != latent_shape)
    throw bad("latents is " + lat.str());
  if (idx.dtype() != DType::I64 || idx.rank() != 1 || idx.size(0) != lat.size(0))
    throw bad("indices is " + idx.str());
  row_of->assign(static_cast<size_t>(dataset_size), -1);
  for (int64_t r = 0; r < idx.numel(); ++r) {
    const int64_t d = idx.data<int64_t>()[r];
    if (d < 0 || d >= dataset_size)
      throw bad(fmt::format("indices[{}] = {} is outside the dataset", r, d));
    (*row_of)[static_cast<size_t>(d)] = r;
  }
  *latents = lat.clone();  // own memory, not the file's mapping
  return true;
}

void write_cache(const std::string& path,
                 const std::vector<std::pair<std::string, std::string>>& fields,
                 const Tensor& latents, const std::vector<int64_t>& indices) {
  safetensors::Metadata meta;
  for (const auto& [k, v] : fields) meta["latent_cache." + k] = v;
  meta["latent_cache.note"] =
      "PS-VAE posterior means (N, L, h, w), normalised with the checkpoint's latent statistics; "
      "row r is dataset entry indices[r]";
  std::error_code ec;
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  safetensors::save(
      path,
      {{"latents", latents},
       {"indices", Tensor::from_vector(indices, Shape{static_cast<int64_t>(indices.size())})}},
      meta);
}

}  // namespace

DiTTask::DiTTask(Config& cfg, std::shared_ptr<const Dataset> data, Device device)
    : impl_(std::make_shared<Impl>()) {
  Impl& im = *impl_;
  StageCheckpoint ck =
      read_stage_checkpoint(cfg, "init.from", "psvae", "train-psvae checkpoint or run folder");

  // The PS-VAE as stage 2 built it: its architecture from the checkpoint's saved config.
  Config pc(psvae_stage_schema());
  inherit_arch_keys(pc, ck, {"model.", "data.image_size"});
  const PSVAEConfig c2 = psvae_config(pc);
  const int64_t image_size = pc.get_int("data.image_size");
  if (data->image_size() != image_size)
    throw std::runtime_error(fmt::format(
        "data.image_size = {} but the PS-VAE of init.from ({}) was trained on {}x{} images",
        data->image_size(), ck.path, image_size, image_size));
  if (image_size % c2.encoder.patch != 0)
    throw std::runtime_error(
        fmt::format("{}: image size {} is not a multiple of the encoder patch {}", ck.path,
                    image_size, c2.encoder.patch));
  const int64_t grid = image_size / c2.encoder.patch;
  im.latent_shape = Shape{c2.svae.latent_dim, grid, grid};

  Generator g(static_cast<uint64_t>(cfg.get_int("train.seed")) ^ 0xD1B54A32D192ED03ull, 0);
  psvae_ = std::make_shared<PSVAE>(c2, g);
  try {
    psvae_->load_state_dict(ck.model);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("init.from: {}: {}", ck.path, e.what()));
  }
  psvae_->set_requires_grad(false);
  psvae_->eval();
  psvae_->to(device);
  stats_ = latent_stats_from(ck.task, c2.svae.latent_dim, ck.path);
  std::error_code ec;
  im.psvae_path = fs::weakly_canonical(ck.path, ec).string();
  if (ec) im.psvae_path = ck.path;
  im.psvae_step = psvae_step_of(ck);

  // Diffusion and conditioning.
  im.kind = dit::parse_cond_kind(cfg.get_string("model.cond"));
  if (im.kind == dit::CondKind::class_label && cfg.get_int("model.dit.num_classes") == 0)
    cfg.set("model.dit.num_classes", std::to_string(data->num_classes()), "the dataset");
  if (im.kind == dit::CondKind::class_label &&
      cfg.get_int("model.dit.num_classes") < data->num_classes())
    throw std::runtime_error(
        fmt::format("model.dit.num_classes = {} but the dataset has {} classes",
                    cfg.get_int("model.dit.num_classes"), data->num_classes()));
  im.setup = diffusion_setup(cfg, im.latent_shape);
  im.cond_dropout = cfg.get_float("train.cond_dropout");
  im.min_snr_gamma = cfg.get_float("train.min_snr_gamma");
  if (im.min_snr_gamma > 0 && im.setup.objective == dit::Objective::flow)
    throw std::runtime_error(
        "train.min_snr_gamma > 0 needs diffusion.objective eps or v: the Min-SNR weights are "
        "defined on the SNR of a noise schedule");
  if (im.min_snr_gamma > 0 && cfg.get_bool("model.dit.learn_sigma"))
    throw std::runtime_error(
        "train.min_snr_gamma > 0 with model.dit.learn_sigma = true: the hybrid loss's VLB term "
        "has its own weighting; use one or the other");
  im.learn_sigma = cfg.get_bool("model.dit.learn_sigma");
  im.sample_steps = static_cast<int>(cfg.get_int("sample.steps"));
  im.sample_cfg = cfg.get_float("sample.cfg_scale");
  if (im.setup.objective != dit::Objective::flow) {
    im.alphas_cumprod =
        dit::cumprod_alphas(dit::make_betas(im.setup.schedule, im.setup.num_train_steps));
    if (im.learn_sigma) im.hybrid = HybridTables::make(im.setup.schedule, im.setup.num_train_steps);
  } else if (im.learn_sigma) {
    throw std::runtime_error(
        "model.dit.learn_sigma = true needs diffusion.objective eps or v: rectified flow has no "
        "variance to learn");
  }

  dit::ConditionalDiTConfig mc = conditional_dit_config(cfg, im.latent_shape);
  im.num_classes = mc.dit.num_classes;
  // final_layer.linear maps a D-wide token to its p*p*C_out outputs; with D below that it is a
  // rank-D bottleneck and the loss has a floor (measured on a 4x4x48 latent, patch 2, D 128 < 192:
  // eps loss stuck at 0.4 where patch 1 reaches 0.05).
  const int64_t per_token = static_cast<int64_t>(mc.dit.patch) * mc.dit.patch * mc.dit.in_channels;
  if (mc.dit.hidden < per_token)
    std::printf(
        "warning: model.dit.hidden = %lld is below patch^2 * L = %lld values per token: the final "
        "layer cannot represent every output (expect a loss floor); use a larger hidden or a "
        "smaller patch\n",
        static_cast<long long>(mc.dit.hidden), static_cast<long long>(per_token));
  dit::WordTokenizer tok;
  std::shared_ptr<const dit::ExternalEmbeddings> ext;
  if (im.kind == dit::CondKind::text) {
    // Captions spread evenly over the dataset (an image folder is sorted by class).
    const int64_t want = cfg.get_int("model.text.tokenizer_captions");
    const int64_t n = want > 0 ? std::min(want, data->size()) : data->size();
    std::vector<std::string> captions;
    for (int64_t k = 0; k < n; ++k) {
      try {
        captions.push_back(data->get(k * data->size() / n).caption);
      } catch (const std::exception&) {
        // Unreadable entries are reported by the loader; the vocabulary just misses them.
      }
    }
    tok = dit::WordTokenizer::train(captions, cfg.get_int("model.text.min_count"),
                                    cfg.get_int("model.text.max_vocab"));
    im.tokenizer_json = tok.to_json();
  } else if (im.kind == dit::CondKind::external) {
    const std::string path = cfg.get_string("data.embeddings");
    if (path.empty())
      throw std::runtime_error(
          "data.embeddings is not set: model.cond external needs the file of caption embeddings");
    ext = std::make_shared<const dit::ExternalEmbeddings>(dit::ExternalEmbeddings::load(path));
    if (im.cond_dropout > 0 && !ext->contains(""))
      throw std::runtime_error(fmt::format(
          "data.embeddings = {}: has no embedding of the empty caption \"\", which "
          "train.cond_dropout = {} needs (the null condition of classifier-free guidance)",
          path, im.cond_dropout));
  }
  Generator gm(static_cast<uint64_t>(cfg.get_int("train.seed")) ^ 0x9E3779B97F4A7C15ull, 1);
  model_ = std::make_shared<dit::ConditionalDiT>(mc, gm, tok, ext);
  model_->to(device);

  // The latent cache.
  const std::string cache = cfg.get_string("data.latent_cache");
  if (!cache.empty()) {
    if (cfg.get_bool("data.hflip"))
      throw std::runtime_error(
          "data.latent_cache needs data.hflip = false: the cache holds the latents of the "
          "unflipped images");
    const bool automatic = cache == "auto";
    im.cache_path = automatic ? cfg.get_string("run.out_dir") + "/latents.safetensors" : cache;
    const auto fields = cache_fields(*data, cfg, im.psvae_path, im.psvae_step, im.latent_shape);
    std::string stale;
    if (fs::exists(im.cache_path, ec) &&
        read_cache(im.cache_path, fields, im.latent_shape, data->size(), &im.latents, &im.row_of,
                   &stale)) {
      std::printf("latent cache: reusing %s (%lld latents)\n", im.cache_path.c_str(),
                  static_cast<long long>(im.latents.size(0)));
    } else {
      if (!stale.empty() && !automatic)
        throw std::runtime_error(fmt::format("data.latent_cache = {}: {}", im.cache_path, stale));
      if (!stale.empty())
        std::printf("latent cache: %s is stale (%s); re-encoding\n", im.cache_path.c_str(),
                    stale.c_str());
      std::printf("latent cache: encoding %lld images with the PS-VAE into %s\n",
                  static_cast<long long>(data->size()), im.cache_path.c_str());
      std::fflush(stdout);
      const auto t0 = std::chrono::steady_clock::now();
      auto [lat, idx] = encode_dataset(*psvae_, stats_, data, im.latent_shape,
                                       std::max<int64_t>(trainer_micro_batch(cfg), 64),
                                       static_cast<int>(cfg.get_int("data.workers")));
      im.latents = lat;
      im.row_of.assign(static_cast<size_t>(data->size()), -1);
      for (size_t r = 0; r < idx.size(); ++r)
        im.row_of[static_cast<size_t>(idx[r])] = static_cast<int64_t>(r);
      write_cache(im.cache_path, fields, lat, idx);
      std::printf("latent cache: %lld latents written in %.1f s\n",
                  static_cast<long long>(idx.size()),
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::fflush(stdout);
  }
}

namespace {

// The first C channels of (N, C_out, H, W): with learn_sigma the model outputs [prediction, var].
Tensor prediction_part(const Tensor& out, int64_t c) {
  return out.size(1) == c ? out : ops::narrow(out, 1, 0, c);
}

}  // namespace

std::vector<float> min_snr_weights(dit::Objective objective,
                                   const std::vector<double>& alphas_cumprod,
                                   const std::vector<int64_t>& t, double gamma) {
  if (objective == dit::Objective::flow)
    throw std::invalid_argument("min_snr_weights: objective flow has no noise-schedule SNR");
  std::vector<float> w;
  w.reserve(t.size());
  for (int64_t k : t) {
    if (k < 0 || k >= static_cast<int64_t>(alphas_cumprod.size()))
      throw std::invalid_argument(
          fmt::format("min_snr_weights: step {} outside [0, {})", k, alphas_cumprod.size()));
    const double ab = alphas_cumprod[static_cast<size_t>(k)];
    const double snr = ab / (1.0 - ab);
    w.push_back(static_cast<float>(std::min(snr, gamma) /
                                   (objective == dit::Objective::v ? snr + 1.0 : snr)));
  }
  return w;
}

LossOutput DiTTask::loss(const Batch& batch, const StepContext& ctx) {
  Impl& im = *impl_;
  const int64_t n =
      batch.images.defined() ? batch.images.size(0) : static_cast<int64_t>(batch.indices.size());
  Tensor x0 = im.cached() ? im.lookup(batch.indices).to(ctx.device)
                          : encode_latents(*psvae_, stats_, batch.images);
  Generator& rng = *ctx.rng;

  // Draw order (fixed, so a resumed run draws the same numbers): dropout (n), time (n), noise.
  Tensor u_drop = Tensor::empty({n}, DType::F32), u_time = Tensor::empty({n}, DType::F32);
  rng.uniform_(u_drop);
  rng.uniform_(u_time);
  Tensor noise = Tensor::empty(x0.shape(), DType::F32, ctx.device);
  rng.normal_(noise);

  dit::Condition cond;
  for (int64_t i = 0; i < n; ++i) {
    const bool drop = u_drop.data<float>()[i] < im.cond_dropout;
    if (im.kind == dit::CondKind::class_label)
      cond.labels.push_back(drop ? im.num_classes : batch.labels.data<int64_t>()[i]);
    else
      cond.captions.push_back(drop ? std::string() : batch.captions[static_cast<size_t>(i)]);
  }

  dit::TrainPair pair;
  std::vector<int64_t> steps;
  std::vector<double> t_model(static_cast<size_t>(n));
  if (im.setup.objective == dit::Objective::flow) {
    for (int64_t i = 0; i < n; ++i)
      t_model[static_cast<size_t>(i)] = dit::shift_time(u_time.data<float>()[i], im.setup.shift);
    pair = dit::flow_pair(x0, noise, t_model);
  } else {
    const int64_t T = im.setup.num_train_steps;
    for (int64_t i = 0; i < n; ++i) {
      int64_t t =
          static_cast<int64_t>(std::floor(u_time.data<float>()[i] * static_cast<double>(T)));
      t = std::clamp<int64_t>(t, 0, T - 1);
      steps.push_back(t);
      t_model[static_cast<size_t>(i)] = static_cast<double>(t);
    }
    pair = dit::diffusion_pair(im.setup.objective, im.alphas_cumprod, x0, noise, steps);
  }

  dit::DiTCond c = model_->encode(cond, ctx.device);
  // Under train.bf16 the final linear returns bf16; the loss and the vb term take it in f32.
  ag::Var out = ag::autocast::to(
      model_->forward(ag::Var(pair.x_t),
                      dit::model_time(im.setup, dit::time_tensor(t_model, ctx.device)), c),
      DType::F32);
  const int64_t C = im.latent_shape[0];
  ag::Var pred = im.learn_sigma ? ag::narrow(out, 1, 0, C) : out;
  ag::Var mse = ag::mse_loss(pred, ag::Var(pair.target));
  LossOutput r;
  r.terms["mse"] = mse.data().item();
  if (im.min_snr_gamma > 0) {
    const std::vector<float> w =
        min_snr_weights(im.setup.objective, im.alphas_cumprod, steps, im.min_snr_gamma);
    ag::Var wt(Tensor::from_vector(w, Shape{n, 1, 1, 1}, ctx.device));
    r.loss = ag::mean_all(ag::mul(ag::square(ag::sub(pred, ag::Var(pair.target))), wt));
    return r;
  }
  if (!im.learn_sigma) {
    r.loss = mse;
    return r;
  }
  ag::Var vb = hybrid_vb_term(im.hybrid, im.setup.objective, x0, pair.x_t, steps, pred.data(),
                              ag::narrow(out, 1, C, C));
  r.terms["vb"] = vb.data().item();
  r.loss = ag::add(mse, vb);
  return r;
}

Tensor DiTTask::samples(nn::Module& m, const Batch& fixed, const StepContext& ctx) {
  Impl& im = *impl_;
  auto& model = dynamic_cast<dit::ConditionalDiT&>(m);
  ag::NoGradGuard no_grad;
  const int64_t n = fixed.images.size(0), C = im.latent_shape[0];
  dit::Condition cond;
  for (int64_t i = 0; i < n; ++i) {
    if (im.kind == dit::CondKind::class_label)
      cond.labels.push_back(fixed.labels.data<int64_t>()[i]);
    else
      cond.captions.push_back(fixed.captions[static_cast<size_t>(i)]);
  }
  const dit::DiTCond c = model.encode(cond, ctx.device);
  const dit::DiTCond u = model.encode(model.null_condition(n), ctx.device);
  const dit::DiffusionSetup setup = im.setup;
  auto denoiser = [&model, C, setup](const dit::DiTCond& k) -> dit::Denoiser {
    return [&model, C, k, setup](const Tensor& x, const Tensor& t) {
      return prediction_part(model.forward(ag::Var(x), dit::model_time(setup, t), k).data(), C);
    };
  };
  dit::GuidanceConfig gc;
  gc.scale = im.sample_cfg;
  gc.time_scale = im.setup.objective == dit::Objective::flow
                      ? 1.0
                      : static_cast<double>(im.setup.num_train_steps);
  dit::Denoiser guided = dit::classifier_free_guidance(denoiser(c), denoiser(u), gc);
  Tensor x =
      dit::initial_noise(Shape{n, im.latent_shape[0], im.latent_shape[1], im.latent_shape[2]},
                         DType::F32, ctx.device, *ctx.rng);
  Tensor lat;
  if (im.setup.objective == dit::Objective::flow) {
    lat = dit::euler_sample(guided, im.sample_steps, im.setup.shift, x);
  } else {
    dit::Schedule s = dit::Schedule::make(im.setup.schedule, im.setup.num_train_steps,
                                          std::min(im.sample_steps, im.setup.num_train_steps));
    lat = dit::ddim_sample(guided, im.setup.objective, s, x, 0.0, *ctx.rng);
  }
  Tensor img = ops::clamp(decode_latents(*psvae_, stats_, lat), -1.0, 1.0);
  // Each condition's dataset image beside its generation.
  return ops::concat({fixed.images.to(img.device()), img}, 3);
}

safetensors::NamedTensors DiTTask::extra_state() {
  return {{"latent_mean", stats_.mean}, {"latent_std", stats_.std}};
}

void DiTTask::load_extra_state(const safetensors::NamedTensors& t) {
  // The run's latents were normalised with these; a PS-VAE whose statistics changed since (its run
  // was continued) describes another latent space.
  for (const auto& [n, x] : t) {
    const Tensor* mine = n == "latent_mean"  ? &stats_.mean
                         : n == "latent_std" ? &stats_.std
                                             : nullptr;
    if (!mine) continue;
    Tensor a = ops::cast(x.to(Device::cpu()), DType::F32);
    bool same = a.numel() == mine->numel();
    for (int64_t i = 0; same && i < a.numel(); ++i)
      same = a.data<float>()[i] == mine->data<float>()[i];
    if (!same)
      throw std::runtime_error(fmt::format(
          "task.{} differs from the statistics of init.from ({}): the PS-VAE changed since this "
          "run started; start a new run (another run.out_dir)",
          n, impl_->psvae_path));
  }
}

safetensors::Metadata DiTTask::extra_metadata() {
  safetensors::Metadata m;
  if (!impl_->tokenizer_json.empty()) m["tokenizer"] = impl_->tokenizer_json;
  m["psvae_checkpoint"] = impl_->psvae_path;
  m["psvae_step"] = impl_->psvae_step;
  m["latent_shape"] = impl_->latent_shape.str();
  return m;
}

void DiTTask::load_extra_metadata(const safetensors::Metadata& m) {
  auto it = m.find("tokenizer");
  if (impl_->kind == dit::CondKind::text && it != m.end() && it->second != impl_->tokenizer_json)
    throw std::runtime_error(
        "task.tokenizer of the checkpoint differs from the tokenizer trained on this dataset's "
        "captions: the data changed since this run started");
}

}  // namespace psvae::train
