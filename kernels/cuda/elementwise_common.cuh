// Shared pieces of the elementwise CUDA kernels (register.cu, unary.cu, softmax.cu): storage and
// math types, 16-byte packs, the launch wrapper, dtype dispatch, the shape check and the "not yet
// supported" error.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"
#include "tensor/tensor.h"

namespace psvae::kernels::cuda::detail {

// ---- element types: storage type T, math type Acc -------------------------------------------
template <class T>
struct Math;
template <>
struct Math<float> {
  using Acc = float;
  static __device__ __forceinline__ float load(float x) { return x; }
  static __device__ __forceinline__ float store(float x) { return x; }
};
template <>
struct Math<double> {
  using Acc = double;
  static __device__ __forceinline__ double load(double x) { return x; }
  static __device__ __forceinline__ double store(double x) { return x; }
};
template <>
struct Math<__nv_bfloat16> {
  using Acc = float;
  static __device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};

// 16 bytes of T moved by one load/store instruction (LDG.128): 4 f32, 8 bf16 or 2 f64.
template <class T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));
template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

[[noreturn]] inline void unsupported(const char* op, const std::string& what) {
  throw std::runtime_error(std::string(op) + ": " + what + " not yet supported on CUDA");
}

// Throws naming the op unless a and b have the same shape and dtype.
inline void check_same(const char* op, const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape())
    throw std::invalid_argument(std::string(op) + ": " + a.str() + " and " + b.str() +
                                " must have the same shape and dtype");
}

// Runs launch(stream, device index) with the device of `d` current and its stream, then checks
// that the launches were accepted. Every host entry point of the elementwise kernels goes through
// it.
template <class Fn>
void launch_on(const Device& d, Fn&& launch) {
  const int dev = d.index;
  cudaStream_t s = ::psvae::cuda::stream(dev);
  ::psvae::cuda::DeviceGuard g(dev);
  launch(s, dev);
  PSVAE_CUDA_CHECK(cudaGetLastError());
}

// ---- index division by a divisor fixed at launch (broadcast.cu, reduce.cu) -------------------
// Splitting a linear index into coordinates costs one division per dim; a 64-bit division is a
// ~70-instruction subroutine, which would make a memory-bound kernel compute-bound. FastDiv32
// replaces it by a multiply-high, an add and a shift (Granlund & Montgomery 1994, the form of
// PyTorch's IntDivider): with s = ceil(log2 d) and m = floor(2^32 (2^s - d) / d) + 1,
//   n / d = (umulhi(n, m) + n) >> s   for 0 <= n < 2^31 and 1 <= d <= 2^31
// (n < 2^31 keeps umulhi(n, m) + n < 2^32; checked exhaustively for d < 70000 and on random d).
// Use it when every index is below 2^31; Div64 is the plain fallback for larger tensors.
struct FastDiv32 {
  using Index = uint32_t;
  uint32_t d, m, s;
  static FastDiv32 make(int64_t divisor) {  // 1 <= divisor <= 2^31
    FastDiv32 f;
    f.d = static_cast<uint32_t>(divisor);
    f.s = 0;
    while ((uint64_t(1) << f.s) < f.d) ++f.s;
    f.m = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << f.s) - f.d)) / f.d + 1);
    return f;
  }
  __device__ __forceinline__ void divmod(uint32_t n, uint32_t& q, uint32_t& r) const {
    q = (__umulhi(n, m) + n) >> s;
    r = n - q * d;
  }
};
struct Div64 {
  using Index = int64_t;
  int64_t d;
  static Div64 make(int64_t divisor) { return Div64{divisor}; }
  __device__ __forceinline__ void divmod(int64_t n, int64_t& q, int64_t& r) const {
    q = n / d;
    r = n - q * d;
  }
};

// Calls fn(T{}) with T the CUDA storage type of dt.
template <class Fn>
void dispatch_float(DType dt, const char* op, Fn&& fn) {
  switch (dt) {
    case DType::F32: fn(float{}); return;
    case DType::BF16: fn(__nv_bfloat16{}); return;
    case DType::F64: fn(double{}); return;
    default: unsupported(op, std::string("dtype ") + dtype_name(dt));
  }
}

}  // namespace psvae::kernels::cuda::detail
