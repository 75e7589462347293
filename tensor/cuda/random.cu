// Philox fills on the GPU: the same numbers as the CPU fills of tensor/random.cpp, element for
// element. Both sides evaluate the shared definitions of tensor/philox.h (uniform_at, normal_at) in
// double precision, then apply the same affine map and the same conversions (double -> f32 round to
// nearest; bf16 via f32, as psvae::bf16 does), so:
//   - uniform fills are bit-identical for f32, f64 and bf16: the 24-bit uniform is exact in double,
//     and lo + (hi - lo) * u is two IEEE operations that round the same everywhere;
//   - normal fills use log, sqrt, cos, sin in double. sqrt is correctly rounded on both sides, but
//     CUDA's double log/sin/cos may differ from glibc's in the last ulp (CUDA documents 1-2 ulp).
//     After rounding to f32 (29 fewer mantissa bits) such a difference changes the result only when
//     the double lies within a few ulp of an f32 rounding boundary: probability ~2^-29 * a few,
//     about 1e-9 per element. f64 normal fills may differ in the last ulp or two.
// The affine maps use __dmul_rn / __dadd_rn: nvcc contracts a + b * c into one fma by default,
// which rounds once instead of twice and would break bit equality with the (uncontracted) host.
//
// Work split: one thread per element, each calling uniform_at / normal_at, which recompute the
// Philox block for each of its 4 elements. Fills run at initialisation only, and sharing the
// CPU's exact code path is worth more than the 4x of Philox rounds.
#include <cuda_bf16.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"
#include "tensor/cuda_runtime.h"
#include "tensor/dtype.h"
#include "tensor/philox.h"

namespace psvae::cuda {

namespace {

template <class T>
__device__ __forceinline__ T from_double(double v);
template <>
__device__ __forceinline__ double from_double<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ float from_double<float>(double v) {
  return __double2float_rn(v);
}
// Through f32, as the CPU's bf16(static_cast<float>(v)): a direct double -> bf16 rounding would
// differ in the rare double-rounding cases.
template <>
__device__ __forceinline__ __nv_bfloat16 from_double<__nv_bfloat16>(double v) {
  return __float2bfloat16_rn(__double2float_rn(v));
}

template <class T>
__global__ void uniform_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, double lo,
                               double span) {
  for (int64_t i = grid_index(); i < n; i += grid_stride())
    out[i] = from_double<T>(__dadd_rn(lo, __dmul_rn(span, philox::uniform_at(seed, offset, i))));
}

template <class T>
__global__ void normal_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, double mean,
                              double stdev) {
  for (int64_t i = grid_index(); i < n; i += grid_stride())
    out[i] = from_double<T>(__dadd_rn(mean, __dmul_rn(stdev, philox::normal_at(seed, offset, i))));
}

// Launches kernel<T> for the dtype code (psvae::DType as int).
template <template <class> class K, class... Args>
void launch_typed(const char* what, void* dst, int64_t n, int dtype, int device, Args... args) {
  if (n <= 0) return;
  cudaStream_t s = stream(device);
  DeviceGuard g(device);
  unsigned grid = grid_for(n, device);
  switch (static_cast<DType>(dtype)) {
    case DType::F32: K<float>::launch(grid, s, static_cast<float*>(dst), n, args...); break;
    case DType::F64: K<double>::launch(grid, s, static_cast<double*>(dst), n, args...); break;
    case DType::BF16:
      K<__nv_bfloat16>::launch(grid, s, static_cast<__nv_bfloat16*>(dst), n, args...);
      break;
    default:
      throw std::invalid_argument(std::string(what) + ": needs a floating tensor, got " +
                                  dtype_name(static_cast<DType>(dtype)));
  }
  PSVAE_CUDA_CHECK(cudaGetLastError());
}

template <class T>
struct Uniform {
  static void launch(unsigned grid, cudaStream_t s, T* out, int64_t n, uint64_t seed,
                     uint64_t offset, double lo, double span) {
    PSVAE_LAUNCH(grid, kBlockThreads, 0, s, uniform_kernel<T>)(out, n, seed, offset, lo, span);
  }
};
template <class T>
struct Normal {
  static void launch(unsigned grid, cudaStream_t s, T* out, int64_t n, uint64_t seed,
                     uint64_t offset, double mean, double stdev) {
    PSVAE_LAUNCH(grid, kBlockThreads, 0, s, normal_kernel<T>)(out, n, seed, offset, mean, stdev);
  }
};

}  // namespace

void fill_uniform(void* dst, int64_t n, int dtype, uint64_t seed, uint64_t offset, double lo,
                  double hi, int device) {
  // (hi - lo) computed once here is the same double the CPU computes per element.
  launch_typed<Uniform>("fill_uniform", dst, n, dtype, device, seed, offset, lo, hi - lo);
}

void fill_normal(void* dst, int64_t n, int dtype, uint64_t seed, uint64_t offset, double mean,
                 double stdev, int device) {
  launch_typed<Normal>("fill_normal", dst, n, dtype, device, seed, offset, mean, stdev);
}

}  // namespace psvae::cuda
