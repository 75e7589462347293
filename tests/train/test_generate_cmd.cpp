// `psvae generate | edit | inpaint` and train/pipeline.h on a tiny trained stack: a random-weight
// stage-2 PS-VAE checkpoint (16x16 images -> a 4x4x8 latent, written directly as
// tests/train/test_dit_stage.cpp does, so no stage has to be trained) and two DiTs trained for 3
// steps with `psvae train-dit` (text- and class-conditional). The images mean nothing at this
// scale; what is checked is the plumbing:
//   - generate writes the grid and one PNG per image, of the right sizes;
//   - image i depends on (seed, i) only: another batch size gives the same images, bit for bit,
//     for deterministic and stochastic samplers; another seed other images;
//   - CFG scale 1 never runs the unconditional model (counted DiT evaluations), a guidance
//     interval runs it only inside;
//   - edit at a tiny strength returns the input's reconstruction nearly unchanged;
//   - inpaint keeps the kept pixels exactly (the output equals the input outside the mask);
//   - bad inputs are one-line errors with exit status 2 (command line) or 1 (files, runs).
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "common/cli_capture.h"
#include "common/test_util.h"
#include "kernels/ops.h"
#include "tensor/safetensors.h"
#include "train/cli.h"
#include "train/data/dataset.h"
#include "train/image_io.h"
#include "train/pipeline.h"
#include "train/tasks/model_keys.h"
#include "train/tasks/svae_task.h"

namespace fs = std::filesystem;
using namespace psvae;
using namespace psvae::train;
using psvae::test::TempDir;

namespace {

constexpr int64_t kLatent = 8;
constexpr int kSize = 16;

using Run = test::CliRun;
using test::read_text;

Run run_psvae(std::vector<std::string> args) {
  return test::run_cli(std::move(args), "gen_capture");
}

bool has(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

// A finished train-psvae checkpoint of a random tiny PS-VAE (patch 4 on 16x16 images, L = 8) with
// latent statistics, as tests/train/test_dit_stage.cpp writes it.
void write_psvae_checkpoint(const std::string& path) {
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
  pc.set("data.image_size", std::to_string(kSize));
  PSVAEConfig c;
  c.encoder = encoder_config(pc);
  c.svae = svae_config(pc, c.encoder.dim);
  c.pix.latent_dim = kLatent;
  c.pix.channels = pixdec_channels(pc);
  c.pix.res_blocks = static_cast<int>(pc.get_int("model.pixdec.res_blocks"));
  c.pix.out_h = c.pix.out_w = kSize;
  Generator g(11);
  PSVAE model(c, g);
  safetensors::NamedTensors t;
  for (auto& [n, x] : model.state_dict()) t.emplace_back("model." + n, x);
  std::vector<float> mean, std;
  for (int64_t i = 0; i < kLatent; ++i) {
    mean.push_back(0.05f * static_cast<float>(i) - 0.2f);
    std.push_back(0.5f + 0.1f * static_cast<float>(i));
  }
  t.emplace_back("task.latent_mean", Tensor::from_vector(mean, Shape{kLatent}));
  t.emplace_back("task.latent_std", Tensor::from_vector(std, Shape{kLatent}));
  safetensors::save(path, t,
                    {{"psvae.format", "1"},
                     {"psvae.task", "psvae"},
                     {"psvae.step", "40"},
                     {"psvae.config", pc.to_yaml()}});
}

// The stack every case uses, trained once per process.
struct Stack {
  TempDir tmp{"generate_cmd"};
  std::string psvae, text_run, class_run, image, mask;
};

void train_dit(const Stack& s, const std::string& out_dir, const std::string& cond) {
  Run r = run_psvae({"train-dit",
                     "--device",
                     "cpu",
                     "--set",
                     "init.from=" + s.psvae,
                     "--set",
                     "run.out_dir=" + out_dir,
                     "--set",
                     "model.cond=" + cond,
                     "--set",
                     "model.dit.hidden=32",
                     "--set",
                     "model.dit.depth=1",
                     "--set",
                     "model.dit.heads=2",
                     "--set",
                     "model.text.dim=16",
                     "--set",
                     "model.text.depth=1",
                     "--set",
                     "model.text.heads=2",
                     "--set",
                     "data.image_size=16",
                     "--set",
                     "data.num_images=64",
                     "--set",
                     "data.workers=0",
                     "--set",
                     "train.steps=3",
                     "--set",
                     "train.batch_size=8",
                     "--set",
                     "train.ckpt_every=3",
                     "--set",
                     "train.sample_every=0",
                     "--set",
                     "train.ema_decay=0.9"});
  INFO(r.out);
  INFO(r.err);
  REQUIRE(r.rc == 0);
}

void build(Stack& t) {
  t.psvae = t.tmp / "psvae.safetensors";
  write_psvae_checkpoint(t.psvae);
  t.text_run = t.tmp / "dit_text";
  t.class_run = t.tmp / "dit_class";
  train_dit(t, t.text_run, "text");
  train_dit(t, t.class_run, "class");
  // An input image (a synthetic one) and a mask: white (regenerate) on the left half, black
  // (keep) on the right.
  SyntheticOptions o;
  o.num_images = 1;
  o.image_size = kSize;
  o.seed = 5;
  t.image = t.tmp / "in.png";
  save_png(t.image, tensor_to_image(make_synthetic(o)->get(0).image));
  Image m;
  m.width = m.height = kSize;
  m.rgb.assign(static_cast<size_t>(kSize * kSize * 3), 0);
  for (int y = 0; y < kSize; ++y)
    for (int x = 0; x < kSize / 2; ++x)
      for (int c = 0; c < 3; ++c) m.rgb[static_cast<size_t>((y * kSize + x) * 3 + c)] = 255;
  t.mask = t.tmp / "mask.png";
  save_png(t.mask, m);
}

const Stack& stack() {
  static Stack s;
  static bool ready = false;
  if (!ready) {
    build(s);
    ready = true;
  }
  return s;
}

std::vector<float> values(const Tensor& t) {
  return ops::cast(t.to(Device::cpu()), DType::F32).to_vector<float>();
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  std::vector<float> u = values(a), v = values(b);
  REQUIRE(u.size() == v.size());
  double m = 0;
  for (size_t i = 0; i < u.size(); ++i) m = std::max(m, std::abs(double(u[i]) - double(v[i])));
  return m;
}

double rms_diff(const Tensor& a, const Tensor& b) {
  std::vector<float> u = values(a), v = values(b);
  REQUIRE(u.size() == v.size());
  double acc = 0;
  for (size_t i = 0; i < u.size(); ++i) acc += (double(u[i]) - v[i]) * (double(u[i]) - v[i]);
  return std::sqrt(acc / static_cast<double>(u.size()));
}

// A DiT trained for 3 steps is still nearly its adaLN-Zero initialisation: its output hardly
// depends on the condition, so guidance would change nothing measurable. Noise on every weight
// (std 0.05, seeded) makes the conditional and unconditional branches differ.
void perturb(Pipeline& p) {
  Generator g(99);
  for (auto& [name, w] : p.model->named_parameters()) {
    Tensor n = Tensor::empty(w.shape(), DType::F32);
    g.normal_(n, 0.0, 0.05);
    Tensor storage = w.data();  // a handle on the parameter's storage
    storage.copy_from(ops::add(storage, n));
  }
}

GenerateRequest text_request(std::vector<std::string> captions, int steps = 4) {
  GenerateRequest r;
  r.cond.captions = std::move(captions);
  r.sampling.steps = steps;
  r.guidance.scale = 3.0;
  r.seed = 7;
  return r;
}

Tensor input_image() {
  return image_to_tensor(load_image(stack().image)).reshape({1, 3, kSize, kSize});
}

}  // namespace

TEST_CASE("generate: a grid row per prompt and one PNG per image") {
  const Stack& s = stack();
  const std::string out = s.tmp / "gen/grid.png";
  Run r = run_psvae({"generate", "--dit", s.text_run, "--prompt", "a red circle on the left",
                     "--prompt", "a blue square", "--num", "3", "--steps", "4", "--batch", "4",
                     "--device", "cpu", "--out", out});
  INFO(r.out);
  INFO(r.err);
  REQUIRE(r.rc == 0);
  CHECK(has(r.out, "generated 6 images (2 x 3)"));
  Image grid = load_image(out);
  CHECK(grid.width == 3 * (kSize + 2) + 2);   // make_grid: 3 per row, 2-pixel padding
  CHECK(grid.height == 2 * (kSize + 2) + 2);  // one row per prompt
  for (int i = 0; i < 6; ++i) {
    Image im = load_image(s.tmp / fmt::format("gen/grid_{:03d}.png", i));
    CHECK(im.width == kSize);
    CHECK(im.height == kSize);
  }
  CHECK_FALSE(fs::exists(s.tmp / "gen/grid_006.png"));

  // A class model takes --class; the images come out the same way.
  Run c = run_psvae({"generate", "--dit", s.class_run, "--class", "0", "--class", "5", "--num", "2",
                     "--steps", "3", "--device", "cpu", "--out", s.tmp / "gen/cls.png"});
  INFO(c.err);
  REQUIRE(c.rc == 0);
  CHECK(load_image(s.tmp / "gen/cls.png").height == 2 * (kSize + 2) + 2);
  CHECK(fs::exists(s.tmp / "gen/cls_003.png"));
}

TEST_CASE("generate: image i depends on (seed, i) only, not on the batch size") {
  const Stack& s = stack();
  Pipeline p = Pipeline::load(s.text_run, "", Device::cpu());
  CHECK(p.image_size == kSize);
  CHECK(p.latent_shape == Shape{kLatent, 4, 4});
  const std::vector<std::string> caps = {"a red circle", "a blue square", "a green cross",
                                         "a cyan triangle", "a magenta circle"};
  for (const char* sampler : {"ddim", "ddpm"}) {
    CAPTURE(sampler);
    GenerateRequest r = text_request(caps);
    r.sampling.sampler = dit::parse_sampler(sampler);
    r.batch = 5;
    Tensor all = generate(p, r);
    CHECK(all.shape() == Shape{5, 3, kSize, kSize});
    r.batch = 2;
    Tensor twos = generate(p, r);
    CHECK(values(all) == values(twos));
    // Image 3 alone, as the first of a request: its condition and index differ, so compare
    // image 3 of a request whose first three entries are other prompts.
    GenerateRequest shifted = r;
    shifted.cond.captions = {"x", "y", "z", caps[3]};
    shifted.batch = 1;
    CHECK(values(generate(p, shifted).slice0(3, 4)) == values(all.slice0(3, 4)));
    r.seed = 8;
    CHECK(max_abs_diff(generate(p, r), all) > 1e-3);
  }
  // The command: --batch does not change the PNGs.
  for (const char* b : {"1", "16"}) {
    Run r = run_psvae({"generate", "--dit", s.text_run, "--prompt", "a red circle", "--num", "3",
                       "--steps", "3", "--seed", "4", "--batch", b, "--device", "cpu", "--out",
                       s.tmp / fmt::format("seeds/b{}.png", b)});
    REQUIRE(r.rc == 0);
  }
  for (int i = 0; i < 3; ++i)
    CHECK(read_text(s.tmp / fmt::format("seeds/b1_{:03d}.png", i)) ==
          read_text(s.tmp / fmt::format("seeds/b16_{:03d}.png", i)));
}

TEST_CASE("generate --bf16: the DiT in bf16 autocast gives images within bf16 rounding of f32") {
  const Stack& s = stack();
  Pipeline p = Pipeline::load(s.text_run, "", Device::cpu());
  perturb(p);  // a DiT whose output is not ~0, so bf16 rounding has something to round
  GenerateRequest r = text_request({"a red circle", "a blue square"});
  const Tensor f32 = generate(p, r);
  p.compute = DType::BF16;
  const Tensor b16 = generate(p, r);
  CHECK(b16.dtype() == f32.dtype());
  // Images in [-1, 1]: a few bf16 roundings per step through 4 steps move pixels by 1e-3 to
  // 1e-2; a broken cast path (wrong dtype, f32 weights mixed in) fails or moves them by O(1).
  const double rms = rms_diff(b16, f32);
  MESSAGE("bf16 vs f32 images: rms " << rms << ", max " << max_abs_diff(b16, f32));
  CHECK(rms > 0);
  CHECK(rms < 2e-2);
  // The command takes the flag and says so.
  Run c = run_psvae({"generate", "--dit", s.text_run, "--prompt", "a red circle", "--num", "1",
                     "--steps", "2", "--bf16", "--device", "cpu", "--out", s.tmp / "gen/bf16.png"});
  INFO(c.err);
  REQUIRE(c.rc == 0);
  CHECK(has(c.out, "| bf16 autocast |"));
}

TEST_CASE("guidance: scale 1 never runs the unconditional model; an interval runs it inside") {
  const Stack& s = stack();
  Pipeline p = Pipeline::load(s.text_run, "", Device::cpu());
  perturb(p);
  const int64_t n = 3, steps = 10;
  GenerateRequest r = text_request({"a red circle", "a blue square", "a green cross"}, steps);
  r.guidance.scale = 1.0;
  int64_t before = p.evaluations;
  Tensor plain = generate(p, r);
  CHECK(p.evaluations - before == n * steps);  // DDIM: one conditional call per step

  r.guidance.scale = 4.0;
  before = p.evaluations;
  Tensor guided = generate(p, r);
  CHECK(p.evaluations - before == 2 * n * steps);
  CHECK(max_abs_diff(plain, guided) > 1e-4);

  // DDIM with 10 steps sees t = 999, 888, ..., 0 (normalised 0.999 ... 0): [0.5, 1] holds 5.
  r.guidance.t_lo = 0.5;
  before = p.evaluations;
  generate(p, r);
  CHECK(p.evaluations - before == n * steps + n * 5);

  // A negative prompt replaces the unconditional branch's empty caption.
  r.guidance.t_lo = 0.0;
  r.negative_prompt = "a yellow square";
  CHECK(max_abs_diff(generate(p, r), guided) > 1e-4);
}

TEST_CASE("edit: a tiny strength returns the input's reconstruction; inversion works too") {
  const Stack& s = stack();
  Pipeline p = Pipeline::load(s.text_run, "", Device::cpu());
  perturb(p);
  Tensor in = input_image();
  Tensor x0 = p.encode(in);
  Tensor recon = ops::clamp(p.decode(x0), -1.0, 1.0);
  // Strength 0.02 of 50 steps is one step, from the least noisy level (t = 0: abar = 0.9999,
  // noise std 0.01) back to the data. The yardstick: the reconstruction of the latent with that
  // much noise added and nothing removed (the decoder is random, so its gain is unknown).
  Generator g(3);
  Tensor z = Tensor::empty(x0.shape(), DType::F32);
  g.normal_(z, 0.0, 0.01);
  const double yardstick = rms_diff(ops::clamp(p.decode(ops::add(x0, z)), -1.0, 1.0), recon);
  GenerateRequest r = text_request({"a blue square"}, 50);
  r.sampling.strength = 0.02;
  const double tiny = rms_diff(edit_sdedit(p, in, r), recon);
  r.sampling.strength = 1.0;
  const double full = rms_diff(edit_sdedit(p, in, r), recon);
  MESSAGE(
      fmt::format("edit vs reconstruction, rms: strength 0.02 {:.4f}, 1.0 {:.4f}; latent "
                  "noise 0.01 alone {:.4f}",
                  tiny, full, yardstick));
  CHECK(tiny < 2 * yardstick);
  CHECK(full > 10 * tiny);

  r.sampling.strength = 0.02;
  Tensor inv = edit_invert(p, in, p.model->null_condition(1), r);
  CHECK(rms_diff(inv, recon) < 2 * yardstick);
  r.sampling.sampler = dit::SamplerKind::ddpm;
  CHECK_THROWS_WITH_AS(edit_invert(p, in, p.model->null_condition(1), r),
                       doctest::Contains("inversion needs a deterministic sampler"),
                       std::invalid_argument);

  // The command writes the edit (sdedit and invert).
  for (const char* method : {"sdedit", "invert"}) {
    const std::string out = s.tmp / fmt::format("edit_{}.png", method);
    Run e = run_psvae({"edit", "--dit", s.text_run, "--image", s.image, "--prompt", "a blue square",
                       "--strength", "0.5", "--steps", "6", "--method", method, "--device", "cpu",
                       "--out", out});
    INFO(e.err);
    REQUIRE(e.rc == 0);
    Image im = load_image(out);
    CHECK(im.width == kSize);
    CHECK(im.height == kSize);
  }
}

TEST_CASE("inpaint: the kept pixels are the input's exactly") {
  const Stack& s = stack();
  const std::string out = s.tmp / "inpaint/out.png";
  Run r =
      run_psvae({"inpaint", "--dit", s.text_run, "--image", s.image, "--mask", s.mask, "--prompt",
                 "a green circle", "--steps", "5", "--device", "cpu", "--out", out});
  INFO(r.out);
  INFO(r.err);
  REQUIRE(r.rc == 0);
  CHECK(has(r.out, "50.0% of the pixels regenerated"));
  Image in = load_image(s.image), res = load_image(out);
  REQUIRE(res.width == kSize);
  REQUIRE(res.height == kSize);
  bool kept = true, changed = false;
  for (int y = 0; y < kSize; ++y)
    for (int x = 0; x < kSize; ++x)
      for (int c = 0; c < 3; ++c) {
        const size_t i = static_cast<size_t>((y * kSize + x) * 3 + c);
        if (x >= kSize / 2)
          kept = kept && in.rgb[i] == res.rgb[i];
        else
          changed = changed || in.rgb[i] != res.rgb[i];
      }
  CHECK(kept);
  CHECK(changed);

  // The pipeline with an all-kept mask returns the image itself; the latent mask is min-pooled
  // (a pixel block with one regenerated pixel is regenerated).
  Pipeline p = Pipeline::load(s.text_run, "", Device::cpu());
  Tensor img = input_image();
  GenerateRequest q = text_request({"a green circle"}, 4);
  CHECK(values(inpaint(p, img, Tensor::full(Shape{1, 1, kSize, kSize}, 1.0), q)) == values(img));
  Tensor one_hole = Tensor::full(Shape{1, 1, kSize, kSize}, 1.0);
  one_hole.data<float>()[0] = 0.0f;  // pixel (0, 0): latent cell (0, 0) is regenerated
  Tensor out1 = inpaint(p, img, one_hole, q);
  CHECK(values(out1.slice0(0, 1)) != values(img));
  CHECK(values(ops::narrow(out1, 3, 4, kSize - 4)) == values(ops::narrow(img, 3, 4, kSize - 4)));
}

TEST_CASE("generate, edit, inpaint: bad inputs are one-line errors") {
  const Stack& s = stack();
  struct Case {
    std::vector<std::string> args;
    int rc;
    std::string what;
  };
  const std::string out = s.tmp / "bad/out.png";
  const std::vector<Case> cases = {
      {{"generate", "--dit", s.tmp / "nope", "--prompt", "a", "--out", out}, 1, "no such file"},
      {{"generate", "--dit", s.psvae, "--prompt", "a", "--out", out},
       1,
       "expected a train-dit checkpoint"},
      {{"generate", "--dit", s.text_run, "--prompt", "a", "--sampler", "plms", "--out", out},
       2,
       "plms"},
      {{"generate", "--dit", s.text_run, "--prompt", "a", "--sampler", "euler", "--out", out},
       2,
       "--sampler euler does not fit the eps objective"},
      {{"generate", "--dit", s.text_run, "--prompt", "a", "--sampler", "ddpm", "--eta", "0.5",
        "--out", out},
       2,
       "--eta 0.5 applies to --sampler ddim only"},
      {{"generate", "--dit", s.class_run, "--prompt", "a red circle", "--out", out},
       2,
       "is class-conditional; give --class N"},
      {{"generate", "--dit", s.class_run, "--class", "99", "--out", out},
       2,
       "--class 99 is outside"},
      {{"generate", "--dit", s.class_run, "--class", "1", "--negative-prompt", "x", "--out", out},
       2,
       "--negative-prompt"},
      {{"generate", "--dit", s.text_run, "--class", "1", "--out", out},
       2,
       "is text-conditional; give --prompt"},
      {{"generate", "--dit", s.text_run, "--prompt", "a", "--out", s.tmp / "bad/out.jpg"},
       2,
       "must be a .png file"},
      {{"generate", "--dit", s.text_run, "--prompt", "a", "--cfg-interval", "0.8,0.2", "--out",
        out},
       2,
       "--cfg-interval '0.8,0.2'"},
      {{"generate", "--dit", s.text_run, "--prompt", "a", "--steps", "2000", "--out", out},
       2,
       "exceeds the 1000 diffusion steps"},
      {{"edit", "--dit", s.text_run, "--image", s.tmp / "missing.png", "--prompt", "a", "--out",
        out},
       1,
       "missing.png: no such file"},
      {{"edit", "--dit", s.text_run, "--image", s.image, "--prompt", "a", "--method", "invert",
        "--sampler", "ddpm", "--out", out},
       1,
       "inversion needs a deterministic sampler"},
      {{"edit", "--dit", s.text_run, "--image", s.image, "--prompt", "a", "--source-prompt", "b",
        "--out", out},
       2,
       "apply to --method invert only"},
      {{"inpaint", "--dit", s.text_run, "--image", s.image, "--mask", s.tmp / "gen/grid.png",
        "--prompt", "a", "--out", out},
       1,
       "the mask is"},
      {{"inpaint", "--dit", s.text_run, "--image", s.image, "--prompt", "a", "--out", out},
       2,
       "--mask"},
  };
  // The grid of the first case of "generate" has another size than the image: a mask mismatch.
  if (!fs::exists(s.tmp / "gen/grid.png")) {
    fs::create_directories(s.tmp / "gen");
    Image g;
    g.width = 20, g.height = 20;
    g.rgb.assign(20 * 20 * 3, 0);
    save_png(s.tmp / "gen/grid.png", g);
  }
  for (const Case& c : cases) {
    Run r = run_psvae(c.args);
    INFO(c.args[0] << " " << c.args[c.args.size() - 3]);
    INFO(r.err);
    CHECK(r.rc == c.rc);
    CHECK(has(r.err, c.what));
    // One line: the message and its newline.
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  }
  CHECK_FALSE(fs::exists(out));
}
