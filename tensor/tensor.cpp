#include "tensor/tensor.h"

#include <fmt/format.h>

#include <atomic>
#include <cstring>
#include <limits>

#include "tensor/allocator.h"
#include "tensor/cuda_runtime.h"

namespace psvae {

void check(bool cond, const std::string& what) {
  if (!cond) throw std::invalid_argument(what);
}

// ---- Storage
// -------------------------------------------------------------------------------------
Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  data_ = device.is_cpu() ? cpu_alloc(nbytes) : cuda::device_alloc(nbytes, device.index);
}
Storage::Storage(void* data, size_t nbytes, Device device, std::function<void()> release)
    : data_(data), nbytes_(nbytes), device_(device), release_(std::move(release)) {}
Storage::~Storage() {
  if (release_) {
    release_();
  } else if (device_.is_cpu()) {
    cpu_free(data_);
  } else {
    cuda::device_free(data_, device_.index);
  }
}

// ---- Tensor
// --------------------------------------------------------------------------------------
Tensor::Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, const Shape& shape,
               DType dtype)
    : storage_(std::move(storage)), offset_(byte_offset), shape_(shape), dtype_(dtype) {
  check(offset_ + nbytes() <= storage_->nbytes(),
        fmt::format("Tensor: {} bytes at offset {} exceed storage of {} bytes", nbytes(), offset_,
                    storage_->nbytes()));
}

namespace {
std::atomic<bool> g_poison{false};
}
void set_poison_new_tensors(bool on) { g_poison = on; }
bool poison_new_tensors() { return g_poison; }

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  size_t nbytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  Tensor t(std::make_shared<Storage>(nbytes, device), 0, shape, dtype);
  if (g_poison) {
    if (is_floating(dtype)) {
      t.fill_(std::numeric_limits<double>::quiet_NaN());
    } else if (device.is_cpu()) {
      std::memset(t.raw_data(), 0xA5, nbytes);
    } else {
      cuda::fill_pattern(t.raw_data(), static_cast<int64_t>(nbytes), 1, 0xA5, device.index);
    }
  }
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

void* Tensor::raw_data() const {
  check(defined(), "Tensor::raw_data: undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_;
}

// A Shape cannot hold -1 (its constructor rejects negative dims): inference of one -1 lives in
// the initializer-list overload, which then calls this one with the completed shape.
Tensor Tensor::reshape(const Shape& shape) const {
  check(shape.numel() == numel(), fmt::format("reshape {} -> {}: element counts differ ({} vs {})",
                                              shape_.str(), shape.str(), numel(), shape.numel()));
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::reshape(std::initializer_list<int64_t> dims) const {
  // Shape rejects negative dims, so -1 is carried through a plain vector first.
  std::vector<int64_t> v(dims);
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == -1) {
      check(infer < 0, "reshape: more than one -1");
      infer = static_cast<int64_t>(i);
    } else {
      known *= v[i];
    }
  }
  if (infer >= 0) {
    check(known > 0 && numel() % known == 0,
          fmt::format("reshape {}: cannot infer -1 with {} known elements", shape_.str(), known));
    v[static_cast<size_t>(infer)] = numel() / known;
  }
  return reshape(Shape(v));
}

Tensor Tensor::slice0(int64_t begin, int64_t end) const {
  check(rank() >= 1, "slice0: rank-0 tensor");
  check(0 <= begin && begin <= end && end <= shape_[0],
        fmt::format("slice0 [{}, {}) out of range for shape {}", begin, end, shape_.str()));
  Tensor t = *this;
  t.shape_[0] = end - begin;
  t.offset_ += static_cast<size_t>(begin * shape_.prod(1, rank())) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device d) const {
  if (d == device()) return *this;
  Tensor t = empty(shape_, dtype_, d);
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  check(src.shape_ == shape_ && src.dtype_ == dtype_,
        fmt::format("copy_from: {} into {}", src.str(), str()));
  size_t n = nbytes();
  if (n == 0) return;
  Device sd = src.device(), dd = device();
  if (sd.is_cpu() && dd.is_cpu()) {
    std::memmove(raw_data(), src.raw_data(), n);
  } else if (sd.is_cpu()) {
    cuda::memcpy_h2d(raw_data(), src.raw_data(), n, dd.index);
  } else if (dd.is_cpu()) {
    cuda::memcpy_d2h(raw_data(), src.raw_data(), n, sd.index);
  } else {
    check(sd == dd, "copy_from: copies between two CUDA devices go through the host");
    cuda::memcpy_d2d(raw_data(), src.raw_data(), n, dd.index);
  }
}

namespace {
template <class T>
uint64_t pattern_of(double v) {
  T x = static_cast<T>(v);
  uint64_t p = 0;
  std::memcpy(&p, &x, sizeof(T));
  return p;
}
uint64_t fill_pattern(DType dtype, double v) {
  switch (dtype) {
    case DType::F32: return pattern_of<float>(v);
    case DType::F64: return pattern_of<double>(v);
    case DType::BF16: return bf16::from_float(static_cast<float>(v));
    case DType::I32: return pattern_of<int32_t>(v);
    case DType::I64: return pattern_of<int64_t>(v);
  }
  return 0;
}
}  // namespace

void Tensor::fill_(double value) {
  int64_t n = numel();
  if (n == 0) return;
  uint64_t pattern = fill_pattern(dtype_, value);
  size_t es = dtype_size(dtype_);
  if (device().is_cuda()) {
    cuda::fill_pattern(raw_data(), n, es, pattern, device().index);
    return;
  }
  char* p = static_cast<char*>(raw_data());
  if (pattern == 0) {
    std::memset(p, 0, nbytes());
    return;
  }
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) std::memcpy(p + static_cast<size_t>(i) * es, &pattern, es);
}

double Tensor::item() const {
  check(numel() == 1,
        fmt::format("item: tensor of shape {} has {} elements", shape_.str(), numel()));
  Tensor h = to(Device::cpu());
  switch (dtype_) {
    case DType::F32: return *h.data<float>();
    case DType::F64: return *h.data<double>();
    case DType::BF16: return static_cast<float>(*h.data<bf16>());
    case DType::I32: return *h.data<int32_t>();
    case DType::I64: return static_cast<double>(*h.data<int64_t>());
  }
  return 0;
}

bool Tensor::overlaps(const Tensor& o) const {
  if (!defined() || !o.defined() || storage_ != o.storage_) return false;
  if (nbytes() == 0 || o.nbytes() == 0) return false;  // an empty range aliases nothing
  size_t a0 = offset_, a1 = offset_ + nbytes(), b0 = o.offset_, b1 = o.offset_ + o.nbytes();
  return a0 < b1 && b0 < a1;
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  return fmt::format("Tensor({}, {}, {})", dtype_name(dtype_), shape_.str(), device().str());
}

}  // namespace psvae
