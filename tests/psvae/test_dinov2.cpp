// DINOv2 encoder: parity with a plain-torch DINOv2 (tests/reference/dinov2_golden.py) under both
// key namings, with and without registers and SwiGLU, at a matching, an upsampled and a
// downsampled grid; the bicubic matrices against PyTorch and by hand; gradients through the
// position-embedding interpolation; loading errors; config inference.
#include <doctest/doctest.h>

#include <filesystem>
#include <map>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "autograd/gradcheck.h"
#include "common/test_util.h"
#include "psvae/dinov2.h"
#include "psvae/interpolate.h"

using namespace psvae;

namespace {

using test::as_map;
using test::golden;

std::string load_error(nn::Module& m, const safetensors::NamedTensors& sd) {
  try {
    load_dinov2(m, sd);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

safetensors::NamedTensors without(const safetensors::NamedTensors& sd, const std::string& key) {
  safetensors::NamedTensors out;
  for (const auto& kv : sd)
    if (kv.first != key) out.push_back(kv);
  return out;
}

}  // namespace

TEST_CASE("dinov2 matches the PyTorch reference with both namings, registers and SwiGLU") {
  for (const char* variant : {"plain", "reg4", "swiglu"}) {
    auto io = as_map(safetensors::load(golden(fmt::format("dinov2_{}_io.safetensors", variant))));
    for (const char* naming : {"", "_hf"}) {
      auto sd = safetensors::load(
          golden(fmt::format("dinov2_{}_weights{}.safetensors", variant, naming)));
      CHECK(is_hf_dinov2(sd) == (naming[0] != 0));
      Dinov2Config cfg = infer_dinov2_config(sd, /*heads=*/4);
      Generator g(0);
      Dinov2 model(cfg, g);
      load_dinov2(model, sd);
      model.eval();
      ag::NoGradGuard ng;
      for (const char* size : {"56x56", "70x98", "42x28"}) {
        Tensor x = io.at(fmt::format("pixel_values_{}", size));
        Dinov2Output out = model.forward(ag::Var(x));
        const Tensor& ref_patch = io.at(fmt::format("x_norm_patchtokens_{}", size));
        Tensor patch = out.patch.data().reshape(ref_patch.shape());  // (N, h*w, D)
        auto c =
            test::compare(out.cls.data(), io.at(fmt::format("x_norm_clstoken_{}", size)), 1e-4);
        auto p = test::compare(patch, ref_patch, 1e-4);
        MESSAGE(fmt::format("dinov2 {}{} {}: cls rel err {:.2e}, patch rel err {:.2e}", variant,
                            naming, size, c.rel_err, p.rel_err));
        INFO(variant, naming, " ", size, " cls: ", c.why, " patch: ", p.why);
        CHECK(c.ok);
        CHECK(p.ok);
      }
    }
  }
}

TEST_CASE("dinov2 state_dict names and order are upstream's") {
  auto file = safetensors::File::open(golden("dinov2_reg4_weights.safetensors"));
  Generator g(0);
  Dinov2 model(infer_dinov2_config(file->all(), 4), g);
  std::vector<std::string> ours;
  for (const auto& [k, t] : model.state_dict()) ours.push_back(k);
  CHECK(ours == file->names());  // the torch state_dict order the script wrote
}

TEST_CASE("bicubic matrices equal F.interpolate's, for sizes, scale factors and antialias") {
  auto cases = as_map(safetensors::load(golden("dinov2_interp.safetensors")));
  int n = 0;
  for (int i = 0; cases.count(fmt::format("case{}", i)); ++i, ++n) {
    std::vector<double> p = test::as_doubles(cases.at(fmt::format("case{}_params", i)));
    const auto in = static_cast<int64_t>(p[0]), out = static_cast<int64_t>(p[1]);
    const double sf = p[2];
    const bool aa = p[3] != 0;
    if (sf > 0) CHECK(interp::output_size(in, sf) == out);
    std::vector<double> ours = interp::bicubic_matrix(in, out, sf, aa);
    std::vector<double> ref = test::as_doubles(cases.at(fmt::format("case{}", i)));
    REQUIRE(ours.size() == ref.size());
    double worst = 0;
    for (size_t k = 0; k < ref.size(); ++k) worst = std::max(worst, std::abs(ours[k] - ref[k]));
    INFO("case ", i, ": ", in, " -> ", out, " scale_factor ", sf, " antialias ", aa);
    CHECK(worst < 1e-12);
  }
  CHECK(n == 15);
}

TEST_CASE("bicubic matrices by hand: identity, and 2 -> 4 with a = -0.75") {
  for (bool aa : {false, true})
    for (int64_t s : {1, 3, 37}) {
      std::vector<double> m = interp::bicubic_matrix(s, s, 0, aa);
      for (int64_t o = 0; o < s; ++o)
        for (int64_t i = 0; i < s; ++i)
          CHECK(m[static_cast<size_t>(o * s + i)] == doctest::Approx(o == i ? 1.0 : 0.0));
    }
  // Output 0 samples source -0.25: taps -2..1 (clamped to 0,0,0,1) at t = 0.75, weights
  // W(1.75) = -0.03515625, W(0.75) = 0.26171875, W(0.25) = 0.87890625, W(1.25) = -0.10546875
  // with W(x) = 1.25x^3 - 2.25x^2 + 1 (|x| < 1), -0.75x^3 + 3.75x^2 - 6x + 3 (1 <= |x| < 2).
  const std::vector<double> want = {1.10546875, -0.10546875, 0.7734375,   0.2265625,
                                    0.2265625,  0.7734375,   -0.10546875, 1.10546875};
  for (double sf : {0.0, 2.0}) {  // size 4 and scale_factor 2 agree here (1/2 = 2/4)
    std::vector<double> m = interp::bicubic_matrix(2, 4, sf, false);
    for (size_t k = 0; k < want.size(); ++k) CHECK(m[k] == doctest::Approx(want[k]).epsilon(1e-15));
  }
  // DINOv2's scale factor (16 + 0.1)/37 is not the same resampling as size 16.
  std::vector<double> a = interp::bicubic_matrix(37, 16, 16.1 / 37, false);
  std::vector<double> b = interp::bicubic_matrix(37, 16, 0, false);
  double diff = 0;
  for (size_t k = 0; k < a.size(); ++k) diff = std::max(diff, std::abs(a[k] - b[k]));
  CHECK(diff > 1e-3);
  // Every row sums to 1 (a constant stays constant).
  for (bool aa : {false, true}) {
    std::vector<double> m = interp::bicubic_matrix(37, 16, 0, aa);
    for (int o = 0; o < 16; ++o) {
      double s = 0;
      for (int i = 0; i < 37; ++i) s += m[static_cast<size_t>(o * 37 + i)];
      CHECK(s == doctest::Approx(1.0));
    }
  }
}

TEST_CASE("dinov2 gradchecks in f64 through the interpolated position embedding") {
  for (bool reg : {false, true}) {
    Dinov2Config c;
    c.dim = 8, c.depth = 1, c.heads = 2, c.patch = 2, c.grid = 2, c.mlp_ratio = 2.0;
    if (reg) c.registers = 1, c.interpolate_offset = 0.0, c.interpolate_antialias = true;
    Generator g(5);
    Dinov2 m(c, g);
    m.to(DType::F64);
    // Non-trivial LayerScale and tokens, so each path carries gradient.
    for (auto& [n, p] : m.named_parameters()) {
      Tensor t = p.data();
      if (n.find("gamma") != std::string::npos || n.find("token") != std::string::npos ||
          n == "pos_embed")
        g.normal_(t, 0.0, 0.5);
    }
    Tensor x = test::normal(g, {2, 3, 6, 4});  // grid 3 x 2 from the 2 x 2 table
    std::vector<Tensor> inputs{x};
    for (auto& [n, p] : m.named_parameters()) inputs.push_back(p.data().clone());
    std::vector<bool> wrt(inputs.size(), true);
    auto f = [&](const std::vector<ag::Var>& v) {
      m.bind_parameters(std::vector<ag::Var>(v.begin() + 1, v.end()));
      Dinov2Output o = m.forward(v[0]);
      return ag::concat({ag::reshape(o.cls, {-1}), ag::reshape(o.patch, {-1})}, 0);
    };
    ag::GradcheckResult r = ag::gradcheck(f, inputs, wrt);
    INFO("registers ", reg, ": ", r.report);
    CHECK(r.ok);
  }
}

TEST_CASE("the gradient reaches every pos_embed row through the interpolation (f32)") {
  auto sd = safetensors::load(golden("dinov2_plain_weights.safetensors"));
  Generator g(0);
  Dinov2 model(infer_dinov2_config(sd, 4), g);
  load_dinov2(model, sd);
  Tensor x = test::normal(g, {1, 3, 70, 98});
  Dinov2Output o = model.forward(ag::Var(nn::convert_float(x, DType::F32)));
  ag::sum_all(ag::square(o.patch)).backward();
  const Tensor& gp = model.pos_embed().grad();
  REQUIRE(gp.defined());
  std::vector<double> v = test::as_doubles(gp);
  const int64_t D = 64;
  for (int64_t row = 0; row < 17; ++row) {
    double s = 0;
    for (int64_t d = 0; d < D; ++d) s += std::abs(v[static_cast<size_t>(row * D + d)]);
    INFO("pos_embed row ", row);
    CHECK(s > 0);
  }
}

TEST_CASE("dinov2 loading errors name the key and the shapes") {
  auto sd = safetensors::load(golden("dinov2_plain_weights.safetensors"));
  Generator g(0);
  Dinov2 model(infer_dinov2_config(sd, 4), g);

  std::string e = load_error(model, without(sd, "norm.bias"));
  CHECK(e.find("missing key 'norm.bias' (expected shape (64))") != std::string::npos);

  auto extra = sd;
  extra.emplace_back("head.weight", Tensor::zeros({2, 3}));
  e = load_error(model, extra);
  CHECK(e.find("unexpected key 'head.weight' (shape (2, 3))") != std::string::npos);

  auto bad = sd;
  for (auto& [k, t] : bad)
    if (k == "blocks.0.attn.qkv.weight") t = Tensor::zeros({96, 64});
  e = load_error(model, bad);
  CHECK(e.find("key 'blocks.0.attn.qkv.weight': expected shape (192, 64), file has (96, 64)") !=
        std::string::npos);

  // HF naming: the message also gives the file's own key.
  auto hf = safetensors::load(golden("dinov2_plain_weights_hf.safetensors"));
  for (auto& [k, t] : hf)
    if (k == "encoder.layer.1.mlp.fc2.weight") t = Tensor::zeros({64, 100});
  e = load_error(model, hf);
  CHECK(e.find("key 'blocks.1.mlp.fc2.weight' (file key 'encoder.layer.1.mlp.fc2.weight'): "
               "expected shape (64, 256), file has (64, 100)") != std::string::npos);
  e = load_error(model, without(hf, "encoder.layer.0.attention.attention.value.bias"));
  CHECK(e.find("missing key 'encoder.layer.0.attention.attention.value.bias'") !=
        std::string::npos);

  // The intact file still loads after the failed attempts; show one full message in the log.
  CHECK(load_error(model, sd).empty());
  MESSAGE(load_error(model, bad));
}

TEST_CASE("dinov2 config inference and the arch table") {
  Dinov2Config l = dinov2_arch("vitl14");
  CHECK(l.dim == 1024);
  CHECK(l.depth == 24);
  CHECK(l.heads == 16);
  CHECK(l.registers == 0);
  CHECK(l.interpolate_offset == 0.1);
  Dinov2Config gr = dinov2_arch("dinov2_vitg14_reg");
  CHECK((gr.dim == 1536 && gr.depth == 40 && gr.heads == 24 && gr.swiglu && gr.registers == 4));
  CHECK((gr.interpolate_offset == 0.0 && gr.interpolate_antialias));
  CHECK(dinov2_arch("vits14_reg4").dim == 384);
  CHECK(dinov2_arch("vitb14").heads == 12);
  CHECK_THROWS_WITH_AS(dinov2_arch("vitx14"), doctest::Contains("unknown arch 'vitx14'"),
                       std::invalid_argument);

  // From the golden files (both namings).
  for (const char* f :
       {"dinov2_reg4_weights.safetensors", "dinov2_swiglu_weights_hf.safetensors"}) {
    Dinov2Config c = infer_dinov2_config(safetensors::load(golden(f)));
    CHECK(c.dim == 64);
    CHECK(c.depth == 2);
    CHECK(c.heads == 1);  // D / 64 when not given
    CHECK(c.patch == 14);
    CHECK(c.grid == 4);
    CHECK(c.layerscale.has_value());
  }
  Dinov2Config r =
      infer_dinov2_config(safetensors::load(golden("dinov2_reg4_weights.safetensors")));
  CHECK((r.registers == 4 && !r.swiglu && r.interpolate_antialias && r.interpolate_offset == 0.0));
  Dinov2Config s =
      infer_dinov2_config(safetensors::load(golden("dinov2_swiglu_weights.safetensors")));
  CHECK((s.registers == 0 && s.swiglu && s.mlp_ratio == 4.0 && s.interpolate_offset == 0.1));

  // ViT-g/14 with registers from shapes alone (the hidden width 4096 = ceil8(int(6144) * 2/3)).
  safetensors::NamedTensors vg = {{"cls_token", Tensor::empty({1, 1, 1536})},
                                  {"pos_embed", Tensor::empty({1, 1 + 37 * 37, 1536})},
                                  {"register_tokens", Tensor::empty({1, 4, 1536})},
                                  {"patch_embed.proj.weight", Tensor::empty({1536, 3, 14, 14})},
                                  {"blocks.0.norm1.weight", Tensor::empty({1536})},
                                  {"blocks.0.attn.qkv.bias", Tensor::empty({3 * 1536})},
                                  {"blocks.0.ls1.gamma", Tensor::empty({1536})},
                                  {"blocks.0.mlp.w12.weight", Tensor::empty({8192, 1})},
                                  {"blocks.1.norm1.weight", Tensor::empty({1536})}};
  Dinov2Config c = infer_dinov2_config(vg);
  CHECK((c.dim == 1536 && c.heads == 24 && c.depth == 2 && c.grid == 37 && c.registers == 4));
  CHECK((c.swiglu && c.mlp_ratio == 4.0 && c.patch == 14 && c.qkv_bias));

  // Round trip on a config of our own (non-default ratio, SwiGLU, no LayerScale).
  Dinov2Config own;
  own.dim = 96, own.depth = 3, own.heads = 3, own.patch = 4, own.grid = 3, own.swiglu = true;
  own.mlp_ratio = 3.0, own.layerscale = std::nullopt, own.registers = 2;
  Generator g(3);
  Dinov2 m(own, g);
  Dinov2Config back = infer_dinov2_config(m.state_dict(), 3);
  CHECK((back.dim == 96 && back.depth == 3 && back.patch == 4 && back.grid == 3));
  CHECK((back.swiglu && !back.layerscale && back.registers == 2));
  Generator g2(3);
  Dinov2 m2(back, g2);  // same shapes: loads
  CHECK(load_error(m2, m.state_dict()).empty());

  CHECK_THROWS_WITH(infer_dinov2_config({{"cls_token", Tensor::empty({1, 1, 64})}}),
                    doctest::Contains("no 'patch_embed.proj.weight'"));
}

TEST_CASE("imagenet_normalize maps [-1, 1] with the ImageNet statistics") {
  Tensor x = Tensor::from_vector(std::vector<float>{-1, 1, 0, 0.5, 1, -1}, {1, 3, 1, 2});
  std::vector<double> y = test::as_doubles(imagenet_normalize(ag::Var(x)).data());
  const double mean[3] = {0.485, 0.456, 0.406}, sd[3] = {0.229, 0.224, 0.225};
  std::vector<double> xs = test::as_doubles(x);
  for (int i = 0; i < 6; ++i)
    CHECK(y[static_cast<size_t>(i)] ==
          doctest::Approx(((xs[static_cast<size_t>(i)] + 1) / 2 - mean[i / 2]) / sd[i / 2])
              .epsilon(1e-6));
}
