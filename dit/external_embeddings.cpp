#include "dit/external_embeddings.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <stdexcept>

#include "nn/module.h"
#include "tensor/safetensors.h"

namespace psvae::dit {

ExternalEmbeddings ExternalEmbeddings::load(const std::string& path) {
  auto file = safetensors::File::open(path);  // throws "PATH: ..." on a bad file
  auto fail = [&](const std::string& what) {
    return std::runtime_error(fmt::format("{}: external embeddings: {}", path, what));
  };
  for (const char* key : {"embeddings", "mask"})
    if (!file->contains(key)) throw fail(fmt::format("missing tensor '{}'", key));

  ExternalEmbeddings e;
  e.path_ = path;
  Tensor emb = file->get("embeddings");
  if (emb.rank() != 3)
    throw fail(fmt::format("'embeddings' has shape {}, expected (K, L, D)", emb.shape().str()));
  if (!is_floating(emb.dtype()))
    throw fail(fmt::format("'embeddings' is {}, expected f32 or bf16", dtype_name(emb.dtype())));
  const int64_t K = emb.size(0), L = emb.size(1), D = emb.size(2);
  if (K < 1 || L < 1 || D < 1)
    throw fail(fmt::format("'embeddings' has shape {}, an empty dimension", emb.shape().str()));
  e.embeddings_ = nn::convert_float(emb, DType::F32).clone();  // own the data, unmap the file
  e.len_ = L, e.dim_ = D;

  Tensor mask = file->get("mask");
  if (mask.rank() != 2 || mask.size(0) != K || mask.size(1) != L)
    throw fail(fmt::format("'mask' has shape {}, expected ({}, {}) to match 'embeddings' {}",
                           mask.shape().str(), K, L, emb.shape().str()));
  std::vector<int32_t> m(static_cast<size_t>(K * L));
  for (int64_t i = 0; i < K * L; ++i) {
    int64_t v = 0;
    if (mask.dtype() == DType::I32)
      v = mask.data<int32_t>()[i];
    else if (mask.dtype() == DType::I64)
      v = mask.data<int64_t>()[i];
    else
      throw fail(fmt::format("'mask' is {}, expected i32 or i64", dtype_name(mask.dtype())));
    if (v != 0 && v != 1)
      throw fail(fmt::format("'mask' row {} holds {}, expected 0 or 1", i / L, v));
    m[static_cast<size_t>(i)] = static_cast<int32_t>(v);
  }
  for (int64_t k = 0; k < K; ++k) {
    int64_t real = 0;
    for (int64_t l = 0; l < L; ++l) real += m[static_cast<size_t>(k * L + l)];
    if (real == 0) throw fail(fmt::format("'mask' row {} has no token", k));
  }
  e.mask_ = Tensor::from_vector(m, Shape{K, L});

  auto meta = file->metadata().find("captions");
  if (meta == file->metadata().end()) throw fail("missing metadata 'captions'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(meta->second);
  } catch (const nlohmann::json::exception&) {
    throw fail("metadata 'captions' is not valid JSON (expected an array of strings)");
  }
  if (!j.is_array() || static_cast<int64_t>(j.size()) != K)
    throw fail(
        fmt::format("metadata 'captions' must be a JSON array of {} strings (one per row)", K));
  for (const auto& c : j) {
    if (!c.is_string())
      throw fail(fmt::format("metadata 'captions' entry {} is not a string", c.dump()));
    const std::string s = c.get<std::string>();
    if (!e.index_.emplace(s, static_cast<int64_t>(e.captions_.size())).second)
      throw fail(fmt::format("metadata 'captions' has \"{}\" twice", s));
    e.captions_.push_back(s);
  }
  return e;
}

ExternalEmbeddings::Batch ExternalEmbeddings::lookup(const std::vector<std::string>& captions,
                                                     Device device) const {
  const auto N = static_cast<int64_t>(captions.size());
  const int64_t L = len_, D = dim_;
  std::vector<float> tok(static_cast<size_t>(N * L * D)), pooled(static_cast<size_t>(N * D));
  std::vector<int32_t> mask(static_cast<size_t>(N * L));
  const float* src = embeddings_.data<float>();
  const int32_t* msrc = mask_.data<int32_t>();
  for (int64_t n = 0; n < N; ++n) {
    auto it = index_.find(captions[static_cast<size_t>(n)]);
    if (it == index_.end())
      throw std::runtime_error(fmt::format("{}: external embeddings: no caption \"{}\" in the file",
                                           path_, captions[static_cast<size_t>(n)]));
    const int64_t k = it->second;
    std::copy(src + k * L * D, src + (k + 1) * L * D, tok.begin() + n * L * D);
    std::copy(msrc + k * L, msrc + (k + 1) * L, mask.begin() + n * L);
    // Masked mean in double (at most L terms per channel).
    std::vector<double> acc(static_cast<size_t>(D), 0.0);
    double count = 0;
    for (int64_t l = 0; l < L; ++l) {
      if (!msrc[k * L + l]) continue;
      count += 1;
      for (int64_t d = 0; d < D; ++d) acc[static_cast<size_t>(d)] += src[(k * L + l) * D + d];
    }
    for (int64_t d = 0; d < D; ++d)
      pooled[static_cast<size_t>(n * D + d)] =
          static_cast<float>(acc[static_cast<size_t>(d)] / count);
  }
  return {Tensor::from_vector(tok, Shape{N, L, D}, device),
          Tensor::from_vector(mask, Shape{N, L}, device),
          Tensor::from_vector(pooled, Shape{N, D}, device)};
}

}  // namespace psvae::dit
