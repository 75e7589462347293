// The evaluation of train/evaluate.h and `psvae eval`, on a tiny stage-2 checkpoint written
// directly (random weights, 16x16 images, patch 4, latent 8) and a tiny DiT trained for 4 steps on
// it with `psvae train-dit` in-process, so every case runs in seconds:
//   - reconstruction: the held-out synthetic images are those of seed data.seed + 1000003, the
//     reconstructions are the model's own evaluation forward, PSNR/SSIM are metrics.h's on them,
//     the analyser scored all of them, rFD is finite; LPIPS, FD-DINOv2 and rFID appear exactly when
//     their weights are given (narrow golden LPIPS/DINOv2 weights, Philox Inception weights);
//   - generation (class and text DiTs): 24 prompts x K images per guidance setting, scored per
//     prompt; guidance 1 in both runs gives the same images (same noise per image), guidance 4
//     different ones;
//   - the command: table, JSON (every field), sample grids, and its errors.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autograd/grad_mode.h"
#include "common/run_binary.h"
#include "common/test_util.h"
#include "kernels/ops.h"
#include "psvae/inception.h"
#include "psvae/psvae.h"
#include "tensor/safetensors.h"
#include "train/cli.h"
#include "train/data/dataset.h"
#include "train/evaluate.h"
#include "train/image_io.h"
#include "train/metrics.h"
#include "train/tasks/model_keys.h"
#include "train/tasks/svae_task.h"

namespace fs = std::filesystem;
using namespace psvae;
using namespace psvae::train;
using psvae::test::TempDir;

namespace {

// The tiny PS-VAE's config and model (Generator(11)), as a finished train-psvae run saves it:
// model.* weights, latent statistics, the saved config (data.seed 5: held-out seed 1000008).
Config tiny_psvae_config() {
  Config pc(psvae_stage_schema());
  for (const char* kv : {"model.encoder.patch=4", "model.encoder.dim=16", "model.encoder.depth=1",
                         "model.encoder.heads=2", "model.encoder.pos_grid=4", "model.latent_dim=8",
                         "model.svae.width=16", "model.svae.depth=1", "model.svae.heads=2",
                         "model.pixdec.channels=8,8,8", "model.pixdec.res_blocks=1",
                         "data.image_size=16", "data.seed=5"})
    pc.set_override(kv);
  return pc;
}

std::shared_ptr<PSVAE> tiny_psvae() {
  Config pc = tiny_psvae_config();
  PSVAEConfig c;
  c.encoder = encoder_config(pc);
  c.svae = svae_config(pc, c.encoder.dim);
  c.pix.latent_dim = 8;
  c.pix.channels = pixdec_channels(pc);
  c.pix.res_blocks = 1;
  c.pix.out_h = c.pix.out_w = 16;
  Generator g(11);
  auto m = std::make_shared<PSVAE>(c, g);
  m->eval();
  return m;
}

std::string write_psvae(const std::string& path, const std::string& task = "psvae") {
  auto model = tiny_psvae();
  safetensors::NamedTensors t;
  for (auto& [n, x] : model->state_dict()) t.emplace_back("model." + n, x);
  std::vector<float> mean(8), std(8);
  for (int i = 0; i < 8; ++i) mean[i] = 0.05f * i - 0.2f, std[i] = 0.5f + 0.1f * i;
  t.emplace_back("task.latent_mean", Tensor::from_vector(mean, Shape{8}));
  t.emplace_back("task.latent_std", Tensor::from_vector(std, Shape{8}));
  safetensors::save(path, t,
                    {{"psvae.format", "1"},
                     {"psvae.task", task},
                     {"psvae.step", "40"},
                     {"psvae.config", tiny_psvae_config().to_yaml()}});
  return path;
}

// A 4-step train-dit run on the checkpoint; returns the run folder.
std::string train_tiny_dit(const std::string& psvae, const std::string& out,
                           const std::string& cond) {
  std::vector<std::string> args = {"train-dit", "--device", "cpu"};
  for (const std::string& s :
       {"init.from=" + psvae, "run.out_dir=" + out, "model.cond=" + cond,
        std::string("model.dit.hidden=32"), std::string("model.dit.depth=1"),
        std::string("model.dit.heads=2"), std::string("model.text.dim=16"),
        std::string("model.text.depth=1"), std::string("model.text.heads=2"),
        std::string("model.text.max_len=12"), std::string("data.image_size=16"),
        std::string("data.num_images=64"), std::string("data.workers=0"),
        std::string("train.steps=4"), std::string("train.batch_size=8"),
        std::string("train.lr=1e-3"), std::string("train.ckpt_every=4"),
        std::string("train.sample_every=0"), std::string("train.ema_decay=0.9")}) {
    args.push_back("--set");
    args.push_back(s);
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  REQUIRE(cmd_train_dit(static_cast<int>(args.size()), argv.data()) == 0);
  return out;
}

EvalOptions tiny_options(const std::string& psvae) {
  EvalOptions o;
  o.psvae = psvae;
  o.num_recon = 8;
  o.batch = 3;  // batches that do not divide the sets
  o.verbose = false;
  return o;
}

std::string slurp(const std::string& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool has(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

}  // namespace

TEST_CASE("evaluate: reconstruction metrics on held-out synthetic images") {
  TempDir tmp("eval_recon");
  EvalResult r = evaluate(tiny_options(write_psvae(tmp / "psvae.safetensors")));
  const ReconMetrics& rec = r.recon;
  CHECK(r.psvae_path == tmp / "psvae.safetensors");
  CHECK_FALSE(r.generation.has_value());
  REQUIRE(rec.n == 8);
  CHECK(rec.image_size == 16);
  CHECK(rec.images == "synthetic seed 1000008 (held out)");

  // The originals are the held-out dataset images.
  SyntheticOptions so;
  so.num_images = 8;
  so.image_size = 16;
  so.seed = held_out_seed(5);
  auto ds = make_synthetic(so);
  REQUIRE(rec.originals.shape() == Shape{8, 3, 16, 16});
  for (int64_t i = 0; i < 8; ++i)
    CHECK(test::bit_mismatches_host(rec.originals.slice0(i, i + 1).reshape({3, 16, 16}),
                                    ds->get(i).image) == 0);

  // The reconstructions are the model's evaluation forward (z = mu), clamped to [-1, 1].
  auto model = tiny_psvae();
  Tensor expect;
  {
    ag::NoGradGuard ng;
    expect = ops::clamp(model->forward(ag::Var(rec.originals), nullptr).pixels.data(), -1.0, 1.0);
  }
  auto c = test::compare(rec.reconstructions, expect, 1e-5);
  CHECK_MESSAGE(c.ok, c.why);
  CHECK(rec.psnr == doctest::Approx(mean_of(psnr(rec.originals, rec.reconstructions))));
  CHECK(rec.ssim == doctest::Approx(mean_of(ssim(rec.originals, rec.reconstructions))));
  CHECK(std::isfinite(rec.psnr));
  CHECK(rec.ssim <= 1.0);

  REQUIRE(rec.analyser.has_value());
  CHECK(rec.analyser->n == 8);
  CHECK(rec.analyser->both <= rec.analyser->colour);
  CHECK(std::isfinite(rec.fd_encoder));
  CHECK(rec.fd_encoder > 0);  // a random decoder does not reproduce the images
  CHECK_FALSE(rec.lpips.has_value());
  CHECK_FALSE(rec.fd_dinov2.has_value());
  CHECK_FALSE(rec.fid.has_value());
  CHECK(has(r.features, "[CLS token, mean patch token]"));

  nlohmann::json j = eval_to_json(r);
  CHECK(j["reconstruction"]["n"] == 8);
  CHECK(j["reconstruction"]["psnr"].get<double>() == doctest::Approx(rec.psnr));
  CHECK(j["reconstruction"]["lpips"].is_null());
  CHECK(j["reconstruction"]["analyser"]["n"] == 8);
  CHECK(j["generation"].is_null());
  CHECK(j["settings"]["num_recon"] == 8);
  const std::string table = format_eval_table(r);
  CHECK(has(table, "PSNR"));
  CHECK(has(table, "LPIPS                 n/a"));
}

TEST_CASE("evaluate: LPIPS, FD-DINOv2 and rFID appear with their weights") {
  TempDir tmp("eval_weights");
  EvalOptions o = tiny_options(write_psvae(tmp / "psvae.safetensors"));
  o.num_recon = 4;
  o.lpips = {test::golden("lpips_vgg_backbone.safetensors"),
             test::golden("lpips_vgg_lin.safetensors")};
  o.dinov2 = test::golden("dinov2_plain_weights.safetensors");
  InceptionV3 inc;
  inc.init_philox(3);
  safetensors::save(tmp / "inception.safetensors", inc.state_dict());
  o.inception = tmp / "inception.safetensors";
  EvalResult r = evaluate(o);
  REQUIRE(r.recon.lpips.has_value());
  CHECK(*r.recon.lpips > 0);
  REQUIRE(r.recon.fd_dinov2.has_value());
  CHECK(std::isfinite(*r.recon.fd_dinov2));
  CHECK(*r.recon.fd_dinov2 > 0);
  REQUIRE(r.recon.fid.has_value());
  CHECK(std::isfinite(*r.recon.fid));
  nlohmann::json j = eval_to_json(r);
  CHECK(j["reconstruction"]["lpips"].is_number());
  CHECK(j["reconstruction"]["fd_dinov2"].is_number());
  CHECK(j["reconstruction"]["fid"].is_number());

  // A DINOv2 file that is not one names the file.
  o.dinov2 = test::golden("lpips_vgg_lin.safetensors");
  CHECK_THROWS_WITH(evaluate(o), doctest::Contains("lpips_vgg_lin.safetensors: DINOv2 weights"));
}

TEST_CASE("evaluate: generation metrics of class and text DiTs") {
  TempDir tmp("eval_gen");
  const std::string ps = write_psvae(tmp / "psvae.safetensors");
  for (const std::string cond : {"class", "text"}) {
    CAPTURE(cond);
    const std::string run = train_tiny_dit(ps, tmp / ("dit_" + cond), cond);
    EvalOptions o = tiny_options(ps);
    o.dit = run;
    o.per_prompt = 2;
    o.steps = 2;
    o.cfg_scale = 4.0;
    o.batch = 7;
    EvalResult r = evaluate(o);
    REQUIRE(r.generation.has_value());
    const GenerationMetrics& g = *r.generation;
    CHECK(g.cond_kind == cond);
    CHECK(g.sampler == "ddim");  // the eps objective's default
    REQUIRE(g.prompts.size() == 24);
    CHECK(g.prompts[0] == "a red circle");
    CHECK(g.prompts[23] == "a cyan cross");
    CHECK(g.targets[7].colour == 1);  // "a green cross"
    CHECK(g.targets[7].shape == 3);
    for (const GenerationRun* gr : {&g.guided, &g.unguided}) {
      CHECK(gr->images.shape() == Shape{48, 3, 16, 16});
      CHECK(gr->analyses.size() == 48);
      CHECK(gr->accuracy.n == 48);
      REQUIRE(gr->per_prompt.size() == 24);
      int64_t both = 0;
      for (const Accuracy& a : gr->per_prompt) {
        CHECK(a.n == 2);
        both += a.both;
      }
      CHECK(both == gr->accuracy.both);
      CHECK(std::isfinite(gr->fd_encoder));
      float lo = 1, hi = -1;
      for (float v : gr->images.to_vector<float>()) lo = std::min(lo, v), hi = std::max(hi, v);
      CHECK(lo >= -1.0f);
      CHECK(hi <= 1.0f);
    }
    CHECK(g.guided.cfg_scale == 4.0);
    CHECK(g.unguided.cfg_scale == 1.0);
    CHECK(std::isfinite(g.fd_real_floor));
    CHECK(test::bit_mismatches_host(g.guided.images, g.unguided.images) > 0);

    // Guidance 1 in the "guided" run: the same noise per image gives the same images.
    o.cfg_scale = 1.0;
    EvalResult same = evaluate(o);
    CHECK(test::bit_mismatches_host(same.generation->guided.images,
                                    same.generation->unguided.images) == 0);
    CHECK(test::bit_mismatches_host(same.generation->unguided.images, g.unguided.images) == 0);

    nlohmann::json j = eval_to_json(r);
    CHECK(j["generation"]["guided"]["accuracy"]["n"] == 48);
    CHECK(j["generation"]["guided"]["per_prompt"].size() == 24);
    CHECK(j["generation"]["guided"]["per_prompt"][5]["prompt"] == "a green square");
    CHECK(j["generation"]["unguided"]["cfg_scale"] == 1.0);
    CHECK(j["generation"]["fd_real_floor"].is_number());
    CHECK(has(format_eval_table(r), "no guidance"));
  }

  // A sampler of another objective.
  EvalOptions o = tiny_options(ps);
  o.dit = tmp / "dit_class";
  o.sampler = "euler";
  o.per_prompt = 1;
  CHECK_THROWS_WITH(evaluate(o), doctest::Contains("sampler euler does not fit"));
}

TEST_CASE("psvae eval: table, JSON, sample grids and errors") {
  if (test::psvae_binary().empty()) {
    MESSAGE("bin/psvae not built; skipping");
    return;
  }
  TempDir tmp("eval_cmd");
  const std::string ps = write_psvae(tmp / "psvae.safetensors");
  auto run = [&](const std::string& args) {
    return test::run_psvae_binary("eval --device cpu " + args, tmp / "log");
  };
  test::BinaryRun r = run(fmt::format("--psvae {} --num-recon 6 --out {} --samples {}", ps,
                                      tmp / "out/metrics.json", tmp / "samples"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(has(r.out, "reconstruction: 6 images 16x16, synthetic seed 1000008 (held out)"));
  CHECK(has(r.out, "PSNR"));
  CHECK(has(r.out, "analyser accuracy"));
  auto j = nlohmann::json::parse(slurp(tmp / "out/metrics.json"));
  CHECK(j["reconstruction"]["n"] == 6);
  CHECK(j["reconstruction"]["psnr"].is_number());
  CHECK(j["reconstruction"]["ssim"].is_number());
  CHECK(j["reconstruction"]["fd_encoder"].is_number());
  CHECK(j["generation"].is_null());
  CHECK(j["settings"]["per_prompt"] == 8);
  CHECK(j["settings"]["device"] == "cpu");
  Image grid = load_image(tmp / "samples/reconstructions.png");
  CHECK(grid.width == 6 * 16 + 7 * 2);   // 6 per row
  CHECK(grid.height == 2 * 16 + 3 * 2);  // originals, reconstructions

  // With a DiT: the generation table, its JSON and the generated grids (one row per prompt).
  const std::string dit = train_tiny_dit(ps, tmp / "dit", "class");
  r =
      run(fmt::format("--psvae {} --dit {} --num-recon 4 --per-prompt 2 --steps 2 --batch 5 "
                      "--out {} --samples {}",
                      ps, dit, tmp / "gen.json", tmp / "gen"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(has(r.out, "generation: 24 prompts x 2 images, ddim 2 steps, class conditioning"));
  CHECK(has(r.out, "accuracy (both)"));
  j = nlohmann::json::parse(slurp(tmp / "gen.json"));
  CHECK(j["generation"]["guided"]["accuracy"]["n"] == 48);
  CHECK(j["generation"]["unguided"]["accuracy"]["n"] == 48);
  CHECK(j["generation"]["guided"]["cfg_scale"] == 4.0);
  CHECK(j["dit"].get<std::string>().find(dit) == 0);
  for (const char* name : {"gen/generated_cfg.png", "gen/generated_nocfg.png"}) {
    Image g = load_image(tmp / name);
    CHECK(g.width == 2 * 16 + 3 * 2);
    CHECK(g.height == 24 * 16 + 25 * 2);
  }

  // Errors: a stage-1 checkpoint (exit 1), a missing DiT (exit 1), usage errors (exit 2).
  write_psvae(tmp / "svae.safetensors", "svae");
  r = run("--psvae " + (tmp / "svae.safetensors"));
  CHECK(r.rc == 1);
  CHECK(has(r.out, "eval needs a stage-2 PS-VAE checkpoint"));
  r = run(fmt::format("--psvae {} --num-recon 4 --dit {}", ps, tmp / "nope"));
  CHECK(r.rc == 1);
  CHECK(has(r.out, tmp / "nope"));
  CHECK(run("--num-recon 4").rc == 2);
  CHECK(run(fmt::format("--psvae {} --num-recon 1", ps)).rc == 2);
}
