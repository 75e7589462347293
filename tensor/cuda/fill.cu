// fill_pattern: write one elem_size-byte bit pattern n times (Tensor::fill_, zero_, the NaN/0xA5
// poison of Tensor::empty).
#include <cstdint>
#include <stdexcept>
#include <string>

#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"
#include "tensor/cuda_runtime.h"

namespace psvae::cuda {

namespace {

template <class T>
__global__ void fill_kernel(T* p, int64_t n, T value) {
  for (int64_t i = grid_index(); i < n; i += grid_stride()) p[i] = value;
}

template <class T>
void launch_fill(void* dst, int64_t n, uint64_t pattern, int device) {
  cudaStream_t s = stream(device);
  DeviceGuard g(device);
  PSVAE_LAUNCH(grid_for(n, device), kBlockThreads, 0, s, fill_kernel<T>)
  (static_cast<T*>(dst), n, static_cast<T>(pattern));
  PSVAE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void fill_pattern(void* dst, int64_t n, size_t elem_size, uint64_t pattern, int device) {
  if (n <= 0) return;
  // Byte and half-word stores run at a fraction of the bandwidth of word stores, and the poison
  // fill of integer tensors comes in as n bytes; when the range is word-aligned, repeat the
  // pattern to 32 bits and fill words instead (same bytes in memory).
  const uintptr_t addr = reinterpret_cast<uintptr_t>(dst);
  const uint64_t bytes = static_cast<uint64_t>(n) * elem_size;
  if ((elem_size == 1 || elem_size == 2) && addr % 4 == 0 && bytes % 4 == 0) {
    uint64_t w =
        elem_size == 1 ? (pattern & 0xffu) * 0x01010101u : (pattern & 0xffffu) * 0x00010001u;
    launch_fill<uint32_t>(dst, static_cast<int64_t>(bytes / 4), w, device);
    return;
  }
  switch (elem_size) {
    case 1: launch_fill<uint8_t>(dst, n, pattern, device); break;
    case 2: launch_fill<uint16_t>(dst, n, pattern, device); break;
    case 4: launch_fill<uint32_t>(dst, n, pattern, device); break;
    case 8: launch_fill<uint64_t>(dst, n, pattern, device); break;
    default:
      throw std::invalid_argument("fill_pattern: element size " + std::to_string(elem_size) +
                                  " bytes, expected 1, 2, 4 or 8");
  }
}

}  // namespace psvae::cuda
