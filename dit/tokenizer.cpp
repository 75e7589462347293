#include "dit/tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <utility>

namespace psvae::dit {

namespace {
bool word_char(char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9'); }
char lower(char ch) { return ch >= 'A' && ch <= 'Z' ? static_cast<char>(ch - 'A' + 'a') : ch; }
}  // namespace

std::vector<std::string> WordTokenizer::split_words(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  for (char raw : text) {
    const char ch = lower(raw);  // bytes >= 0x80 (UTF-8) are not word characters: separators
    if (word_char(ch)) {
      cur += ch;
    } else if (!cur.empty()) {
      out.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

WordTokenizer WordTokenizer::train(const std::vector<std::string>& captions, int64_t min_count,
                                   int64_t max_vocab) {
  if (min_count < 1)
    throw std::invalid_argument(
        fmt::format("tokenizer: min_count must be >= 1, got {}", min_count));
  if (max_vocab != 0 && max_vocab < 3)
    throw std::invalid_argument(fmt::format(
        "tokenizer: max_vocab must be 0 (no limit) or >= 3 (the specials), got {}", max_vocab));
  std::map<std::string, int64_t> counts;
  for (const std::string& c : captions)
    for (std::string& w : split_words(c)) ++counts[w];
  std::vector<std::pair<std::string, int64_t>> kept;
  for (const auto& [w, n] : counts)
    if (n >= min_count) kept.emplace_back(w, n);
  // Most frequent first; ties alphabetical (std::map already iterates alphabetically, and
  // stable_sort keeps that order among equal counts).
  std::stable_sort(kept.begin(), kept.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  if (max_vocab > 0 && static_cast<int64_t>(kept.size()) > max_vocab - 3)
    kept.resize(static_cast<size_t>(max_vocab - 3));
  std::vector<std::string> words;
  words.reserve(kept.size());
  for (auto& [w, n] : kept) words.push_back(w);
  return from_words(words);
}

std::vector<int64_t> WordTokenizer::encode_one(const std::string& text, int64_t max_len) const {
  if (max_len < 1)
    throw std::invalid_argument(fmt::format("tokenizer: max_len must be >= 1, got {}", max_len));
  std::vector<int64_t> ids = {kBos};
  for (const std::string& w : split_words(text)) {
    if (static_cast<int64_t>(ids.size()) >= max_len) break;
    auto it = ids_.find(w);
    ids.push_back(it == ids_.end() ? kUnk : it->second);
  }
  return ids;
}

WordTokenizer::Batch WordTokenizer::encode(const std::vector<std::string>& texts,
                                           int64_t max_len) const {
  const auto N = static_cast<int64_t>(texts.size());
  std::vector<int64_t> ids(static_cast<size_t>(N * max_len), kPad);
  std::vector<int32_t> mask(ids.size(), 0);
  for (int64_t i = 0; i < N; ++i) {
    std::vector<int64_t> one = encode_one(texts[static_cast<size_t>(i)], max_len);
    for (size_t j = 0; j < one.size(); ++j) {
      ids[static_cast<size_t>(i * max_len) + j] = one[j];
      mask[static_cast<size_t>(i * max_len) + j] = 1;
    }
  }
  return {Tensor::from_vector(ids, Shape{N, max_len}),
          Tensor::from_vector(mask, Shape{N, max_len})};
}

std::string WordTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size())
      throw std::invalid_argument(
          fmt::format("tokenizer: id {} out of range [0, {})", id, vocab_size()));
    if (id <= kBos) continue;  // [PAD], [UNK], [BOS]
    if (!out.empty()) out += ' ';
    out += words_[static_cast<size_t>(id)];
  }
  return out;
}

std::string WordTokenizer::to_json() const {
  nlohmann::json j;
  j["type"] = "word";
  j["words"] = words_;
  return j.dump();  // nlohmann escapes quotes, backslashes and control characters
}

WordTokenizer WordTokenizer::from_json(const std::string& json) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("tokenizer JSON: not valid JSON ({})", e.what()));
  }
  if (!j.is_object()) throw std::runtime_error("tokenizer JSON: expected an object");
  auto type = j.find("type");
  if (type == j.end() || !type->is_string() || type->get<std::string>() != "word")
    throw std::runtime_error(fmt::format("tokenizer JSON: 'type' must be \"word\", got {}",
                                         type == j.end() ? "nothing" : type->dump()));
  auto words = j.find("words");
  if (words == j.end() || !words->is_array())
    throw std::runtime_error("tokenizer JSON: 'words' must be an array of strings");
  std::vector<std::string> all;
  for (const auto& w : *words) {
    if (!w.is_string())
      throw std::runtime_error(
          fmt::format("tokenizer JSON: 'words' entry {} is not a string", w.dump()));
    all.push_back(w.get<std::string>());
  }
  const std::vector<std::string> specials = {"[PAD]", "[UNK]", "[BOS]"};
  if (all.size() < 3 || !std::equal(specials.begin(), specials.end(), all.begin()))
    throw std::runtime_error(
        "tokenizer JSON: 'words' must start with \"[PAD]\", \"[UNK]\", \"[BOS]\"");
  return from_words(std::vector<std::string>(all.begin() + 3, all.end()));
}

WordTokenizer WordTokenizer::from_words(const std::vector<std::string>& words) {
  WordTokenizer t;
  for (const std::string& w : words) {
    // Every word must be what split_words produces, or encode could never emit its id.
    const std::vector<std::string> norm = split_words(w);
    if (norm.size() != 1 || norm[0] != w)
      throw std::runtime_error(fmt::format(
          "tokenizer: word \"{}\" is not one normalised word (lower-case [a-z0-9]+)", w));
    if (!t.ids_.emplace(w, t.vocab_size()).second)
      throw std::runtime_error(fmt::format("tokenizer: word \"{}\" appears twice", w));
    t.words_.push_back(w);
  }
  return t;
}

}  // namespace psvae::dit
