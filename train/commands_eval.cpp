// `psvae eval`: the metrics of train/evaluate.h for a PS-VAE checkpoint and, optionally, a DiT run:
// prints a table, writes every number as JSON (--out, atomically) and, with --samples DIR, the
// images it scored (DIR/reconstructions.png: originals over their reconstructions;
// DIR/generated_cfg.png and DIR/generated_nocfg.png: one row per prompt).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <filesystem>

#include "kernels/ops.h"
#include "tensor/atomic_file.h"
#include "train/cli.h"
#include "train/evaluate.h"
#include "train/image_io.h"

namespace psvae::train {

namespace {

namespace fs = std::filesystem;

// Rows of `per_row` originals, each followed by the row of their reconstructions (at most 64).
Image recon_grid(const ReconMetrics& r) {
  const int64_t n = std::min<int64_t>(r.n, 64), per_row = std::min<int64_t>(8, n);
  std::vector<Tensor> cells;
  for (int64_t row = 0; row < n; row += per_row)
    for (const Tensor* src : {&r.originals, &r.reconstructions})
      for (int64_t i = row; i < row + per_row; ++i)
        cells.push_back(i < n ? src->slice0(i, i + 1)
                              : Tensor::full({1, 3, r.image_size, r.image_size}, 1.0));
  return make_grid(ops::concat(cells, 0), static_cast<int>(per_row));
}

}  // namespace

int cmd_eval(int argc, char** argv) {
  CLI::App app{
      "Evaluate a PS-VAE checkpoint (reconstruction PSNR, SSIM, LPIPS, analyser accuracy and "
      "Frechet distances on held-out images) and, with --dit, a DiT run on the synthetic dataset: "
      "for each of the 24 prompts 'a <colour> <shape>', --per-prompt images with and without "
      "classifier-free guidance, scored by the synthetic-image analyser (conditional accuracy) and "
      "by the Frechet distance to real held-out images on the PS-VAE's encoder features "
      "(FD-DINOv2 with --dinov2, FID with --inception).",
      "psvae eval"};
  EvalOptions o;
  std::string out, samples, device = "auto";
  int threads = 0;
  int64_t seed = 0;
  app.add_option("--psvae", o.psvae,
                 "train-psvae checkpoint (.safetensors) or run folder (its newest checkpoint)")
      ->type_name("CKPT")
      ->required();
  app.add_option("--dit", o.dit,
                 "train-dit checkpoint or run folder: adds the generation metrics (its PS-VAE is "
                 "--psvae)")
      ->type_name("RUN");
  app.add_option("--num-recon", o.num_recon,
                 "held-out images for the reconstruction metrics and the real FD set")
      ->check(CLI::Range(int64_t{2}, int64_t{1000000}))
      ->capture_default_str();
  app.add_option("--per-prompt", o.per_prompt, "generated images per prompt and guidance setting")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}))
      ->capture_default_str();
  app.add_option("--cfg-scale", o.cfg_scale, "guidance scale of the guided run (the other is 1)")
      ->check(CLI::Range(0.0, 1000.0))
      ->capture_default_str();
  app.add_option("--steps", o.steps, "sampler steps")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--sampler", o.sampler,
                 "ddim, ddpm, dpmpp-2m, euler or heun (default: ddim, or euler for flow models)");
  app.add_option("--seed", seed, "seed of the generation noise")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--batch", o.batch, "images per model call")
      ->check(CLI::Range(int64_t{1}, int64_t{65536}))
      ->capture_default_str();
  app.add_option("--lpips", o.lpips,
                 "LPIPS weight files (VGG16/AlexNet backbone features.* and lin*.model.1.weight; "
                 "repeatable); without them LPIPS is n/a")
      ->type_name("FILE")
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--dinov2", o.dinov2,
                 "DINOv2 weights (facebookresearch or HF names, .safetensors): FD-DINOv2 on CLS "
                 "features at 224x224")
      ->type_name("FILE");
  app.add_option("--inception", o.inception,
                 "pytorch-fid Inception weights (pt_inception-2015-12-05 as .safetensors): FID")
      ->type_name("FILE");
  app.add_option("--out", out, "write every number and setting here as JSON")->type_name("FILE");
  app.add_option("--samples", samples,
                 "write the scored images here: reconstructions.png, generated_cfg.png, "
                 "generated_nocfg.png")
      ->type_name("DIR");
  app.add_option("--device", device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads; 0 = every core")
      ->check(CLI::NonNegativeNumber);

  return run_cli(app, argc, argv, [&] {
    apply_threads(threads);
    o.device = resolve_device(device);
    o.seed = static_cast<uint64_t>(seed);
    EvalResult r = evaluate(o);
    fmt::print("{}", format_eval_table(r));
    if (!samples.empty()) {
      fs::create_directories(samples);
      save_png((fs::path(samples) / "reconstructions.png").string(), recon_grid(r.recon));
      if (r.generation) {
        const int nrow = static_cast<int>(r.generation->per_prompt);
        save_png((fs::path(samples) / "generated_cfg.png").string(),
                 make_grid(r.generation->guided.images, nrow));
        save_png((fs::path(samples) / "generated_nocfg.png").string(),
                 make_grid(r.generation->unguided.images, nrow));
      }
      fmt::print("images: {}/\n", samples);
    }
    if (!out.empty()) {
      if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path());
      write_file_atomic(out, eval_to_json(r).dump(2) + "\n");
      fmt::print("metrics: {}\n", out);
    }
    return 0;
  });
}

}  // namespace psvae::train
