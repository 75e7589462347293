// The generic training loop every stage uses: a task supplies a model and a loss, the trainer
// does the rest (AdamW, warmup + cosine, clipping, accumulation, EMA, non-finite guard,
// checkpoints, exact resume, progress, metrics.jsonl, sample grids, report.html, signals).
//
// A run folder (run.out_dir) holds:
//   config.yaml        the resolved config (every key)
//   metrics.jsonl      one JSON object per logged step: step, loss, each loss term, lr,
//                      grad_norm, steps_per_s, images_per_s, elapsed_s
//   checkpoints/       step_00001000.safetensors ..., best.safetensors
//   samples/           step_00001000.png grids (when the task makes samples)
//   report.html        loss curves, grids and config, rewritten at each checkpoint and at the end
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "autograd/var.h"
#include "nn/module.h"
#include "tensor/random.h"
#include "tensor/safetensors.h"
#include "train/config.h"
#include "train/data/loader.h"

namespace psvae::train {

struct StepContext {
  int64_t step = 0;  // 0-based optimiser step being computed
  int micro = 0;     // micro-batch index within the step (gradient accumulation)
  // train.bf16: loss() runs under ag::AutocastGuard(BF16), set by the trainer; a task reads
  // this only where it must bring a bf16 result back to f32 itself.
  bool autocast_bf16 = false;
  Device device;
  Generator* rng = nullptr;  // checkpointed: draw all training randomness from it
};

struct LossOutput {
  ag::Var loss;                         // scalar to minimise (already weighted)
  std::map<std::string, double> terms;  // logged separately, e.g. {"mse": .., "kl": ..}
};

class TrainTask {
 public:
  virtual ~TrainTask() = default;
  virtual std::string name() const = 0;  // "svae", "psvae", "dit", ...
  // The module whose trainable parameters AdamW updates and whose state is checkpointed.
  virtual nn::Module& model() = 0;
  // Forward of one micro-batch (batch on the CPU; move it to ctx.device).
  virtual LossOutput loss(const Batch& batch, const StepContext& ctx) = 0;
  // Images (N,3,H,W) in [-1,1] for the periodic grid, from `m` (the EMA model when EMA is on);
  // an undefined tensor (the default) means the task has no samples.
  virtual Tensor samples(nn::Module& m, const Batch& fixed_batch, const StepContext& ctx) {
    return Tensor();
  }
  // Extra state to checkpoint beside the model (e.g. latent statistics); names get a "task."
  // prefix in the file.
  virtual safetensors::NamedTensors extra_state() { return {}; }
  virtual void load_extra_state(const safetensors::NamedTensors& t) {}
  // Text state to checkpoint (e.g. a tokenizer's vocabulary as JSON); keys get a "task." prefix in
  // the file's metadata. load_extra_metadata receives them back with the prefix removed.
  virtual safetensors::Metadata extra_metadata() { return {}; }
  virtual void load_extra_metadata(const safetensors::Metadata& m) {}
  // Whether loss() runs under bf16 autocast (train.bf16): every raw ops:: call it makes on
  // model outputs must accept the dtypes autocast produces. The trainer refuses train.bf16 = true
  // for a task that has not been checked, rather than fail mid-step.
  virtual bool supports_bf16() const { return false; }
};

// Keys under train.* (and run.*) read by the trainer; add them to a command's schema.
void add_trainer_keys(ConfigSchema& schema);

// The loader's global batch for a trainer config: train.batch_size / train.grad_accum. Each
// optimiser step consumes train.grad_accum loader batches, so the caller builds the Loader with
// this global_batch. Throws when batch_size is not a multiple of grad_accum.
int64_t trainer_micro_batch(const Config& config);

// Checks the relations between trainer keys that no single key's range can express (today:
// batch_size % grad_accum == 0); the Trainer calls it, and a command may call it right after
// loading the config to fail before building datasets.
void check_trainer_config(const Config& config);

struct TrainResult {
  int64_t steps_done = 0;      // optimiser steps completed in total (including resumed ones)
  bool interrupted = false;    // stopped by SIGINT/SIGTERM after writing a checkpoint
  std::vector<double> losses;  // loss of every step run in this process (skipped steps: NaN)
  int64_t skipped_steps = 0;   // non-finite losses skipped
  std::string last_checkpoint;
  std::string out_dir;
};

class Trainer {
 public:
  // `loader` yields the training batches; the config supplies train.* keys and is saved in the run
  // folder and in every checkpoint.
  Trainer(TrainTask& task, Loader& loader, const Config& config);
  ~Trainer();
  // Trains to train.steps (resuming first when train.resume is set). Throws on a fatal error (a
  // run of train.max_nonfinite non-finite losses, an unreadable resume checkpoint, ...).
  TrainResult run();

  // Test hook: called after every completed optimiser step with the step count.
  std::function<void(int64_t step)> on_step;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace psvae::train
