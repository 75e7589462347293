// What the emulator's scheduler (fiber.cpp) and its CUDA runtime (runtime.cpp) share.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace cuda_emu {

// The dynamic shared memory a launch of `kernel` may ask for: 48 KiB, or what
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n) allowed.
size_t max_dynamic_smem(const void* kernel);
size_t default_dynamic_smem();     // 48 KiB
size_t max_opt_in_dynamic_smem();  // 227 KiB

// Records a launch failure for cudaGetLastError / cudaPeekAtLastError (and cudaGetErrorString of
// that code returns `message`); printed to stderr too.
void set_launch_error(cudaError_t code, const std::string& message);

// What the emulator's cuTensorMapEncodeTiled (runtime.cpp) writes into the 128 opaque bytes of a
// CUtensorMap, and its bulk tensor copies (fiber.cpp) read back: a tiled map of rank 1..3 (the
// emulator models no more), dimension 0 contiguous. `magic` tells an encoded map from anything
// else passed as one.
struct TensorMap {
  static constexpr uint64_t kMagic = 0x70737661652d746dull;  // "psvae-tm"
  static constexpr int kMaxRank = 5;                         // the driver's limit for tiled maps
  uint64_t magic;
  const unsigned char* base;
  uint64_t dim[kMaxRank];     // elements per dimension (1 past the rank)
  uint64_t stride[kMaxRank];  // bytes between consecutive indices (stride[0] = the element size)
  uint32_t box[kMaxRank];     // the box a copy moves (1 past the rank)
  uint32_t rank, elem;        // rank; bytes per element
  uint32_t swizzle_bytes;     // 0 (none) or 128: the modelled modes
};
static_assert(sizeof(TensorMap) <= 128, "a CUtensorMap holds 128 bytes");

}  // namespace cuda_emu
