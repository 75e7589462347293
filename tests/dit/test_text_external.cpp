// ExternalEmbeddings (dit/external_embeddings.h): a round trip through a temporary safetensors
// file, bf16 / i64 inputs, the masked-mean pooled vector, and every load and lookup error.
#include <doctest/doctest.h>

#include "common/test_util.h"
#include "dit/external_embeddings.h"
#include "nn/module.h"

using namespace psvae;
using namespace psvae::dit;

namespace {

constexpr int64_t K = 3, L = 4, D = 5;

struct Fixture {
  test::TempDir dir{"extemb"};
  Tensor emb, mask;
  std::string captions = R"(["", "a red circle", "say \"hi\"\n"])";
  Fixture() {
    Generator g(2);
    emb = nn::convert_float(test::normal(g, {K, L, D}), DType::F32);
    mask =
        Tensor::from_vector(std::vector<int32_t>{1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1}, Shape{K, L});
  }
  std::string write(const safetensors::NamedTensors& t, const safetensors::Metadata& m,
                    const std::string& name = "e.safetensors") const {
    const std::string p = dir / name;
    safetensors::save(p, t, m);
    return p;
  }
  std::string good() const { return write({{"embeddings", emb}, {"mask", mask}}, meta()); }
  safetensors::Metadata meta() const { return {{"captions", captions}}; }
};

}  // namespace

TEST_CASE("external embeddings: load and lookup round trip") {
  Fixture f;
  const std::string path = f.good();
  ExternalEmbeddings e = ExternalEmbeddings::load(path);
  CHECK(e.size() == K);
  CHECK(e.max_len() == L);
  CHECK(e.dim() == D);
  CHECK(e.path() == path);
  CHECK(e.contains(""));
  CHECK(e.contains("say \"hi\"\n"));
  CHECK(!e.contains("a blue circle"));

  ExternalEmbeddings::Batch b = e.lookup({"a red circle", "", "a red circle"}, Device::cpu());
  REQUIRE(b.tokens.shape() == Shape{3, L, D});
  REQUIRE(b.mask.shape() == Shape{3, L});
  REQUIRE(b.pooled.shape() == Shape{3, D});
  CHECK(b.tokens.dtype() == DType::F32);
  CHECK(b.mask.dtype() == DType::I32);
  auto src = test::as_doubles(f.emb), tok = test::as_doubles(b.tokens),
       pooled = test::as_doubles(b.pooled);
  const int64_t rows[3] = {1, 0, 1};
  for (int64_t n = 0; n < 3; ++n) {
    const int64_t k = rows[n];
    for (int64_t i = 0; i < L * D; ++i)
      CHECK(tok[static_cast<size_t>(n * L * D + i)] == src[static_cast<size_t>(k * L * D + i)]);
    const int64_t real = k == 0 ? 1 : 3;  // row 0 has one token, row 1 three
    for (int64_t d = 0; d < D; ++d) {
      double s = 0;
      for (int64_t l = 0; l < real; ++l) s += src[static_cast<size_t>((k * L + l) * D + d)];
      CHECK(pooled[static_cast<size_t>(n * D + d)] == doctest::Approx(s / real).epsilon(1e-6));
    }
  }
  CHECK(b.mask.to_vector<int32_t>() == std::vector<int32_t>{1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0});
  CHECK_THROWS_WITH_AS(e.lookup({"a blue circle"}, Device::cpu()),
                       doctest::Contains("no caption \"a blue circle\""), std::runtime_error);
  CHECK_THROWS_WITH_AS(e.lookup({"a blue circle"}, Device::cpu()), doctest::Contains(path.c_str()),
                       std::runtime_error);
}

TEST_CASE("external embeddings accept bf16 embeddings and an i64 mask") {
  Fixture f;
  std::vector<int64_t> m64;
  for (int32_t v : f.mask.to_vector<int32_t>()) m64.push_back(v);
  const std::string p = f.write({{"embeddings", nn::convert_float(f.emb, DType::BF16)},
                                 {"mask", Tensor::from_vector(m64, Shape{K, L})}},
                                f.meta());
  ExternalEmbeddings e = ExternalEmbeddings::load(p);
  auto b = e.lookup({"say \"hi\"\n"}, Device::cpu());
  auto want = test::as_doubles(nn::convert_float(f.emb, DType::BF16));
  auto got = test::as_doubles(b.tokens);
  for (int64_t i = 0; i < L * D; ++i)
    CHECK(got[static_cast<size_t>(i)] == want[static_cast<size_t>(2 * L * D + i)]);
}

TEST_CASE("external embeddings load errors name the file and what is wrong") {
  Fixture f;
  auto bad = [&](const safetensors::NamedTensors& t, const safetensors::Metadata& m,
                 const std::string& what) {
    const std::string p = f.write(t, m, "bad.safetensors");
    INFO(what);
    CHECK_THROWS_WITH_AS(ExternalEmbeddings::load(p), doctest::Contains(what.c_str()),
                         std::runtime_error);
    CHECK_THROWS_WITH_AS(ExternalEmbeddings::load(p), doctest::Contains(p.c_str()),
                         std::runtime_error);
  };
  const auto meta = f.meta();
  bad({{"mask", f.mask}}, meta, "missing tensor 'embeddings'");
  bad({{"embeddings", f.emb}}, meta, "missing tensor 'mask'");
  bad({{"embeddings", f.emb.reshape({K, L * D})}, {"mask", f.mask}}, meta,
      "'embeddings' has shape (3, 20), expected (K, L, D)");
  bad({{"embeddings", Tensor::zeros(Shape{K, L, D}, DType::I32)}, {"mask", f.mask}}, meta,
      "expected f32 or bf16");
  // L of the mask differs from L of the embeddings; then K.
  bad({{"embeddings", f.emb}, {"mask", Tensor::zeros(Shape{K, L + 1}, DType::I32)}}, meta,
      "'mask' has shape (3, 5), expected (3, 4)");
  bad({{"embeddings", f.emb}, {"mask", f.mask.slice0(0, 2)}}, meta,
      "'mask' has shape (2, 4), expected (3, 4)");
  bad({{"embeddings", f.emb}, {"mask", Tensor::zeros(Shape{K, L}, DType::F32)}}, meta,
      "expected i32 or i64");
  Tensor no_tok = f.mask.clone();
  for (int64_t l = 0; l < L; ++l) no_tok.data<int32_t>()[1 * L + l] = 0;
  bad({{"embeddings", f.emb}, {"mask", no_tok}}, meta, "'mask' row 1 has no token");
  Tensor two = f.mask.clone();
  two.data<int32_t>()[5] = 2;
  bad({{"embeddings", f.emb}, {"mask", two}}, meta, "row 1 holds 2");
  const safetensors::NamedTensors ok = {{"embeddings", f.emb}, {"mask", f.mask}};
  bad(ok, {}, "missing metadata 'captions'");
  bad(ok, {{"captions", "[\"a\", "}}, "'captions' is not valid JSON");
  bad(ok, {{"captions", "{\"a\": 1}"}}, "JSON array of 3 strings");
  bad(ok, {{"captions", "[\"\", \"a\"]"}}, "JSON array of 3 strings");
  bad(ok, {{"captions", "[\"\", \"a\", 3]"}}, "entry 3 is not a string");
  bad(ok, {{"captions", "[\"\", \"a\", \"a\"]"}}, "has \"a\" twice");
  CHECK_THROWS_AS(ExternalEmbeddings::load(f.dir / "absent.safetensors"), std::runtime_error);
}
