// safetensors: [u64 little-endian N][N bytes of JSON header][raw little-endian C-order data].
// Header entries: "name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end)} with
// offsets relative to the data start, plus an optional "__metadata__" string-to-string map.
//
// The reader memory-maps the file and validates everything before handing out a tensor: header
// size, JSON syntax, duplicate names, known dtype, shape/size agreement, offsets in range, no
// overlaps and no holes, data ending exactly at the end of the file. Every failure throws
// std::runtime_error whose message starts with the file path and names the tensor at fault.
// The writer is atomic: a temporary file beside the target, fsync, rename, so a crash never leaves
// a half-written file under the real name.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace psvae::safetensors {

// Every dtype the format defines. The ones psvae computes in load as themselves; F16 loads as
// f32; BOOL, U8, I8, I16, U16 load as i32; U32 and U64 as i64 (U64 values above 2^63 are an error);
// F8 types are recognised and reported as unsupported.
enum class FileDType {
  F64,
  F32,
  F16,
  BF16,
  I64,
  I32,
  I16,
  I8,
  U64,
  U32,
  U16,
  U8,
  BOOL,
  F8_E4M3,
  F8_E5M2
};
const char* file_dtype_name(FileDType t);
size_t file_dtype_size(FileDType t);

struct TensorInfo {
  std::string name;
  FileDType dtype;
  Shape shape;
  size_t begin = 0, end = 0;  // byte offsets relative to the data section
};

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;  // in a stable order
using Metadata = std::map<std::string, std::string>;

class File {
 public:
  // Maps and validates `path`; throws std::runtime_error("PATH: what is wrong").
  static std::shared_ptr<File> open(const std::string& path);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::string& path() const { return path_; }
  // Tensor names sorted by data offset (the order the data lies in the file).
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws naming the missing tensor
  const Metadata& metadata() const { return metadata_; }

  // The tensor on the CPU. Native dtypes are zero-copy views of the mapping (they keep the
  // file mapped while alive); converted dtypes are copies.
  Tensor get(const std::string& name) const;
  NamedTensors all() const;  // every tensor, in names() order

 private:
  File() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  size_t data_start_ = 0;
  std::vector<std::string> names_;
  std::map<std::string, TensorInfo> infos_;
  Metadata metadata_;
  std::shared_ptr<Storage> mapping_;  // shared by zero-copy tensors
  friend struct FileAccess;
};

// Writes tensors (any device; copied to the host) and metadata atomically. Names must be unique
// and non-empty; throws std::runtime_error naming the path or tensor on failure.
void save(const std::string& path, const NamedTensors& tensors, const Metadata& metadata = {});

// Convenience: open + all().
NamedTensors load(const std::string& path, Metadata* metadata = nullptr);

}  // namespace psvae::safetensors
