// Shared pieces of the CUDA kernels of kernels/cuda/ (register.cu, unary.cu, softmax.cu,
// broadcast.cu, reduce.cu, loss.cu, optim.cu, layout.cu, spatial.cu, ...): storage and math types,
// 16-byte packs and the pack loads/stores with a scalar tail, the deterministic block sum, the
// rounding of a double to a storage type, the index dividers, the launch wrapper, dtype dispatch,
// the shape check and the "not yet supported" error. The kernel files bring them in with
// `using namespace detail;` inside their anonymous namespace (a file's own names hide these).
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

// ---- index division by a divisor fixed at launch (broadcast, reduce, layout, spatial) ---------
// Splitting a linear index into coordinates costs one division per dim; a 64-bit division is a
// ~70-instruction subroutine, which would make a memory-bound kernel compute-bound. FastDiv32
// replaces it by a multiply-high, an add and a shift (Granlund & Montgomery 1994, the form of
// PyTorch's IntDivider): with s = ceil(log2 d) and m = floor(2^32 (2^s - d) / d) + 1,
//   n / d = (umulhi(n, m) + n) >> s   for 0 <= n < 2^31 and 1 <= d <= 2^31
// (n < 2^31 keeps umulhi(n, m) + n < 2^32; checked exhaustively for d < 70000 and on random d).
// Use it when every index is below 2^31; Div64 is the plain fallback for larger tensors.
// Default-constructed it is the divisor 1 (d 1, m 1, s 0: what make(1) gives).
struct FastDiv32 {
  using Index = uint32_t;
  uint32_t d = 1, m = 1, s = 0;
  static FastDiv32 make(int64_t divisor) {  // 1 <= divisor <= 2^31
    FastDiv32 f;
    f.d = static_cast<uint32_t>(divisor);
    f.s = 0;
    while ((uint64_t(1) << f.s) < f.d) ++f.s;
    f.m = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << f.s) - f.d)) / f.d + 1);
    return f;
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, m) + n) >> s; }
  __device__ __forceinline__ void divmod(uint32_t n, uint32_t& q, uint32_t& r) const {
    q = div(n);
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

// A divisor with both forms, for kernels that choose per launch (layout.cu, spatial.cu): divide()
// takes the FastDiv32 path when the launch's flag k32 (uniform over the grid) says every dividend
// is below 2^31, else a 64-bit division. make_div clamps d to at least 1 (a 0 dim divides nothing:
// its kernel has no elements) and fills f only for d <= INT32_MAX; a larger d leaves f the divisor
// 1, which must never be used: the callers set k32 from their element count, and a non-empty
// launch with a divisor above 2^31 - 1 has more elements than that.
struct Div {
  int64_t d = 1;
  FastDiv32 f;
};
inline Div make_div(int64_t d) {
  Div r;
  r.d = d > 1 ? d : 1;
  if (r.d <= INT32_MAX) r.f = FastDiv32::make(r.d);
  return r;
}
__device__ __forceinline__ int64_t divide(int64_t n, const Div& D, bool k32) {
  return k32 ? static_cast<int64_t>(D.f.div(static_cast<uint32_t>(n))) : n / D.d;
}

// ---- pack loads and stores with a scalar tail (loss.cu, optim.cu) ----------------------------
// Elements [base, base + V) of p that lie below n, as Acc, into v (zeros past n); returns how many
// are valid. One V-element vector load when `vec` (p aligned to the pack size; base is a multiple
// of V, so p + base is too) and the pack is whole, else one load per valid element: the same
// values either way, so a sum over them cannot depend on the alignment.
template <class T, int V>
__device__ __forceinline__ int load_pack(const T* p, int64_t base, int64_t n, bool vec,
                                         typename Math<T>::Acc (&v)[V]) {
  using A = typename Math<T>::Acc;
  if (vec && base + V <= n) {
    const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p + base);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = Math<T>::load(pk.v[k]);
    return V;
  }
  const int cnt = n - base < V ? static_cast<int>(n - base) : V;
#pragma unroll
  for (int k = 0; k < V; ++k) v[k] = k < cnt ? Math<T>::load(p[base + k]) : A(0);
  return cnt;
}

// Stores the elements of v that lie below n at p + base (the mirror of load_pack).
template <class T, int V>
__device__ __forceinline__ void store_pack(T* p, int64_t base, int64_t n, bool vec,
                                           const typename Math<T>::Acc (&v)[V]) {
  if (vec && base + V <= n) {
    Pack<T, V> pk;
#pragma unroll
    for (int k = 0; k < V; ++k) pk.v[k] = Math<T>::store(v[k]);
    *reinterpret_cast<Pack<T, V>*>(p + base) = pk;
    return;
  }
#pragma unroll
  for (int k = 0; k < V; ++k)
    if (base + k < n) p[base + k] = Math<T>::store(v[k]);
}

// ---- deterministic block sum and the rounding of its result (loss.cu, optim.cu, conv.cu) -------
// Sum over the block (blockDim a multiple of 32, at most 1024) of v; the result is valid in thread
// 0 only. sh: 32 elements of shared memory, used once (callers do not loop). The butterfly order
// is fixed, so the sum is deterministic.
template <class A>
__device__ inline A block_sum_to_thread0(A v, A* sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sh[warp] = v;
  __syncthreads();  // every warp's total is in sh before warp 0 reads them
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? sh[lane] : A(0);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  }
  return v;
}

// double -> storage type, rounded once (bf16 through f32, as psvae::bf16 and register.cu's cast).
template <class T>
__device__ __forceinline__ T from_double(double v);
template <>
__device__ __forceinline__ float from_double<float>(double v) {
  return __double2float_rn(v);
}
template <>
__device__ __forceinline__ double from_double<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_double<__nv_bfloat16>(double v) {
  return __float2bfloat16_rn(__double2float_rn(v));
}

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
