// The trainer on a tiny MLP (tests/train/tiny_task.h): loss falls, checkpoints round-trip, exact
// resume (bit-identical losses, weights, EMA and optimiser state), gradient accumulation, corrupt
// checkpoints, SIGTERM, the non-finite guard, and the files of a run folder.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "nn/optim.h"
#include "train/checkpoint.h"
#include "train/signals.h"
#include "train/tiny_task.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using namespace psvae;
using namespace psvae::train;
using psvae::train::test::tiny_config;
using psvae::train::test::tiny_dataset;
using psvae::train::test::tiny_loader;
using psvae::train::test::TinyTask;

using psvae::test::TempDir;

namespace {

// Redirects a stdio stream's file descriptor into a temp file, to check what a call printed.
class Capture {
 public:
  Capture(FILE* stream, const std::string& file) : stream_(stream), file_(file) {
    std::fflush(stream_);
    fd_ = ::fileno(stream_);
    saved_ = ::dup(fd_);
    int f = ::open(file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(f, fd_);
    ::close(f);
  }
  std::string finish() {
    if (saved_ >= 0) {
      std::fflush(stream_);
      ::dup2(saved_, fd_);
      ::close(saved_);
      saved_ = -1;
    }
    std::ifstream in(file_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  ~Capture() { finish(); }

 private:
  FILE* stream_;
  std::string file_;
  int fd_ = -1, saved_ = -1;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One training run: a task built from `init_seed`, a new loader over `ds`.
struct Run {
  TrainResult result;
  std::unique_ptr<TinyTask> task;
};
Run train_once(const Config& cfg, uint64_t init_seed, std::shared_ptr<const Dataset> ds,
               std::function<void(int64_t)> hook = {}, std::function<void(TinyTask&)> setup = {}) {
  Run r;
  r.task = std::make_unique<TinyTask>(init_seed);
  if (setup) setup(*r.task);
  auto loader = tiny_loader(std::move(ds), cfg);
  Trainer trainer(*r.task, *loader, cfg);
  trainer.on_step = std::move(hook);
  r.result = trainer.run();
  return r;
}

// Bitwise equality of two tensors (dtype, shape and bytes).
bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
  return std::memcmp(ha.raw_data(), hb.raw_data(), ha.nbytes()) == 0;
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
}

double mean_range(const std::vector<double>& v, size_t b, size_t e) {
  double s = 0;
  for (size_t i = b; i < e; ++i) s += v[i];
  return s / static_cast<double>(e - b);
}

// Overwrites `n` bytes at `offset` of a file (simulating a torn or damaged checkpoint).
void clobber(const std::string& path, size_t offset, size_t n) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(offset));
  std::string junk(n, '\x7f');
  f.write(junk.data(), static_cast<std::streamsize>(n));
}

}  // namespace

TEST_CASE("trainer keys: defaults, documentation and validation") {
  ConfigSchema schema;
  add_trainer_keys(schema);
  for (const char* k :
       {"train.steps",     "train.batch_size",    "train.grad_accum",   "train.lr",
        "train.min_lr",    "train.warmup_steps",  "train.weight_decay", "train.beta1",
        "train.beta2",     "train.adam_eps",      "train.grad_clip",    "train.ema_decay",
        "train.bf16",      "train.max_nonfinite", "train.log_every",    "train.ckpt_every",
        "train.keep_last", "train.sample_every",  "train.resume",       "train.seed",
        "run.out_dir"}) {
    const ConfigKey* key = schema.find(k);
    REQUIRE_MESSAGE(key != nullptr, k);
    CHECK_MESSAGE(!key->doc.empty(), k);
  }
  Config c(schema);
  CHECK(c.get_int("train.steps") == 1000);
  CHECK(c.get_int("train.batch_size") == 32);
  CHECK(c.get_float("train.lr") == doctest::Approx(1e-4));
  CHECK(c.get_float("train.ema_decay") == doctest::Approx(0.9999));
  CHECK(c.get_string("run.out_dir") == "runs/run");
  CHECK(trainer_micro_batch(c) == 32);
  c.set("train.grad_accum", "4");
  CHECK(trainer_micro_batch(c) == 8);
  c.set("train.grad_accum", "3");
  CHECK_THROWS_WITH_AS(trainer_micro_batch(c),
                       doctest::Contains("train.batch_size = 32 is not a multiple of "
                                         "train.grad_accum = 3"),
                       std::runtime_error);
  c.set("train.grad_accum", "1");
  CHECK_THROWS(c.set("train.steps", "0"));  // >= 1
  CHECK_NOTHROW(check_trainer_config(c));
  // Open bounds (lr > 0, beta < 1) are part of the schema, so a bad value fails when it is set,
  // naming where it came from.
  CHECK_THROWS_WITH_AS(c.set("train.beta1", "1"),
                       "code: key 'train.beta1' expects a number in [0, 1), got '1'",
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(c.set("train.beta2", "-0.5"),
                       "code: key 'train.beta2' expects a number in [0, 1), got '-0.5'",
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(c.set_override("train.lr=0"),
                       "--set train.lr=0: key 'train.lr' expects a number > 0, got '0'",
                       std::runtime_error);
  CHECK(c.get_float("train.lr") == doctest::Approx(1e-4));  // a rejected value changes nothing

  // A task that has not been checked under bf16 autocast is refused up front, naming the key.
  TempDir dir("trainer_bf16");
  Config cfg = tiny_config(dir.path().string());
  cfg.set("train.bf16", "true");
  TinyTask task(1);
  auto loader = tiny_loader(tiny_dataset(), cfg);
  CHECK_THROWS_WITH_AS(Trainer(task, *loader, cfg),
                       "train.bf16 = true: task 'tiny' has no bf16 mixed-precision path; set "
                       "train.bf16=false",
                       std::runtime_error);
}

TEST_CASE("trainer: train.bf16 trains in mixed precision with f32 weights, and resumes exactly") {
  // On the CPU each bf16 op is widened to f32 and its output rounded to bf16 (kernels::run), the
  // contract of the CUDA bf16 kernels, so this checks the whole mixed-precision step: the
  // autocast casts, f32 gradients into f32 parameters, AdamW and the EMA in f32.
  TempDir d32("trainer_f32"), d16("trainer_bf16_run"), d16b("trainer_bf16_resume");
  auto ds = tiny_dataset(64);
  auto setup = [](Config& c, bool bf16) {
    c.set("train.steps", "40");
    c.set("train.lr", "0.02");
    c.set("train.ckpt_every", "20");
    c.set("train.bf16", bf16 ? "true" : "false");
  };
  auto allow = [](TinyTask& t) { t.bf16_ok = true; };
  Config c32 = tiny_config(d32.path().string()), c16 = tiny_config(d16.path().string());
  setup(c32, false);
  setup(c16, true);
  Run f32 = train_once(c32, 1, ds);
  Run b16 = train_once(c16, 1, ds, {}, allow);
  REQUIRE(b16.result.losses.size() == 40);
  // The first loss differs from f32 by the bf16 rounding of two small GEMMs (a few 1e-3), and
  // does differ: the GEMMs really ran in bf16.
  const double l32 = f32.result.losses[0], l16 = b16.result.losses[0];
  MESSAGE("first loss f32 " << l32 << ", bf16 " << l16);
  CHECK(std::abs(l16 - l32) < 1e-2 * l32);
  CHECK(l16 != l32);
  // It trains as f32 does: the mean loss of the last 10 steps within 20% of f32's and below
  // half the first 10 steps'.
  const double first = mean_range(b16.result.losses, 0, 10),
               last = mean_range(b16.result.losses, 30, 40);
  const double last32 = mean_range(f32.result.losses, 30, 40);
  MESSAGE("bf16 mean loss, steps 1-10: " << first << ", 31-40: " << last << " (f32: " << last32
                                         << ")");
  CHECK(last < 0.5 * first);
  CHECK(std::abs(last - last32) < 0.2 * last32);
  // The weights, EMA and AdamW state stay f32 master copies.
  for (const auto& [n, t] : safetensors::load(checkpoint_path(d16 / "checkpoints", 40)))
    if (is_floating(t.dtype())) CHECK_MESSAGE(t.dtype() == DType::F32, n);

  // 20 + 20 steps == 40, bit for bit: bf16 rounding is deterministic too.
  Config c16b = tiny_config(d16b.path().string());
  setup(c16b, true);
  reset_stop_request();
  Run part = train_once(
      c16b, 1, ds,
      [](int64_t s) {
        if (s == 20) std::raise(SIGTERM);
      },
      allow);
  reset_stop_request();
  REQUIRE(part.result.steps_done == 20);
  c16b.set("train.resume", "true");
  Run rest = train_once(c16b, 777, ds, {}, allow);
  std::vector<double> joined = part.result.losses;
  joined.insert(joined.end(), rest.result.losses.begin(), rest.result.losses.end());
  CHECK(same_bits(joined, b16.result.losses));
  auto wa = b16.task->model().state_dict(), wb = rest.task->model().state_dict();
  for (size_t i = 0; i < wa.size(); ++i)
    CHECK_MESSAGE(same_bits(wa[i].second, wb[i].second), wa[i].first);
}

TEST_CASE("trainer: the loss falls on the tiny task") {
  TempDir dir("trainer_falls");
  Config cfg = tiny_config(dir.path().string());
  cfg.set("train.steps", "100");
  cfg.set("train.lr", "0.02");
  cfg.set("train.ckpt_every", "100");
  cfg.set("train.log_every", "50");
  // 64 images (4 batches an epoch): the tiny MLP can fit them in 100 steps, from about 3.0 to
  // about 0.65 on this seed; a trainer that drops updates, mis-schedules the lr or mangles
  // gradients stays far above half the initial loss.
  Run r = train_once(cfg, 1, tiny_dataset(64));
  REQUIRE(r.result.losses.size() == 100);
  double first = mean_range(r.result.losses, 0, 10), last = mean_range(r.result.losses, 90, 100);
  MESSAGE("mean loss of steps 1-10: " << first << ", of steps 91-100: " << last);
  CHECK(first > 2.5);  // about ln 24 = 3.18 at initialisation
  CHECK(last < 0.5 * first);
}

TEST_CASE("trainer: checkpoint contents, pruning, best, metrics, config, samples, report") {
  TempDir dir("trainer_ckpt");
  Config cfg = tiny_config(dir.path().string());
  cfg.set("train.steps", "12");
  cfg.set("train.ckpt_every", "5");
  cfg.set("train.keep_last", "2");
  cfg.set("train.sample_every", "6");
  cfg.set("train.log_every", "5");
  Run r = train_once(cfg, 1, tiny_dataset());
  const std::string ckdir = dir / "checkpoints";

  CHECK(r.result.steps_done == 12);
  CHECK_FALSE(r.result.interrupted);
  CHECK(r.result.last_checkpoint == checkpoint_path(ckdir, 12));
  CHECK(checkpoint_path(ckdir, 12) == ckdir + "/step_00000012.safetensors");
  // The final checkpoint exists although 12 % 5 != 0; step 5 was pruned (keep_last = 2).
  std::vector<std::string> expect = {checkpoint_path(ckdir, 12), checkpoint_path(ckdir, 10)};
  CHECK(list_checkpoints(ckdir) == expect);
  CHECK(fs::exists(ckdir + "/best.safetensors"));

  safetensors::Metadata meta;
  safetensors::NamedTensors all = safetensors::load(checkpoint_path(ckdir, 12), &meta);
  std::map<std::string, Tensor> byname(all.begin(), all.end());
  for (const char* n :
       {"model.fc1.weight", "model.fc1.bias", "model.fc2.weight", "ema.fc1.weight", "ema.fc2.bias",
        "optim.fc1.weight.m", "optim.fc2.bias.v", "optim.step", "task.images_seen"})
    CHECK_MESSAGE(byname.count(n) == 1, n);
  CHECK(byname["optim.step"].item() == 12);
  CHECK(byname["task.images_seen"].item() == 12 * 16);
  for (const char* k : {"psvae.step", "psvae.rng_seed", "psvae.rng_offset", "psvae.loader_epoch",
                        "psvae.loader_batch", "psvae.best_loss", "psvae.nonfinite_run",
                        "psvae.task", "psvae.config", "psvae.format"})
    CHECK_MESSAGE(meta.count(k) == 1, k);
  CHECK(meta["psvae.step"] == "12");
  CHECK(meta["psvae.format"] == "1");
  CHECK(meta["psvae.task"] == "tiny");
  // 12 steps of 16 images from 8-batch epochs: the next batch is batch 4 of epoch 1.
  CHECK(meta["psvae.loader_epoch"] == "1");
  CHECK(meta["psvae.loader_batch"] == "4");
  CHECK(meta["psvae.config"].find("out_dir") != std::string::npos);
  CHECK(std::isfinite(meta_double(meta, "psvae.best_loss", "x")));

  // The weights load into a model built from another seed and match bit for bit.
  TinyTask fresh(12345);
  CHECK_FALSE(same_bits(fresh.mlp().fc1->weight().data(), r.task->mlp().fc1->weight().data()));
  safetensors::NamedTensors model_sd;
  for (auto& [n, t] : all)
    if (n.rfind("model.", 0) == 0) model_sd.emplace_back(n.substr(6), t);
  fresh.model().load_state_dict(model_sd);
  auto a = fresh.model().state_dict(), b = r.task->model().state_dict();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i)
    CHECK_MESSAGE(same_bits(a[i].second, b[i].second), a[i].first);

  // metrics.jsonl: one parseable line per logged step (5, 10 and the last, 12).
  std::ifstream mf(dir / "metrics.jsonl");
  std::vector<int64_t> logged;
  for (std::string line; std::getline(mf, line);) {
    auto j = nlohmann::json::parse(line);  // throws (fails the test) on a malformed line
    for (const char* k :
         {"step", "loss", "ce", "lr", "grad_norm", "steps_per_s", "images_per_s", "elapsed_s"})
      CHECK_MESSAGE(j.contains(k), k);
    CHECK(j["loss"].get<double>() > 0);
    logged.push_back(j["step"].get<int64_t>());
  }
  CHECK(logged == std::vector<int64_t>{5, 10, 12});

  CHECK(read_text(dir / "config.yaml").find("steps: 12") != std::string::npos);
  CHECK(fs::exists(dir / "report.html"));
  CHECK(fs::exists(dir / "samples/step_00000006.png"));
  CHECK(fs::exists(dir / "samples/step_00000012.png"));

  // A fresh start must not mix into (and prune) an earlier run's checkpoints.
  CHECK_THROWS_WITH_AS(train_once(cfg, 1, tiny_dataset()),
                       doctest::Contains("already holds checkpoints"), std::runtime_error);
}

TEST_CASE("trainer: exact resume, 20 steps vs 10 + 10, bit for bit") {
  TempDir dir_a("trainer_resume_a"), dir_b("trainer_resume_b");
  auto ds = tiny_dataset();
  auto setup = [](Config& c) {
    c.set("train.steps", "20");
    c.set("train.grad_accum", "2");  // 2 loader batches of 8 per step
    c.set("train.warmup_steps", "3");
    c.set("train.min_lr", "0.001");
    c.set("train.weight_decay", "0.01");
    c.set("train.ckpt_every", "10");
  };
  Config ca = tiny_config(dir_a.path().string()), cb = tiny_config(dir_b.path().string());
  setup(ca);
  setup(cb);

  Run full = train_once(ca, 1, ds);
  REQUIRE(full.result.losses.size() == 20);

  reset_stop_request();
  Run first = train_once(cb, 1, ds, [](int64_t s) {
    if (s == 10) std::raise(SIGTERM);
  });
  reset_stop_request();
  CHECK(first.result.interrupted);
  CHECK(first.result.steps_done == 10);

  // A new task whose model starts from another seed, a new loader, a new trainer.
  cb.set("train.resume", "true");
  Capture out(stdout, dir_b / "stdout.txt");
  Run second = train_once(cb, 777, ds);
  std::string printed = out.finish();
  CHECK(printed.find("resumed from " + checkpoint_path(dir_b / "checkpoints", 10) +
                     " at step 10") != std::string::npos);
  CHECK(second.result.steps_done == 20);

  std::vector<double> joined = first.result.losses;
  joined.insert(joined.end(), second.result.losses.begin(), second.result.losses.end());
  CHECK(same_bits(joined, full.result.losses));

  auto wa = full.task->model().state_dict(), wb = second.task->model().state_dict();
  for (size_t i = 0; i < wa.size(); ++i)
    CHECK_MESSAGE(same_bits(wa[i].second, wb[i].second), wa[i].first);
  CHECK(second.task->images_seen() == full.task->images_seen());

  // Final checkpoints: every tensor (model, EMA, optimiser m/v/step, task) and the RNG / loader
  // positions agree.
  safetensors::Metadata ma, mb;
  auto ta = safetensors::load(checkpoint_path(dir_a / "checkpoints", 20), &ma);
  auto tb = safetensors::load(checkpoint_path(dir_b / "checkpoints", 20), &mb);
  REQUIRE(ta.size() == tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    CHECK(ta[i].first == tb[i].first);
    CHECK_MESSAGE(same_bits(ta[i].second, tb[i].second), ta[i].first);
  }
  for (const char* k : {"psvae.rng_seed", "psvae.rng_offset", "psvae.loader_epoch",
                        "psvae.loader_batch", "psvae.nonfinite_run"})
    CHECK_MESSAGE(ma[k] == mb[k], k);

  // metrics.jsonl of the resumed run has the same logged steps as the uninterrupted one.
  auto steps_logged = [](const std::string& path) {
    std::vector<int64_t> s;
    std::ifstream f(path);
    for (std::string line; std::getline(f, line);)
      s.push_back(nlohmann::json::parse(line)["step"].get<int64_t>());
    return s;
  };
  CHECK(steps_logged(dir_a / "metrics.jsonl") == steps_logged(dir_b / "metrics.jsonl"));
}

TEST_CASE("trainer: gradient accumulation 2 x 8 matches 1 x 16") {
  TempDir d1("trainer_accum1"), d2("trainer_accum2");
  auto ds = tiny_dataset();
  Config c1 = tiny_config(d1.path().string()), c2 = tiny_config(d2.path().string());
  for (Config* c : {&c1, &c2}) {
    c->set("train.steps", "6");
    c->set("train.ema_decay", "0");
  }
  c2.set("train.grad_accum", "2");
  Run r1 = train_once(c1, 1, ds), r2 = train_once(c2, 1, ds);
  // Same images and the same noise (two Philox fills of 8 x 192 values are one fill of 16 x 192),
  // so only float summation order differs: the mean over 16 vs the mean of two means over 8.
  REQUIRE(r1.result.losses.size() == r2.result.losses.size());
  for (size_t i = 0; i < r1.result.losses.size(); ++i)
    CHECK(r2.result.losses[i] == doctest::Approx(r1.result.losses[i]).epsilon(1e-5));
  auto w1 = r1.task->model().state_dict(), w2 = r2.task->model().state_dict();
  for (size_t i = 0; i < w1.size(); ++i) {
    auto cmp = psvae::test::compare(w2[i].second, w1[i].second, 1e-4);
    CHECK_MESSAGE(cmp.ok, w1[i].first << ": " << cmp.why);
  }
}

TEST_CASE("trainer: a corrupt newest checkpoint is reported and the previous one used") {
  TempDir dir("trainer_corrupt");
  auto ds = tiny_dataset();
  Config cfg = tiny_config(dir.path().string());
  cfg.set("train.ckpt_every", "5");
  const std::string ckdir = dir / "checkpoints";
  reset_stop_request();
  Run first = train_once(cfg, 1, ds, [](int64_t s) {
    if (s == 15) std::raise(SIGTERM);
  });
  reset_stop_request();
  REQUIRE(first.result.interrupted);
  REQUIRE(list_checkpoints(ckdir).front() == checkpoint_path(ckdir, 15));

  // Damage the header of the newest file (its JSON starts at byte 8).
  const std::string newest = checkpoint_path(ckdir, 15);
  clobber(newest, 8, 16);
  cfg.set("train.resume", "true");
  Capture err(stderr, dir / "stderr.txt");
  Run second = train_once(cfg, 5, ds);
  std::string warned = err.finish();
  CHECK(warned.find("warning: checkpoint " + newest + " is unreadable (") != std::string::npos);
  CHECK(warned.find("trying the previous one") != std::string::npos);
  // Resumed at step 10: 10 more steps, and the first five repeat the original steps 11-15.
  REQUIRE(second.result.losses.size() == 10);
  CHECK(second.result.steps_done == 20);
  CHECK(
      same_bits(std::vector<double>(second.result.losses.begin(), second.result.losses.begin() + 5),
                std::vector<double>(first.result.losses.begin() + 10, first.result.losses.end())));

  // Truncation, a file without our metadata, and nothing valid at all.
  std::vector<std::string> have = list_checkpoints(ckdir);  // 20, 15, 10
  REQUIRE(have.size() == 3);
  fs::resize_file(have[0], fs::file_size(have[0]) - 100);
  safetensors::save(checkpoint_path(ckdir, 30), {{"w", Tensor::zeros({2})}});
  safetensors::NamedTensors t;
  safetensors::Metadata m;
  Capture err2(stderr, dir / "stderr2.txt");
  std::string used = open_newest_valid(ckdir, &t, &m);
  warned = err2.finish();
  CHECK(used == have[1]);
  CHECK(m["psvae.step"] == "15");
  CHECK(warned.find(checkpoint_path(ckdir, 30)) != std::string::npos);
  CHECK(warned.find("lacks 'psvae.format'") != std::string::npos);
  CHECK(warned.find(have[0]) != std::string::npos);

  clobber(have[1], 0, 8);  // an absurd header length
  clobber(have[2], 8, 4);
  Capture err3(stderr, dir / "stderr3.txt");
  try {
    open_newest_valid(ckdir, &t, &m);
    FAIL("expected no valid checkpoint");
  } catch (const std::runtime_error& e) {
    std::string what = e.what();
    CHECK(what.find("no valid checkpoint in " + ckdir) == 0);
    for (const std::string& p : have) CHECK(what.find(p) != std::string::npos);
  }
  err3.finish();
}

TEST_CASE("trainer: SIGTERM finishes the step and leaves a valid checkpoint that resumes") {
  TempDir dir("trainer_sigterm");
  auto ds = tiny_dataset();
  Config cfg = tiny_config(dir.path().string());
  const std::string ckdir = dir / "checkpoints";
  struct sigaction before, after;
  sigaction(SIGTERM, nullptr, &before);
  reset_stop_request();
  Run first = train_once(cfg, 1, ds, [](int64_t s) {
    if (s == 7) std::raise(SIGTERM);
  });
  CHECK(stop_requested());
  reset_stop_request();
  CHECK(first.result.interrupted);
  CHECK(first.result.steps_done == 7);
  CHECK(first.result.losses.size() == 7);
  CHECK(first.result.last_checkpoint == checkpoint_path(ckdir, 7));
  safetensors::Metadata m;
  CHECK(open_newest_valid(ckdir, nullptr, &m) == checkpoint_path(ckdir, 7));
  CHECK(m["psvae.step"] == "7");

  cfg.set("train.resume", "true");
  Run second = train_once(cfg, 2, ds);
  CHECK_FALSE(second.result.interrupted);
  CHECK(second.result.steps_done == 20);
  CHECK(second.result.losses.size() == 13);
  // run() put back the handler it found (doctest's, here).
  sigaction(SIGTERM, nullptr, &after);
  bool same_handler = after.sa_handler == before.sa_handler;
  CHECK(same_handler);
}

TEST_CASE("trainer: resume with no checkpoint starts fresh") {
  TempDir dir("trainer_fresh");
  Config cfg = tiny_config(dir.path().string());
  cfg.set("train.steps", "3");
  cfg.set("train.resume", "true");
  Capture out(stdout, dir / "stdout.txt");
  Run r = train_once(cfg, 1, tiny_dataset());
  std::string printed = out.finish();
  CHECK(printed.find("no checkpoint in") != std::string::npos);
  CHECK(r.result.steps_done == 3);
  CHECK(r.result.losses.size() == 3);
}

TEST_CASE("trainer: non-finite losses are skipped and counted, then stop the run") {
  TempDir dir("trainer_nan");
  auto ds = tiny_dataset();
  Config cfg = tiny_config(dir.path().string());
  cfg.set("train.steps", "10");
  Run r = train_once(cfg, 1, ds, {}, [](TinyTask& t) { t.nan_steps = {2, 3}; });
  CHECK(r.result.steps_done == 10);
  CHECK(r.result.skipped_steps == 2);
  REQUIRE(r.result.losses.size() == 10);
  for (size_t i = 0; i < 10; ++i)
    CHECK_MESSAGE(std::isnan(r.result.losses[i]) == (i == 2 || i == 3), i);
  // The optimiser took 8 steps; the weights stayed finite.
  auto all = safetensors::load(checkpoint_path(dir / "checkpoints", 10));
  for (auto& [n, t] : all) {
    if (n == "optim.step") CHECK(t.item() == 8);
    if (n.rfind("model.", 0) == 0)
      for (double v : psvae::test::as_doubles(t)) REQUIRE(std::isfinite(v));
  }

  TempDir dir2("trainer_nan_all");
  Config c2 = tiny_config(dir2.path().string());
  c2.set("train.max_nonfinite", "3");
  CHECK_THROWS_WITH_AS(
      train_once(c2, 1, ds, {}, [](TinyTask& t) { t.nan_always = true; }),
      "training stopped: 3 consecutive non-finite losses at step 3 (last: nan); lower train.lr or "
      "check the data",
      std::runtime_error);
}
