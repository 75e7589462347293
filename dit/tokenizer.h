// A word-level tokenizer trained on a dataset's captions, saved with the DiT checkpoint as JSON.
//
// Why word-level and not byte-level BPE: the captions of the datasets this stack trains on at demo
// scale use a few dozen words; a word vocabulary gives one token per concept (colour, shape,
// position), which a small text encoder learns in minutes. Unknown words map to [UNK].
//
// Normalisation: lower-case ASCII; a token is a maximal run of [a-z0-9]; everything else separates.
// Ids: 0 [PAD], 1 [UNK], 2 [BOS] (always first, so even the empty caption "" has one real token and
// cross-attention never sees an all-masked row), then the words, most frequent first, ties in
// alphabetical order (so training on the same captions always gives the same ids).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace psvae::dit {

class WordTokenizer {
 public:
  static constexpr int64_t kPad = 0, kUnk = 1, kBos = 2;

  WordTokenizer() = default;  // only the three special tokens
  // Words seen at least `min_count` times; at most `max_vocab` entries in all (0 = no limit).
  static WordTokenizer train(const std::vector<std::string>& captions, int64_t min_count = 1,
                             int64_t max_vocab = 0);

  static std::vector<std::string> split_words(const std::string& text);  // the normalisation
  // [BOS] then the word ids, cut to max_len ids in all (max_len >= 1).
  std::vector<int64_t> encode_one(const std::string& text, int64_t max_len) const;
  struct Batch {
    Tensor ids;   // (N, max_len) i64, [PAD] after the caption
    Tensor mask;  // (N, max_len) i32, 1 for [BOS] and words
  };
  Batch encode(const std::vector<std::string>& texts, int64_t max_len) const;
  std::string decode(const std::vector<int64_t>& ids) const;  // words joined by spaces, no specials

  int64_t vocab_size() const { return static_cast<int64_t>(words_.size()); }
  const std::vector<std::string>& words() const { return words_; }  // id -> word (specials too)

  // {"type": "word", "words": [...]}; from_json throws naming what is wrong.
  std::string to_json() const;
  static WordTokenizer from_json(const std::string& json);

 private:
  // The specials then `words` (ids 3, 4, ...); throws on a duplicate or non-normalised word.
  static WordTokenizer from_words(const std::vector<std::string>& words);

  std::vector<std::string> words_ = {"[PAD]", "[UNK]", "[BOS]"};
  std::map<std::string, int64_t> ids_;
};

}  // namespace psvae::dit
