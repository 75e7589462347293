#include "dit/conditional_dit.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace psvae::dit {

using ag::Var;

CondKind parse_cond_kind(const std::string& name) {
  if (name == "class") return CondKind::class_label;
  if (name == "text") return CondKind::text;
  if (name == "external") return CondKind::external;
  throw std::invalid_argument(
      fmt::format("conditioning kind '{}' is not one of class, text, external", name));
}

std::string cond_kind_name(CondKind k) {
  switch (k) {
    case CondKind::class_label: return "class";
    case CondKind::text: return "text";
    case CondKind::external: return "external";
  }
  return "?";
}

namespace {
// The config the model is really built from: the conditioning kind decides the DiT's inputs.
ConditionalDiTConfig resolve(ConditionalDiTConfig c, const WordTokenizer& tok,
                             const ExternalEmbeddings* ext) {
  switch (c.kind) {
    case CondKind::class_label:
      check(c.dit.num_classes > 0,
            fmt::format("conditional dit: kind class needs num_classes > 0, got {}",
                        c.dit.num_classes));
      c.dit.context_dim = 0;
      break;
    case CondKind::text:
      c.text.vocab = tok.vocab_size();
      c.dit.context_dim = c.text.dim;
      c.dit.num_classes = 0;  // captions only: no label table
      break;
    case CondKind::external:
      if (!ext)
        throw std::invalid_argument("conditional dit: kind external needs the embeddings file");
      c.dit.context_dim = ext->dim();
      c.dit.num_classes = 0;
      break;
  }
  return c;
}
}  // namespace

ConditionalDiT::ConditionalDiT(const Config& c, Generator& g, WordTokenizer tokenizer,
                               std::shared_ptr<const ExternalEmbeddings> external)
    : cfg_(resolve(c, tokenizer, external.get())),
      tokenizer_(std::move(tokenizer)),
      external_(std::move(external)) {
  dit = register_module("dit", std::make_shared<DiT>(cfg_.dit, g));
  if (cfg_.kind == CondKind::text)
    text_encoder = register_module("text_encoder", std::make_shared<TextEncoder>(cfg_.text, g));
}

std::shared_ptr<nn::Module> ConditionalDiT::clone() const {
  // Cloneable's clone would rebuild from the config alone and lose the tokenizer and the
  // embeddings file, which shape the model (vocab, context_dim).
  Generator scratch(0);
  auto m = std::make_shared<ConditionalDiT>(cfg_, scratch, tokenizer_, external_);
  m->copy_state_from(*this);
  return m;
}

DiTCond ConditionalDiT::encode(const Condition& cond, Device device) const {
  DiTCond out;
  const int64_t N = cond.size();
  check(N > 0, "conditional dit: empty condition batch");
  check(cond.labels.empty() || cond.captions.empty(),
        fmt::format("conditional dit: a condition holds {} labels and {} captions; give one kind",
                    cond.labels.size(), cond.captions.size()));
  if (cfg_.kind == CondKind::class_label) {
    if (cond.labels.empty())
      throw std::invalid_argument(fmt::format(
          "conditional dit: the model is class-conditional but got {} captions (first \"{}\"); "
          "pass class labels",
          cond.captions.size(), cond.captions.front()));
    for (int64_t y : cond.labels)
      check(y >= 0 && y <= cfg_.dit.num_classes,
            fmt::format("conditional dit: label {} outside [0, {}] ({} = null)", y,
                        cfg_.dit.num_classes, cfg_.dit.num_classes));
    out.y = Tensor::from_vector(cond.labels, Shape{N}, device);
    return out;
  }
  if (cond.captions.empty())
    throw std::invalid_argument(
        fmt::format("conditional dit: the model is {}-conditional but got {} class labels; pass "
                    "captions",
                    cond_kind_name(cfg_.kind), cond.labels.size()));
  if (cfg_.kind == CondKind::text) {
    // Pad only to the longest caption of the batch (cut at max_len): padding never changes the
    // real tokens' outputs, and a shorter context is cheaper to attend to.
    int64_t L = 1;
    for (const std::string& c : cond.captions)
      L = std::max(L, static_cast<int64_t>(tokenizer_.encode_one(c, cfg_.text.max_len).size()));
    WordTokenizer::Batch b = tokenizer_.encode(cond.captions, L);
    TextEncoder::Output t = text_encoder->forward(b.ids.to(device), b.mask.to(device));
    out.context = t.tokens;
    out.context_mask = b.mask.to(device);
    out.pooled = t.pooled;
    return out;
  }
  // external: frozen embeddings, converted to the DiT's dtype.
  ExternalEmbeddings::Batch b = external_->lookup(cond.captions, device);
  const DType dt = dit->x_embedder->proj->weight().dtype();
  auto as_model = [&](const Tensor& t) {
    return dt == DType::F32 ? t : nn::convert_float(t.to(Device::cpu()), dt).to(device);
  };
  out.context = Var(as_model(b.tokens));
  out.pooled = Var(as_model(b.pooled));
  out.context_mask = b.mask;
  return out;
}

Condition ConditionalDiT::null_condition(int64_t n) const {
  Condition c;
  if (cfg_.kind == CondKind::class_label)
    c.labels.assign(static_cast<size_t>(n), cfg_.dit.num_classes);
  else
    c.captions.assign(static_cast<size_t>(n), "");
  return c;
}

}  // namespace psvae::dit
