// The model stage 3 trains: a DiT plus whatever turns a condition into the DiT's DiTCond.
//
//   kind class     labels -> y_embedder (the published DiT); null = label num_classes
//   kind text      captions -> WordTokenizer -> TextEncoder (trained with the DiT) -> tokens,
//                  pooled; null = the empty caption ""
//   kind external  captions -> ExternalEmbeddings (a file of precomputed embeddings, frozen)
// State names: "dit.*" (the upstream DiT names inside) and, for kind text, "text_encoder.*".
// The tokenizer is not a tensor: the caller saves tokenizer().to_json() next to the weights
// (DiTTask stores it as checkpoint metadata task.tokenizer).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "dit/dit.h"
#include "dit/external_embeddings.h"
#include "dit/text_encoder.h"
#include "dit/tokenizer.h"

namespace psvae::dit {

enum class CondKind { class_label, text, external };
CondKind parse_cond_kind(const std::string& name);  // "class" | "text" | "external"; throws
std::string cond_kind_name(CondKind k);

struct ConditionalDiTConfig {
  DiTConfig dit;  // kind text/external: dit.context_dim is set by the constructor
  CondKind kind = CondKind::class_label;
  TextEncoderConfig text;  // kind text: text.vocab is set from the tokenizer
};

// One batch of conditions. Class: labels (N). Text/external: captions (N). "" / num_classes are
// the null condition that classifier-free guidance uses.
struct Condition {
  std::vector<int64_t> labels;
  std::vector<std::string> captions;
  int64_t size() const {
    return static_cast<int64_t>(labels.empty() ? captions.size() : labels.size());
  }
};

class ConditionalDiT : public nn::Cloneable<ConditionalDiT> {
 public:
  using Config = ConditionalDiTConfig;
  // kind text needs the trained tokenizer, kind external the embeddings file.
  ConditionalDiT(const Config& c, Generator& g, WordTokenizer tokenizer = {},
                 std::shared_ptr<const ExternalEmbeddings> external = nullptr);

  // Runs the text encoder (differentiable) or the lookup; tensors on `device`.
  DiTCond encode(const Condition& cond, Device device) const;
  Condition null_condition(int64_t n) const;  // n null labels or n empty captions
  ag::Var forward(const ag::Var& x, const Tensor& t, const DiTCond& c) const {
    return dit->forward(x, t, c);
  }

  const Config& config() const { return cfg_; }
  // Keeps the tokenizer and the embeddings file (the config alone cannot rebuild the model).
  std::shared_ptr<nn::Module> clone() const override;
  const WordTokenizer& tokenizer() const { return tokenizer_; }
  const ExternalEmbeddings* external() const { return external_.get(); }

  std::shared_ptr<DiT> dit;
  std::shared_ptr<TextEncoder> text_encoder;  // kind text only

 private:
  Config cfg_;
  WordTokenizer tokenizer_;
  std::shared_ptr<const ExternalEmbeddings> external_;
};

}  // namespace psvae::dit
