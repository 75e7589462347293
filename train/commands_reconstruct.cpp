// `psvae reconstruct`: how well a trained PS-VAE (stage 2) gives images back. Each image is
// encoded and decoded in evaluation mode (z = mu, no sampling noise), and the command writes
//   OUT/recon_0000.png ...   original | reconstruction, side by side, one per image
//   OUT/grid.png             originals on odd rows, their reconstructions below
//   OUT/metrics.json         {"n": .., "psnr": .., "ssim": .., "lpips": .. or null}
// and prints the mean PSNR, SSIM and (with backbone weights) LPIPS.
//
// Images: --images DIR (PNG/JPEG, flat or one subfolder per class, resized and centre-cropped to
// the checkpoint's data.image_size) or --dataset synthetic. The synthetic images are drawn with
// seed data.seed + 1000003 by default: the training set used data.seed, and synthetic image i
// depends only on (seed, i), so another seed gives images the model never saw (held out).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "autograd/grad_mode.h"
#include "psvae/lpips.h"
#include "psvae/psvae.h"
#include "tensor/atomic_file.h"
#include "train/cli.h"
#include "train/data/dataset.h"
#include "train/image_io.h"
#include "train/metrics.h"
#include "train/tasks/model_keys.h"

namespace psvae::train {

namespace {

namespace fs = std::filesystem;

// The checkpoint's model, in evaluation mode on `dev`, and the config it was trained with.
struct LoadedModel {
  std::shared_ptr<PSVAE> model;
  Config cfg;  // psvae_stage_schema() with the checkpoint's model.* and data.* values
  std::string path;
  bool used_ema = false;
};

LoadedModel load_psvae_checkpoint(const std::string& path, Device dev) {
  StageCheckpoint ck = read_stage_checkpoint_file(path);
  if (ck.task_name != "psvae")
    throw std::runtime_error(fmt::format(
        "{}: a checkpoint of task '{}'; reconstruct needs a stage-2 PS-VAE checkpoint (psvae "
        "train-psvae)",
        ck.path, ck.task_name.empty() ? "?" : ck.task_name));
  LoadedModel lm{nullptr, Config(psvae_stage_schema()), ck.path, ck.used_ema};
  // Only the keys that shape the model and its data: everything else (train.*, loss.*) is the
  // run's business, and skipping it keeps older checkpoints readable.
  inherit_arch_keys(lm.cfg, ck, {"model.", "data."});
  const Config& k = lm.cfg;
  PSVAEConfig c;
  c.encoder = encoder_config(k);
  c.svae.enc_dim = c.encoder.dim;
  c.svae.latent_dim = k.get_int("model.latent_dim");
  c.svae.width = k.get_int("model.svae.width");
  c.svae.depth = static_cast<int>(k.get_int("model.svae.depth"));
  c.svae.heads = static_cast<int>(k.get_int("model.svae.heads"));
  c.pix.latent_dim = c.svae.latent_dim;
  c.pix.channels = pixdec_channels(k);
  c.pix.res_blocks = static_cast<int>(k.get_int("model.pixdec.res_blocks"));
  c.pix.out_h = c.pix.out_w = k.get_int("data.image_size");
  Generator g(0);  // overwritten by the load
  lm.model = std::make_shared<PSVAE>(c, g);
  try {
    lm.model->load_state_dict(ck.model, true);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format(
        "{}: its weights do not fit the model of its saved config: {}", ck.path, e.what()));
  }
  lm.model->to(dev);
  lm.model->eval();
  return lm;
}

bool is_image_file(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

// Up to `num` images (3,S,S) in [-1,1]: the PNG/JPEG files under dir (flat or in class
// subfolders), in sorted path order so a rerun picks the same ones. Unreadable files are
// reported and skipped, as the training loader does.
std::vector<Tensor> folder_images(const std::string& dir, int size, int64_t num) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw UsageError(fmt::format("--images {}: not a directory", dir));
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec))
    if (it->is_regular_file() && is_image_file(it->path())) files.push_back(it->path());
  std::sort(files.begin(), files.end());
  std::vector<Tensor> out;
  for (const fs::path& f : files) {
    if (static_cast<int64_t>(out.size()) >= num) break;
    try {
      out.push_back(image_to_tensor(resize_center_crop(load_image(f.string()), size)));
    } catch (const DataError& e) {
      fmt::print(stderr, "warning: skipped {}\n", e.what());
    }
  }
  if (out.empty())
    throw std::runtime_error(fmt::format("--images {}: no readable PNG or JPEG files", dir));
  return out;
}

std::vector<Tensor> synthetic_images(int size, uint64_t seed, int64_t num) {
  SyntheticOptions o;
  o.num_images = num;
  o.image_size = size;
  o.seed = seed;
  std::unique_ptr<Dataset> ds = make_synthetic(o);
  std::vector<Tensor> out;
  for (int64_t i = 0; i < num; ++i) out.push_back(ds->get(i).image);
  return out;
}

// images[begin, end) stacked into (n,3,S,S) f32 on the host.
Tensor stack(const std::vector<Tensor>& images, size_t begin, size_t end) {
  const Shape& s = images[begin].shape();
  Tensor b = Tensor::empty({static_cast<int64_t>(end - begin), s[0], s[1], s[2]}, DType::F32);
  const int64_t per = images[begin].numel();
  for (size_t i = begin; i < end; ++i)
    std::memcpy(b.data<float>() + static_cast<int64_t>(i - begin) * per,
                images[i].to(Device::cpu()).data<float>(), static_cast<size_t>(per) * 4);
  return b;
}

// Row i of a (N,3,H,W) batch as (3,H,W).
Tensor row(const Tensor& b, int64_t i) {
  return b.slice0(i, i + 1).reshape({b.size(1), b.size(2), b.size(3)});
}

// JSON null for "not measured"; finite numbers as they are (PSNR of a perfect match is +inf,
// which JSON cannot hold, so it is written as a string).
nlohmann::json number_or_null(double v, bool have) {
  if (!have) return nullptr;
  if (std::isfinite(v)) return v;
  return std::isnan(v) ? nlohmann::json("nan") : nlohmann::json(v > 0 ? "inf" : "-inf");
}

}  // namespace

int cmd_reconstruct(int argc, char** argv) {
  CLI::App app{
      "Encode and decode images with a stage-2 PS-VAE checkpoint (evaluation mode, z = mu); write "
      "each original beside its reconstruction (OUT/recon_0000.png ...), a grid (OUT/grid.png), "
      "and the mean PSNR, SSIM and LPIPS (OUT/metrics.json).\n"
      "--dataset synthetic draws held-out images: seed data.seed + 1000003 unless --seed is given.",
      "psvae reconstruct"};
  std::string checkpoint, images, dataset, out, device = "auto";
  std::vector<std::string> lpips_weights;
  int64_t num = 16, batch = 8, seed = -1;
  int threads = 0;
  app.add_option("--checkpoint", checkpoint,
                 "train-psvae checkpoint (.safetensors) or run folder (its newest checkpoint)")
      ->type_name("FILE")
      ->required();
  auto* img_opt = app.add_option("--images", images,
                                 "folder of PNG/JPEG images (flat or one subfolder per class)")
                      ->type_name("DIR");
  auto* ds_opt = app.add_option("--dataset", dataset, "built-in images: synthetic")
                     ->check(CLI::IsMember({"synthetic"}));
  img_opt->excludes(ds_opt);
  ds_opt->excludes(img_opt);
  app.add_option("--out", out, "output folder (created)")->type_name("DIR")->required();
  app.add_option("--num", num, "images to reconstruct")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--batch", batch, "images per forward pass")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--seed", seed,
                 "--dataset synthetic: seed of the images (default data.seed + 1000003, held out)")
      ->check(CLI::NonNegativeNumber);
  app.add_option(
         "--lpips-weights", lpips_weights,
         "LPIPS weight files (VGG16 or AlexNet backbone features.* and lin*.model.1.weight; "
         "repeatable); without them LPIPS is n/a")
      ->type_name("FILE")
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--device", device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads; 0 = every core")
      ->check(CLI::NonNegativeNumber);

  return run_cli(app, argc, argv, [&] {
    if (images.empty() && dataset.empty())
      throw UsageError("give the images: --images DIR or --dataset synthetic");
    apply_threads(threads);
    const Device dev = resolve_device(device);
    LoadedModel lm = load_psvae_checkpoint(checkpoint, dev);
    const int size = static_cast<int>(lm.cfg.get_int("data.image_size"));
    fmt::print("model: {} ({} weights), {}x{} images\n", lm.path, lm.used_ema ? "EMA" : "model",
               size, size);

    // LPIPS only with a real backbone: its random-weight stand-in would be a meaningless number.
    std::shared_ptr<LPIPS> lpips;
    if (!lpips_weights.empty()) {
      LPIPS::Config lc;
      for (const std::string& p : lpips_weights) {
        auto f = safetensors::File::open(p);
        if (f->contains("features.10.weight") && !f->contains("features.28.weight"))
          lc.net = LPIPS::Net::alex;  // AlexNet's last conv is features.10, VGG16's features.28
        if (f->contains("lin0.model.1.weight")) {
          const Shape& s = f->info("lin0.model.1.weight").shape;
          if (s.rank() == 4 && s[1] > 0 && 64 % s[1] == 0)
            lc.width_div = static_cast<int>(64 / s[1]);
        }
      }
      lpips = LPIPS::load(lc, lpips_weights);
      if (!lpips->enabled())
        lpips.reset();  // load() has warned
      else
        lpips->to(dev);
    }

    std::vector<Tensor> originals;
    if (!images.empty()) {
      originals = folder_images(images, size, num);
    } else {
      const uint64_t s = seed >= 0
                             ? static_cast<uint64_t>(seed)
                             : held_out_seed(static_cast<uint64_t>(lm.cfg.get_int("data.seed")));
      fmt::print("images: synthetic, seed {}{}\n", s,
                 seed >= 0 ? "" : " (data.seed + 1000003: held out)");
      originals = synthetic_images(size, s, num);
    }

    fs::create_directories(out);
    std::vector<double> psnrs, ssims, lpipss;
    std::vector<Tensor> recons;
    ag::NoGradGuard no_grad;
    for (size_t b = 0; b < originals.size(); b += static_cast<size_t>(batch)) {
      const size_t e = std::min(originals.size(), b + static_cast<size_t>(batch));
      Tensor x = stack(originals, b, e);
      PSVAEOutput o = lm.model->forward(ag::Var(x.to(dev)), nullptr);
      Tensor y = o.pixels.data().to(Device::cpu());
      y = nn::convert_float(y, DType::F32);
      // The decoder is unbounded; images are compared as they would be shown, clamped to [-1,1].
      float* py = y.data<float>();
      for (int64_t i = 0; i < y.numel(); ++i) py[i] = std::min(1.0f, std::max(-1.0f, py[i]));
      for (double v : psnr(x, y)) psnrs.push_back(v);
      for (double v : ssim(x, y)) ssims.push_back(v);
      if (lpips)
        for (double v :
             lpips->forward(ag::Var(x.to(dev)), ag::Var(y.to(dev))).data().to_vector<float>())
          lpipss.push_back(v);
      for (int64_t i = 0; i < y.size(0); ++i) {
        recons.push_back(row(y, i).clone());
        Tensor pair = stack({originals[b + static_cast<size_t>(i)], recons.back()}, 0, 2);
        save_png(
            (fs::path(out) / fmt::format("recon_{:04d}.png", b + static_cast<size_t>(i))).string(),
            make_grid(pair, 2));
      }
    }

    // Grid: rows of up to 8 originals, each followed by a row of their reconstructions.
    const size_t n = originals.size(), per_row = std::min<size_t>(8, n);
    std::vector<Tensor> cells;
    for (size_t r = 0; r < n; r += per_row)
      for (const std::vector<Tensor>* src : {&originals, &recons})
        for (size_t i = r; i < r + per_row; ++i)
          cells.push_back(i < n ? (*src)[i] : Tensor::full(originals[0].shape(), 1.0));
    save_png((fs::path(out) / "grid.png").string(),
             make_grid(stack(cells, 0, cells.size()), static_cast<int>(per_row)));

    const double mp = mean_of(psnrs), ms = mean_of(ssims);
    fmt::print("reconstructed {} images -> {}/recon_0000.png ... and grid.png\n", n, out);
    fmt::print("psnr: {:.3f} dB\nssim: {:.4f}\n", mp, ms);
    if (lpips)
      fmt::print("lpips: {:.4f}\n", mean_of(lpipss));
    else
      fmt::print("lpips: n/a (no backbone weights)\n");
    nlohmann::json j;
    j["n"] = n;
    j["psnr"] = number_or_null(mp, true);
    j["ssim"] = number_or_null(ms, true);
    j["lpips"] = number_or_null(lpips ? mean_of(lpipss) : 0.0, static_cast<bool>(lpips));
    write_file_atomic((fs::path(out) / "metrics.json").string(), j.dump(2) + "\n");
    return 0;
  });
}

}  // namespace psvae::train
