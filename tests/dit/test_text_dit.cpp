// ConditionalDiT (dit/conditional_dit.h): the three conditioning kinds, their errors, the null
// condition, clone, and a gradcheck (f64) of a tiny text DiT through the text encoder.
#include <doctest/doctest.h>

#include <set>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "common/test_util.h"
#include "dit/conditional_dit.h"

using namespace psvae;
using namespace psvae::dit;

namespace {

const std::vector<std::string> kCaptions = {"a red circle on the left", "a blue square",
                                            "a green triangle at the top", ""};

ConditionalDiTConfig tiny_cfg(CondKind kind) {
  ConditionalDiTConfig c;
  c.kind = kind;
  c.dit.input_size = 4, c.dit.patch = 2, c.dit.in_channels = 2, c.dit.hidden = 8;
  c.dit.depth = 1, c.dit.heads = 2, c.dit.num_classes = 3, c.dit.learn_sigma = true;
  c.text.max_len = 6, c.text.dim = 8, c.text.depth = 1, c.text.heads = 2, c.text.mlp_ratio = 2.0;
  return c;
}

void randomise(nn::Module& m, Generator& g, double std) {
  for (auto& [n, p] : m.named_parameters()) {
    Tensor t = p.data();
    g.normal_(t, 0.0, std);
  }
}

}  // namespace

TEST_CASE("cond kind names") {
  CHECK(parse_cond_kind("class") == CondKind::class_label);
  CHECK(parse_cond_kind("text") == CondKind::text);
  CHECK(parse_cond_kind("external") == CondKind::external);
  for (CondKind k : {CondKind::class_label, CondKind::text, CondKind::external})
    CHECK(parse_cond_kind(cond_kind_name(k)) == k);
  CHECK_THROWS_WITH_AS(parse_cond_kind("clip"), doctest::Contains("class, text, external"),
                       std::invalid_argument);
}

TEST_CASE("conditional dit, kind class: labels in, captions rejected") {
  Generator g(0);
  ConditionalDiT m(tiny_cfg(CondKind::class_label), g);
  CHECK(!m.text_encoder);
  CHECK(m.config().dit.context_dim == 0);
  Condition c;
  c.labels = {0, 3};
  DiTCond d = m.encode(c, Device::cpu());
  CHECK(d.y.to_vector<int64_t>() == std::vector<int64_t>{0, 3});
  CHECK(!d.context.defined());
  CHECK(m.null_condition(2).labels == std::vector<int64_t>{3, 3});
  Condition caps;
  caps.captions = {"a red circle"};
  CHECK_THROWS_WITH_AS(m.encode(caps, Device::cpu()), doctest::Contains("class-conditional"),
                       std::invalid_argument);
  Condition out_of_range;
  out_of_range.labels = {4};
  CHECK_THROWS_WITH_AS(m.encode(out_of_range, Device::cpu()), doctest::Contains("label 4"),
                       std::invalid_argument);
  CHECK_THROWS_AS(m.encode(Condition{}, Device::cpu()), std::invalid_argument);
  Condition both;
  both.labels = {1};
  both.captions = {"x"};
  CHECK_THROWS_AS(m.encode(both, Device::cpu()), std::invalid_argument);
  // State names: dit.* only.
  for (const auto& [k, t] : m.state_dict()) CHECK(k.rfind("dit.", 0) == 0);
}

TEST_CASE("conditional dit, kind text: captions through the tokenizer and text encoder") {
  Generator g(1);
  WordTokenizer tok = WordTokenizer::train(kCaptions);
  ConditionalDiT m(tiny_cfg(CondKind::text), g, tok);
  REQUIRE(m.text_encoder);
  CHECK(m.config().text.vocab == tok.vocab_size());
  CHECK(m.config().dit.context_dim == 8);
  CHECK(m.config().dit.num_classes == 0);
  CHECK(!m.dit->y_embedder);
  bool has_text = false;
  for (const auto& [k, t] : m.state_dict()) {
    CHECK((k.rfind("dit.", 0) == 0 || k.rfind("text_encoder.", 0) == 0));
    has_text |= k == "text_encoder.token_embedding.weight";
  }
  CHECK(has_text);

  Condition c;
  c.captions = {"a blue square", ""};
  DiTCond d = m.encode(c, Device::cpu());
  // Padded to the longest caption of the batch: [BOS] a blue square.
  CHECK(d.context.shape() == Shape{2, 4, 8});
  CHECK(d.context_mask.to_vector<int32_t>() == std::vector<int32_t>{1, 1, 1, 1, 1, 0, 0, 0});
  CHECK(d.pooled.shape() == Shape{2, 8});
  CHECK(!d.y.defined());
  // Cut at max_len (6 ids).
  Condition longc;
  longc.captions = {"a red circle on the left and more words"};
  CHECK(m.encode(longc, Device::cpu()).context.shape() == Shape{1, 6, 8});
  CHECK(m.null_condition(3).captions == std::vector<std::string>(3, ""));
  Condition labels;
  labels.labels = {1};
  CHECK_THROWS_WITH_AS(m.encode(labels, Device::cpu()), doctest::Contains("pass captions"),
                       std::invalid_argument);

  // A fresh model outputs exactly zero; clone keeps the tokenizer and the weights.
  Tensor x = test::normal(g, {2, 2, 4, 4});
  Tensor t = Tensor::from_vector(std::vector<float>{3.f, 700.f}, Shape{2});
  ag::Var x32(nn::convert_float(x, DType::F32));
  for (double v : test::as_doubles(m.forward(x32, t, d).data())) REQUIRE(v == 0.0);
  randomise(m, g, 0.3);
  auto cl = std::dynamic_pointer_cast<ConditionalDiT>(m.clone());
  REQUIRE(cl);
  CHECK(cl->tokenizer().words() == tok.words());
  ag::Var a = m.forward(x32, t, m.encode(c, Device::cpu()));
  ag::Var b = cl->forward(x32, t, cl->encode(c, Device::cpu()));
  CHECK(test::compare(b.data(), a.data(), 0.0).ok);
  CHECK(test::as_doubles(a.data()) != std::vector<double>(static_cast<size_t>(a.numel()), 0.0));
}

TEST_CASE("conditional dit, kind external: lookups from the embeddings file") {
  test::TempDir dir("cdit_ext");
  Generator g(2);
  const int64_t K = 2, L = 3, D = 6;
  Tensor emb = nn::convert_float(test::normal(g, {K, L, D}), DType::F32);
  Tensor mask = Tensor::from_vector(std::vector<int32_t>{1, 0, 0, 1, 1, 1}, Shape{K, L});
  safetensors::save(dir / "e.safetensors", {{"embeddings", emb}, {"mask", mask}},
                    {{"captions", R"(["", "a red circle"])"}});
  auto ext =
      std::make_shared<const ExternalEmbeddings>(ExternalEmbeddings::load(dir / "e.safetensors"));
  CHECK_THROWS_WITH_AS(ConditionalDiT(tiny_cfg(CondKind::external), g),
                       doctest::Contains("embeddings file"), std::invalid_argument);
  ConditionalDiT m(tiny_cfg(CondKind::external), g, {}, ext);
  CHECK(m.config().dit.context_dim == D);
  CHECK(!m.text_encoder);
  CHECK(m.external() == ext.get());
  Condition c;
  c.captions = {"a red circle", ""};
  DiTCond d = m.encode(c, Device::cpu());
  CHECK(d.context.shape() == Shape{2, L, D});
  CHECK(d.context_mask.to_vector<int32_t>() == std::vector<int32_t>{1, 1, 1, 1, 0, 0});
  CHECK(!d.context.requires_grad());
  auto want = test::as_doubles(emb), got = test::as_doubles(d.context.data());
  for (int64_t i = 0; i < L * D; ++i)
    CHECK(got[static_cast<size_t>(i)] == want[static_cast<size_t>(L * D + i)]);
  Condition unknown;
  unknown.captions = {"a blue circle"};
  CHECK_THROWS_WITH_AS(m.encode(unknown, Device::cpu()), doctest::Contains("a blue circle"),
                       std::runtime_error);
  randomise(m, g, 0.3);
  auto cl = std::dynamic_pointer_cast<ConditionalDiT>(m.clone());
  REQUIRE(cl);
  ag::Var x(nn::convert_float(test::normal(g, {2, 2, 4, 4}), DType::F32));
  Tensor t = Tensor::from_vector(std::vector<float>{3.f, 700.f}, Shape{2});
  CHECK(test::compare(cl->forward(x, t, cl->encode(c, Device::cpu())).data(),
                      m.forward(x, t, d).data(), 0.0)
            .ok);
}

TEST_CASE("text dit gradchecks in f64 through the text encoder") {
  Generator g(7);
  WordTokenizer tok = WordTokenizer::train(kCaptions);
  ConditionalDiT m(tiny_cfg(CondKind::text), g, tok);
  m.to(DType::F64);
  randomise(m, g, 0.5);  // the zero-initialised Linears would block every path
  Tensor x = test::normal(g, {2, 2, 4, 4});
  Tensor t = Tensor::from_vector(std::vector<double>{3.0, 250.0}, Shape{2});
  Condition cond;
  cond.captions = {"a red circle", "a green triangle at the top"};  // different lengths: padding
  const std::set<std::string> checked = {
      "text_encoder.token_embedding.weight",   "text_encoder.pos_embed",
      "text_encoder.blocks.0.attn.qkv.weight", "dit.blocks.0.cross_attn.kv.weight",
      "dit.blocks.0.cross_attn.q.bias",        "dit.pool_embedder.mlp.0.weight"};
  std::vector<Tensor> inputs{x};
  std::vector<bool> wrt{true};
  for (auto& [n, p] : m.named_parameters()) {
    inputs.push_back(p.data().clone());
    wrt.push_back(checked.count(n) > 0);
  }
  auto f = [&](const std::vector<ag::Var>& v) {
    m.bind_parameters(std::vector<ag::Var>(v.begin() + 1, v.end()));
    return m.forward(v[0], t, m.encode(cond, Device::cpu()));
  };
  ag::GradcheckResult r = ag::gradcheck(f, inputs, wrt);
  INFO(r.report);
  CHECK(r.ok);

  // One backward reaches every text encoder parameter.
  m.zero_grad();
  std::vector<ag::Var> fresh;
  for (size_t i = 1; i < inputs.size(); ++i) fresh.emplace_back(inputs[i], true);
  m.bind_parameters(fresh);
  ag::Var out = m.forward(ag::Var(x), t, m.encode(cond, Device::cpu()));
  ag::sum_all(ag::square(out)).backward();
  for (auto& [n, p] : m.named_parameters()) {
    if (n.rfind("text_encoder.", 0) != 0) continue;
    INFO(n);
    REQUIRE(p.grad().defined());
    double mx = 0;
    for (double v : test::as_doubles(p.grad())) mx = std::max(mx, std::abs(v));
    CHECK(mx > 0.0);
  }
}
