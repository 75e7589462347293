// CUDA softmax and log-softmax over the last dim, forward and backward, as kernels/cpu/reduce.cpp:
//   softmax      y = exp(x - max) / sum exp(x - max)
//   log_softmax  y = x - max - log(sum exp(x - max))
//   softmax_bwd      gx = y (gy - sum_j gy_j y_j)
//   log_softmax_bwd  gx = gy - exp(y) sum_j gy_j
// One 256-thread block per row (grid-stride over rows), reductions by warp shuffles and one
// shared-memory exchange; f32 and bf16 accumulate in f32, f64 in f64. The row is read two or
// three times, so a row of up to a few thousand elements is served from L1/L2 after the first
// pass. A first correct version: issue 6's benchmarks will decide whether short rows (the DiT's
// 64-256-token attention rows never come here: attention has its own kernel) want a warp per row.
#include <cfloat>
#include <cmath>
#include <string>

#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/op_table.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda {

namespace {

namespace rt = ::psvae::cuda;
using detail::check_same;
using detail::dispatch_float;
using detail::launch_on;
using detail::Math;

constexpr int kThreads = 256;  // 8 warps

struct MaxOp {
  template <class A>
  __device__ A operator()(A a, A b) const {
    return a > b ? a : b;
  }
};
struct SumOp {
  template <class A>
  __device__ A operator()(A a, A b) const {
    return a + b;
  }
};

// Every thread of the block gets op over the block's values. sh: 32 slots of shared memory.
template <class A, class Op>
__device__ A block_reduce(A v, Op op, A identity, A* sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? sh[lane] : identity;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) sh[0] = v;
  }
  __syncthreads();
  v = sh[0];
  __syncthreads();  // sh is reused by the next reduction
  return v;
}

template <class A>
__device__ __forceinline__ A lowest();
template <>
__device__ __forceinline__ float lowest<float>() {
  return -FLT_MAX;
}
template <>
__device__ __forceinline__ double lowest<double>() {
  return -DBL_MAX;
}

template <class T, bool kLog>
__global__ void __launch_bounds__(kThreads)
    softmax_fwd_kernel(const T* x, T* y, int64_t rows, int64_t D) {
  using M = Math<T>;
  using A = typename M::Acc;
  __shared__ A sh[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * D;
    T* yr = y + r * D;
    A m = lowest<A>();
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) m = fmax(m, M::load(xr[j]));
    m = block_reduce(m, MaxOp{}, lowest<A>(), sh);
    A s = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) s += exp(M::load(xr[j]) - m);
    s = block_reduce(s, SumOp{}, A(0), sh);
    if (kLog) {
      const A lse = m + log(s);
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x) yr[j] = M::store(M::load(xr[j]) - lse);
    } else {
      const A inv = A(1) / s;
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        yr[j] = M::store(exp(M::load(xr[j]) - m) * inv);
    }
  }
}

template <class T, bool kLog>
__global__ void __launch_bounds__(kThreads)
    softmax_bwd_kernel(const T* y, const T* gy, T* gx, int64_t rows, int64_t D) {
  using M = Math<T>;
  using A = typename M::Acc;
  __shared__ A sh[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *yr = y + r * D, *gr = gy + r * D;
    T* xr = gx + r * D;
    A s = 0;  // softmax: sum gy y; log-softmax: sum gy
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
      s += kLog ? M::load(gr[j]) : M::load(gr[j]) * M::load(yr[j]);
    s = block_reduce(s, SumOp{}, A(0), sh);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      const A yv = M::load(yr[j]), gv = M::load(gr[j]);
      xr[j] = M::store(kLog ? gv - exp(yv) * s : yv * (gv - s));
    }
  }
}

// Rows and their length: the last dim (a 0-d tensor is one row of one element).
void rows_of(const Tensor& t, int64_t& rows, int64_t& D) {
  D = t.rank() == 0 ? 1 : t.size(t.rank() - 1);
  rows = D == 0 ? 0 : t.numel() / D;
}

unsigned grid_rows(int64_t rows, int dev) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>(rows, static_cast<int64_t>(rt::sm_count(dev)) * 8)));
}

template <bool kLog>
void softmax_fwd(const OpCall& c, const char* op) {
  const Tensor &x = c.in.at(0), &y = c.out.at(0);
  check_same(op, x, y);
  int64_t rows = 0, D = 0;
  rows_of(x, rows, D);
  if (rows == 0) return;
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(y.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      PSVAE_LAUNCH(grid_rows(rows, dev), kThreads, 0, s, softmax_fwd_kernel<T, kLog>)
      (static_cast<const T*>(x.raw_data()), static_cast<T*>(y.raw_data()), rows, D);
    });
  });
}

// in: y, gy -> out: gx
template <bool kLog>
void softmax_bwd(const OpCall& c, const char* op) {
  const Tensor &y = c.in.at(0), &gy = c.in.at(1), &gx = c.out.at(0);
  check_same(op, y, gy);
  check_same(op, y, gx);
  int64_t rows = 0, D = 0;
  rows_of(y, rows, D);
  if (rows == 0) return;
  launch_on(gx.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(gx.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      PSVAE_LAUNCH(grid_rows(rows, dev), kThreads, 0, s, softmax_bwd_kernel<T, kLog>)
      (static_cast<const T*>(y.raw_data()), static_cast<const T*>(gy.raw_data()),
       static_cast<T*>(gx.raw_data()), rows, D);
    });
  });
}

}  // namespace

void register_softmax(OpTable& t) {
  t[Op::softmax].cuda = [](const OpCall& c) { softmax_fwd<false>(c, "softmax"); };
  t[Op::log_softmax].cuda = [](const OpCall& c) { softmax_fwd<true>(c, "log_softmax"); };
  t[Op::softmax_bwd].cuda = [](const OpCall& c) { softmax_bwd<false>(c, "softmax_bwd"); };
  t[Op::log_softmax_bwd].cuda = [](const OpCall& c) { softmax_bwd<true>(c, "log_softmax_bwd"); };
}

}  // namespace psvae::kernels::cuda
