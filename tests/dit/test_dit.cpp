// DiT (facebookresearch/DiT models.py): parity with a plain-torch DiT (tests/reference/
// dit_golden.py) at patch 2 and 4 with and without learn_sigma; the sin-cos table against
// upstream's numpy code; adaLN-Zero initialisation; state_dict names; config inference; a
// gradcheck.
#include <doctest/doctest.h>

#include <filesystem>
#include <map>
#include <set>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "common/test_util.h"
#include "dit/dit.h"
#include "dit/pos_embed.h"

using namespace psvae;
using namespace psvae::dit;

namespace {

using test::as_map;
using test::golden;

DiTConfig tiny(int patch, bool learn_sigma) {
  DiTConfig c;
  c.input_size = 8, c.patch = patch, c.in_channels = 4, c.hidden = 64, c.depth = 2, c.heads = 4;
  c.num_classes = 10, c.learn_sigma = learn_sigma;
  return c;
}

}  // namespace

TEST_CASE("dit matches the PyTorch reference (patch 2 / 4, learn_sigma on / off)") {
  for (const char* name : {"p2", "p2_sigma", "p4", "p4_sigma"}) {
    auto sd = safetensors::load(golden(fmt::format("dit_{}_weights.safetensors", name)));
    auto io = as_map(safetensors::load(golden(fmt::format("dit_{}_io.safetensors", name))));
    auto m = load_dit(sd, /*heads=*/4);
    const DiTConfig& c = m->config();
    CHECK(c.patch == (name[1] == '2' ? 2 : 4));
    CHECK(c.learn_sigma == (std::string(name).find("sigma") != std::string::npos));
    ag::Var out = m->forward(ag::Var(io.at("x")), io.at("t"), io.at("y"));
    CHECK(out.shape() == io.at("out").shape());
    auto cmp = test::compare(out.data(), io.at("out"), 1e-4);
    MESSAGE(std::string(name), ": rel err ", cmp.rel_err);
    CHECK(cmp.ok);
    // Integer steps give the same result as their float values.
    Tensor ti = Tensor::from_vector(std::vector<int64_t>{0, 17, 999}, Shape{3});
    ag::Var out_i = m->forward(ag::Var(io.at("x")), ti, io.at("y"));
    CHECK(test::compare(out_i.data(), io.at("out"), 1e-4).ok);
  }
}

TEST_CASE("the position table equals upstream's numpy get_2d_sincos_pos_embed") {
  auto ref = as_map(safetensors::load(golden("dit_pos_embed.safetensors")));
  Tensor pe = get_2d_sincos_pos_embed(32, 5);  // (25, 32) f64
  CHECK(pe.shape() == Shape{25, 32});
  auto a = test::as_doubles(pe), b = test::as_doubles(ref.at("pos_embed_d32_g5_f64"));
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  CHECK(worst < 1e-6);
  // The stored (f32) tables of the golden models are the constructor's table.
  for (const char* name : {"p2", "p4"}) {
    auto sd = as_map(safetensors::load(golden(fmt::format("dit_{}_weights.safetensors", name))));
    Generator g(0);
    DiT m(tiny(name[1] - '0', false), g);
    auto x = test::as_doubles(m.pos_embed()), y = test::as_doubles(sd.at("pos_embed"));
    REQUIRE(x.size() == y.size());
    double w = 0;
    for (size_t i = 0; i < x.size(); ++i) w = std::max(w, std::abs(x[i] - y[i]));
    CHECK(w < 1e-6);
  }
  // First D/2 channels follow the column: token (row 0, col 1) differs from (0, 0) there only.
  const double* p = pe.data<double>();
  CHECK(p[1 * 32 + 0] == doctest::Approx(std::sin(1.0)));   // column 1, channel 0
  CHECK(p[1 * 32 + 16] == 0.0);                             // row 0, sin part
  CHECK(p[5 * 32 + 0] == 0.0);                              // token (1, 0): column 0
  CHECK(p[5 * 32 + 16] == doctest::Approx(std::sin(1.0)));  // row 1
}

TEST_CASE("timestep features are [cos, sin] with float32 frequencies") {
  Tensor t = Tensor::from_vector(std::vector<float>{0.f, 3.f}, Shape{2});
  Tensor e = timestep_embedding(t, 256);
  CHECK(e.shape() == Shape{2, 256});
  const float* v = e.data<float>();
  CHECK(v[0] == 1.f);    // cos(0)
  CHECK(v[128] == 0.f);  // sin(0)
  CHECK(v[256 + 0] == doctest::Approx(std::cos(3.0)));
  CHECK(v[256 + 128] == doctest::Approx(std::sin(3.0)));
}

TEST_CASE("a fresh DiT outputs exactly zero (adaLN-Zero) and has upstream's init") {
  Generator g(1);
  DiT m(tiny(2, true), g);
  for (auto& [n, p] : m.named_parameters()) {
    const bool zero = n.find("adaLN_modulation") != std::string::npos ||
                      n.rfind("final_layer.linear", 0) == 0 || n.find(".bias") != std::string::npos;
    auto v = test::as_doubles(p.data());
    double mx = 0;
    for (double d : v) mx = std::max(mx, std::abs(d));
    INFO(n);
    if (zero)
      CHECK(mx == 0.0);
    else
      CHECK(mx > 0.0);
  }
  Tensor x = nn::convert_float(test::normal(g, {2, 4, 8, 8}), DType::F32);
  Tensor t = Tensor::from_vector(std::vector<float>{5.f, 500.f}, Shape{2});
  Tensor y = Tensor::from_vector(std::vector<int64_t>{1, 10}, Shape{2});
  ag::Var out = m.forward(ag::Var(x), t, y);
  CHECK(out.shape() == Shape{2, 8, 8, 8});
  for (double d : test::as_doubles(out.data())) REQUIRE(d == 0.0);
  // Label table N(0, 0.02): its sample std is close to 0.02.
  auto tv = test::as_doubles(m.y_embedder->embedding_table->weight().data());
  double s2 = 0;
  for (double d : tv) s2 += d * d;
  CHECK(std::sqrt(s2 / static_cast<double>(tv.size())) == doctest::Approx(0.02).epsilon(0.1));
}

TEST_CASE("state_dict names match upstream's for a depth-2 model") {
  Generator g(0);
  DiT m(tiny(2, true), g);
  std::vector<std::string> names;
  for (const auto& [k, t] : m.state_dict()) names.push_back(k);
  std::vector<std::string> expect = {"pos_embed",
                                     "x_embedder.proj.weight",
                                     "x_embedder.proj.bias",
                                     "t_embedder.mlp.0.weight",
                                     "t_embedder.mlp.0.bias",
                                     "t_embedder.mlp.2.weight",
                                     "t_embedder.mlp.2.bias",
                                     "y_embedder.embedding_table.weight"};
  for (int i = 0; i < 2; ++i)
    for (const char* s : {"attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                          "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
                          "adaLN_modulation.1.weight", "adaLN_modulation.1.bias"})
      expect.push_back(fmt::format("blocks.{}.{}", i, s));
  for (const char* s :
       {"final_layer.linear.weight", "final_layer.linear.bias",
        "final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias"})
    expect.push_back(s);
  CHECK(names == expect);
  // The golden files (written by PyTorch's state_dict) hold the same names in the same order.
  std::vector<std::string> torch_names;
  for (const auto& [k, t] : safetensors::load(golden("dit_p2_sigma_weights.safetensors")))
    torch_names.push_back(k);
  CHECK(std::set<std::string>(torch_names.begin(), torch_names.end()) ==
        std::set<std::string>(expect.begin(), expect.end()));
  // pos_embed is state, not a trainable parameter.
  for (const auto& [n, p] : m.named_parameters()) CHECK(n != "pos_embed");
}

TEST_CASE("config inference round trip and the published sizes") {
  for (const char* arch : {"DiT-S/2", "DiT-B/4", "DiT-L/8", "DiT-XL/2"}) {
    DiTConfig c = dit_arch(arch);
    c.input_size = 16, c.depth = 2, c.num_classes = 7;  // small enough to build quickly
    c.learn_sigma = arch[4] != 'B';
    Generator g(0);
    DiT m(c, g);
    DiTConfig r = infer_dit_config(m.state_dict());
    INFO(arch);
    CHECK(r.hidden == c.hidden);
    CHECK(r.heads == c.heads);  // the published heads follow from the width
    CHECK(r.patch == c.patch);
    CHECK(r.input_size == c.input_size);
    CHECK(r.in_channels == c.in_channels);
    CHECK(r.num_classes == c.num_classes);
    CHECK(r.learn_sigma == c.learn_sigma);
    CHECK(r.depth == c.depth);
    CHECK(r.mlp_ratio == c.mlp_ratio);
    CHECK(r.freq_dim == 256);
  }
  CHECK(dit_arch("XL/2").hidden == 1152);
  CHECK(dit_arch("DiT-S/8").heads == 6);
  CHECK_THROWS_WITH_AS(dit_arch("DiT-M/2"), doctest::Contains("DiT-XL/2"), std::invalid_argument);
  CHECK_THROWS_AS(dit_arch("DiT-B/3"), std::invalid_argument);
  CHECK_THROWS_AS(infer_dit_config({}), std::invalid_argument);
}

TEST_CASE("dit gradchecks in f64 w.r.t. x and parameters") {
  DiTConfig c;
  c.input_size = 4, c.patch = 2, c.in_channels = 2, c.hidden = 8, c.depth = 1, c.heads = 2;
  c.num_classes = 3, c.learn_sigma = true;
  Generator g(7);
  DiT m(c, g);
  m.to(DType::F64);
  // Randomise everything (the zero-initialised Linears would block every path).
  for (auto& [n, p] : m.named_parameters()) {
    Tensor t = p.data();
    g.normal_(t, 0.0, 0.5);
  }
  Tensor x = test::normal(g, {2, 2, 4, 4});
  Tensor t = Tensor::from_vector(std::vector<double>{3.0, 250.0}, Shape{2});
  Tensor y = Tensor::from_vector(std::vector<int64_t>{0, 3}, Shape{2});
  std::vector<Tensor> inputs{x};
  std::vector<bool> wrt{true};
  const std::set<std::string> checked = {
      "x_embedder.proj.weight", "t_embedder.mlp.0.weight", "blocks.0.attn.qkv.weight",
      "blocks.0.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias"};
  for (auto& [n, p] : m.named_parameters()) {
    inputs.push_back(p.data().clone());
    wrt.push_back(checked.count(n) > 0);
  }
  auto f = [&](const std::vector<ag::Var>& v) {
    m.bind_parameters(std::vector<ag::Var>(v.begin() + 1, v.end()));
    return m.forward(v[0], t, y);
  };
  ag::GradcheckResult r = ag::gradcheck(f, inputs, wrt);
  INFO(r.report);
  CHECK(r.ok);
}

// ---- text conditioning (cross-attention + pooled text in c)
// ---------------------------------------

namespace {
DiTConfig tiny_text() {
  DiTConfig c = tiny(2, true);
  c.num_classes = 0, c.context_dim = 32;
  return c;
}
}  // namespace

TEST_CASE("text dit matches the PyTorch reference (cross-attention with a padding mask)") {
  auto sd = safetensors::load(golden("dit_text_weights.safetensors"));
  auto io = as_map(safetensors::load(golden("dit_text_io.safetensors")));
  auto m = load_dit(sd, /*heads=*/4);
  const DiTConfig& c = m->config();
  CHECK(c.context_dim == 32);
  CHECK(c.num_classes == 0);
  CHECK(c.learn_sigma);
  CHECK(c.patch == 2);
  CHECK(!m->y_embedder);
  DiTCond cond;
  cond.context = ag::Var(io.at("context"));
  cond.context_mask = io.at("context_mask");
  cond.pooled = ag::Var(io.at("pooled"));
  ag::Var out = m->forward(ag::Var(io.at("x")), io.at("t"), cond);
  auto cmp = test::compare(out.data(), io.at("out"), 1e-4);
  MESSAGE("text: rel err ", cmp.rel_err);
  CHECK(cmp.ok);
  // The mask matters: the padded tokens hold large values, attending to them changes the output.
  cond.context_mask = Tensor();
  CHECK(!test::compare(m->forward(ag::Var(io.at("x")), io.at("t"), cond).data(), io.at("out"), 1e-2)
             .ok);
}

TEST_CASE("a fresh text dit outputs exactly zero; names, init and config inference") {
  Generator g(4);
  DiT m(tiny_text(), g);
  CHECK(!m.y_embedder);
  REQUIRE(m.pool_embedder);
  std::set<std::string> names;
  for (auto& [n, p] : m.named_parameters()) {
    names.insert(n);
    const bool zero =
        n.find("adaLN_modulation") != std::string::npos || n.rfind("final_layer.linear", 0) == 0 ||
        n.find("cross_attn.proj") != std::string::npos || n.find(".bias") != std::string::npos;
    auto v = test::as_doubles(p.data());
    double mx = 0, s2 = 0;
    for (double d : v) mx = std::max(mx, std::abs(d)), s2 += d * d;
    INFO(n);
    if (zero)
      CHECK(mx == 0.0);
    else
      CHECK(mx > 0.0);
    if (n.rfind("pool_embedder", 0) == 0 && n.find("weight") != std::string::npos)
      CHECK(std::sqrt(s2 / static_cast<double>(v.size())) == doctest::Approx(0.02).epsilon(0.1));
  }
  for (const char* n :
       {"pool_embedder.mlp.0.weight", "pool_embedder.mlp.2.bias", "blocks.0.cross_attn.q.weight",
        "blocks.0.cross_attn.kv.weight", "blocks.1.cross_attn.proj.bias"})
    CHECK(names.count(n) == 1);
  for (const auto& n : names) CHECK(n.rfind("y_embedder", 0) != 0);
  // The torch reference has the same names.
  std::set<std::string> torch_names;
  for (const auto& [k, t] : safetensors::load(golden("dit_text_weights.safetensors")))
    torch_names.insert(k);
  std::set<std::string> mine;
  for (const auto& [k, t] : m.state_dict()) mine.insert(k);
  CHECK(mine == torch_names);

  Tensor x = nn::convert_float(test::normal(g, {2, 4, 8, 8}), DType::F32);
  Tensor t = Tensor::from_vector(std::vector<float>{5.f, 500.f}, Shape{2});
  DiTCond cond;
  cond.context = ag::Var(nn::convert_float(test::normal(g, {2, 3, 32}), DType::F32));
  cond.context_mask = Tensor::from_vector(std::vector<int32_t>{1, 1, 0, 1, 0, 0}, Shape{2, 3});
  cond.pooled = ag::Var(nn::convert_float(test::normal(g, {2, 32}), DType::F32));
  ag::Var out = m.forward(ag::Var(x), t, cond);
  CHECK(out.shape() == Shape{2, 8, 8, 8});
  for (double d : test::as_doubles(out.data())) REQUIRE(d == 0.0);

  DiTConfig r = infer_dit_config(m.state_dict());
  CHECK(r.context_dim == 32);
  CHECK(r.num_classes == 0);
  CHECK(r.hidden == 64);
  CHECK(r.depth == 2);
  CHECK(infer_dit_config(DiT(tiny(2, true), g).state_dict()).context_dim == 0);
  // A model with both labels and text is possible at this level.
  DiTConfig both = tiny_text();
  both.num_classes = 5;
  DiT mb(both, g);
  DiTConfig rb = infer_dit_config(mb.state_dict());
  CHECK(rb.num_classes == 5);
  CHECK(rb.context_dim == 32);
}

TEST_CASE("dit forward rejects missing or unexpected conditions") {
  Generator g(5);
  DiT text(tiny_text(), g);
  DiT cls(tiny(2, false), g);
  ag::Var x(nn::convert_float(test::normal(g, {1, 4, 8, 8}), DType::F32));
  Tensor t = Tensor::from_vector(std::vector<float>{5.f}, Shape{1});
  Tensor y = Tensor::from_vector(std::vector<int64_t>{1}, Shape{1});
  ag::Var ctx(Tensor::zeros(Shape{1, 2, 32}));
  ag::Var pooled(Tensor::zeros(Shape{1, 32}));
  CHECK_THROWS_WITH_AS(text.forward(x, t, DiTCond{}), doctest::Contains("context must be"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(text.forward(x, t, y), doctest::Contains("num_classes 0"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(text.forward(x, t, DiTCond{Tensor(), ctx, Tensor(), ag::Var()}),
                       doctest::Contains("pooled must be"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      text.forward(x, t, DiTCond{Tensor(), ctx, Tensor::zeros(Shape{1, 3}, DType::I32), pooled}),
      doctest::Contains("context_mask must be"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      text.forward(x, t,
                   DiTCond{Tensor(), ag::Var(Tensor::zeros(Shape{1, 2, 16})), Tensor(), pooled}),
      doctest::Contains("context must be (1, S, 32)"), std::invalid_argument);
  CHECK_NOTHROW(text.forward(x, t, DiTCond{Tensor(), ctx, Tensor(), pooled}));
  CHECK_THROWS_WITH_AS(cls.forward(x, t, DiTCond{y, ctx, Tensor(), pooled}),
                       doctest::Contains("context_dim 0"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(cls.forward(x, t, DiTCond{}), doctest::Contains("y must be"),
                       std::invalid_argument);
}
