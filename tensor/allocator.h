// Allocators. Host: 64-byte aligned (a cache line, and enough for AVX-512 loads).
// CUDA: see tensor/cuda_runtime.h for the caching, stream-ordered device allocator.
#pragma once
#include <cstddef>

namespace psvae {

constexpr size_t kCpuAlignment = 64;

void* cpu_alloc(size_t nbytes);  // throws std::bad_alloc with the size on failure
void cpu_free(void* p);

}  // namespace psvae
