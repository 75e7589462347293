// safetensors reader (mmap + full validation before any tensor is handed out) and atomic writer.
// Layout and rules: see safetensors.h and docs/REFERENCE-FACTS.md ("safetensors").
#include "tensor/safetensors.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "tensor/atomic_file.h"

namespace psvae::safetensors {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; a big-endian host would need byte swaps here");

namespace {

using json = nlohmann::json;

// The reference implementation (huggingface/safetensors) refuses headers above 100 MB: a header
// that large is either corrupt or an attack on the parser.
constexpr uint64_t kMaxHeaderBytes = 100000000;

struct DTypeRow {
  FileDType type;
  const char* name;
  size_t size;
};
constexpr DTypeRow kDTypes[] = {
    {FileDType::F64, "F64", 8},         {FileDType::F32, "F32", 4},
    {FileDType::F16, "F16", 2},         {FileDType::BF16, "BF16", 2},
    {FileDType::I64, "I64", 8},         {FileDType::I32, "I32", 4},
    {FileDType::I16, "I16", 2},         {FileDType::I8, "I8", 1},
    {FileDType::U64, "U64", 8},         {FileDType::U32, "U32", 4},
    {FileDType::U16, "U16", 2},         {FileDType::U8, "U8", 1},
    {FileDType::BOOL, "BOOL", 1},       {FileDType::F8_E4M3, "F8_E4M3", 1},
    {FileDType::F8_E5M2, "F8_E5M2", 1},
};

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what);
}

bool parse_file_dtype(const std::string& s, FileDType* out) {
  for (const DTypeRow& r : kDTypes) {
    if (s == r.name) {
      *out = r.type;
      return true;
    }
  }
  return false;
}

// The psvae dtype a file dtype loads as without conversion, if any.
bool native_dtype(FileDType t, DType* out) {
  switch (t) {
    case FileDType::F32: *out = DType::F32; return true;
    case FileDType::F64: *out = DType::F64; return true;
    case FileDType::BF16: *out = DType::BF16; return true;
    case FileDType::I32: *out = DType::I32; return true;
    case FileDType::I64: *out = DType::I64; return true;
    default: return false;
  }
}

FileDType file_dtype_of(DType t) {
  switch (t) {
    case DType::F32: return FileDType::F32;
    case DType::F64: return FileDType::F64;
    case DType::BF16: return FileDType::BF16;
    case DType::I32: return FileDType::I32;
    case DType::I64: return FileDType::I64;
  }
  return FileDType::F32;
}

// IEEE half -> float, exact for every input: normals rebias the exponent (127 - 15 = 112),
// subnormals are man * 2^-24 (exactly representable in f32), inf/NaN keep their payload so a
// NaN stays a NaN.
float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {
    float f = std::ldexp(static_cast<float>(man), -24);
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Element-wise widening copy; memcpy loads because converted data can sit at any byte offset.
template <class Src, class Dst>
void widen(const char* src, Dst* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    Src v;
    std::memcpy(&v, src + static_cast<size_t>(i) * sizeof(Src), sizeof(Src));
    dst[i] = static_cast<Dst>(v);
  }
}

// A JSON number that must be a non-negative integer (shape dims, data offsets).
uint64_t as_index(const std::string& path, const std::string& name, const char* field,
                  const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    if (v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
    fail(path, fmt::format("tensor '{}': {} entry {} is negative", name, field, v.dump()));
  }
  fail(path, fmt::format("tensor '{}': {} entry {} is not a non-negative integer", name, field,
                         v.dump()));
}

const json& member(const std::string& path, const std::string& name, const json& entry,
                   const char* key, bool want_array) {
  auto it = entry.find(key);
  if (it == entry.end()) fail(path, fmt::format("tensor '{}': missing \"{}\"", name, key));
  if (want_array ? !it->is_array() : !it->is_string())
    fail(path, fmt::format("tensor '{}': \"{}\" is {} {}, expected {}", name, key, it->type_name(),
                           it->dump(), want_array ? "an array" : "a string"));
  return *it;
}

// Parses the header, refusing duplicate keys at any depth: nlohmann would silently keep the last
// one, and two tensors under one name means the file is not what its writer thought it wrote.
json parse_header(const std::string& path, const char* text, size_t n) {
  std::vector<std::set<std::string>> open_objects;  // keys seen so far, one set per nesting level
  std::string entry, dup;                           // current top-level key; first duplicate
  int dup_depth = 0;
  auto on_event = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      open_objects.pop_back();
    } else if (ev == json::parse_event_t::key) {
      std::string k = parsed.get<std::string>();
      if (depth == 1) entry = k;
      if (!open_objects.back().insert(k).second && dup.empty()) {
        dup = k;
        dup_depth = depth;
      }
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text, text + n, on_event);
  } catch (const json::exception& e) {
    fail(path, fmt::format("header is not valid JSON: {}", e.what()));
  }
  if (!dup.empty()) {
    if (dup_depth == 1 && dup != "__metadata__")
      fail(path, fmt::format("duplicate tensor name '{}' in the header", dup));
    if (dup_depth == 1) fail(path, "duplicate key '__metadata__' in the header");
    fail(path, fmt::format("duplicate key '{}' inside header entry '{}'", dup, entry));
  }
  if (!j.is_object())
    fail(path, fmt::format("header is {}, expected a JSON object", j.type_name()));
  return j;
}

Metadata parse_metadata(const std::string& path, const json& m) {
  if (!m.is_object())
    fail(path, fmt::format("__metadata__ is {}, expected an object of strings", m.type_name()));
  Metadata out;
  for (auto it = m.begin(); it != m.end(); ++it) {
    if (!it->is_string())
      fail(path, fmt::format("__metadata__ value for '{}' is {} {}, expected a string", it.key(),
                             it->type_name(), it->dump()));
    out[it.key()] = it->get<std::string>();
  }
  return out;
}

TensorInfo parse_entry(const std::string& path, const std::string& name, const json& e,
                       size_t data_size) {
  if (!e.is_object())
    fail(path, fmt::format("tensor '{}': entry is {}, expected an object", name, e.type_name()));
  TensorInfo ti;
  ti.name = name;
  std::string dt = member(path, name, e, "dtype", false).get<std::string>();
  if (!parse_file_dtype(dt, &ti.dtype))
    fail(path, fmt::format("tensor '{}': unknown dtype '{}'", name, dt));

  const json& shape = member(path, name, e, "shape", true);
  if (shape.size() > static_cast<size_t>(kMaxRank))
    fail(path, fmt::format("tensor '{}': shape {} has rank {}, above the maximum {}", name,
                           shape.dump(), shape.size(), kMaxRank));
  uint64_t numel = 1;
  bool overflow = false;
  for (const json& d : shape) {
    uint64_t v = as_index(path, name, "shape", d);
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) overflow = true;
    ti.shape.push_back(static_cast<int64_t>(v));
    overflow |= __builtin_mul_overflow(numel, v, &numel);
  }
  size_t esize = file_dtype_size(ti.dtype);
  uint64_t need = 0;
  overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(esize), &need);
  if (overflow)
    fail(path, fmt::format("tensor '{}': shape {} of {} is too large to address", name,
                           shape.dump(), dt));

  const json& offs = member(path, name, e, "data_offsets", true);
  if (offs.size() != 2)
    fail(path,
         fmt::format("tensor '{}': data_offsets {} should be [begin, end]", name, offs.dump()));
  uint64_t begin = as_index(path, name, "data_offsets", offs[0]);
  uint64_t end = as_index(path, name, "data_offsets", offs[1]);
  if (begin > end)
    fail(path,
         fmt::format("tensor '{}': data_offsets [{}, {}) have begin > end", name, begin, end));
  if (end - begin != need)
    fail(path, fmt::format("tensor '{}': data_offsets [{}, {}) hold {} bytes but shape {} of {} "
                           "needs {}",
                           name, begin, end, end - begin, ti.shape.str(), dt, need));
  if (end > data_size)
    fail(path, fmt::format("tensor '{}': data_offsets [{}, {}) run past the end of the data "
                           "section ({} bytes)",
                           name, begin, end, data_size));
  ti.begin = static_cast<size_t>(begin);
  ti.end = static_cast<size_t>(end);
  return ti;
}

// The tensors must tile the data section exactly: sorted by offset, each begins where the
// previous ended, the first at 0, the last at the end of the file.
void check_tiling(const std::string& path, const std::vector<const TensorInfo*>& sorted,
                  size_t data_size) {
  size_t prev_end = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo* t : sorted) {
    if (t->begin < prev_end)
      fail(path, fmt::format("tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", prev->name,
                             prev->begin, prev->end, t->name, t->begin, t->end));
    if (t->begin > prev_end) {
      if (!prev)
        fail(path,
             fmt::format("hole of {} unused bytes before the first tensor '{}' (begins at {})",
                         t->begin, t->name, t->begin));
      fail(path, fmt::format("hole of {} unused bytes between tensors '{}' (ends at {}) and '{}' "
                             "(begins at {})",
                             t->begin - prev_end, prev->name, prev_end, t->name, t->begin));
    }
    prev_end = t->end;
    prev = t;
  }
  if (prev_end != data_size) {
    if (!prev) fail(path, fmt::format("{} trailing bytes in a file with no tensors", data_size));
    fail(path, fmt::format("{} trailing bytes after the last tensor '{}' (data ends at {}, the "
                           "data section has {} bytes)",
                           data_size - prev_end, prev->name, prev_end, data_size));
  }
}

}  // namespace

const char* file_dtype_name(FileDType t) {
  for (const DTypeRow& r : kDTypes)
    if (r.type == t) return r.name;
  return "?";
}

size_t file_dtype_size(FileDType t) {
  for (const DTypeRow& r : kDTypes)
    if (r.type == t) return r.size;
  return 0;
}

// ---- reader
// --------------------------------------------------------------------------------------
std::shared_ptr<File> File::open(const std::string& path) {
  std::shared_ptr<File> f(new File());
  f->path_ = path;

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, fmt::format("cannot open: {}", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail(path, fmt::format("cannot stat: {}", std::strerror(e)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file");
  }
  size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail(path, fmt::format("file is {} bytes, shorter than the 8-byte header length", size));
  }
  // MAP_PRIVATE with write permission: tensors are copy-on-write views, so a caller may update a
  // loaded weight in place (an optimizer step) without the write reaching the file or faulting.
  void* map = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping keeps its own reference to the file
  if (map == MAP_FAILED) fail(path, fmt::format("cannot mmap: {}", std::strerror(map_errno)));
  f->map_ = map;
  f->map_size_ = size;
  // One Storage owns the mapping: every zero-copy tensor shares it, so the file stays mapped
  // until the last of them (or this File) goes, whichever is later.
  f->mapping_ =
      std::make_shared<Storage>(map, size, Device::cpu(), [map, size] { ::munmap(map, size); });

  const char* bytes = static_cast<const char*>(map);
  uint64_t n = 0;
  std::memcpy(&n, bytes, 8);
  if (n > kMaxHeaderBytes)
    fail(path, fmt::format("header length {} exceeds the {} byte limit", n, kMaxHeaderBytes));
  if (n > size - 8)
    fail(path, fmt::format("header length {} runs past the end of the file ({} bytes)", n, size));
  if (n == 0 || bytes[8] != '{')
    fail(path,
         fmt::format("header does not start with '{{' (first byte {})",
                     n == 0 ? std::string("none") : fmt::format("0x{:02x}", bytes[8] & 0xff)));
  json header = parse_header(path, bytes + 8, static_cast<size_t>(n));
  f->data_start_ = 8 + static_cast<size_t>(n);
  size_t data_size = size - f->data_start_;

  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      f->metadata_ = parse_metadata(path, *it);
      continue;
    }
    f->infos_.emplace(it.key(), parse_entry(path, it.key(), *it, data_size));
  }
  std::vector<const TensorInfo*> sorted;
  for (const auto& kv : f->infos_) sorted.push_back(&kv.second);
  // Ties (zero-byte tensors at one offset) break by name so names() is deterministic.
  std::sort(sorted.begin(), sorted.end(), [](const TensorInfo* a, const TensorInfo* b) {
    if (a->begin != b->begin) return a->begin < b->begin;
    if (a->end != b->end) return a->end < b->end;
    return a->name < b->name;
  });
  check_tiling(path, sorted, data_size);
  for (const TensorInfo* t : sorted) f->names_.push_back(t->name);
  return f;
}

File::~File() = default;  // mapping_ unmaps when the last zero-copy tensor lets go

bool File::contains(const std::string& name) const { return infos_.count(name) != 0; }

const TensorInfo& File::info(const std::string& name) const {
  auto it = infos_.find(name);
  if (it == infos_.end())
    fail(path_, fmt::format("no tensor named '{}' (the file has {})", name, infos_.size()));
  return it->second;
}

Tensor File::get(const std::string& name) const {
  const TensorInfo& ti = info(name);
  size_t at = data_start_ + ti.begin;  // absolute offset in the file (and the mapping)
  const char* src = static_cast<const char*>(map_) + at;
  int64_t n = ti.shape.numel();

  DType native;
  if (native_dtype(ti.dtype, &native)) {
    // The mapping is page-aligned, so the element is aligned iff its file offset is. Our writer
    // pads the header to 8 bytes; other writers may not, and an unaligned float* is UB.
    if (at % dtype_size(native) == 0) return Tensor(mapping_, at, ti.shape, native);
    Tensor t = Tensor::empty(ti.shape, native);
    if (n > 0) std::memcpy(t.raw_data(), src, t.nbytes());
    return t;
  }

  switch (ti.dtype) {
    case FileDType::F16: {
      Tensor t = Tensor::empty(ti.shape, DType::F32);
      float* d = t.data<float>();
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        d[i] = half_to_float(h);
      }
      return t;
    }
    case FileDType::BOOL: {
      Tensor t = Tensor::empty(ti.shape, DType::I32);
      int32_t* d = t.data<int32_t>();
      for (int64_t i = 0; i < n; ++i) d[i] = src[i] != 0 ? 1 : 0;
      return t;
    }
    case FileDType::U8: {
      Tensor t = Tensor::empty(ti.shape, DType::I32);
      widen<uint8_t>(src, t.data<int32_t>(), n);
      return t;
    }
    case FileDType::I8: {
      Tensor t = Tensor::empty(ti.shape, DType::I32);
      widen<int8_t>(src, t.data<int32_t>(), n);
      return t;
    }
    case FileDType::I16: {
      Tensor t = Tensor::empty(ti.shape, DType::I32);
      widen<int16_t>(src, t.data<int32_t>(), n);
      return t;
    }
    case FileDType::U16: {
      Tensor t = Tensor::empty(ti.shape, DType::I32);
      widen<uint16_t>(src, t.data<int32_t>(), n);
      return t;
    }
    case FileDType::U32: {
      Tensor t = Tensor::empty(ti.shape, DType::I64);
      widen<uint32_t>(src, t.data<int64_t>(), n);
      return t;
    }
    case FileDType::U64: {
      Tensor t = Tensor::empty(ti.shape, DType::I64);
      int64_t* d = t.data<int64_t>();
      for (int64_t i = 0; i < n; ++i) {
        uint64_t v;
        std::memcpy(&v, src + 8 * i, 8);
        if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          fail(path_,
               fmt::format("tensor '{}': U64 element {} = {} does not fit in i64", name, i, v));
        d[i] = static_cast<int64_t>(v);
      }
      return t;
    }
    default:
      fail(path_,
           fmt::format("unsupported dtype {} for tensor '{}'", file_dtype_name(ti.dtype), name));
  }
}

NamedTensors File::all() const {
  NamedTensors out;
  out.reserve(names_.size());
  for (const std::string& n : names_) out.emplace_back(n, get(n));
  return out;
}

NamedTensors load(const std::string& path, Metadata* metadata) {
  std::shared_ptr<File> f = File::open(path);
  if (metadata) *metadata = f->metadata();
  return f->all();
}

// ---- writer
// --------------------------------------------------------------------------------------
void save(const std::string& path, const NamedTensors& tensors, const Metadata& metadata) {
  json header = json::object();
  std::set<std::string> seen;
  std::vector<Tensor> host;
  host.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    if (name.empty()) fail(path, "tensor with an empty name");
    if (name == "__metadata__") fail(path, "'__metadata__' is reserved and cannot name a tensor");
    if (!seen.insert(name).second) fail(path, fmt::format("duplicate tensor name '{}'", name));
    if (!t.defined()) fail(path, fmt::format("tensor '{}' is undefined", name));
  }
  // Data layout: the given order within each element size, larger elements first. The format
  // allows no padding between tensors, so this is the only way to keep every tensor aligned
  // (an i64 after a 6-byte bf16 would sit at 8k+6) and thus loadable without a copy. The
  // reference writer (huggingface/safetensors) orders by dtype for the same reason.
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_size(tensors[a].second.dtype()) > dtype_size(tensors[b].second.dtype());
  });
  uint64_t offset = 0;
  for (size_t i : order) {
    const std::string& name = tensors[i].first;
    const Tensor& t = tensors[i].second;
    host.push_back(t.to(Device::cpu()));
    uint64_t nb = t.nbytes();
    json e = json::object();
    e["dtype"] = file_dtype_name(file_dtype_of(t.dtype()));
    e["shape"] = t.shape().vec();
    e["data_offsets"] = json::array({offset, offset + nb});
    header[name] = std::move(e);
    offset += nb;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {  // e.g. a name that is not valid UTF-8
    fail(path, fmt::format("cannot encode the header: {}", e.what()));
  }
  // Pad with spaces (legal JSON whitespace) so the data starts 8-byte aligned and every dtype
  // can be mapped in place on load.
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t n = text.size();

  // Streamed: the data may be GBs, so it goes straight from each tensor to the file. Errors name
  // the path ("<path>: cannot write <tmp>: No space left on device"); on any failure the
  // AtomicFile's destructor removes the temp file and the old file stays as it was.
  AtomicFile f(path);
  f.write(&n, 8);
  f.write(text.data(), n);
  for (const Tensor& t : host)
    if (t.nbytes() > 0) f.write(t.raw_data(), t.nbytes());
  f.commit();
}

}  // namespace psvae::safetensors
