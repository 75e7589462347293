// What the emulator's scheduler (fiber.cpp) and its CUDA runtime (runtime.cpp) share.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
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

}  // namespace cuda_emu
