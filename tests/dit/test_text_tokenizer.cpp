// WordTokenizer (dit/tokenizer.h): normalisation, frequency-then-alphabetical ids, [UNK], [BOS]
// first, the max_len cut, padding and mask, decode, the JSON round trip and its errors.
#include <doctest/doctest.h>

#include <algorithm>

#include "dit/tokenizer.h"

using namespace psvae;
using namespace psvae::dit;

namespace {
// a x3, red x2, square x2, blue x1, circle x1.
const std::vector<std::string> kCaptions = {"a red circle", "a blue square", "A RED square!"};
}  // namespace

TEST_CASE("tokenizer normalisation: lower-case ASCII runs of [a-z0-9]") {
  using V = std::vector<std::string>;
  CHECK(WordTokenizer::split_words("A Red-circle, on the LEFT!") ==
        V{"a", "red", "circle", "on", "the", "left"});
  CHECK(WordTokenizer::split_words("  x2\ty_3\n") == V{"x2", "y", "3"});
  CHECK(WordTokenizer::split_words("caf\xc3\xa9 au lait") == V{"caf", "au", "lait"});  // UTF-8
  CHECK(WordTokenizer::split_words("").empty());
  CHECK(WordTokenizer::split_words("?!.").empty());
}

TEST_CASE("tokenizer ids: specials, then most frequent first, ties alphabetical") {
  WordTokenizer t = WordTokenizer::train(kCaptions);
  const std::vector<std::string> expect = {"[PAD]", "[UNK]",  "[BOS]", "a",
                                           "red",   "square", "blue",  "circle"};
  CHECK(t.words() == expect);
  CHECK(t.vocab_size() == 8);
  // Deterministic: the same captions in another order give the same ids.
  std::vector<std::string> shuffled = {kCaptions[2], kCaptions[0], kCaptions[1]};
  CHECK(WordTokenizer::train(shuffled).words() == expect);
  // min_count drops the rare words; max_vocab counts the specials.
  CHECK(WordTokenizer::train(kCaptions, 2).words() ==
        std::vector<std::string>{"[PAD]", "[UNK]", "[BOS]", "a", "red", "square"});
  CHECK(WordTokenizer::train(kCaptions, 1, 5).words() ==
        std::vector<std::string>{"[PAD]", "[UNK]", "[BOS]", "a", "red"});
  CHECK(WordTokenizer::train(kCaptions, 1, 3).vocab_size() == 3);
  CHECK(WordTokenizer().vocab_size() == 3);
  CHECK_THROWS_AS(WordTokenizer::train(kCaptions, 0), std::invalid_argument);
  CHECK_THROWS_AS(WordTokenizer::train(kCaptions, 1, 2), std::invalid_argument);
}

TEST_CASE("tokenizer encode: [BOS] first, [UNK] for new words, cut at max_len") {
  WordTokenizer t = WordTokenizer::train(kCaptions);
  using V = std::vector<int64_t>;
  CHECK(t.encode_one("a red circle", 16) == V{2, 3, 4, 7});
  CHECK(t.encode_one("A green CIRCLE", 16) == V{2, 3, 1, 7});
  CHECK(t.encode_one("", 16) == V{2});
  CHECK(t.encode_one("a red circle", 3) == V{2, 3, 4});
  CHECK(t.encode_one("a red circle", 1) == V{2});
  CHECK_THROWS_AS(t.encode_one("a", 0), std::invalid_argument);

  WordTokenizer::Batch b = t.encode({"blue square", "", "a red circle on the left"}, 5);
  CHECK(b.ids.shape() == Shape{3, 5});
  CHECK(b.ids.dtype() == DType::I64);
  CHECK(b.mask.dtype() == DType::I32);
  CHECK(b.ids.to_vector<int64_t>() == V{2, 6, 5, 0, 0, 2, 0, 0, 0, 0, 2, 3, 4, 7, 1});
  CHECK(b.mask.to_vector<int32_t>() ==
        std::vector<int32_t>{1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1});

  CHECK(t.decode({2, 3, 4, 7, 0, 0}) == "a red circle");
  CHECK(t.decode({2, 1, 5}) == "square");  // specials, [UNK] included, are not words
  CHECK(t.decode({}).empty());
  CHECK_THROWS_AS(t.decode({8}), std::invalid_argument);
  CHECK_THROWS_AS(t.decode({-1}), std::invalid_argument);
}

TEST_CASE("tokenizer JSON round trip") {
  WordTokenizer t = WordTokenizer::train(kCaptions);
  const std::string js = t.to_json();
  CHECK(js.find("\"type\":\"word\"") != std::string::npos);
  WordTokenizer r = WordTokenizer::from_json(js);
  CHECK(r.words() == t.words());
  CHECK(r.encode_one("a green square", 8) == t.encode_one("a green square", 8));
  CHECK(r.to_json() == js);
  // Escapes and whitespace of any conforming writer are read back.
  WordTokenizer e = WordTokenizer::from_json(
      " { \"words\" : [\"[PAD]\", \"[UNK]\", \"[BOS]\", \"\\u0061\", \"b2\"],\n \"type\": \"word\" "
      "}");
  CHECK(e.words() == std::vector<std::string>{"[PAD]", "[UNK]", "[BOS]", "a", "b2"});
  CHECK(e.encode_one("b2 a", 4) == std::vector<int64_t>{2, 4, 3});
  // The empty vocabulary.
  CHECK(WordTokenizer::from_json(WordTokenizer().to_json()).vocab_size() == 3);
}

TEST_CASE("tokenizer JSON errors name what is wrong") {
  auto bad = [](const std::string& js, const std::string& what) {
    INFO(js);
    CHECK_THROWS_WITH_AS(WordTokenizer::from_json(js), doctest::Contains(what.c_str()),
                         std::runtime_error);
  };
  const std::string sp = "\"[PAD]\",\"[UNK]\",\"[BOS]\"";
  bad("{\"type\":\"word\",\"words\":[" + sp, "not valid JSON");
  bad("", "not valid JSON");
  bad("[1, 2]", "expected an object");
  bad("{\"words\":[" + sp + "]}", "'type' must be \"word\"");
  bad("{\"type\":\"bpe\",\"words\":[" + sp + "]}", "'type' must be \"word\"");
  bad("{\"type\":\"word\"}", "'words' must be an array");
  bad("{\"type\":\"word\",\"words\":\"a b\"}", "'words' must be an array");
  bad("{\"type\":\"word\",\"words\":[" + sp + ",7]}", "entry 7 is not a string");
  bad("{\"type\":\"word\",\"words\":[\"[PAD]\",\"[BOS]\",\"[UNK]\"]}", "must start with");
  bad("{\"type\":\"word\",\"words\":[\"a\"]}", "must start with");
  bad("{\"type\":\"word\",\"words\":[" + sp + ",\"a\",\"b\",\"a\"]}", "\"a\" appears twice");
  bad("{\"type\":\"word\",\"words\":[" + sp + ",\"Red\"]}", "\"Red\" is not one normalised word");
  bad("{\"type\":\"word\",\"words\":[" + sp + ",\"two words\"]}", "not one normalised word");
  bad("{\"type\":\"word\",\"words\":[" + sp + ",\"\"]}", "not one normalised word");
}
