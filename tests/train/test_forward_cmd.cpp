// `psvae forward`, run as the built binary on the PyTorch golden files: DINOv2 (both namings,
// registers) and LPIPS (backbone and lin in two files) give the reference outputs to 1e-4; an
// S-VAE / PS-VAE from a plain state dict and from a training checkpoint (EMA preferred) give the
// in-process forward; inputs in f64 are converted; and each user error is one line naming the
// thing at fault.
#include <doctest/doctest.h>

#include <filesystem>
#include <map>

#include "autograd/grad_mode.h"
#include "common/run_binary.h"
#include "common/test_util.h"
#include "psvae/psvae.h"
#include "tensor/safetensors.h"
#include "train/config.h"
#include "train/tasks/model_keys.h"

using namespace psvae;
namespace fs = std::filesystem;
using psvae::test::TempDir;

namespace {

using test::golden;
const std::filesystem::path kRoot = test::repo_root();

using Result = test::BinaryRun;

Result run(const TempDir& tmp, const std::string& args) {
  return test::run_psvae_binary("forward --device cpu " + args, tmp / "log");
}

std::map<std::string, Tensor> load_map(const std::string& path) {
  std::map<std::string, Tensor> m;
  for (auto& [n, t] : safetensors::load(path)) m[n] = t;
  return m;
}

bool has(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

#define REQUIRE_BINARY()                                              \
  if (test::psvae_binary().empty()) {                                 \
    MESSAGE("bin/psvae not built; skipping the psvae forward tests"); \
    return;                                                           \
  }

}  // namespace

TEST_CASE("forward dinov2 matches the PyTorch golden outputs (both namings, registers)") {
  REQUIRE_BINARY();
  TempDir tmp("forward");
  for (const char* variant : {"plain", "reg4"}) {
    auto io = load_map(golden(fmt::format("dinov2_{}_io.safetensors", variant)));
    for (const char* naming : {"", "_hf"}) {
      for (const char* size : {"56x56", "70x98"}) {
        // f64 inputs on the second size: the command converts them to f32.
        Tensor x = io.at(fmt::format("pixel_values_{}", size));
        if (std::string(size) == "70x98") x = nn::convert_float(x, DType::F64);
        safetensors::save(tmp / "in.safetensors", {{"pixel_values", x}});
        Result r =
            run(tmp,
                fmt::format("--model dinov2 --weights {} --inputs {} --out {} --set "
                            "heads=4",
                            golden(fmt::format("dinov2_{}_weights{}.safetensors", variant, naming)),
                            tmp / "in.safetensors", tmp / "out.safetensors"));
        INFO((std::string(variant) + naming + " " + size + ": " + r.out));
        REQUIRE(r.rc == 0);
        auto out = load_map(tmp / "out.safetensors");
        auto c = test::compare(out.at("x_norm_clstoken"),
                               io.at(fmt::format("x_norm_clstoken_{}", size)), 1e-4);
        auto p = test::compare(out.at("x_norm_patchtokens"),
                               io.at(fmt::format("x_norm_patchtokens_{}", size)), 1e-4);
        MESSAGE(fmt::format("forward dinov2 {}{} {}: cls rel err {:.2e}, patch rel err {:.2e}",
                            variant, naming, size, c.rel_err, p.rel_err));
        CHECK_MESSAGE(c.ok, c.why);
        CHECK_MESSAGE(p.ok, p.why);
        CHECK(out.at("x_norm_clstoken").dtype() == DType::F32);
        CHECK(out.count("x_norm_regtokens") == (std::string(variant) == "reg4" ? 1u : 0u));
      }
    }
  }
}

TEST_CASE("forward lpips matches the PyTorch golden distances, weights in two files") {
  REQUIRE_BINARY();
  TempDir tmp("forward");
  for (const char* net : {"vgg", "alex"}) {
    auto io = load_map(golden(fmt::format("lpips_{}_io.safetensors", net)));
    safetensors::save(tmp / "in.safetensors", {{"x0", io.at("x0")}, {"x1", io.at("x1")}});
    // width_div and the net given, then both read off the weights.
    for (const char* extra : {"--arch {} --set width_div=8", ""}) {
      Result r = run(tmp, fmt::format("--model lpips --weights {} --weights {} --inputs {} --out "
                                      "{} ",
                                      golden(fmt::format("lpips_{}_backbone.safetensors", net)),
                                      golden(fmt::format("lpips_{}_lin.safetensors", net)),
                                      tmp / "in.safetensors", tmp / "out.safetensors") +
                              fmt::format(extra, net));
      INFO((std::string(net) + " " + extra + ": " + r.out));
      REQUIRE(r.rc == 0);
      auto c = test::compare(load_map(tmp / "out.safetensors").at("d"), io.at("d"), 1e-4);
      MESSAGE(fmt::format("forward lpips {}: d rel err {:.2e}", net, c.rel_err));
      CHECK_MESSAGE(c.ok, c.why);
    }
  }
}

namespace {

// A tiny PS-VAE: 16x16 images, patch 4 (4x4 tokens), widths 16, latent 4, two upsamplings.
train::Config tiny_keys() {
  train::Config cfg(train::psvae_stage_schema());
  for (const char* kv :
       {"model.encoder.patch=4", "model.encoder.dim=16", "model.encoder.depth=1",
        "model.encoder.heads=2", "model.encoder.pos_grid=4", "model.latent_dim=4",
        "model.svae.width=16", "model.svae.depth=1", "model.svae.heads=2",
        "model.pixdec.channels=8,8,8", "model.pixdec.res_blocks=1", "data.image_size=16"})
    cfg.set_override(kv);
  return cfg;
}

const char* kTinySets =
    "--set model.encoder.patch=4 --set model.encoder.dim=16 --set model.encoder.depth=1 "
    "--set model.encoder.heads=2 --set model.encoder.pos_grid=4 --set model.latent_dim=4 "
    "--set model.svae.width=16 --set model.svae.depth=1 --set model.svae.heads=2 "
    "--set model.pixdec.channels=8,8,8 --set model.pixdec.res_blocks=1";

std::shared_ptr<PSVAE> tiny_psvae(uint64_t seed) {
  const train::Config k = tiny_keys();
  PSVAEConfig c;
  c.encoder = train::encoder_config(k);
  c.svae.enc_dim = c.encoder.dim;
  c.svae.latent_dim = 4, c.svae.width = 16, c.svae.depth = 1, c.svae.heads = 2;
  c.pix.latent_dim = 4;
  c.pix.channels = {8, 8, 8};
  c.pix.res_blocks = 1;
  c.pix.out_h = c.pix.out_w = 16;
  Generator g(seed);
  auto m = std::make_shared<PSVAE>(c, g);
  m->eval();
  return m;
}

void check_same(const std::map<std::string, Tensor>& out, const PSVAEOutput& ref,
                bool with_pixels) {
  for (auto [name, t] : std::map<std::string, Tensor>{{"mu", ref.mu.data()},
                                                      {"logvar", ref.logvar.data()},
                                                      {"semantic", ref.semantic.data()},
                                                      {"pixels", ref.pixels.data()}}) {
    if (name == "pixels" && !with_pixels) {
      CHECK(out.count("pixels") == 0);
      continue;
    }
    auto c = test::compare(out.at(name), t, 1e-6);
    CHECK_MESSAGE(c.ok, name, ": ", c.why);
  }
}

}  // namespace

TEST_CASE("forward svae and psvae: plain weights with --set keys, and a training checkpoint") {
  REQUIRE_BINARY();
  TempDir tmp("forward");
  auto model = tiny_psvae(3);
  Generator g(9);
  Tensor image = nn::convert_float(test::uniform(g, {2, 3, 16, 16}), DType::F32);
  safetensors::save(tmp / "in.safetensors", {{"image", image}});
  PSVAEOutput ref;
  {
    ag::NoGradGuard ng;
    ref = model->forward(ag::Var(image), nullptr);
  }

  // A plain state dict without encoder_ref (only the encoder is needed for the outputs).
  safetensors::NamedTensors plain;
  for (auto& [n, t] : model->state_dict())
    if (n.rfind("encoder_ref.", 0) != 0) plain.emplace_back(n, t);
  safetensors::save(tmp / "plain.safetensors", plain);
  for (const char* name : {"psvae", "svae"}) {
    Result r = run(tmp, fmt::format("--model {} --weights {} --inputs {} --out {} {}", name,
                                    tmp / "plain.safetensors", tmp / "in.safetensors",
                                    tmp / "out.safetensors", kTinySets));
    INFO((std::string(name) + ": " + r.out));
    REQUIRE(r.rc == 0);
    check_same(load_map(tmp / "out.safetensors"), ref, std::string(name) == "psvae");
  }

  // A checkpoint: model.* from another seed, ema.* from `model`: the EMA weights are used, and
  // the architecture comes from psvae.config (no --set).
  auto other = tiny_psvae(4);
  safetensors::NamedTensors ck;
  for (auto& [n, t] : other->state_dict()) ck.emplace_back("model." + n, t);
  for (auto& [n, p] : model->named_parameters()) ck.emplace_back("ema." + n, p.data());
  safetensors::save(tmp / "ckpt.safetensors", ck,
                    {{"psvae.task", "psvae"}, {"psvae.config", tiny_keys().to_yaml()}});
  Result r = run(
      tmp, fmt::format("--model psvae --weights {} --inputs {} --out {}", tmp / "ckpt.safetensors",
                       tmp / "in.safetensors", tmp / "out.safetensors"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  check_same(load_map(tmp / "out.safetensors"), ref, true);

  // A --set that contradicts the checkpoint's architecture is an error naming both values.
  r = run(tmp,
          fmt::format("--model psvae --weights {} --inputs {} --out {} --set "
                      "model.latent_dim=8",
                      tmp / "ckpt.safetensors", tmp / "in.safetensors", tmp / "out.safetensors"));
  CHECK(r.rc == 1);
  CHECK(has(r.out, "model.latent_dim"));
}

TEST_CASE("forward dit matches the PyTorch golden outputs, steps as f32 or i64") {
  REQUIRE_BINARY();
  TempDir tmp("forward");
  for (const char* name : {"p2", "p4_sigma"}) {
    auto io = load_map(golden(fmt::format("dit_{}_io.safetensors", name)));
    for (bool int_steps : {false, true}) {
      Tensor t = io.at("t");
      if (int_steps) t = Tensor::from_vector(std::vector<int64_t>{0, 17, 999}, Shape{3});
      safetensors::save(tmp / "in.safetensors", {{"x", io.at("x")}, {"t", t}, {"y", io.at("y")}});
      Result r = run(tmp, fmt::format("--model dit --weights {} --inputs {} --out {} --set heads=4",
                                      golden(fmt::format("dit_{}_weights.safetensors", name)),
                                      tmp / "in.safetensors", tmp / "out.safetensors"));
      INFO((std::string(name) + ": " + r.out));
      REQUIRE(r.rc == 0);
      auto c = test::compare(load_map(tmp / "out.safetensors").at("out"), io.at("out"), 1e-4);
      MESSAGE(
          fmt::format("forward dit {} (i64 steps {}): rel err {:.2e}", name, int_steps, c.rel_err));
      CHECK_MESSAGE(c.ok, c.why);
    }
  }
  // A missing label input is named.
  auto io = load_map(golden("dit_p2_io.safetensors"));
  safetensors::save(tmp / "in.safetensors", {{"x", io.at("x")}, {"t", io.at("t")}});
  Result r = run(tmp, fmt::format("--model dit --weights {} --inputs {} --out {}",
                                  golden("dit_p2_weights.safetensors"), tmp / "in.safetensors",
                                  tmp / "out.safetensors"));
  CHECK(r.rc == 1);
  CHECK(has(r.out, "no input named 'y'"));
}

TEST_CASE("forward errors: unknown model, missing input, a key in two files, dit") {
  REQUIRE_BINARY();
  TempDir tmp("forward");
  const std::string w = golden("dinov2_plain_weights.safetensors");
  auto io = load_map(golden("dinov2_plain_io.safetensors"));
  safetensors::save(tmp / "in.safetensors", {{"pixels", io.at("pixel_values_56x56")}});
  const std::string files =
      fmt::format("--inputs {} --out {}", tmp / "in.safetensors", tmp / "out.safetensors");

  Result r = run(tmp, fmt::format("--model dinov3 --weights {} {}", w, files));
  CHECK(r.rc == 2);
  CHECK(has(r.out, "unknown model"));
  CHECK(has(r.out, "did you mean 'dinov2'?"));
  CHECK(has(r.out, "dinov2, lpips, svae, psvae, dit"));

  r = run(tmp, fmt::format("--model dinov2 --weights {} {} --set heads=4", w, files));
  CHECK(r.rc == 1);
  CHECK(has(r.out, "no input named 'pixel_values'"));
  CHECK(has(r.out, tmp / "in.safetensors"));
  CHECK(has(r.out, "pixels"));  // what the file has instead

  r = run(tmp, fmt::format("--model dinov2 --weights {} --weights {} {}", w, w, files));
  CHECK(r.rc == 1);
  CHECK(has(r.out, "--weights: key '"));
  CHECK(has(r.out, "' is in both " + w + " and " + w));

  r = run(tmp, fmt::format("--model dit --weights {} {}", w, files));
  CHECK(r.rc == 1);
  CHECK(has(r.out, "dit weights: missing 'x_embedder.proj.weight'"));  // dinov2's are no DiT's

  r = run(tmp, fmt::format("--model lpips --arch vgg --weights {} {}",
                           golden("lpips_vgg_lin.safetensors"), files));
  CHECK(r.rc == 1);
  CHECK(has(r.out, "no backbone"));
  CHECK_FALSE(fs::exists(tmp / "out.safetensors"));  // nothing written on failure
}
