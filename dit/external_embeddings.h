// Precomputed caption embeddings from an external text encoder (e.g. T5), used instead of the
// built-in TextEncoder. The file is a safetensors file holding
//   embeddings (K, L, D) f32 or bf16   per-caption token embeddings, padded to L
//   mask       (K, L) i32 (or i64)     1 = real token; every row has at least one
//   metadata "captions": a JSON array of the K caption strings, row k of embeddings is caption k
// The empty caption "" must be among them when it is needed (caption dropout for classifier-free
// guidance, and unconditional sampling). The pooled vector is the masked mean of the tokens.
// Lookups of a caption not in the file throw naming the caption and the file.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace psvae::dit {

class ExternalEmbeddings {
 public:
  // Throws naming the file and the key or shape at fault.
  static ExternalEmbeddings load(const std::string& path);

  struct Batch {
    Tensor tokens;  // (N, L, D) f32 on `device`
    Tensor mask;    // (N, L) i32
    Tensor pooled;  // (N, D) f32, masked mean
  };
  Batch lookup(const std::vector<std::string>& captions, Device device) const;
  bool contains(const std::string& caption) const { return index_.count(caption) > 0; }

  int64_t dim() const { return dim_; }
  int64_t max_len() const { return len_; }
  int64_t size() const { return static_cast<int64_t>(captions_.size()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::string> captions_;
  std::map<std::string, int64_t> index_;
  Tensor embeddings_;  // (K, L, D) f32, CPU
  Tensor mask_;        // (K, L) i32
  int64_t dim_ = 0, len_ = 0;
};

}  // namespace psvae::dit
