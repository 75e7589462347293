// Storage: one reference-counted block of bytes on one device. Tensors share it; views (reshape,
// leading-dim slices) point into it at a byte offset.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>

#include "tensor/device.h"

namespace psvae {

class Storage {
 public:
  // Allocates nbytes on `device`: 64-byte aligned host memory, or a block from the caching CUDA
  // allocator on the device's current stream.
  Storage(size_t nbytes, Device device);
  // Wraps memory owned elsewhere (a memory-mapped file); `release` runs when the last user goes.
  Storage(void* data, size_t nbytes, Device device, std::function<void()> release);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  std::function<void()> release_;
};

}  // namespace psvae
