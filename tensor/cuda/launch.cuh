// What every CUDA entry point of the project needs before it launches work: a valid device index,
// that device made current (a stream belongs to one device; launching into it from another is an
// error), the device's stream, and a grid size for grid-stride kernels.
// Defined in tensor/cuda/runtime.cu; kernels/cuda/*.cu use them too.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "tensor/cuda/cuda_check.cuh"

// kernel<<<grid, block, smem, stream>>>(args...) is written
//   PSVAE_LAUNCH(grid, block, smem, stream, kernel)(args...)
// so that an emulation build (cuda_emu/cuda_emu.h, which defines its own PSVAE_LAUNCH) can run the
// same launch on the host. The kernel comes last because a template-id's commas would otherwise
// split the macro's arguments.
#ifndef PSVAE_CUDA_EMULATION
#define PSVAE_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

// The block's dynamic shared memory as `unsigned char* name` (16-byte aligned), for use inside a
// kernel or device function. CUDA wants one extern __shared__ array; the emulator hands out its
// own buffer.
#ifdef PSVAE_CUDA_EMULATION
#define PSVAE_DYNAMIC_SMEM(name) unsigned char* const name = ::cuda_emu::dynamic_smem()
#else
#define PSVAE_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace psvae::cuda {

// Throws std::invalid_argument naming the device and the visible count when out of range.
void check_device(int device);

// The project's stream on `device` (created on first use); the typed form of current_stream().
cudaStream_t stream(int device);

// Streaming multiprocessors of `device` (132 on an H200), cached.
int sm_count(int device);

// Makes `device` current for the scope and restores the caller's device afterwards, so library
// calls never change the thread's device behind the user's back.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
  int device_ = -1;
};

// Grid-stride launches: 256 threads per block, and at most 8 blocks per SM. 8 x 256 = 2048
// threads, the resident maximum of an sm_80/sm_90 SM, so the grid is one full wave; each thread
// then strides over the rest. Memory-bound elementwise kernels reach bandwidth with this and avoid
// the launch-tail of a grid with millions of tiny blocks.
constexpr int kBlockThreads = 256;
inline unsigned grid_for(int64_t work_items, int device) {
  int64_t blocks = (work_items + kBlockThreads - 1) / kBlockThreads;
  int64_t cap = static_cast<int64_t>(sm_count(device)) * 8;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, cap)));
}

// Blocks of `kernel` (`threads` per block, `smem` bytes of dynamic shared memory) that are
// resident at once on one SM, at least 1, by the occupancy calculator. Above 48 KiB of dynamic
// shared memory the kernel is first opted into that much (cudaFuncSetAttribute; the calculator
// answers 0 without it, and the launch needs it too).
template <class Kernel>
int blocks_per_sm(Kernel kernel, int threads, size_t smem = 0) {
  if (smem > 48 * 1024)
    PSVAE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
  int per_sm = 0;
  PSVAE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  return std::max(per_sm, 1);
}

// The same on the whole of `device`: blocks_per_sm x SMs, one full wave.
template <class Kernel>
int64_t resident_blocks(Kernel kernel, int threads, int device, size_t smem = 0) {
  return static_cast<int64_t>(blocks_per_sm(kernel, threads, smem)) * sm_count(device);
}

// Index of this thread in a grid-stride loop and the stride, in 64 bits (tensors may exceed 2^31
// elements).
__device__ __forceinline__ int64_t grid_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

}  // namespace psvae::cuda
