// Module tree: names, state_dict round trips, load errors, clone, freezing, gradient accumulation.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "autograd/functions.h"
#include "nn/mlp.h"
#include "nn/serialize.h"
#include "nn_test_models.h"

using namespace psvae;
using namespace psvae::nn;

namespace {
std::vector<std::string> names_of(const NamedTensors& sd) {
  std::vector<std::string> n;
  for (const auto& [k, t] : sd) n.push_back(k);
  return n;
}

std::string temp_path(const std::string& stem) {
  return (std::filesystem::temp_directory_path() /
          (stem + "_" + std::to_string(::getpid()) + ".safetensors"))
      .string();
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
  return std::memcmp(ha.raw_data(), hb.raw_data(), ha.nbytes()) == 0;
}

Tensor input(uint64_t seed, const Shape& s) {
  Generator g(seed);
  Tensor t = Tensor::empty(s);
  g.normal_(t);
  return t;
}
}  // namespace

TEST_CASE("state_dict names follow timm / DINOv2 in registration order") {
  Generator g(1);
  TransformerBlock::Config c;
  c.dim = 8;
  c.heads = 2;
  TransformerBlock b(c, g);
  CHECK(names_of(b.state_dict()) ==
        std::vector<std::string>{"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                                 "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                                 "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
                                 "mlp.fc2.bias"});
  CHECK(b.attn->qkv->weight().shape() == Shape{24, 8});
  CHECK(b.num_parameters() == 2 * 8 + 24 * 8 + 24 + 8 * 8 + 8 + 2 * 8 + 32 * 8 + 32 + 8 * 32 + 8);

  c.swiglu = true;
  c.layerscale = 1e-5;
  TransformerBlock d(c, g);
  // DINOv2 rounding: int(4 * 8 * 2 / 3) = 21 -> 24.
  CHECK(d.mlp_hidden() == 24);
  CHECK(names_of(d.state_dict()) ==
        std::vector<std::string>{"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                                 "attn.proj.weight", "attn.proj.bias", "ls1.gamma", "norm2.weight",
                                 "norm2.bias", "mlp.w12.weight", "mlp.w12.bias", "mlp.w3.weight",
                                 "mlp.w3.bias", "ls2.gamma"});
  CHECK(d.swiglu->w12->weight().shape() == Shape{48, 8});

  test::TinyTransformer t({}, g);
  auto n = names_of(t.state_dict());
  // PyTorch's order: a module's own parameters, then its buffers, then each child.
  CHECK(n.front() == "pos_embed");
  CHECK(n[1] == "embed.weight");
  CHECK(n[2] == "blocks.0.norm1.weight");
  CHECK(std::find(n.begin(), n.end(), "blocks.1.mlp.fc2.bias") != n.end());
  CHECK(n.back() == "head.bias");
}

TEST_CASE("buffers are saved in the state_dict but are not parameters") {
  struct WithBuffer : Cloneable<WithBuffer> {
    struct Config {};
    WithBuffer(const Config&, Generator&) {
      register_parameter("w", Tensor::full({2}, 1.0));
      register_buffer("count", Tensor::from_vector(std::vector<int64_t>{7}, Shape{1}));
    }
    const Config& config() const { return cfg; }
    Config cfg;
  };
  Generator g(0);
  WithBuffer m({}, g);
  CHECK(m.named_parameters().size() == 1);
  CHECK(names_of(m.named_buffers()) == std::vector<std::string>{"count"});
  CHECK(names_of(m.state_dict()) == std::vector<std::string>{"w", "count"});
  auto c = m.clone();
  CHECK(c->named_buffers()[0].second.to_vector<int64_t>()[0] == 7);
}

TEST_CASE("state_dict round trip through a safetensors file is bit-exact") {
  Generator g1(11), g2(22);
  test::TinyTransformer a({}, g1), b({}, g2);
  // Different seeds: b starts different from a.
  CHECK_FALSE(same_bytes(a.head->weight().data(), b.head->weight().data()));
  std::string path = temp_path("psvae_nn_roundtrip");
  save_module(a, path, {{"step", "42"}});
  safetensors::Metadata meta = load_module(b, path);
  CHECK(meta.at("step") == "42");
  auto sa = a.state_dict(), sb = b.state_dict();
  REQUIRE(sa.size() == sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    INFO(sa[i].first);
    CHECK(sa[i].first == sb[i].first);
    CHECK(same_bytes(sa[i].second, sb[i].second));
  }
  std::filesystem::remove(path);
}

TEST_CASE("load_state_dict converts f64 and bf16 into the module's f32 tensors") {
  Generator g(3);
  Linear lin(2, 2, true, g);
  NamedTensors sd = {
      {"weight", Tensor::from_vector(std::vector<double>{1.5, -2.0, 0.25, 3.0}, Shape{2, 2})},
      {"bias", Tensor::from_vector(std::vector<bf16>{bf16(0.5f), bf16(-1.0f)}, Shape{2})}};
  lin.load_state_dict(sd);
  CHECK(lin.weight().dtype() == DType::F32);
  CHECK(lin.weight().data().to_vector<float>() == std::vector<float>{1.5f, -2.0f, 0.25f, 3.0f});
  CHECK(lin.bias()->data().to_vector<float>() == std::vector<float>{0.5f, -1.0f});
}

TEST_CASE("load errors name every key and both shapes") {
  Generator g(5);
  Linear lin(4, 3, true, g);
  auto sd = lin.state_dict();

  NamedTensors missing = {sd[0]};  // no bias
  CHECK_THROWS_WITH_AS(lin.load_state_dict(missing),
                       "load_state_dict: 1 problem: missing key 'bias'", std::runtime_error);
  CHECK_NOTHROW(lin.load_state_dict(missing, /*strict=*/false));

  NamedTensors extra = sd;
  extra.emplace_back("head.bias", Tensor::zeros({3}));
  CHECK_THROWS_WITH_AS(lin.load_state_dict(extra),
                       "load_state_dict: 1 problem: unexpected key 'head.bias'",
                       std::runtime_error);
  CHECK_NOTHROW(lin.load_state_dict(extra, false));

  NamedTensors misshaped = {{"weight", Tensor::zeros({3, 5})}, sd[1]};
  CHECK_THROWS_WITH_AS(
      lin.load_state_dict(misshaped),
      "load_state_dict: 1 problem: key 'weight': expected shape (3, 4), got (3, 5)",
      std::runtime_error);
  // A shape mismatch is an error even when not strict.
  CHECK_THROWS_AS(lin.load_state_dict(misshaped, false), std::runtime_error);

  // Everything wrong at once: all listed in one message; nothing copied.
  Tensor before = lin.weight().data().clone();
  NamedTensors all_wrong = {
      {"weight", Tensor::zeros({4, 4})}, {"x.a", Tensor::zeros({1})}, {"x.b", Tensor::zeros({1})}};
  CHECK_THROWS_WITH_AS(lin.load_state_dict(all_wrong),
                       "load_state_dict: 4 problems: key 'weight': expected shape (3, 4), got (4, "
                       "4); missing key 'bias'; unexpected key 'x.a'; unexpected key 'x.b'",
                       std::runtime_error);
  CHECK(same_bytes(before, lin.weight().data()));

  // Nested names, and through a file: the message starts with the path.
  test::TinyTransformer t({}, g);
  auto tsd = t.state_dict();
  NamedTensors partial;
  for (auto& kv : tsd)
    if (kv.first != "blocks.0.norm1.weight") partial.push_back(kv);
  std::string path = temp_path("psvae_nn_missing");
  safetensors::save(path, partial);
  CHECK_THROWS_WITH_AS(load_module(t, path),
                       doctest::Contains("missing key 'blocks.0.norm1.weight'"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(load_module(t, path), doctest::Contains(path.c_str()), std::runtime_error);
  std::filesystem::remove(path);
}

TEST_CASE("clone is an independent deep copy") {
  Generator g(7);
  TransformerBlock::Config c;
  c.dim = 16;
  c.heads = 2;
  c.layerscale = 0.5;
  auto orig = std::make_shared<TransformerBlock>(c, g);
  orig->attn->qkv->bias()->set_requires_grad(false);
  orig->eval();
  auto copy = std::dynamic_pointer_cast<TransformerBlock>(orig->clone());
  REQUIRE(copy);
  CHECK_FALSE(copy->is_training());
  CHECK_FALSE(copy->attn->qkv->bias()->requires_grad());
  CHECK(copy->attn->qkv->weight().requires_grad());

  Var x(input(1, {2, 5, 16}));
  Tensor y0 = orig->forward(x).data().clone();
  CHECK(same_bytes(copy->forward(x).data(), y0));

  // Changing the clone's weights changes neither the original's weights nor its output.
  Tensor w0 = orig->mlp->fc1->weight().data().clone();
  for (auto& [n, p] : copy->named_parameters()) {
    Tensor d = p.data();
    d.fill_(0.125);
  }
  CHECK(same_bytes(orig->mlp->fc1->weight().data(), w0));
  CHECK(same_bytes(orig->forward(x).data(), y0));
  CHECK_FALSE(same_bytes(copy->forward(x).data(), y0));

  // ModuleList children are cloned too.
  test::TinyTransformer t({}, g);
  auto tc = std::dynamic_pointer_cast<test::TinyTransformer>(t.clone());
  Tensor ids = Tensor::from_vector(std::vector<int64_t>(8, 3), Shape{1, 8});
  CHECK(same_bytes(tc->forward(ids).data(), t.forward(ids).data()));
  Tensor d = tc->blocks->at<TransformerBlock>(1).norm2->named_parameters()[0].second.data();
  d.fill_(2.0);
  CHECK_FALSE(same_bytes(tc->forward(ids).data(), t.forward(ids).data()));
}

TEST_CASE("frozen parameters get no gradient") {
  Generator g(9);
  Mlp m({3, 4, 2, Activation::GeluTanh}, g);
  m.fc1->set_requires_grad(false);
  Var x(input(2, {5, 3}), true);
  ag::sum_all(m.forward(x)).backward();
  CHECK_FALSE(m.fc1->weight().grad().defined());
  CHECK_FALSE(m.fc1->bias()->grad().defined());
  CHECK(m.fc2->weight().grad().defined());
  CHECK(x.grad().defined());

  m.zero_grad();
  x.zero_grad();
  m.set_requires_grad(false);
  ag::sum_all(m.forward(x)).backward();
  for (auto& [n, p] : m.named_parameters()) {
    INFO(n);
    CHECK_FALSE(p.grad().defined());
  }
  CHECK(x.grad().defined());  // the input still gets its gradient through the frozen model

  m.set_requires_grad(true);
  ag::sum_all(m.forward(x)).backward();
  CHECK(m.fc1->weight().grad().defined());
}

TEST_CASE("parameter gradients accumulate over backward passes; zero_grad clears them") {
  Generator g(4);
  Linear lin(3, 2, true, g);
  // loss = sum(x W^T + b): dW[o][i] = sum_n x[n][i], db[o] = N (= 4).
  Tensor xt = Tensor::from_vector(std::vector<float>{1, 2, 3, -1, 0.5f, 2, 0, 0, 1, 4, -2, 0.25f},
                                  Shape{4, 3});
  Var x(xt);
  for (int pass = 1; pass <= 2; ++pass) {
    ag::sum_all(lin.forward(x)).backward();
    std::vector<float> gw = lin.weight().grad().to_vector<float>();
    std::vector<float> col = {4.0f, 0.5f, 6.25f};
    for (int o = 0; o < 2; ++o)
      for (int i = 0; i < 3; ++i)
        CHECK(gw[static_cast<size_t>(o * 3 + i)] ==
              doctest::Approx(pass * col[static_cast<size_t>(i)]));
    CHECK(lin.bias()->grad().to_vector<float>() == std::vector<float>{4.0f * pass, 4.0f * pass});
  }
  lin.zero_grad();
  CHECK_FALSE(lin.weight().grad().defined());
  CHECK_FALSE(lin.bias()->grad().defined());
}

TEST_CASE("Module::to(DType) converts parameters; train/eval flags propagate") {
  Generator g(8);
  test::TinyTransformer t({}, g);
  t.eval();
  CHECK_FALSE(t.blocks->at<TransformerBlock>(0).attn->is_training());
  t.train();
  CHECK(t.head->is_training());
  auto before = t.head->weight().data().to_vector<float>();
  t.to(DType::F64);
  for (auto& [n, p] : t.named_parameters()) CHECK(p.dtype() == DType::F64);
  auto after = t.head->weight().data().to_vector<double>();
  for (size_t i = 0; i < before.size(); ++i) CHECK(after[i] == static_cast<double>(before[i]));
}
