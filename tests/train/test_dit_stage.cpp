// Stage 3 (`psvae train-dit`, train/tasks/dit_task.h, train/latents.h) at a tiny scale: a PS-VAE
// stage-2 checkpoint is written directly (random weights, 16x16 images -> a 4x4x8 latent, the
// file layout of a finished train-psvae run), so every case runs in seconds.
//   - the command trains class- and text-conditioned DiTs: finite losses, the checkpoint contract
//     (DiT weights, EMA, latent statistics, tokenizer metadata) and a sample grid;
//   - exact resume: 6 steps == 3 steps, SIGTERM, resume, 3 steps, bit for bit;
//   - the latent cache: written once, reused, re-encoded when stale ("auto"), an error naming the
//     field when a given path was made for other data; its latents are encode_latents';
//   - encode_latents -> decode_latents is the PS-VAE's own evaluation reconstruction;
//   - a stage-2 checkpoint without statistics is a one-line error;
//   - learn_sigma's variational-bound term: zero at the true posterior, its gradient's sign, the
//     t = 0 decoder branch.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "common/test_util.h"
#include "kernels/ops.h"
#include "tensor/safetensors.h"
#include "train/cli.h"
#include "train/data/loader.h"
#include "train/latents.h"
#include "train/signals.h"
#include "train/tasks/dit_task.h"
#include "train/tasks/model_keys.h"
#include "train/tasks/svae_task.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using namespace psvae;
using namespace psvae::train;

using psvae::test::TempDir;

namespace {

constexpr int64_t kLatent = 8;  // L of the tiny PS-VAE

// A finished train-psvae checkpoint: model.* of a randomly initialised tiny PS-VAE (patch 4 on
// 16x16 images, width 16, L 8, pixel decoder 8,8,8), its saved config, and (with_stats) the
// latent statistics finish_psvae_run would add.
std::string write_psvae_checkpoint(const std::string& path, bool with_stats = true,
                                   const std::string& step = "40") {
  Config pc(psvae_stage_schema());
  pc.set("model.encoder.patch", "4");
  pc.set("model.encoder.dim", "16");
  pc.set("model.encoder.depth", "1");
  pc.set("model.encoder.heads", "2");
  pc.set("model.encoder.pos_grid", "4");
  pc.set("model.latent_dim", std::to_string(kLatent));
  pc.set("model.svae.width", "16");
  pc.set("model.svae.depth", "1");
  pc.set("model.svae.heads", "2");
  pc.set("model.pixdec.channels", "8,8,8");
  pc.set("data.image_size", "16");
  PSVAEConfig c;
  c.encoder = encoder_config(pc);
  c.svae = svae_config(pc, c.encoder.dim);
  c.pix.latent_dim = kLatent;
  c.pix.channels = pixdec_channels(pc);
  c.pix.res_blocks = 1;
  c.pix.out_h = c.pix.out_w = 16;
  Generator g(11);
  PSVAE model(c, g);
  safetensors::NamedTensors t;
  for (auto& [n, x] : model.state_dict()) t.emplace_back("model." + n, x);
  if (with_stats) {
    std::vector<float> mean, std;
    for (int64_t i = 0; i < kLatent; ++i) {
      mean.push_back(0.05f * static_cast<float>(i) - 0.2f);
      std.push_back(0.5f + 0.1f * static_cast<float>(i));
    }
    t.emplace_back("task.latent_mean", Tensor::from_vector(mean, Shape{kLatent}));
    t.emplace_back("task.latent_std", Tensor::from_vector(std, Shape{kLatent}));
  }
  safetensors::Metadata m;
  m["psvae.format"] = "1";
  m["psvae.task"] = "psvae";
  m["psvae.step"] = step;
  m["psvae.config"] = pc.to_yaml();
  safetensors::save(path, t, m);
  return path;
}

// The DiT config every case starts from: 64 synthetic 16x16 images, a 1-block DiT of width 32.
Config tiny_dit_config(const std::string& psvae, const std::string& out_dir,
                       const std::string& cond = "text") {
  Config c(dit_stage_schema());
  c.set("init.from", psvae);
  c.set("run.out_dir", out_dir);
  c.set("model.cond", cond);
  c.set("model.dit.hidden", "32");
  c.set("model.dit.depth", "1");
  c.set("model.dit.heads", "2");
  c.set("model.text.dim", "16");
  c.set("model.text.depth", "1");
  c.set("model.text.heads", "2");
  c.set("model.text.max_len", "12");
  c.set("data.image_size", "16");
  c.set("data.num_images", "64");
  c.set("data.workers", "0");
  c.set("train.steps", "4");
  c.set("train.batch_size", "8");
  c.set("train.lr", "1e-3");
  c.set("train.ckpt_every", "4");
  c.set("train.log_every", "1");
  c.set("train.sample_every", "0");
  c.set("train.ema_decay", "0.9");
  c.set("train.cond_dropout", "0.25");
  c.set("sample.steps", "2");
  return c;
}

// `psvae train-dit` in-process with --set overrides (a config file is not needed).
int run_train_dit(const std::vector<std::string>& sets) {
  std::vector<std::string> args = {"train-dit", "--device", "cpu"};
  for (const std::string& s : sets) {
    args.push_back("--set");
    args.push_back(s);
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  return cmd_train_dit(static_cast<int>(args.size()), argv.data());
}

std::vector<std::string> tiny_sets(const std::string& psvae, const std::string& out_dir,
                                   const std::string& cond) {
  return {"init.from=" + psvae,    "run.out_dir=" + out_dir, "model.cond=" + cond,
          "model.dit.hidden=32",   "model.dit.depth=1",      "model.dit.heads=2",
          "model.text.dim=16",     "model.text.depth=1",     "model.text.heads=2",
          "model.text.max_len=12", "data.image_size=16",     "data.num_images=64",
          "data.workers=0",        "train.steps=4",          "train.batch_size=8",
          "train.lr=1e-3",         "train.log_every=1",      "train.ckpt_every=4",
          "train.sample_every=4",  "train.ema_decay=0.9",    "sample.steps=2"};
}

std::vector<double> metric(const std::string& run_dir, const std::string& key) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<double> v;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains(key) && j[key].is_number()) v.push_back(j[key].get<double>());
  }
  return v;
}

const Tensor* find(const safetensors::NamedTensors& t, const std::string& name) {
  for (const auto& [n, x] : t)
    if (n == name) return &x;
  return nullptr;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         psvae::test::bit_mismatches_host(a.to(Device::cpu()), b.to(Device::cpu())) == 0;
}

ino_t inode_of(const std::string& path) {
  struct stat st {};
  ::stat(path.c_str(), &st);
  return st.st_ino;
}

// (N,3,S,S) images of dataset entries `idx`.
Tensor images_of(const Dataset& ds, const std::vector<int64_t>& idx) {
  const int64_t s = ds.image_size(), n = static_cast<int64_t>(idx.size());
  Tensor out = Tensor::empty({n, 3, s, s});
  for (int64_t i = 0; i < n; ++i) {
    Sample x = ds.get(idx[static_cast<size_t>(i)]);
    std::memcpy(out.data<float>() + i * 3 * s * s, x.image.data<float>(),
                static_cast<size_t>(3 * s * s) * sizeof(float));
  }
  return out;
}

}  // namespace

TEST_CASE("train-dit: class and text runs train, and the checkpoint holds the contract") {
  TempDir tmp("dit_stage_cmd");
  const std::string ps = write_psvae_checkpoint(tmp / "psvae.safetensors");
  for (const std::string cond : {"class", "text"}) {
    CAPTURE(cond);
    const std::string out = tmp / ("run_" + cond);
    REQUIRE(run_train_dit(tiny_sets(ps, out, cond)) == 0);
    std::vector<double> mse = metric(out, "mse");
    REQUIRE(mse.size() == 4);
    for (double v : mse) CHECK(std::isfinite(v));
    // A fresh adaLN-Zero DiT outputs 0, so the first eps loss is E[eps^2] = 1 (64 latents of
    // 128 values: within 0.3).
    CHECK(mse.front() == doctest::Approx(1.0).epsilon(0.3));

    safetensors::Metadata meta;
    safetensors::NamedTensors t =
        safetensors::load(out + "/checkpoints/step_00000004.safetensors", &meta);
    CHECK(meta["psvae.task"] == "dit");
    const Tensor* pe = find(t, "model.dit.pos_embed");
    REQUIRE(pe != nullptr);
    CHECK(pe->shape() == Shape{1, 16, 32});  // 4x4 latent, patch 1, width 32
    CHECK(find(t, "ema.dit.final_layer.linear.weight") != nullptr);
    const Tensor* mean = find(t, "task.latent_mean");
    const Tensor* std = find(t, "task.latent_std");
    REQUIRE(mean != nullptr);
    REQUIRE(std != nullptr);
    CHECK(mean->numel() == kLatent);
    CHECK(std->data<float>()[kLatent - 1] == doctest::Approx(0.5 + 0.1 * (kLatent - 1)));
    CHECK(meta["task.psvae_step"] == "40");
    CHECK(meta["task.latent_shape"] == "(8, 4, 4)");
    Config saved(dit_stage_schema());
    saved.load_yaml_string(meta["psvae.config"], "psvae.config");
    CHECK(saved.get_string("init.from") == ps);
    if (cond == "class") {
      // 24 synthetic classes plus the null label; the saved config records the count.
      const Tensor* table = find(t, "model.dit.y_embedder.embedding_table.weight");
      REQUIRE(table != nullptr);
      CHECK(table->size(0) == 25);
      CHECK(saved.get_int("model.dit.num_classes") == 24);
      CHECK(meta.count("task.tokenizer") == 0);
    } else {
      CHECK(find(t, "model.dit.y_embedder.embedding_table.weight") == nullptr);
      bool has_text = false;
      for (const auto& [n, x] : t) has_text = has_text || n.rfind("model.text_encoder.", 0) == 0;
      CHECK(has_text);
      REQUIRE(meta.count("task.tokenizer") == 1);
      // The tokenizer was trained on the run's captions: they encode without [UNK] and decode
      // back.
      dit::WordTokenizer tok = dit::WordTokenizer::from_json(meta["task.tokenizer"]);
      const std::string caption = make_dataset(saved)->get(0).caption;
      std::vector<int64_t> ids = tok.encode_one(caption, 12);
      CHECK(ids.size() == dit::WordTokenizer::split_words(caption).size() + 1);  // [BOS] first
      for (int64_t id : ids) CHECK(id != dit::WordTokenizer::kUnk);
      CHECK(tok.decode(ids) == caption);
    }
    CHECK(fs::exists(out + "/samples/step_00000004.png"));
  }
}

TEST_CASE("train-dit: train.bf16 trains class, text, learn_sigma and min-SNR runs close to f32") {
  // Mixed precision on the CPU (each bf16 op widened to f32 and rounded back, as the CUDA
  // kernels round): the DiT's GEMMs and attention in bf16, the loss and the vb term in f32.
  TempDir tmp("dit_stage_bf16");
  const std::string ps = write_psvae_checkpoint(tmp / "psvae.safetensors");
  const std::vector<std::vector<std::string>> variants = {
      {"model.cond=class"},
      {"model.cond=text"},
      {"model.cond=class", "model.dit.learn_sigma=true"},
      {"model.cond=class", "train.min_snr_gamma=5"}};
  int k = 0;
  for (const auto& extra : variants) {
    CAPTURE(extra.back());
    std::vector<double> mse[2];
    for (int bf16 = 0; bf16 < 2; ++bf16) {
      const std::string out = tmp / fmt::format("run_{}_{}", k, bf16);
      std::vector<std::string> sets = tiny_sets(ps, out, "class");
      sets.insert(sets.end(), extra.begin(), extra.end());
      sets.push_back(bf16 ? "train.bf16=true" : "train.bf16=false");
      REQUIRE(run_train_dit(sets) == 0);
      mse[bf16] = metric(out, "mse");
      REQUIRE(mse[bf16].size() == 4);
      for (double v : mse[bf16]) CHECK(std::isfinite(v));
      CHECK(fs::exists(out + "/samples/step_00000004.png"));
      for (const auto& [n, x] : safetensors::load(out + "/checkpoints/step_00000004.safetensors"))
        if (is_floating(x.dtype())) CHECK_MESSAGE(x.dtype() == DType::F32, n);
    }
    // A fresh adaLN-Zero DiT outputs exactly 0 in either precision, so the first loss is the
    // same f32 sum; after three updates the two runs differ by bf16 rounding only.
    CHECK(mse[1][0] == mse[0][0]);
    CHECK(mse[1][3] != mse[0][3]);
    CHECK(std::abs(mse[1][3] - mse[0][3]) < 0.02 * mse[0][3]);
    ++k;
  }
}

TEST_CASE("train-dit: exact resume, 6 steps == 3 + SIGTERM + 3, bit for bit") {
  TempDir tmp("dit_stage_resume");
  const std::string ps = write_psvae_checkpoint(tmp / "psvae.safetensors");
  std::shared_ptr<const Dataset> data;
  auto train = [&](Config cfg, bool stop_at_3) {
    data = make_dataset(cfg);
    DiTTask task(cfg, data, Device::cpu());
    LoaderOptions lo;
    lo.global_batch = trainer_micro_batch(cfg);
    lo.seed = static_cast<uint64_t>(cfg.get_int("train.seed"));
    lo.workers = 0;
    Loader loader(data, lo);
    Trainer trainer(task, loader, cfg);
    if (stop_at_3)
      trainer.on_step = [](int64_t s) {
        if (s == 3) std::raise(SIGTERM);
      };
    return trainer.run();
  };
  auto setup = [&](const std::string& out) {
    // Text conditioning with caption dropout and learn_sigma's hybrid loss: every random draw of
    // the stage (dropout, time, noise) goes through the checkpointed stream.
    Config c = tiny_dit_config(ps, out, "text");
    c.set("train.steps", "6");
    c.set("train.ckpt_every", "6");
    c.set("train.warmup_steps", "2");
    c.set("model.dit.learn_sigma", "true");
    return c;
  };
  reset_stop_request();
  TrainResult full = train(setup(tmp / "a"), false);
  REQUIRE(full.steps_done == 6);
  TrainResult first = train(setup(tmp / "b"), true);
  reset_stop_request();
  REQUIRE(first.interrupted);
  REQUIRE(first.steps_done == 3);
  Config resumed = setup(tmp / "b");
  resumed.set("train.resume", "true");
  TrainResult second = train(resumed, false);
  REQUIRE(second.steps_done == 6);

  std::vector<double> joined = first.losses;
  joined.insert(joined.end(), second.losses.begin(), second.losses.end());
  REQUIRE(joined.size() == full.losses.size());
  for (size_t i = 0; i < joined.size(); ++i) CHECK(joined[i] == full.losses[i]);
  auto ta = safetensors::load(tmp / "a/checkpoints/step_00000006.safetensors");
  auto tb = safetensors::load(tmp / "b/checkpoints/step_00000006.safetensors");
  REQUIRE(ta.size() == tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    CHECK(ta[i].first == tb[i].first);
    CHECK_MESSAGE(same_bits(ta[i].second, tb[i].second), ta[i].first);
  }
  // The hybrid loss logged its variational-bound term.
  std::vector<double> vb = metric(tmp / "a", "vb");
  REQUIRE(vb.size() == 6);
  for (double v : vb) CHECK(std::isfinite(v));
}

TEST_CASE("train-dit: the latent cache is written, reused, refreshed when stale, checked") {
  TempDir tmp("dit_stage_cache");
  const std::string ps = write_psvae_checkpoint(tmp / "psvae.safetensors");
  const std::string cache = tmp / "cache/latents.safetensors";

  Config c1 = tiny_dit_config(ps, tmp / "r1");
  c1.set("data.latent_cache", cache);
  std::shared_ptr<const Dataset> data = make_dataset(c1);
  DiTTask t1(c1, data, Device::cpu());
  REQUIRE(fs::exists(cache));
  const ino_t written = inode_of(cache);

  // Its rows are encode_latents of the dataset's images (at another batch size: the encoding of
  // one image does not depend on its batch).
  safetensors::Metadata meta;
  safetensors::NamedTensors ct = safetensors::load(cache, &meta);
  const Tensor* lat = find(ct, "latents");
  const Tensor* idx = find(ct, "indices");
  REQUIRE(lat != nullptr);
  REQUIRE(idx != nullptr);
  CHECK(lat->shape() == Shape{64, kLatent, 4, 4});
  CHECK(idx->numel() == 64);
  CHECK(meta["latent_cache.dataset"] == data->describe());
  CHECK(meta["latent_cache.psvae_step"] == "40");
  std::vector<int64_t> pick = {idx->data<int64_t>()[5], idx->data<int64_t>()[63]};
  Tensor direct = encode_latents(t1.psvae(), t1.stats(), images_of(*data, pick));
  CHECK(psvae::test::compare(ops::narrow(*lat, 0, 5, 1), ops::narrow(direct, 0, 0, 1), 1e-6).ok);
  CHECK(psvae::test::compare(ops::narrow(*lat, 0, 63, 1), ops::narrow(direct, 0, 1, 1), 1e-6).ok);

  // The loss of a batch is the same from the cache as from encoding on the fly.
  Config c0 = tiny_dit_config(ps, tmp / "r0");
  DiTTask t0(c0, data, Device::cpu());
  Batch b;
  b.indices = {3, 17, 42, 60};
  b.images = images_of(*data, b.indices);
  b.labels = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3}, Shape{4});
  for (int64_t i : b.indices) b.captions.push_back(data->get(i).caption);
  auto loss_of = [&](DiTTask& t) {
    Generator g(5, 0);
    StepContext ctx;
    ctx.device = Device::cpu();
    ctx.rng = &g;
    return t.loss(b, ctx).loss.data().item();
  };
  CHECK(loss_of(t1) == doctest::Approx(loss_of(t0)).epsilon(1e-5));

  // A second run with the same data and PS-VAE reuses the file untouched.
  Config c2 = tiny_dit_config(ps, tmp / "r2");
  c2.set("data.latent_cache", cache);
  DiTTask t2(c2, data, Device::cpu());
  CHECK(inode_of(cache) == written);

  // The same path for other data is an error naming the field.
  Config c3 = tiny_dit_config(ps, tmp / "r3");
  c3.set("data.latent_cache", cache);
  c3.set("data.seed", "9");
  CHECK_THROWS_WITH_AS(
      DiTTask(c3, make_dataset(c3), Device::cpu()),
      doctest::Contains(("data.latent_cache = " + cache + ": it was made for dataset = ").c_str()),
      std::runtime_error);
  // ... and so is another PS-VAE checkpoint step.
  const std::string ps2 =
      write_psvae_checkpoint(tmp / "psvae.safetensors", true, "80");  // same path, new step
  Config c4 = tiny_dit_config(ps2, tmp / "r4");
  c4.set("data.latent_cache", cache);
  CHECK_THROWS_WITH_AS(DiTTask(c4, data, Device::cpu()), doctest::Contains("psvae_step = '40'"),
                       std::runtime_error);

  // "auto" re-encodes a stale cache in the run folder instead.
  const std::string out5 = tmp / "r5";
  fs::create_directories(out5);
  fs::copy_file(cache, out5 + "/latents.safetensors");
  Config c5 = tiny_dit_config(ps2, out5);
  c5.set("data.latent_cache", "auto");
  const ino_t stale = inode_of(out5 + "/latents.safetensors");
  DiTTask t5(c5, data, Device::cpu());
  CHECK(inode_of(out5 + "/latents.safetensors") != stale);
  safetensors::Metadata m5;
  safetensors::load(out5 + "/latents.safetensors", &m5);
  CHECK(m5["latent_cache.psvae_step"] == "80");

  // Flipped images have no cached latent.
  Config c6 = tiny_dit_config(ps2, tmp / "r6");
  c6.set("data.latent_cache", "auto");
  c6.set("data.hflip", "true");
  CHECK_THROWS_WITH_AS(DiTTask(c6, data, Device::cpu()), doctest::Contains("data.hflip"),
                       std::runtime_error);
}

TEST_CASE("latents: encode -> decode is the PS-VAE's evaluation reconstruction") {
  TempDir tmp("dit_stage_latents");
  const std::string ps = write_psvae_checkpoint(tmp / "psvae.safetensors");
  Config c = tiny_dit_config(ps, tmp / "run", "class");
  std::shared_ptr<const Dataset> data = make_dataset(c);
  DiTTask task(c, data, Device::cpu());
  Tensor images = images_of(*data, {0, 1, 2, 3, 4});
  Tensor lat = encode_latents(task.psvae(), task.stats(), images);
  CHECK(lat.shape() == Shape{5, kLatent, 4, 4});
  Tensor rec = decode_latents(task.psvae(), task.stats(), lat);
  ag::NoGradGuard no_grad;
  Tensor ref = task.psvae().forward(ag::Var(images), nullptr).pixels.data();
  psvae::test::Comparison cmp = psvae::test::compare(rec, ref, 1e-5);
  CHECK_MESSAGE(cmp.ok, cmp.why);
  // Normalised: channel c of the latent is (mu_c - mean_c) / std_c.
  Tensor mu = task.psvae().forward(ag::Var(images), nullptr).mu.data();  // (N, h, w, L)
  const float m3 = task.stats().mean.data<float>()[3], s3 = task.stats().std.data<float>()[3];
  const float want = (mu.data<float>()[3] - m3) / s3;  // sample 0, cell (0, 0), channel 3
  CHECK(lat.data<float>()[3 * 16] == doctest::Approx(want).epsilon(1e-5));
}

TEST_CASE("train-dit: a stage-2 checkpoint without latent statistics is a one-line error") {
  TempDir tmp("dit_stage_nostats");
  const std::string ps = write_psvae_checkpoint(tmp / "psvae.safetensors", false);
  Config c = tiny_dit_config(ps, tmp / "run");
  std::string what;
  try {
    DiTTask task(c, make_dataset(c), Device::cpu());
  } catch (const std::runtime_error& e) {
    what = e.what();
  }
  CHECK(what.find(ps + ": has no latent statistics") == 0);
  CHECK(what.find('\n') == std::string::npos);
  CHECK(run_train_dit(tiny_sets(ps, tmp / "cmd", "text")) == 1);
  // And a missing init.from names the key.
  Config none = tiny_dit_config("", tmp / "run2");
  CHECK_THROWS_WITH_AS(DiTTask(none, make_dataset(none), Device::cpu()),
                       doctest::Contains("init.from is not set"), std::runtime_error);
}

TEST_CASE("learn_sigma: the variational-bound term of the hybrid loss") {
  const HybridTables h = HybridTables::make(dit::BetaSchedule::linear, 1000);
  // Upstream's tables at t = 1: beta~_1 = beta_1 (1 - abar_0) / (1 - abar_1), clipped entry 0.
  const double b0 = 1e-4, b1 = 1e-4 + (0.02 - 1e-4) / 999;
  const double pv1 = b1 * b0 / (1 - (1 - b0) * (1 - b1));
  CHECK(h.log_var_clipped[1] == doctest::Approx(std::log(pv1)).epsilon(1e-12));
  CHECK(h.log_var_clipped[0] == h.log_var_clipped[1]);

  Generator g(3, 0);
  const Shape s{3, 2, 2, 2};
  Tensor x0 = Tensor::empty(s), eps = Tensor::empty(s);
  g.normal_(x0);
  g.normal_(eps);
  const std::vector<int64_t> t = {5, 300, 999};
  dit::TrainPair p = dit::diffusion_pair(dit::Objective::eps, h.alphas_cumprod, x0, eps, t);

  // The exact eps and v = -1 (the log variance at the posterior's): KL = 0.
  ag::Var at_min(Tensor::full(s, -1.0), true);
  ag::Var vb = hybrid_vb_term(h, dit::Objective::eps, x0, p.x_t, t, eps, at_min);
  CHECK(std::abs(vb.data().item()) < 1e-5);

  // v = 0: KL per element = 0.5 (d - 1 + exp(-d)) with d = lv - lv1 = 0.5 log(beta_t / beta~_t),
  // in bits; the gradient pushes v down towards the posterior variance.
  ag::Var mid(Tensor::zeros(s), true);
  vb = hybrid_vb_term(h, dit::Objective::eps, x0, p.x_t, t, eps, mid);
  double want = 0;
  for (int64_t k : t) {
    const double d = 0.5 * (std::log(h.betas[static_cast<size_t>(k)]) -
                            h.log_var_clipped[static_cast<size_t>(k)]);
    want += 0.5 * (d - 1 + std::exp(-d)) / std::log(2.0) / 3;
  }
  CHECK(vb.data().item() == doctest::Approx(want).epsilon(1e-4));
  vb.backward();
  for (double gv : psvae::test::as_doubles(mid.grad())) CHECK(gv > 0);

  // A wrong mean costs more, and t = 0 takes the decoder's likelihood (finite, positive bits).
  Tensor wrong = ops::add_scalar(eps, 0.5);
  CHECK(hybrid_vb_term(h, dit::Objective::eps, x0, p.x_t, t, wrong, at_min).data().item() > 1e-3);
  const std::vector<int64_t> t0 = {0, 0, 0};
  dit::TrainPair p0 = dit::diffusion_pair(dit::Objective::eps, h.alphas_cumprod, x0, eps, t0);
  double nll = hybrid_vb_term(h, dit::Objective::eps, x0, p0.x_t, t0, eps, at_min).data().item();
  CHECK(std::isfinite(nll));
  CHECK(nll > 0);
}

TEST_CASE("learn_sigma: the vb term and its gradient match upstream's (golden)") {
  // tests/reference/dit_hybrid_golden.py: guided-diffusion's _vb_terms_bpd with the mean stopped,
  // in float64, for t = 0 (decoder likelihood, with entries beyond +-0.999), 1, 500 and 999.
  auto g = psvae::test::as_map(safetensors::load(psvae::test::golden("dit_hybrid_vb.safetensors")));
  const HybridTables h = HybridTables::make(dit::BetaSchedule::linear, 1000);
  std::vector<int64_t> t;
  for (int64_t i = 0; i < g.at("t").numel(); ++i) t.push_back(g.at("t").data<int64_t>()[i]);
  ag::Var v(g.at("var_values").clone(), true);
  ag::Var vb =
      hybrid_vb_term(h, dit::Objective::eps, g.at("x0"), g.at("x_t"), t, g.at("eps_pred"), v);
  CHECK(vb.data().item() == doctest::Approx(g.at("vb").to(Device::cpu()).item()).epsilon(1e-4));
  vb.backward();
  psvae::test::Comparison cmp = psvae::test::compare(v.grad(), g.at("grad"), 1e-4);
  CHECK_MESSAGE(cmp.ok, cmp.why);
}

TEST_CASE("configs/demo-dit.yaml and paper-dit.yaml load, and their models build") {
  const fs::path root = test::repo_root();
  {
    Config c(dit_stage_schema());
    REQUIRE_NOTHROW(c.load_yaml_file((root / "configs/demo-dit.yaml").string()));
    CHECK(c.get_string("model.cond") == "text");
    dit::ConditionalDiTConfig mc = conditional_dit_config(c, Shape{48, 4, 4});
    CHECK(mc.dit.patch == 1);
    CHECK(mc.kind == dit::CondKind::text);
  }
  {
    Config c(dit_stage_schema());
    REQUIRE_NOTHROW(c.load_yaml_file((root / "configs/paper-dit.yaml").string()));
    c.set("model.dit.num_classes", "1000");
    dit::ConditionalDiTConfig mc = conditional_dit_config(c, Shape{96, 16, 16});
    CHECK(mc.dit.hidden == 1152);
    CHECK(mc.dit.depth == 28);
    CHECK(mc.dit.in_channels == 96);
    CHECK(mc.dit.input_size == 16);
    CHECK(mc.dit.learn_sigma);
    dit::DiffusionSetup d = diffusion_setup(c, Shape{96, 16, 16});
    CHECK(d.objective == dit::Objective::eps);
    CHECK(d.schedule == dit::BetaSchedule::linear);
  }
}

TEST_CASE("min_snr_gamma: the weights, and the loss it trains on") {
  const auto abar = dit::cumprod_alphas(dit::make_betas(dit::BetaSchedule::linear, 1000));
  const std::vector<int64_t> t = {0, 100, 500, 999};
  const double gamma = 5;
  const std::vector<float> we = min_snr_weights(dit::Objective::eps, abar, t, gamma);
  const std::vector<float> wv = min_snr_weights(dit::Objective::v, abar, t, gamma);
  REQUIRE(we.size() == 4);
  for (size_t i = 0; i < t.size(); ++i) {
    const double ab = abar[static_cast<size_t>(t[i])], snr = ab / (1 - ab);
    CHECK(we[i] == doctest::Approx(std::min(snr, gamma) / snr).epsilon(1e-6));
    CHECK(wv[i] == doctest::Approx(std::min(snr, gamma) / (snr + 1)).epsilon(1e-6));
  }
  // t = 0: SNR ~ 1e4, eps weight gamma / SNR ~ 5e-4; t = 999: SNR ~ 4e-5 < gamma, eps weight 1.
  CHECK(we[0] < 1e-3);
  CHECK(we[3] == doctest::Approx(1.0));
  CHECK(wv[3] == doctest::Approx(0.0).epsilon(1e-4));
  CHECK_THROWS_WITH_AS(min_snr_weights(dit::Objective::flow, abar, t, gamma),
                       doctest::Contains("flow"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(min_snr_weights(dit::Objective::eps, abar, {1000}, gamma),
                       doctest::Contains("step 1000"), std::invalid_argument);

  // In training: the logged "mse" term is the unweighted error and the loss the weighted one,
  // below it for gamma 1 (weight 1 where SNR <= 1, t > ~300, and below 1 elsewhere, so with this
  // seed's draws strictly below); gamma 1e12 makes every eps weight 1.
  TempDir tmp("dit_min_snr");
  const std::string ps = write_psvae_checkpoint(tmp / "psvae.safetensors");
  for (const std::string g : {"1", "1e12"}) {
    const std::string out = tmp / ("run_" + g);
    std::vector<std::string> sets = tiny_sets(ps, out, "class");
    sets.push_back("train.min_snr_gamma=" + g);
    REQUIRE(run_train_dit(sets) == 0);
    std::ifstream in(out + "/metrics.jsonl");
    int rows = 0;
    for (std::string line; std::getline(in, line);) {
      nlohmann::json j = nlohmann::json::parse(line);
      if (!j.contains("loss") || !j.contains("mse")) continue;
      ++rows;
      const double loss = j["loss"], mse = j["mse"];
      if (g == "1")
        CHECK((loss < mse && loss > 0.3 * mse));
      else
        CHECK(loss == doctest::Approx(mse).epsilon(1e-5));
    }
    CHECK(rows == 4);
  }
  // Flow and learn_sigma refuse it, naming the key.
  for (const std::string bad : {"diffusion.objective=flow", "model.dit.learn_sigma=true"}) {
    Config c = tiny_dit_config(ps, tmp / "bad");
    c.set("train.min_snr_gamma", "5");
    c.set(bad.substr(0, bad.find('=')), bad.substr(bad.find('=') + 1));
    CHECK_THROWS_WITH_AS(DiTTask(c, make_dataset(c), Device::cpu()),
                         doctest::Contains("train.min_snr_gamma"), std::runtime_error);
  }
}
