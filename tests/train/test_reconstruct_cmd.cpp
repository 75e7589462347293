// `psvae reconstruct`, run as the built binary on a tiny PS-VAE checkpoint written directly in the
// trainer's format (model.*, ema.*, psvae.task, psvae.config): held-out synthetic images and a
// folder of PNGs give the PNGs, the grid and metrics.json with finite PSNR/SSIM; LPIPS is a number
// with backbone weights and null without; a stage-1 checkpoint is refused.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/run_binary.h"
#include "common/test_util.h"
#include "psvae/psvae.h"
#include "tensor/safetensors.h"
#include "train/config.h"
#include "train/image_io.h"
#include "train/tasks/model_keys.h"

using namespace psvae;
namespace fs = std::filesystem;
using psvae::test::TempDir;

namespace {

const std::filesystem::path kRoot = test::repo_root();

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

using Result = test::BinaryRun;

Result run(const TempDir& tmp, const std::string& args) {
  return test::run_psvae_binary("reconstruct --device cpu " + args, tmp / "log");
}

bool has(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

// A stage-2 checkpoint of a tiny PS-VAE (16x16 images, 4x4 tokens, latent 4) as the trainer
// writes one: model.* and ema.* (the parameters) plus the metadata reconstruct reads.
void write_checkpoint(const std::string& path, const std::string& task) {
  train::Config cfg(train::psvae_stage_schema());
  for (const char* kv : {"model.encoder.patch=4", "model.encoder.dim=16", "model.encoder.depth=1",
                         "model.encoder.heads=2", "model.encoder.pos_grid=4", "model.latent_dim=4",
                         "model.svae.width=16", "model.svae.depth=1", "model.svae.heads=2",
                         "model.pixdec.channels=8,8,8", "model.pixdec.res_blocks=1",
                         "data.image_size=16", "data.seed=5"})
    cfg.set_override(kv);
  PSVAEConfig c;
  c.encoder = train::encoder_config(cfg);
  c.svae.enc_dim = 16, c.svae.latent_dim = 4, c.svae.width = 16, c.svae.depth = 1;
  c.svae.heads = 2;
  c.pix.latent_dim = 4;
  c.pix.channels = {8, 8, 8};
  c.pix.res_blocks = 1;
  c.pix.out_h = c.pix.out_w = 16;
  Generator g(1);
  PSVAE model(c, g);
  safetensors::NamedTensors t;
  for (auto& [n, x] : model.state_dict()) t.emplace_back("model." + n, x);
  for (auto& [n, p] : model.named_parameters()) t.emplace_back("ema." + n, p.data());
  safetensors::save(path, t,
                    {{"psvae.format", "1"},
                     {"psvae.step", "0"},
                     {"psvae.task", task},
                     {"psvae.config", cfg.to_yaml()}});
}

}  // namespace

TEST_CASE("reconstruct: held-out synthetic images -> PNGs, grid, metrics.json") {
  if (test::psvae_binary().empty()) {
    MESSAGE("bin/psvae not built; skipping");
    return;
  }
  TempDir tmp("reconstruct");
  write_checkpoint(tmp / "ckpt.safetensors", "psvae");
  Result r = run(tmp, fmt::format("--checkpoint {} --dataset synthetic --num 4 --batch 3 --out {}",
                                  tmp / "ckpt.safetensors", tmp / "out"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(has(r.out, "seed 1000008 (data.seed + 1000003: held out)"));
  CHECK(has(r.out, "lpips: n/a (no backbone weights)"));
  for (int i = 0; i < 4; ++i) {
    train::Image im = train::load_image(tmp / fmt::format("out/recon_{:04d}.png", i));
    CHECK(im.height == 16 + 4);  // make_grid's 2-pixel padding around one row
    CHECK(im.width == 2 * 16 + 6);
  }
  CHECK_FALSE(fs::exists(tmp / "out/recon_0004.png"));
  train::Image grid = train::load_image(tmp / "out/grid.png");
  CHECK(grid.width == 4 * 16 + 10);  // 4 per row
  CHECK(grid.height == 2 * 16 + 6);  // originals, reconstructions
  auto j = nlohmann::json::parse(slurp(tmp / "out/metrics.json"));
  CHECK(j["n"] == 4);
  REQUIRE(j["psnr"].is_number());
  REQUIRE(j["ssim"].is_number());
  CHECK(std::isfinite(j["psnr"].get<double>()));
  CHECK(std::isfinite(j["ssim"].get<double>()));
  CHECK(j["ssim"].get<double>() <= 1.0);
  CHECK(j["lpips"].is_null());
}

TEST_CASE("reconstruct: an image folder, LPIPS with backbone weights, a stage-1 checkpoint") {
  if (test::psvae_binary().empty()) return;
  TempDir tmp("reconstruct");
  write_checkpoint(tmp / "ckpt.safetensors", "psvae");
  // Two images of other sizes in class subfolders: resized and centre-cropped to 16x16.
  fs::create_directories(tmp / "imgs/a");
  fs::create_directories(tmp / "imgs/b");
  for (int k = 0; k < 2; ++k) {
    train::Image im;
    im.width = 24 + 8 * k, im.height = 20;
    for (int i = 0; i < im.width * im.height * 3; ++i)
      im.rgb.push_back(static_cast<uint8_t>((i * (7 + k)) % 251));
    train::save_png(tmp / fmt::format("imgs/{}/x{}.png", k ? "b" : "a", k), im);
  }
  const std::string lp = (kRoot / "tests/reference/golden/lpips_vgg_backbone.safetensors").string();
  const std::string lin = (kRoot / "tests/reference/golden/lpips_vgg_lin.safetensors").string();
  Result r = run(tmp, fmt::format("--checkpoint {} --images {} --num 5 --out {} "
                                  "--lpips-weights {} --lpips-weights {}",
                                  tmp / "ckpt.safetensors", tmp / "imgs", tmp / "out", lp, lin));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(fs::exists(tmp / "out/recon_0001.png"));
  CHECK_FALSE(fs::exists(tmp / "out/recon_0002.png"));
  auto j = nlohmann::json::parse(slurp(tmp / "out/metrics.json"));
  CHECK(j["n"] == 2);
  REQUIRE(j["lpips"].is_number());
  CHECK(j["lpips"].get<double>() > 0);

  write_checkpoint(tmp / "stage1.safetensors", "svae");
  r = run(tmp, fmt::format("--checkpoint {} --dataset synthetic --out {}",
                           tmp / "stage1.safetensors", tmp / "out2"));
  CHECK(r.rc == 1);
  CHECK(has(r.out, "stage-2 PS-VAE checkpoint"));
  r = run(tmp, fmt::format("--checkpoint {} --out {}", tmp / "ckpt.safetensors", tmp / "out2"));
  CHECK(r.rc == 2);
  CHECK(has(r.out, "--images DIR or --dataset synthetic"));
}
