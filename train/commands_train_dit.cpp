// `psvae train-dit`: stage 3, the DiT in the latent of a trained PS-VAE (train/tasks/dit_task.h).
// Same shape as the PS-VAE stages (commands_train.cpp): config, dataset, task, loader, Trainer, one
// summary line at the start and one at the end; Ctrl-C writes a checkpoint and says how to resume.
#include <fmt/format.h>
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <memory>

#include "train/cli.h"
#include "train/data/dataset.h"
#include "train/data/loader.h"
#include "train/progress.h"
#include "train/signals.h"
#include "train/tasks/dit_task.h"
#include "train/trainer.h"

namespace psvae::train {

ConfigSchema train_dit_schema() { return dit_stage_schema(); }

int cmd_train_dit(int argc, char** argv) {
  CLI::App app{
      "Stage 3: train a DiT to denoise the latent of a trained PS-VAE (init.from, frozen), "
      "conditioned on class labels or captions (model.cond), with condition dropout for "
      "classifier-free guidance.",
      "psvae train-dit"};
  CommonFlags flags;
  add_common_flags(app, flags);
  return run_cli(app, argc, argv, [&] {
    apply_threads(flags.threads);
    Config cfg = resolve_config(train_dit_schema(), flags);
    if (flags.seed >= 0) cfg.set("train.seed", std::to_string(flags.seed), "--seed");
    check_trainer_config(cfg);
    const Device device = resolve_device(flags.device);
    reset_stop_request();
    StopHandlerScope stop_handlers;

    std::shared_ptr<const Dataset> data = make_dataset(cfg);
    DiTTask task(cfg, data, device);
    int64_t trainable = 0;
    for (auto& [n, p] : task.model().named_parameters())
      if (p.requires_grad()) trainable += p.numel();
    const auto& mc = task.dit_model().config();
    fmt::print(
        "psvae train-dit: {} | latent {}x{}x{} | DiT {} parameters ({} trained), {} x {}, patch "
        "{}, cond {} | objective {} | device {} | threads {}\n",
        data->describe(), mc.dit.in_channels, mc.dit.input_size, mc.dit.input_size,
        format_count(task.model().num_parameters()), format_count(trainable), mc.dit.depth,
        mc.dit.hidden, mc.dit.patch, cfg.get_string("model.cond"),
        cfg.get_string("diffusion.objective"), device.str(), omp_get_max_threads());
    std::fflush(stdout);

    LoaderOptions lo;
    lo.global_batch = trainer_micro_batch(cfg);
    lo.seed = static_cast<uint64_t>(cfg.get_int("train.seed"));
    lo.hflip = cfg.get_bool("data.hflip");
    lo.workers = static_cast<int>(cfg.get_int("data.workers"));
    lo.prefetch = static_cast<int>(cfg.get_int("data.prefetch"));
    Loader loader(data, lo);
    Trainer trainer(task, loader, cfg);
    TrainResult r = trainer.run();
    if (r.interrupted) {
      fmt::print(
          "psvae train-dit: interrupted at step {}; checkpoint {}; continue with the same command "
          "and --set train.resume=true\n",
          r.steps_done, r.last_checkpoint);
      return 0;
    }
    double final_loss = std::nan("");
    for (auto it = r.losses.rbegin(); it != r.losses.rend(); ++it)
      if (std::isfinite(*it)) {
        final_loss = *it;
        break;
      }
    fmt::print(
        "psvae train-dit: done: {} steps, final loss {}, checkpoint {}, report {}/report.html\n",
        r.steps_done, std::isfinite(final_loss) ? fmt::format("{:.5g}", final_loss) : "n/a",
        r.last_checkpoint, r.out_dir);
    return 0;
  });
}

}  // namespace psvae::train
