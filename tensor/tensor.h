// Tensor: a shape, a dtype, a device and a shared Storage. Always contiguous row-major; the only
// views are the free ones (reshape, a slice of leading rows). A permute is a copy kernel.
// The Tensor knows nothing of any op's math: ops live in kernels/, gradients in autograd/.
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "tensor/device.h"
#include "tensor/dtype.h"
#include "tensor/shape.h"
#include "tensor/storage.h"

namespace psvae {

class Tensor {
 public:
  Tensor() = default;  // undefined: defined() is false

  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32,
                     Device device = Device::cpu());
  // Host data, copied; values.size() must equal shape.numel().
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape,
                            Device device = Device::cpu());
  static Tensor scalar(double value, DType dtype = DType::F32, Device device = Device::cpu()) {
    return full(Shape{}, value, dtype, device);
  }
  // Wraps existing storage (used by the safetensors reader for memory-mapped tensors).
  Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, const Shape& shape, DType dtype);

  bool defined() const { return static_cast<bool>(storage_); }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  int64_t size(int dim) const { return shape_[dim]; }
  int64_t numel() const { return shape_.numel(); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  size_t byte_offset() const { return offset_; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  void* raw_data() const;
  // Typed pointer; throws when T does not match the dtype.
  template <class T>
  T* data() const;

  // Views sharing storage. The initializer-list form accepts one -1: t.reshape({B, -1}).
  Tensor reshape(const Shape& shape) const;
  Tensor reshape(std::initializer_list<int64_t> dims) const;
  Tensor slice0(int64_t begin, int64_t end) const;  // rows [begin, end) of dim 0

  Tensor clone() const;               // deep copy, same device
  Tensor to(Device device) const;     // copy to device (returns *this when already there)
  void copy_from(const Tensor& src);  // same shape and dtype, any devices
  void fill_(double value);
  void zero_() { fill_(0.0); }

  // Host copy of the elements (from any device); T must match the dtype.
  template <class T>
  std::vector<T> to_vector() const;
  // Value of a one-element tensor as double (any dtype, any device).
  double item() const;

  // Aliasing check: do the byte ranges of two tensors overlap?
  bool overlaps(const Tensor& other) const;

  std::string str() const;  // "Tensor(f32, (2, 3), cpu)"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes from storage start
  Shape shape_;
  DType dtype_ = DType::F32;
};

// Debug poison: while on, every Tensor::empty is filled with NaN (floats) or 0xA5 bytes (integers),
// so a kernel that leaves an output element unwritten fails its test instead of passing by luck.
// The op harness and the CUDA tests switch it on.
void set_poison_new_tensors(bool on);
bool poison_new_tensors();

// Throws std::invalid_argument with a message when cond is false. `what` names the caller.
void check(bool cond, const std::string& what);

// ---- templates ---------------------------------------------------------------------------------
template <class T>
T* Tensor::data() const {
  if (dtype_of<T>::value != dtype_)
    throw std::invalid_argument(std::string("Tensor::data: requested ") +
                                dtype_name(dtype_of<T>::value) + " from a " + dtype_name(dtype_) +
                                " tensor");
  return static_cast<T*>(raw_data());
}

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, Device device) {
  if (static_cast<int64_t>(values.size()) != shape.numel())
    throw std::invalid_argument("Tensor::from_vector: " + std::to_string(values.size()) +
                                " values for shape " + shape.str());
  Tensor host = empty(shape, dtype_of<T>::value, Device::cpu());
  if (!values.empty()) std::memcpy(host.raw_data(), values.data(), host.nbytes());
  return host.to(device);
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor host = to(Device::cpu());
  const T* p = host.data<T>();
  return std::vector<T>(p, p + numel());
}

}  // namespace psvae
