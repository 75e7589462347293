// TextEncoder (dit/text_encoder.h): parity with the plain-torch encoder of
// tests/reference/dit_golden.py, pooled = masked mean, padding never changes the real tokens'
// outputs, the initialisation, errors, and a gradcheck in f64.
#include <doctest/doctest.h>

#include <set>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "common/test_util.h"
#include "dit/text_encoder.h"

using namespace psvae;
using namespace psvae::dit;

namespace {

TextEncoderConfig small_cfg() {
  TextEncoderConfig c;
  c.vocab = 20, c.max_len = 8, c.dim = 32, c.depth = 2, c.heads = 4;
  return c;
}

Tensor ids_of(const std::vector<int64_t>& v, int64_t n, int64_t l) {
  return Tensor::from_vector(v, Shape{n, l});
}
Tensor mask_of(const std::vector<int32_t>& v, int64_t n, int64_t l) {
  return Tensor::from_vector(v, Shape{n, l});
}

// Random weights everywhere (the golden script's scheme is not needed, only O(1) activations).
void randomise(nn::Module& m, Generator& g, double std = 0.3) {
  for (auto& [n, p] : m.named_parameters()) {
    Tensor t = p.data();
    g.normal_(
        t, n.find("norm") != std::string::npos && n.find("weight") != std::string::npos ? 1.0 : 0.0,
        std);
  }
}

}  // namespace

TEST_CASE("text encoder matches the PyTorch reference") {
  auto sd = safetensors::load(test::golden("text_encoder_weights.safetensors"));
  auto io = test::as_map(safetensors::load(test::golden("text_encoder_io.safetensors")));
  Generator g(0);
  TextEncoder m(small_cfg(), g);
  m.load_state_dict(sd, true);  // same names, strict
  TextEncoder::Output o = m.forward(io.at("ids"), io.at("mask"));
  auto ct = test::compare(o.tokens.data(), io.at("tokens"), 1e-4);
  auto cp = test::compare(o.pooled.data(), io.at("pooled"), 1e-4);
  MESSAGE("tokens rel err ", ct.rel_err, ", pooled rel err ", cp.rel_err);
  CHECK(ct.ok);
  CHECK(cp.ok);
}

TEST_CASE("text encoder: pooled is the masked mean; padding does not change real tokens") {
  Generator g(3);
  TextEncoder m(small_cfg(), g);
  randomise(m, g);
  Tensor ids = ids_of({2, 5, 9, 0, 2, 7, 7, 19}, 2, 4);
  Tensor mask = mask_of({1, 1, 1, 0, 1, 1, 1, 1}, 2, 4);
  TextEncoder::Output o = m.forward(ids, mask);
  REQUIRE(o.tokens.shape() == Shape{2, 4, 32});
  REQUIRE(o.pooled.shape() == Shape{2, 32});
  auto tok = test::as_doubles(o.tokens.data()), pool = test::as_doubles(o.pooled.data());
  for (int64_t n = 0; n < 2; ++n) {
    const int64_t real = n == 0 ? 3 : 4;
    for (int64_t d = 0; d < 32; ++d) {
      double s = 0;
      for (int64_t l = 0; l < real; ++l) s += tok[static_cast<size_t>((n * 4 + l) * 32 + d)];
      CHECK(pool[static_cast<size_t>(n * 32 + d)] == doctest::Approx(s / real).epsilon(1e-5));
    }
  }
  // Extend the padding to 7 tokens, with arbitrary ids under the mask: real tokens and pooled
  // are unchanged (the key padding mask hides the padding from every real query).
  Tensor ids2 = ids_of({2, 5, 9, 11, 13, 0, 3, 2, 7, 7, 19, 4, 4, 4}, 2, 7);
  Tensor mask2 = mask_of({1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0}, 2, 7);
  TextEncoder::Output o2 = m.forward(ids2, mask2);
  auto tok2 = test::as_doubles(o2.tokens.data());
  double worst = 0, scale = 0;
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t l = 0; l < (n == 0 ? 3 : 4); ++l)
      for (int64_t d = 0; d < 32; ++d) {
        const double a = tok[static_cast<size_t>((n * 4 + l) * 32 + d)];
        const double b = tok2[static_cast<size_t>((n * 7 + l) * 32 + d)];
        worst = std::max(worst, std::abs(a - b));
        scale = std::max(scale, std::abs(a));
      }
  CHECK(scale > 0.1);
  CHECK(worst <= 1e-5 * scale);
  CHECK(test::compare(o2.pooled.data(), o.pooled.data(), 1e-6).ok);
  // Without the mask the padding does leak in (the test above can fail).
  Tensor all = mask_of(std::vector<int32_t>(14, 1), 2, 7);
  CHECK(!test::compare(m.forward(ids2, all).pooled.data(), o.pooled.data(), 1e-3).ok);
}

TEST_CASE("text encoder init, state names and errors") {
  Generator g(1);
  TextEncoderConfig c = small_cfg();
  c.vocab = 500, c.dim = 64;
  TextEncoder m(c, g);
  std::set<std::string> names;
  for (auto& [n, p] : m.named_parameters()) {
    names.insert(n);
    auto v = test::as_doubles(p.data());
    double s2 = 0, mx = 0;
    for (double d : v) s2 += d * d, mx = std::max(mx, std::abs(d));
    INFO(n);
    if (n == "token_embedding.weight" || n == "pos_embed")
      CHECK(std::sqrt(s2 / static_cast<double>(v.size())) == doctest::Approx(0.02).epsilon(0.1));
    else if (n.find("norm") != std::string::npos && n.find(".weight") != std::string::npos)
      CHECK(test::as_doubles(p.data()) == std::vector<double>(v.size(), 1.0));
    else if (n.find(".bias") != std::string::npos)
      CHECK(mx == 0.0);
    else  // xavier_uniform: bound sqrt(6 / (fan_in + fan_out))
      CHECK(mx <= std::sqrt(6.0 / static_cast<double>(p.size(0) + p.size(1))));
  }
  for (const char* n : {"token_embedding.weight", "pos_embed", "blocks.0.norm1.weight",
                        "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.bias", "norm.weight"})
    CHECK(names.count(n) == 1);

  Tensor ids = ids_of({2, 5, 0, 0}, 2, 2);
  CHECK_THROWS_WITH_AS(m.forward(ids, mask_of({1, 1, 0, 0}, 2, 2)), doctest::Contains("no token"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(m.forward(ids_of(std::vector<int64_t>(9, 2), 1, 9),
                                 mask_of(std::vector<int32_t>(9, 1), 1, 9)),
                       doctest::Contains("max_len 8"), std::invalid_argument);
  CHECK_THROWS_AS(m.forward(ids, mask_of({1, 1, 1}, 1, 3)), std::invalid_argument);
  CHECK_THROWS_AS(
      m.forward(ids, Tensor::from_vector(std::vector<int64_t>{1, 1, 1, 1}, Shape{2, 2})),
      std::invalid_argument);
  // depth 0 (model.text.depth allows it): embeddings and the final norm only.
  TextEncoderConfig flat = small_cfg();
  flat.depth = 0;
  TextEncoder f(flat, g);
  CHECK(f.forward(ids, mask_of({1, 1, 1, 0}, 2, 2)).tokens.shape() == Shape{2, 2, 32});
  TextEncoderConfig bad = small_cfg();
  bad.heads = 5;
  CHECK_THROWS_AS(TextEncoder(bad, g), std::invalid_argument);
}

TEST_CASE("text encoder gradchecks in f64") {
  TextEncoderConfig c;
  c.vocab = 7, c.max_len = 5, c.dim = 8, c.depth = 1, c.heads = 2, c.mlp_ratio = 2.0;
  Generator g(11);
  TextEncoder m(c, g);
  m.to(DType::F64);
  randomise(m, g, 0.5);
  Tensor ids = ids_of({2, 4, 6, 0, 2, 1, 3, 5}, 2, 4);
  Tensor mask = mask_of({1, 1, 1, 0, 1, 1, 1, 1}, 2, 4);
  std::vector<Tensor> inputs;
  std::vector<bool> wrt;
  const std::set<std::string> checked = {"token_embedding.weight", "pos_embed",
                                         "blocks.0.attn.qkv.weight", "blocks.0.norm2.bias",
                                         "norm.weight"};
  for (auto& [n, p] : m.named_parameters()) {
    inputs.push_back(p.data().clone());
    wrt.push_back(checked.count(n) > 0);
  }
  auto f = [&](const std::vector<ag::Var>& v) {
    m.bind_parameters(v);
    TextEncoder::Output o = m.forward(ids, mask);
    return ag::concat({ag::reshape(o.tokens, {2, -1}), o.pooled}, 1);
  };
  ag::GradcheckResult r = ag::gradcheck(f, inputs, wrt);
  INFO(r.report);
  CHECK(r.ok);
}
