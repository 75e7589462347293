// PSVAE_CUDA_CHECK(expr): every CUDA runtime call of the project goes through it, so a failure
// surfaces as a std::runtime_error naming the file:line, the call and the driver's reason, at the
// call that failed rather than at some later unrelated call (CUDA errors are reported lazily).
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace psvae::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file,
                                          int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr +
                           " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                           ")");
}

}  // namespace psvae::cuda

#define PSVAE_CUDA_CHECK(expr)                                                                  \
  do {                                                                                          \
    cudaError_t psvae_cuda_err_ = (expr);                                                       \
    if (psvae_cuda_err_ != cudaSuccess) {                                                       \
      (void)cudaGetLastError(); /* clear a non-sticky error so later calls see a clean state */ \
      ::psvae::cuda::throw_cuda_error(psvae_cuda_err_, #expr, __FILE__, __LINE__);              \
    }                                                                                           \
  } while (0)
