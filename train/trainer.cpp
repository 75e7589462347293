// The training loop. One optimiser step:
//   zero grads -> for each of grad_accum micro-batches: loader.next(), task.loss, backward of
//   loss / grad_accum -> global grad norm (clipped when train.grad_clip > 0) -> non-finite guard
//   -> lr = warmup_cosine(step) -> AdamW -> EMA.
// Data: the caller builds the Loader with global_batch = train.batch_size / train.grad_accum
// (trainer_micro_batch), so a step always consumes exactly grad_accum loader batches, skipped
// steps included, and the loader position after step s is s * grad_accum batches in.
//
// Data parallelism (train/distributed.h, docs/distributed.md), when started by mpirun: each rank
// takes its shard of every loader batch (n_r of the micro-batch's G images) and backpropagates its
// mean loss weighted by n_r / G, so the gradients summed over the ranks are the gradient of the
// mean over all G images, whatever the rank count. Per step, after the micro-batches:
//   S1  all-reduce of [non-finite flag, images, random draws, weighted loss, term count, which
//       gradients exist] -> every rank skips the same steps and logs the global loss;
//   the gradient all-reduce (buckets), then clipping on the summed gradient;
//   S2  all-reduce of [non-finite gradient norm, stop request, weighted terms] -> the same skip and
//       the same stop (SIGTERM on any rank) everywhere.
// Rank r draws its noise from offset + r * 2^50 of the one Philox stream, which then advances by
// the ranks' draws together: with one rank this is the single-process stream. Rank 0 alone writes
// config.yaml, metrics.jsonl, checkpoints, grids and report.html, and keeps the EMA; every rank
// resumes from the same checkpoint, then rank 0's weights are broadcast.
//
// Exact resume: everything the computation reads is either a function of the step (lr, which
// micro-batch) or lives in the checkpoint: parameters and buffers, AdamW m, v and step count,
// EMA shadows, the Generator (seed, offset) every training draw comes from, the loader position,
// the non-finite run length and the task's extra state. Samples draw from a separate generator and
// a fixed batch taken from the dataset itself, so writing them never perturbs the training stream.
#include "train/trainer.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>

#include "autograd/autocast.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "kernels/ops.h"
#include "nn/optim.h"
#include "tensor/atomic_file.h"
#include "tensor/cuda_runtime.h"
#include "train/checkpoint.h"
#include "train/distributed.h"
#include "train/image_io.h"
#include "train/progress.h"
#include "train/report.h"
#include "train/signals.h"

namespace psvae::train {

namespace fs = std::filesystem;

void add_trainer_keys(ConfigSchema& s) {
  s.add_int("train.steps", 1000, "optimiser steps of the whole run", 1);
  s.add_int("train.batch_size", 32,
            "images per optimiser step, summed over micro-batches (the global batch)", 1);
  s.add_int("train.grad_accum", 1,
            "micro-batches per optimiser step (gradient accumulation); must divide "
            "train.batch_size",
            1);
  s.add_float("train.lr", 1e-4, "peak learning rate of AdamW after warmup", 0);
  s.exclusive("train.lr", true, false);
  s.add_float("train.min_lr", 0.0, "learning rate at the end of the cosine decay", 0);
  s.add_int("train.warmup_steps", 0, "steps of linear learning-rate warmup from 0", 0);
  s.add_float("train.weight_decay", 0.0, "AdamW decoupled weight decay", 0);
  s.add_float("train.beta1", 0.9, "AdamW beta1, the first-moment decay", 0, 1);
  s.exclusive("train.beta1", false, true);
  s.add_float("train.beta2", 0.999, "AdamW beta2, the second-moment decay", 0, 1);
  s.exclusive("train.beta2", false, true);
  s.add_float("train.adam_eps", 1e-8, "AdamW epsilon added to the denominator", 0);
  s.exclusive("train.adam_eps", true, false);
  s.add_float("train.grad_clip", 1.0, "clip gradients to this global L2 norm (0 = off)", 0);
  s.add_float("train.ema_decay", 0.9999,
              "decay of the exponential moving average of the weights, used for samples and "
              "saved in checkpoints (0 = off)",
              0, 1);
  s.add_bool("train.bf16", false,
             "mixed precision: the forward's matmuls, convolutions and attention in bf16, norms, "
             "losses, weights and optimiser in f32 (fast on CUDA; the CPU widens every bf16 op "
             "to f32, so it is slower there than f32)");
  s.add_int("train.max_nonfinite", 5,
            "stop after this many consecutive non-finite losses (each one skips its step)", 1);
  s.add_int("train.log_every", 10, "steps between progress lines and metrics.jsonl entries", 1);
  s.add_int("train.ckpt_every", 500, "steps between checkpoints (one is always written at the end)",
            1);
  s.add_int("train.keep_last", 3, "step checkpoints kept (older ones are deleted; best is kept)",
            1);
  s.add_int("train.sample_every", 500, "steps between sample grids in samples/ (0 = off)", 0);
  s.add_bool("train.resume", false,
             "continue from the newest valid checkpoint in run.out_dir (fresh start if none)");
  s.add_int("train.seed", 0, "seed of the training random stream (noise, dropout, timesteps)", 0);
  s.add_float("train.collective_timeout_s", 300,
              "under mpirun: seconds a rank waits in a collective for the others before naming "
              "the missing rank and stopping every rank (must exceed rank 0's checkpoint and "
              "sample-grid pauses)",
              0);
  s.exclusive("train.collective_timeout_s", true, false);
  s.add_int("train.bucket_mb", 25,
            "under mpirun: MiB of gradients per all-reduce bucket (each bucket starts as soon as "
            "it is packed)",
            1);
  s.add_string("run.out_dir", "runs/run",
               "run folder: config.yaml, metrics.jsonl, checkpoints/, samples/, report.html");
}

int64_t trainer_micro_batch(const Config& cfg) {
  int64_t batch = cfg.get_int("train.batch_size"), accum = cfg.get_int("train.grad_accum");
  if (accum < 1 || batch % accum != 0)
    throw std::runtime_error(fmt::format(
        "train.batch_size = {} is not a multiple of train.grad_accum = {} (each micro-batch must "
        "hold the same number of images)",
        batch, accum));
  return batch / accum;
}

void check_trainer_config(const Config& cfg) {
  // Single-key ranges are the schema's job (checked when the value is set); this checks the
  // relations between keys.
  trainer_micro_batch(cfg);
}

namespace {

std::string format_float(double v) { return fmt::format("{}", v); }  // shortest round-trip text

// "nan", "inf", "-inf" or the number, for messages.
std::string value_text(double v) { return std::isnan(v) ? "nan" : fmt::format("{:g}", v); }

void make_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    throw std::runtime_error(fmt::format("{}: cannot create the run folder ({})", dir,
                                         ec ? ec.message() : "not a directory"));
}

// Tensors of a checkpoint whose names start with `prefix`, with the prefix removed.
safetensors::NamedTensors with_prefix(const safetensors::NamedTensors& all,
                                      const std::string& prefix, bool strip) {
  safetensors::NamedTensors out;
  for (const auto& [n, t] : all)
    if (n.compare(0, prefix.size(), prefix) == 0)
      out.emplace_back(strip ? n.substr(prefix.size()) : n, t);
  return out;
}

}  // namespace

struct Trainer::Impl {
  TrainTask& task;
  Loader& loader;
  Config cfg;
  std::function<void(int64_t)>* on_step;

  // train.* values, read once.
  int64_t steps, batch_size, grad_accum, warmup_steps, max_nonfinite, log_every, ckpt_every,
      keep_last, sample_every;
  double lr, min_lr, weight_decay, beta1, beta2, adam_eps, grad_clip, ema_decay;
  bool bf16, resume;
  uint64_t seed;
  double collective_timeout_s;
  int64_t bucket_mb;
  std::string out_dir, ckpt_dir, samples_dir, metrics_path;

  Device device;
  nn::NamedVars trainable;
  std::vector<ag::Var> trainable_vars;
  std::unique_ptr<nn::AdamW> opt;
  std::unique_ptr<nn::EMA> ema;
  Generator rng;

  // Data parallelism: `distributed` when started by mpirun (even with one rank).
  bool distributed = false, root = true;
  int rank = 0, world = 1;
  int64_t micro_global = 0;  // images of one loader batch over all ranks (G)
  int64_t shard = 0;         // this rank's images of it (n_r)
  std::unique_ptr<dist::Collectives> coll;

  // Run state (checkpointed).
  int64_t step = 0;  // optimiser steps completed
  double best_loss = std::numeric_limits<double>::infinity();
  int64_t nonfinite_run = 0;
  double elapsed_before = 0;  // wall time of the earlier processes of this run

  // Per-process bookkeeping.
  std::chrono::steady_clock::time_point t_start;
  double window_loss_sum = 0;  // finite losses since the last checkpoint, for best.safetensors
  int64_t window_loss_n = 0;
  bool have_fixed_batch = false;
  Batch fixed_batch;
  TrainResult result;

  Impl(TrainTask& t, Loader& l, const Config& c, std::function<void(int64_t)>* hook)
      : task(t), loader(l), cfg(c), on_step(hook) {
    steps = cfg.get_int("train.steps");
    batch_size = cfg.get_int("train.batch_size");
    grad_accum = cfg.get_int("train.grad_accum");
    check_trainer_config(cfg);
    warmup_steps = cfg.get_int("train.warmup_steps");
    max_nonfinite = cfg.get_int("train.max_nonfinite");
    log_every = cfg.get_int("train.log_every");
    ckpt_every = cfg.get_int("train.ckpt_every");
    keep_last = cfg.get_int("train.keep_last");
    sample_every = cfg.get_int("train.sample_every");
    lr = cfg.get_float("train.lr");
    min_lr = cfg.get_float("train.min_lr");
    weight_decay = cfg.get_float("train.weight_decay");
    beta1 = cfg.get_float("train.beta1");
    beta2 = cfg.get_float("train.beta2");
    adam_eps = cfg.get_float("train.adam_eps");
    grad_clip = cfg.get_float("train.grad_clip");
    ema_decay = cfg.get_float("train.ema_decay");
    bf16 = cfg.get_bool("train.bf16");
    resume = cfg.get_bool("train.resume");
    seed = static_cast<uint64_t>(cfg.get_int("train.seed"));
    collective_timeout_s = cfg.get_float("train.collective_timeout_s");
    bucket_mb = cfg.get_int("train.bucket_mb");
    out_dir = cfg.get_string("run.out_dir");
    ckpt_dir = out_dir + "/checkpoints";
    samples_dir = out_dir + "/samples";
    metrics_path = out_dir + "/metrics.jsonl";

    nn::Module& model = task.model();
    for (auto& [n, p] : model.named_parameters()) {
      if (!p.requires_grad()) continue;  // frozen (e.g. PS-VAE's frozen encoder copy)
      trainable.emplace_back(n, p);
      trainable_vars.push_back(p);
    }
    if (trainable.empty())
      throw std::runtime_error(
          fmt::format("task '{}': the model has no trainable parameters", task.name()));
    device = trainable.front().second.device();
    if (bf16 && !task.supports_bf16())
      throw std::runtime_error(fmt::format(
          "train.bf16 = true: task '{}' has no bf16 mixed-precision path; set train.bf16=false",
          task.name()));

    nn::AdamWOptions o;
    o.lr = lr;
    o.beta1 = beta1;
    o.beta2 = beta2;
    o.eps = adam_eps;
    o.weight_decay = weight_decay;
    opt = std::make_unique<nn::AdamW>(trainable, o);
    distributed = dist::launched();
    if (distributed) {
      rank = dist::rank();
      world = dist::world();
      root = rank == 0;
      micro_global = trainer_micro_batch(cfg);
      shard = dist::shard_size(micro_global, rank, world);
      if (shard == 0)
        throw std::runtime_error(fmt::format(
            "train.batch_size / train.grad_accum = {} images per micro-batch is fewer than the "
            "{} ranks: every rank needs at least one image of each micro-batch",
            micro_global, world));
      dist::CollectiveOptions co;
      co.timeout_s = collective_timeout_s;
      co.bucket_bytes = static_cast<size_t>(bucket_mb) << 20;
      coll = std::make_unique<dist::Collectives>(trainable_vars, device, co);
    }
    // The EMA only feeds rank 0's samples and checkpoints.
    if (ema_decay > 0 && root) ema = std::make_unique<nn::EMA>(model);
    rng.set_state(seed, 0);
  }

  // ---- messages ---------------------------------------------------------------------------------
  Progress* progress = nullptr;
  void say(const std::string& line) {
    if (!root) return;  // rank 0 speaks for the job
    if (progress) {
      progress->message(line);
    } else {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    }
  }

  // ---- checkpoints ------------------------------------------------------------------------------
  safetensors::Metadata checkpoint_metadata() const {
    LoaderState ls = loader.state();
    safetensors::Metadata m;
    m["psvae.format"] = "1";
    m["psvae.step"] = std::to_string(step);
    m["psvae.rng_seed"] = std::to_string(rng.seed());
    m["psvae.rng_offset"] = std::to_string(rng.offset());
    m["psvae.loader_epoch"] = std::to_string(ls.epoch);
    m["psvae.loader_batch"] = std::to_string(ls.batch);
    m["psvae.best_loss"] = format_float(best_loss);
    m["psvae.nonfinite_run"] = std::to_string(nonfinite_run);
    m["psvae.task"] = task.name();
    m["psvae.config"] = cfg.to_yaml();
    m["psvae.elapsed_s"] = format_float(elapsed_s());
    for (auto& [k, v] : task.extra_metadata()) m["task." + k] = v;
    return m;
  }

  safetensors::NamedTensors checkpoint_tensors() {
    safetensors::NamedTensors t;
    for (auto& [n, x] : task.model().state_dict()) t.emplace_back("model." + n, x);
    if (ema)
      for (auto& nt : ema->state_dict()) t.push_back(nt);
    for (auto& nt : opt->state_dict()) t.push_back(nt);
    for (auto& [n, x] : task.extra_state()) t.emplace_back("task." + n, x);
    return t;
  }

  // Writes step_XXXXXXXX.safetensors, prunes, refreshes best.safetensors when the mean loss since
  // the previous checkpoint is the best so far, and rewrites report.html.
  std::string save_checkpoint() {
    if (!root) {  // rank 0 writes it; the others only know its name
      window_loss_sum = 0;
      window_loss_n = 0;
      result.last_checkpoint = checkpoint_path(ckpt_dir, step);
      return result.last_checkpoint;
    }
    bool improved = false;
    if (window_loss_n > 0) {
      double smoothed = window_loss_sum / static_cast<double>(window_loss_n);
      if (smoothed < best_loss) {
        best_loss = smoothed;
        improved = true;
      }
    }
    window_loss_sum = 0;
    window_loss_n = 0;
    safetensors::NamedTensors t = checkpoint_tensors();
    safetensors::Metadata m = checkpoint_metadata();
    std::string path = checkpoint_path(ckpt_dir, step);
    safetensors::save(path, t, m);
    prune_checkpoints(ckpt_dir, static_cast<int>(keep_last));
    if (improved) safetensors::save(ckpt_dir + "/best.safetensors", t, m);
    result.last_checkpoint = path;
    report();
    return path;
  }

  void report() {
    // A report is a convenience: failing to write one must not stop the training.
    try {
      write_report(out_dir, fmt::format("{} - {}", task.name(), out_dir));
    } catch (const std::exception& e) {
      say(fmt::format("warning: report.html not written: {}", e.what()));
    }
  }

  // Restores everything from the newest valid checkpoint; false when there is none.
  bool try_resume() {
    if (list_checkpoints(ckpt_dir).empty()) {
      say(fmt::format("train.resume: no checkpoint in {}; starting from step 0", ckpt_dir));
      return false;
    }
    safetensors::NamedTensors all;
    safetensors::Metadata meta;
    std::string path = open_newest_valid(ckpt_dir, &all, &meta);
    try {
      task.model().load_state_dict(with_prefix(all, "model.", true), true);
      if (ema) {
        safetensors::NamedTensors e = with_prefix(all, "ema.", false);
        if (e.empty()) {
          say(
              fmt::format("warning: {} has no EMA weights (EMA was off); the EMA starts from the "
                          "current weights",
                          path));
          ema = std::make_unique<nn::EMA>(task.model());
        } else {
          ema->load_state_dict(e);
        }
      }
      opt->load_state_dict(with_prefix(all, "optim.", false));
      task.load_extra_state(with_prefix(all, "task.", true));
      safetensors::Metadata task_meta;
      for (auto& [k, v] : meta)
        if (k.rfind("task.", 0) == 0) task_meta[k.substr(5)] = v;
      task.load_extra_metadata(task_meta);
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("{}: cannot resume from it: {}", path, e.what()));
    }
    rng.set_state(meta_u64(meta, "psvae.rng_seed", path), meta_u64(meta, "psvae.rng_offset", path));
    LoaderState ls;
    ls.epoch = meta_u64(meta, "psvae.loader_epoch", path);
    ls.batch = meta_int(meta, "psvae.loader_batch", path);
    loader.set_state(ls);
    step = meta_int(meta, "psvae.step", path);
    best_loss = meta_double(meta, "psvae.best_loss", path);
    nonfinite_run = meta_int(meta, "psvae.nonfinite_run", path);
    if (meta.count("psvae.elapsed_s")) elapsed_before = meta_double(meta, "psvae.elapsed_s", path);
    result.last_checkpoint = path;
    say(fmt::format("resumed from {} at step {}", path, step));
    return true;
  }

  // metrics.jsonl after a resume keeps the lines up to the resumed step: a crash after the last
  // checkpoint may have logged steps that are about to be recomputed.
  void trim_metrics(int64_t keep_through) {
    std::ifstream in(metrics_path);
    if (!in) return;
    std::string line, kept;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number())
        continue;  // a torn last line
      if (j["step"].get<int64_t>() <= keep_through) kept += line + "\n";
    }
    in.close();
    write_file_atomic(metrics_path, kept);
  }

  double elapsed_s() const {
    return elapsed_before +
           std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  }

  size_t memory_bytes() const {
    if (device.is_cuda()) return cuda::allocator_stats(device.index).in_use;
    return resident_bytes();
  }

  // ---- samples ----------------------------------------------------------------------------------
  // The grid's inputs: 16 dataset entries spread evenly over the index range (an image folder is
  // sorted by class, so the first 16 would often be one class). Taken from the dataset, not the
  // loader, so the grids of a run show the same images before and after a resume.
  void build_fixed_batch() {
    have_fixed_batch = true;
    const Dataset& ds = loader.dataset();
    const int64_t want = std::min<int64_t>(16, ds.size());
    std::vector<Sample> got;
    std::vector<int64_t> idx;
    for (int64_t k = 0; k < want; ++k) {
      int64_t i = k * ds.size() / want;
      try {
        got.push_back(ds.get(i));
        idx.push_back(i);
      } catch (const std::exception&) {
        // Reported by the loader when it meets the entry; the grid just has one image fewer.
      }
    }
    if (got.empty()) return;
    const Shape s = got.front().image.shape();
    const int64_t n = static_cast<int64_t>(got.size()), chw = s.numel();
    Tensor images = Tensor::empty({n, s[0], s[1], s[2]}, DType::F32);
    std::vector<int64_t> labels;
    for (int64_t i = 0; i < n; ++i) {
      Tensor im = got[static_cast<size_t>(i)].image.to(Device::cpu());
      std::memcpy(images.data<float>() + i * chw, im.data<float>(),
                  static_cast<size_t>(chw) * sizeof(float));
      labels.push_back(got[static_cast<size_t>(i)].label);
      fixed_batch.captions.push_back(got[static_cast<size_t>(i)].caption);
    }
    fixed_batch.images = images;
    fixed_batch.labels = Tensor::from_vector(labels, Shape{n});
    fixed_batch.indices = idx;
  }

  void write_samples() {
    if (!have_fixed_batch) build_fixed_batch();
    if (!fixed_batch.images.defined()) return;
    try {
      ag::NoGradGuard no_grad;
      nn::Module& model = task.model();
      std::shared_ptr<nn::Module> shadow;
      nn::Module* m = &model;
      if (ema) {
        shadow = model.clone();
        ema->copy_to(*shadow);
        m = shadow.get();
      }
      bool was_training = m->is_training();
      m->eval();
      // Same noise at every sampling step: the grids show the model changing, not the noise.
      Generator sample_rng(seed ^ 0x9E3779B97F4A7C15ull, 0);
      StepContext ctx;
      ctx.step = step;
      ctx.autocast_bf16 = false;  // sample grids run in f32 (autocast covers the loss only)
      ctx.device = device;
      ctx.rng = &sample_rng;
      Tensor imgs = task.samples(*m, fixed_batch, ctx);
      m->train(was_training);
      if (!imgs.defined()) return;
      imgs = ops::cast(imgs.to(Device::cpu()), DType::F32);
      int nrow = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(imgs.size(0)))));
      make_dir(samples_dir);
      save_png(fmt::format("{}/step_{:08d}.png", samples_dir, step), make_grid(imgs, nrow));
    } catch (const std::exception& e) {
      say(fmt::format("warning: samples at step {} not written: {}", step, e.what()));
    }
  }

  // ---- data parallelism -------------------------------------------------------------------------
  // Before the first step: every rank resumed at the same step (one run.out_dir seen by all), and
  // every rank holds rank 0's weights.
  void sync_start() {
    coll->set_step(step);
    std::vector<int64_t> at = coll->allgather(step, "start-up check of the resumed step");
    for (int r = 1; r < world; ++r)
      if (at[static_cast<size_t>(r)] != at[0])
        throw std::runtime_error(fmt::format(
            "{} starts at step {} but rank 0 at step {}: every rank must resume from the same "
            "{} (on a file system shared by the nodes)",
            dist::describe_rank(r), at[static_cast<size_t>(r)], at[0], ckpt_dir));
    std::vector<ag::Var> all;
    for (auto& [n, p] : task.model().named_parameters()) all.push_back(p);
    coll->broadcast(all, "broadcast of rank 0's weights");
  }

  // ---- the loop ---------------------------------------------------------------------------------
  TrainResult run() {
    StopHandlerScope stop_handlers;
    t_start = std::chrono::steady_clock::now();
    result.out_dir = out_dir;
    make_dir(out_dir);
    make_dir(ckpt_dir);
    bool resumed = false;
    if (resume) {
      resumed = try_resume();
    } else {
      std::error_code ec;
      if (!list_checkpoints(ckpt_dir).empty() || fs::exists(ckpt_dir + "/best.safetensors", ec))
        throw std::runtime_error(fmt::format(
            "{} already holds checkpoints of an earlier run; set train.resume=true to continue "
            "it, or choose another run.out_dir",
            ckpt_dir));
    }
    std::ofstream metrics;
    if (root) {
      cfg.save(out_dir + "/config.yaml");
      if (resumed)
        trim_metrics(step);
      else
        write_file_atomic(metrics_path, "");
      metrics.open(metrics_path, std::ios::app);
      if (!metrics)
        throw std::runtime_error(fmt::format("{}: cannot open for appending", metrics_path));
    }
    if (distributed) sync_start();

    const int64_t start_step = step;
    Progress prog(steps, step, task.name(), static_cast<int>(log_every), root ? stdout : nullptr);
    progress = &prog;
    struct ProgressReset {
      Progress*& p;
      ~ProgressReset() { p = nullptr; }
    } progress_reset{progress};

    // Logging window: loss and terms are averaged over the finite steps since the last line.
    double log_loss_sum = 0;
    int64_t log_n = 0;
    std::map<std::string, double> log_terms;
    bool saved_this_step = false;
    bool stop_all = false;  // distributed: some rank was asked to stop (reduced in S2)

    while (step < steps) {
      saved_this_step = false;
      task.model().zero_grad();
      const double step_lr = nn::warmup_cosine(step, lr, warmup_steps, steps, min_lr);
      double loss_sum = 0;
      std::map<std::string, double> terms;
      int64_t images = 0;
      bool bad = false;
      double bad_value = 0;
      std::string bad_what;
      // Distributed: this rank's random stream for the step (see the top of the file).
      Generator rank_rng(rng.seed(),
                         rng.offset() + static_cast<uint64_t>(rank) * dist::kRankStreamStride);
      const uint64_t rank_rng_start = rank_rng.offset();
      for (int micro = 0; micro < grad_accum; ++micro) {
        Batch batch = loader.next();
        const int64_t n = batch.images.defined() ? batch.images.size(0) : 0;
        images += n;
        if (distributed && n != shard)
          throw std::runtime_error(fmt::format(
              "{} got {} images of a {}-image micro-batch, expected its shard of {}: the command "
              "must build its Loader with LoaderOptions rank/world (dist::shard_loader)",
              dist::describe_rank(rank), n, micro_global, shard));
        // After a non-finite micro-batch the step is lost: the remaining batches are still drawn
        // so the data position stays a function of the step alone.
        if (bad) continue;
        StepContext ctx;
        ctx.step = step;
        ctx.micro = micro;
        ctx.autocast_bf16 = bf16;
        ctx.device = device;
        ctx.rng = distributed ? &rank_rng : &rng;
        LossOutput out;
        {
          // Mixed precision (autograd/autocast.h): the forward's GEMMs in bf16, the parameters,
          // their gradients and everything after (clipping, AdamW, EMA, checkpoints) in f32.
          ag::AutocastGuard autocast(bf16 ? DType::BF16 : DType::F32);
          out = task.loss(batch, ctx);
        }
        double v = out.loss.data().item();
        if (!std::isfinite(v)) {
          bad = true;
          bad_value = v;
          bad_what = "loss";
          continue;
        }
        // This rank's share of the micro-batch: summed over the ranks, the weighted means are the
        // mean over the whole micro-batch (1 in a single process).
        const double share =
            distributed ? static_cast<double>(n) / static_cast<double>(micro_global) : 1.0;
        loss_sum += v * share;
        for (const auto& [k, x] : out.terms) terms[k] += x * share;
        const double scale = share / static_cast<double>(grad_accum);
        ag::Var scaled = scale != 1.0 ? ag::mul_scalar(out.loss, scale) : out.loss;
        scaled.backward();
      }
      // S1: the same skip decision, loss, image count and random-stream advance on every rank.
      std::vector<bool> grad_anywhere;
      bool terms_agree = false;
      if (distributed) {
        const double nt = static_cast<double>(terms.size());
        std::vector<double> s1 = {bad ? 1.0 : 0.0,
                                  static_cast<double>(images),
                                  static_cast<double>(rank_rng.offset() - rank_rng_start),
                                  loss_sum,
                                  nt,
                                  nt * nt};
        for (const ag::Var& p : trainable_vars) s1.push_back(p.grad().defined() ? 1.0 : 0.0);
        coll->set_step(step);
        coll->allreduce_sum(s1, "loss all-reduce");
        if (s1[0] > 0 && !bad) {
          bad = true;
          bad_value = std::numeric_limits<double>::quiet_NaN();
          bad_what = fmt::format("loss on {} of {} ranks", static_cast<int>(s1[0]), world);
        }
        images = static_cast<int64_t>(s1[1]);
        rng.set_state(rng.seed(), rng.offset() + static_cast<uint64_t>(s1[2]));
        loss_sum = s1[3];
        // Every rank has as many terms (the same task code: the same names) when the counts' sum
        // of squares is W * mean^2; only then do they travel in S2.
        terms_agree = s1[5] * world == s1[4] * s1[4];
        for (size_t i = 0; i < trainable_vars.size(); ++i) grad_anywhere.push_back(s1[6 + i] > 0);
      }
      const double step_loss = loss_sum / static_cast<double>(grad_accum);
      double grad_norm = std::numeric_limits<double>::quiet_NaN(), clip_scale = 1.0;
      const bool terms_reduced = distributed && !bad && terms_agree;
      if (!bad) {
        if (distributed) coll->allreduce_gradients(grad_anywhere);
        // With clipping off the norm is still computed: it is logged, and a non-finite gradient
        // with a finite loss must be caught too.
        // The clip factor is applied by the optimiser step (fused into the multi-tensor AdamW on
        // a GPU), not by rewriting every gradient first.
        grad_norm = nn::grad_norm(trainable_vars);
        clip_scale = grad_clip > 0 ? nn::clip_coefficient(grad_norm, grad_clip) : 1.0;
        if (!std::isfinite(grad_norm)) {
          bad = true;
          bad_value = grad_norm;
          bad_what = "gradient norm";
        }
      }
      // S2: the same gradient-norm verdict (the summed gradients are identical on every rank, the
      // flag makes sure), the same stop, and the loss terms over the whole batch.
      if (distributed) {
        std::vector<double> s2 = {bad ? 1.0 : 0.0, stop_requested() ? 1.0 : 0.0};
        if (terms_reduced)
          for (const auto& [k, x] : terms) s2.push_back(x);
        coll->allreduce_sum(s2, "step-end all-reduce");
        if (s2[0] > 0 && !bad) {
          bad = true;
          bad_value = std::numeric_limits<double>::quiet_NaN();
          bad_what = "gradient norm on another rank";
        }
        stop_all = s2[1] > 0;
        if (terms_reduced) {
          size_t i = 2;
          for (auto& [k, x] : terms) x = s2[i++];
        }
      }

      if (bad) {
        task.model().zero_grad();
        ++nonfinite_run;
        ++result.skipped_steps;
        result.losses.push_back(std::numeric_limits<double>::quiet_NaN());
        if (nonfinite_run >= max_nonfinite) {
          prog.finish();
          throw std::runtime_error(fmt::format(
              "training stopped: {} consecutive non-finite losses at step {} (last: {}); lower "
              "train.lr or check the data",
              nonfinite_run, step + 1, value_text(bad_value)));
        }
        say(
            fmt::format("warning: step {}: non-finite {} ({}); step skipped ({} in a row, the "
                        "limit is train.max_nonfinite = {})",
                        step + 1, bad_what, value_text(bad_value), nonfinite_run, max_nonfinite));
      } else {
        nonfinite_run = 0;
        opt->set_lr(step_lr);
        opt->step(clip_scale);
        if (ema) ema->update(ema_decay);
        result.losses.push_back(step_loss);
        log_loss_sum += step_loss;
        ++log_n;
        window_loss_sum += step_loss;
        ++window_loss_n;
        for (const auto& [k, x] : terms) log_terms[k] += x / static_cast<double>(grad_accum);
      }
      task.model().zero_grad();
      ++step;

      std::string extra = fmt::format("lr {:.2e}", step_lr);
      if (std::isfinite(grad_norm)) extra += fmt::format(" gn {:.3g}", grad_norm);
      for (const auto& [k, x] : terms)
        extra += fmt::format(" {} {:.4g}", k, x / static_cast<double>(grad_accum));
      prog.update(step, bad ? std::numeric_limits<double>::quiet_NaN() : step_loss, images, extra,
                  memory_bytes());

      if (root && (step % log_every == 0 || step == steps)) {
        nlohmann::json j;
        j["step"] = step;
        j["loss"] = log_n > 0 ? log_loss_sum / static_cast<double>(log_n)
                              : std::numeric_limits<double>::quiet_NaN();  // written as null
        for (const auto& [k, x] : log_terms) {
          const std::string key = j.contains(k) ? "term." + k : k;
          j[key] = log_n > 0 ? x / static_cast<double>(log_n) : x;
        }
        j["lr"] = step_lr;
        j["grad_norm"] = grad_norm;
        j["steps_per_s"] = prog.steps_per_second();
        j["images_per_s"] = prog.images_per_second();
        j["elapsed_s"] = elapsed_s();
        metrics << j.dump() << '\n';
        metrics.flush();  // a crash loses at most the line being written
        log_loss_sum = 0;
        log_n = 0;
        log_terms.clear();
      }

      if (on_step && *on_step) (*on_step)(step);

      if (root && sample_every > 0 && step % sample_every == 0) write_samples();
      if (step % ckpt_every == 0 || step == steps) {
        save_checkpoint();
        saved_this_step = true;
      }
      if ((distributed ? stop_all : stop_requested()) && step < steps) {
        if (!saved_this_step) save_checkpoint();
        prog.finish();
        say(fmt::format("interrupted: checkpoint written to {}", result.last_checkpoint));
        result.interrupted = true;
        result.steps_done = step;
        return result;
      }
    }
    prog.finish();
    // Resumed from the final checkpoint: nothing was trained and that checkpoint stands.
    if (step == start_step && root) report();
    result.steps_done = step;
    return result;
  }
};

Trainer::Trainer(TrainTask& task, Loader& loader, const Config& config)
    : impl_(std::make_unique<Impl>(task, loader, config, &on_step)) {}

Trainer::~Trainer() = default;

TrainResult Trainer::run() { return impl_->run(); }

}  // namespace psvae::train
