// `psvae demo`, run as the built binary with --tiny (every stage for a few steps at 16x16:
// seconds): it trains the four stages, evaluates, runs the examples and writes report.html,
// metrics.json with every field, and the PNGs; --resume keeps finished stages; a rerun without it
// replaces them. The target check (exit 1 with a one-line summary) is tested on DemoSummary
// directly, since the tiny profile does not check targets and the full demo takes minutes.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/run_binary.h"
#include "common/test_util.h"
#include "train/demo_report.h"
#include "train/image_io.h"

using namespace psvae;
namespace fs = std::filesystem;
using psvae::test::TempDir;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool has(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

bool is_number(const nlohmann::json& j) { return j.is_number() && std::isfinite(j.get<double>()); }

// Width and height of a PNG (0, 0 when unreadable).
std::pair<int, int> png_size(const fs::path& p) {
  int w = 0, h = 0;
  if (!train::probe_image(p.string(), &w, &h)) return {0, 0};
  return {w, h};
}

}  // namespace

TEST_CASE("psvae demo --tiny: all stages, report.html, metrics.json with every field, grids") {
  if (test::psvae_binary().empty()) {
    MESSAGE("bin/psvae not built; skipped");
    return;
  }
  TempDir tmp("demo");
  const fs::path out = tmp.path() / "demo";
  const auto r = test::run_psvae_binary(
      "demo --tiny --device cpu --threads 2 --out " + out.string(), tmp / "log");
  INFO(r.out);
  REQUIRE(r.rc == 0);
  // Progress: a header per part with the overall elapsed time and ETA.
  for (int part = 1; part <= 6; ++part) CHECK(has(r.out, fmt::format("[{}/6]", part)));
  CHECK(has(r.out, "| elapsed "));
  CHECK(has(r.out, "| ETA "));
  CHECK(has(r.out, "targets (not checked: --tiny)"));

  // The configs the stages ran with, written from the copies compiled into the binary.
  for (const char* c : {"demo-encoder.yaml", "demo-svae.yaml", "demo-psvae.yaml", "demo-dit.yaml"})
    CHECK(fs::file_size(out / "configs" / c) > 0);
  for (const char* st : {"encoder", "svae", "psvae", "dit"}) {
    CHECK(fs::exists(out / "runs" / st / "metrics.jsonl"));
    CHECK(fs::exists(out / "runs" / st / "demo_stage_done.json"));
  }

  // metrics.json: every field the issue asks for.
  const auto j = nlohmann::json::parse(slurp(out / "metrics.json"));
  CHECK(j["profile"] == "tiny");
  CHECK(j["targets_checked"] == false);
  for (const char* k : {"psnr", "ssim", "accuracy_cfg", "accuracy_nocfg", "fd_encoder_cfg",
                        "fd_encoder_nocfg", "fd_real_floor"}) {
    INFO(k);
    CHECK(is_number(j["metrics"][k]));
  }
  for (const char* k : {"accuracy_cfg", "accuracy_nocfg"}) {
    CHECK(j["metrics"][k].get<double>() >= 0.0);
    CHECK(j["metrics"][k].get<double>() <= 1.0);
  }
  for (const char* k : {"encoder", "svae", "psvae", "dit", "eval", "examples", "total"}) {
    INFO(k);
    REQUIRE(is_number(j["wall_seconds"][k]));
    CHECK(j["wall_seconds"][k].get<double>() > 0);
  }
  CHECK(j["wall_seconds"]["total"].get<double>() >= j["wall_seconds"]["dit"].get<double>());
  REQUIRE(j["stages"].size() == 4);
  for (const auto& st : j["stages"]) {
    CHECK(st["steps"] == 8);
    CHECK(st["parameters"].get<int64_t>() > 0);
    CHECK(st["reused"] == false);
    CHECK(fs::exists(out / st["checkpoint"].get<std::string>()));
  }
  CHECK(j["sizes"]["image_size"] == 16);
  CHECK(j["sizes"]["dataset_images"] == 96);
  CHECK(j["sizes"]["latent"] == nlohmann::json({8, 4, 4}));
  for (const char* st : {"encoder", "svae", "psvae", "dit"})
    CHECK(j["sizes"]["parameters"][st].get<int64_t>() > 0);
  CHECK(is_number(j["reconstruction"]["psnr"]));
  CHECK(j["reconstruction"]["n"] == 16);
  CHECK(j["reconstruction"]["analyser_accuracy"].is_object());
  REQUIRE(j["generation"].is_object());
  CHECK(j["generation"]["prompts"].size() == 24);
  CHECK(j["generation"]["cfg_scale"].get<double>() > 1);
  CHECK(j["edit"]["examples"].size() == 2);
  CHECK(j["inpaint"]["examples"].size() == 2);
  CHECK(has(j["edit"]["method"].get<std::string>(), "SDEdit"));
  REQUIRE(j["targets"].size() == 2);
  CHECK(j["targets"][0]["key"] == "psnr");
  CHECK(j["targets"][0]["threshold"] == 25.0);
  CHECK(j["targets"][1]["key"] == "accuracy_cfg");
  CHECK(j["targets"][1]["threshold"] == 0.8);
  CHECK(j["eval"].is_object());

  // The images: reconstructions, one grid per prompt, the two all-prompt grids, the examples.
  CHECK(png_size(out / "reconstructions.png").first > 0);
  for (const char* f : {"generations_cfg.png", "generations_nocfg.png"}) {
    auto [w, h] = png_size(out / f);
    CHECK(w == 2 + 18);       // 1 image per prompt, 16 px + 2 px padding
    CHECK(h == 2 + 24 * 18);  // one row per prompt
  }
  int grids = 0;
  for (const auto& e : fs::directory_iterator(out / "grids")) {
    CHECK(png_size(e.path()) == std::make_pair(20, 20));
    ++grids;
  }
  CHECK(grids == 24);
  CHECK(fs::exists(out / "grids" / "00_a_red_circle.png"));
  CHECK(png_size(out / "edit.png") == std::make_pair(2 + 2 * 18, 2 + 2 * 18));
  CHECK(png_size(out / "inpaint.png") == std::make_pair(2 + 3 * 18, 2 + 2 * 18));

  // report.html: every section, and the images it links exist.
  const std::string html = slurp(out / "report.html");
  for (const char* s : {"Metrics", "Stages", "Training curves", "Reconstructions",
                        "Generations, one grid per prompt", "Editing", "Inpainting", "<svg",
                        "reconstructions.png", "grids/23_a_cyan_cross.png", "edit.png",
                        "inpaint.png", "runs/dit/report.html", "not checked"})
    CHECK_MESSAGE(has(html, s), s);

  // Run sequentially rather than as SUBCASEs: doctest would rerun the whole demo above per subcase.
  {  // --resume keeps the finished stages
    const auto r2 = test::run_psvae_binary(
        "demo --tiny --device cpu --threads 2 --resume --out " + out.string(), tmp / "log2");
    INFO(r2.out);
    REQUIRE(r2.rc == 0);
    CHECK(has(r2.out, "finished earlier, kept"));
    CHECK_FALSE(has(r2.out, "psvae train-encoder: done"));
    const auto j2 = nlohmann::json::parse(slurp(out / "metrics.json"));
    for (const auto& st : j2["stages"]) CHECK(st["reused"] == true);
    // Same stage weights, same evaluation.
    CHECK(j2["metrics"]["psnr"] == j["metrics"]["psnr"]);
  }
  {  // a rerun without --resume trains again from scratch
    const auto r2 = test::run_psvae_binary(
        "demo --tiny --device cpu --threads 2 --out " + out.string(), tmp / "log2");
    INFO(r2.out);
    REQUIRE(r2.rc == 0);
    CHECK(has(r2.out, "removing the earlier demo run"));
    CHECK(has(r2.out, "psvae train-dit: done"));
    // Deterministic: the same numbers as the first run.
    const auto j2 = nlohmann::json::parse(slurp(out / "metrics.json"));
    CHECK(j2["metrics"]["psnr"] == j["metrics"]["psnr"]);
    CHECK(j2["metrics"]["fd_encoder_cfg"] == j["metrics"]["fd_encoder_cfg"]);
  }
}

// The whole pipeline on CUDA: every stage's training (multi-tensor AdamW with the clip factor, EMA,
// checkpoints written from and read back to the device), the latent cache, sampling with guidance,
// evaluation and the examples, against the same run on the CPU. Both are f32 and start from the
// same weights (Philox fills are the same bits on both devices), so only the summation order
// differs: every logged loss and gradient norm, and every metric, within 1e-4 relative (measured on
// the CUDA emulator: 1e-7). The analyser accuracies count images, so they may move by one image
// where a generated image sits on a decision boundary.
TEST_CASE("psvae demo --tiny on CUDA matches the same run on the CPU") {
  PSVAE_REQUIRE_CUDA();
  if (test::psvae_binary().empty()) {
    MESSAGE("bin/psvae not built; skipped");
    return;
  }
  TempDir tmp("demo_cuda");
  const fs::path cpu = tmp.path() / "cpu", gpu = tmp.path() / "cuda";
  const auto rc = test::run_psvae_binary(
      "demo --tiny --device cpu --threads 2 --out " + cpu.string(), tmp / "cpu.log");
  INFO(rc.out);
  REQUIRE(rc.rc == 0);
  const auto rg = test::run_psvae_binary(
      "demo --tiny --device cuda --threads 2 --out " + gpu.string(), tmp / "cuda.log");
  INFO(rg.out);
  REQUIRE(rg.rc == 0);
  auto close = [](double a, double b) { return std::abs(a - b) <= 1e-4 * std::abs(b) + 1e-12; };
  for (const std::string st : {"encoder", "svae", "psvae", "dit"}) {
    CAPTURE(st);
    std::ifstream fc(cpu / "runs" / st / "metrics.jsonl"), fg(gpu / "runs" / st / "metrics.jsonl");
    std::string lc, lg;
    int lines = 0;
    while (std::getline(fc, lc)) {
      REQUIRE(std::getline(fg, lg));
      const auto jc = nlohmann::json::parse(lc), jg = nlohmann::json::parse(lg);
      CAPTURE(lc);
      CAPTURE(lg);
      CHECK(jg["step"] == jc["step"]);
      for (const char* k : {"loss", "grad_norm"})
        if (jc.contains(k)) CHECK(close(jg[k].get<double>(), jc[k].get<double>()));
      ++lines;
    }
    CHECK(lines >= 2);
    CHECK_FALSE(std::getline(fg, lg));
  }
  const auto jc = nlohmann::json::parse(slurp(cpu / "metrics.json"));
  const auto jg = nlohmann::json::parse(slurp(gpu / "metrics.json"));
  CHECK(jg["device"] == "cuda:0");
  for (const std::string k :
       {"psnr", "ssim", "fd_encoder_cfg", "fd_encoder_nocfg", "fd_real_floor"}) {
    CAPTURE(k);
    CHECK(close(jg["metrics"][k].get<double>(), jc["metrics"][k].get<double>()));
  }
  for (const std::string k : {"accuracy_cfg", "accuracy_nocfg"}) {
    CAPTURE(k);
    CHECK(std::abs(jg["metrics"][k].get<double>() - jc["metrics"][k].get<double>()) <=
          1.0 / 24 + 1e-12);  // 24 prompts x 1 image
  }
}

TEST_CASE("psvae demo: a folder that is not an earlier demo run is not removed") {
  if (test::psvae_binary().empty()) return;
  TempDir tmp("demo_guard");
  fs::create_directories(tmp.path() / "runs" / "encoder");
  { std::ofstream(tmp.path() / "runs" / "encoder" / "notes.txt") << "mine\n"; }
  const auto r =
      test::run_psvae_binary("demo --tiny --device cpu --out " + tmp.path().string(), tmp / "log");
  CHECK(r.rc == 1);
  CHECK(has(r.out, "is not a run folder of an earlier demo"));
  CHECK(fs::exists(tmp.path() / "runs" / "encoder" / "notes.txt"));
}

TEST_CASE("PSVAE_PROFILE=1 makes psvae print the op table on stderr; 0 prints none") {
  if (test::psvae_binary().empty()) return;
  TempDir tmp("demo_profile");
  const std::string args = "demo --tiny --device cpu --threads 2 --out ";
  const auto on = test::run_psvae_binary(args + (tmp / "on"), tmp / "log_on", "PSVAE_PROFILE=1");
  INFO(on.out);
  REQUIRE(on.rc == 0);
  CHECK(has(on.out, "op profile (PSVAE_PROFILE):"));
  CHECK(has(on.out, "| op | device | calls | total (ms) |"));
  CHECK(has(on.out, "| conv2d | cpu | "));  // the decoder's convolutions ran
  CHECK(has(on.out, "| total | | | "));
  const auto off = test::run_psvae_binary(args + (tmp / "off"), tmp / "log_off", "PSVAE_PROFILE=0");
  REQUIRE(off.rc == 0);
  CHECK(!has(off.out, "op profile"));
}

TEST_CASE("demo targets: the missed line names each gating target that missed") {
  train::DemoSummary s;
  s.targets.push_back({"psnr", "reconstruction PSNR (held out)", 24.5, 25.0, true, "dB", true});
  s.targets.push_back(
      {"accuracy_cfg", "conditional accuracy with guidance", 0.85, 0.8, true, "%", true});
  s.targets.push_back({"wall", "wall time", 1200, 900, false, "s", false});
  CHECK(s.missed() == "reconstruction PSNR (held out) 24.50 dB < 25.00 dB");
  s.targets[1].value = 0.5;
  CHECK(s.missed() ==
        "reconstruction PSNR (held out) 24.50 dB < 25.00 dB; conditional accuracy with guidance "
        "50.0% < 80.0%");
  s.targets[0].value = 25.0;  // a threshold is met at equality
  s.targets[1].value = 0.8;
  CHECK(s.missed().empty());  // the wall-time row is information only
  s.targets[0].value = 1;
  s.check_targets = false;  // --tiny
  CHECK(s.missed().empty());
}

TEST_CASE("prompt_slug: file names for the per-prompt grids") {
  CHECK(train::prompt_slug("a red circle") == "a_red_circle");
  CHECK(train::prompt_slug("  A Blue  square, left! ") == "a_blue_square_left");
  CHECK(train::prompt_slug("!!") == "prompt");
}
