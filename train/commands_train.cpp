// `psvae train-encoder`, `psvae train-svae`, `psvae train-psvae`: the three PS-VAE training stages
// (train/tasks/*). Each builds its config, dataset, loader and task, runs the Trainer, and prints
// one summary line at the start and one at the end.
//
// Ctrl-C / SIGTERM: the trainer finishes the step, writes a checkpoint and returns; the command
// prints where it is and how to resume, and exits 0.
#include <fmt/format.h>
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <functional>
#include <memory>

#include "train/cli.h"
#include "train/data/dataset.h"
#include "train/data/loader.h"
#include "train/distributed.h"
#include "train/progress.h"
#include "train/signals.h"
#include "train/tasks/encoder_task.h"
#include "train/tasks/model_keys.h"
#include "train/tasks/psvae_task.h"
#include "train/tasks/svae_task.h"
#include "train/trainer.h"

namespace psvae::train {

ConfigSchema train_encoder_schema() { return encoder_stage_schema(); }
ConfigSchema train_svae_schema() { return svae_stage_schema(); }
ConfigSchema train_psvae_schema() { return psvae_stage_schema(); }

namespace {

struct Stage {
  std::string command;  // "train-svae"
  std::string about;
  ConfigSchema (*schema)();
  // Builds the task; may update cfg (inherited architecture keys).
  std::function<std::unique_ptr<TrainTask>(Config&, const Dataset&, Device)> make;
  // After an uninterrupted run (PS-VAE: latent statistics); returns extra summary text.
  std::function<std::string(TrainTask&, const TrainResult&, const Config&,
                            std::shared_ptr<const Dataset>)>
      finish;
};

int run_stage(const Stage& st, int argc, char** argv) {
  CLI::App app{st.about, "psvae " + st.command};
  CommonFlags flags;
  add_common_flags(app, flags);
  return run_cli(app, argc, argv, [&] {
    apply_threads(flags.threads);
    Config cfg = resolve_config(st.schema(), flags);
    // --seed is the training stream's seed here (the dataset keeps data.seed).
    if (flags.seed >= 0) cfg.set("train.seed", std::to_string(flags.seed), "--seed");
    check_trainer_config(cfg);
    const Device device = resolve_device(flags.device);
    // Handlers for the whole command: a signal while the dataset or model is built stops the run
    // after its first step (with a checkpoint) rather than killing it.
    reset_stop_request();
    StopHandlerScope stop_handlers;

    std::shared_ptr<const Dataset> data = make_dataset(cfg);
    std::unique_ptr<TrainTask> task = st.make(cfg, *data, device);
    int64_t trainable = 0;
    for (auto& [n, p] : task->model().named_parameters())
      if (p.requires_grad()) trainable += p.numel();
    if (dist::is_root())  // under mpirun rank 0 speaks for the job
      fmt::print("psvae {}: {} | model {} parameters ({} trained) | device {} | threads {}\n",
                 st.command, data->describe(), format_count(task->model().num_parameters()),
                 format_count(trainable), device.str(), omp_get_max_threads());
    std::fflush(stdout);

    LoaderOptions lo;
    lo.global_batch = trainer_micro_batch(cfg);
    lo.seed = static_cast<uint64_t>(cfg.get_int("train.seed"));
    lo.hflip = cfg.get_bool("data.hflip");
    lo.workers = static_cast<int>(cfg.get_int("data.workers"));
    lo.prefetch = static_cast<int>(cfg.get_int("data.prefetch"));
    dist::shard_loader(lo);  // under mpirun: this rank's share of every batch
    Loader loader(data, lo);
    Trainer trainer(*task, loader, cfg);
    TrainResult r = trainer.run();
    if (!dist::is_root()) return 0;  // rank 0 writes the final statistics and the summary
    if (r.interrupted) {
      fmt::print(
          "psvae {}: interrupted at step {}; checkpoint {}; continue with the same command and "
          "--set train.resume=true\n",
          st.command, r.steps_done, r.last_checkpoint);
      return 0;
    }
    std::string extra = st.finish ? st.finish(*task, r, cfg, data) : "";
    double final_loss = std::nan("");
    for (auto it = r.losses.rbegin(); it != r.losses.rend(); ++it)
      if (std::isfinite(*it)) {
        final_loss = *it;
        break;
      }
    fmt::print("psvae {}: done: {} steps, final loss {}, checkpoint {}{}, report {}/report.html\n",
               st.command, r.steps_done,
               std::isfinite(final_loss) ? fmt::format("{:.5g}", final_loss) : "n/a",
               r.last_checkpoint, extra, r.out_dir);
    return 0;
  });
}

// The held-out check of train-psvae: synthetic images from another seed (never trained on),
// else the dataset's own first images.
std::string finish_psvae(TrainTask& t, const TrainResult& r, const Config& cfg,
                         std::shared_ptr<const Dataset> data) {
  auto& task = dynamic_cast<PSVAETask&>(t);
  std::unique_ptr<Dataset> held;
  std::string eval_what = "training images";
  if (cfg.get_string("data.dataset") == "synthetic") {
    SyntheticOptions o;
    o.num_images = 64;
    o.image_size = data->image_size();
    o.seed = held_out_seed(static_cast<uint64_t>(cfg.get_int("data.seed")));
    held = make_synthetic(o);
    eval_what = "held-out synthetic images";
  }
  PsvaeFinish f =
      finish_psvae_run(task, r.last_checkpoint, data, held ? *held : *data,
                       trainer_micro_batch(cfg), static_cast<int>(cfg.get_int("data.workers")));
  return fmt::format(
      " (with latent statistics over {} images, {} weights), reconstruction PSNR {:.2f} dB SSIM "
      "{:.4f} on {} {}",
      f.stat_images, f.used_ema ? "EMA" : "model", f.psnr, f.ssim, f.eval_images, eval_what);
}

}  // namespace

int cmd_train_encoder(int argc, char** argv) {
  Stage st{"train-encoder",
           "Stage 0 (demo scale): train a small DINOv2-architecture ViT to classify the dataset's "
           "labels, as the representation encoder of train-svae (paper scale uses the released "
           "DINOv2 weights instead).",
           train_encoder_schema,
           [](Config& cfg, const Dataset& ds, Device dev) -> std::unique_ptr<TrainTask> {
             return std::make_unique<EncoderTask>(cfg, ds.num_classes(), dev);
           },
           nullptr};
  return run_stage(st, argc, argv);
}

int cmd_train_svae(int argc, char** argv) {
  Stage st{"train-svae",
           "Stage 1: train the S-VAE (projector to an L-channel Gaussian latent per token, and a "
           "semantic decoder back to the features) on a frozen encoder from init.from "
           "(train-encoder) or weights.encoder (DINOv2).",
           train_svae_schema,
           [](Config& cfg, const Dataset&, Device dev) -> std::unique_ptr<TrainTask> {
             return std::make_unique<SVAETask>(cfg, dev);
           },
           nullptr};
  return run_stage(st, argc, argv);
}

int cmd_train_psvae(int argc, char** argv) {
  Stage st{"train-psvae",
           "Stage 2: train the PS-VAE from a train-svae checkpoint (init.from): unfrozen encoder, "
           "pixel decoder, semantic loss against the frozen stage-1 encoder; then store the "
           "latent statistics in the final checkpoint.",
           train_psvae_schema,
           [](Config& cfg, const Dataset& ds, Device dev) -> std::unique_ptr<TrainTask> {
             return std::make_unique<PSVAETask>(cfg, ds.image_size(), dev);
           },
           finish_psvae};
  return run_stage(st, argc, argv);
}

}  // namespace psvae::train
