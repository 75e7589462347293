// CUDA kernels: the fused LPIPS v0.1 distance at one tap, forward and backward (the math and the
// CPU reference are in kernels/cpu/lpips.cpp).
//
// Layout: f0, f1 (N,C,H,W). One thread owns one position p = (n, h, w) and walks its C channels,
// which sit HW elements apart; neighbouring threads own neighbouring positions, so every channel
// step is one coalesced 128-byte line per warp (f32). Passes over the channels per position:
//   forward:  1. s_i = sum_c f_i,c^2          2. sum_c w_c (a0 f0,c - a1 f1,c)^2
//   backward: 1. s_i                           2. sum_c q_c f_i,c   3. write g0, g1
// Bytes: the forward reads f0 and f1 twice (the second pass mostly from L1/L2: a warp's working
// set is 32 positions x C channels x 8 bytes, 128 KB at C = 512 for both maps, so the re-read
// partly comes from L2), the backward three times and writes both gradients.
//
// The mean over positions is deterministic: kernel 1 writes one value per position into a
// temporary (N, HW) f32 (f64 for f64 inputs), kernel 2 reduces each sample's HW values with one
// block in a fixed order. No atomics.
// Types: f32 and bf16 computed in f32 (sums of C <= 512 squares: relative error ~1e-6), f64 in f64.
#include <cuda_bf16.h>

#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/op_table.h"

namespace psvae::kernels::cuda {

namespace {

namespace rt = ::psvae::cuda;

using detail::dispatch_float;
using detail::launch_on;
using detail::Math;

struct Dims {
  int64_t n, c, hw;
};
Dims dims_of(const Tensor& f) { return {f.size(0), f.size(1), f.size(2) * f.size(3)}; }

// a0 x0 - a1 x1 with both products rounded before the subtraction (__fmul_rn / __dmul_rn are never
// contracted into an fma), so identical feature maps give exactly 0, as LPIPS promises d(x, x) = 0.
__device__ __forceinline__ float unit_diff(float a0, float x0, float a1, float x1) {
  return __fmul_rn(a0, x0) - __fmul_rn(a1, x1);
}
__device__ __forceinline__ double unit_diff(double a0, double x0, double a1, double x1) {
  return __dmul_rn(a0, x0) - __dmul_rn(a1, x1);
}

// a_i = 1 / (sqrt(s_i + floor) + eps) and r_i = sqrt(s_i + floor) of one position.
template <class T>
struct Norms {
  using A = typename Math<T>::Acc;
  A r0, r1, a0, a1;
  __device__ Norms(const T* f0, const T* f1, int64_t c_count, int64_t hw, A eps, A floor) {
    A s0 = floor, s1 = floor;
    for (int64_t c = 0; c < c_count; ++c) {
      const A x0 = Math<T>::load(f0[c * hw]), x1 = Math<T>::load(f1[c * hw]);
      s0 += x0 * x0;
      s1 += x1 * x1;
    }
    r0 = sqrt(s0), r1 = sqrt(s1);
    a0 = A(1) / (r0 + eps), a1 = A(1) / (r1 + eps);
  }
};

// vals[n * hw + p] = sum_c w_c (a0 f0,c - a1 f1,c)^2 for every position.
template <class T>
__global__ void lpips_positions(const T* f0, const T* f1, const T* w, typename Math<T>::Acc* vals,
                                Dims d, typename Math<T>::Acc eps, typename Math<T>::Acc floor) {
  using A = typename Math<T>::Acc;
  const int64_t total = d.n * d.hw;
  for (int64_t t = rt::grid_index(); t < total; t += rt::grid_stride()) {
    const int64_t n = t / d.hw, p = t % d.hw;
    const int64_t base = n * d.c * d.hw + p;
    const Norms<T> nm(f0 + base, f1 + base, d.c, d.hw, eps, floor);
    A s = 0;
    for (int64_t c = 0; c < d.c; ++c) {
      const A diff = unit_diff(nm.a0, Math<T>::load(f0[base + c * d.hw]), nm.a1,
                               Math<T>::load(f1[base + c * d.hw]));
      s += Math<T>::load(w[c]) * diff * diff;
    }
    vals[t] = s;
  }
}

// out[n] = (1 / hw) sum_p vals[n * hw + p]: one block per sample; each thread sums a fixed
// stride of positions, then a fixed shared-memory tree. The order depends only on hw.
constexpr int kReduceThreads = 256;
template <class T>
__global__ void lpips_mean(const typename Math<T>::Acc* vals, T* out, int64_t hw) {
  using A = typename Math<T>::Acc;
  __shared__ A part[kReduceThreads];
  const int64_t n = blockIdx.x;
  A s = 0;
  for (int64_t p = threadIdx.x; p < hw; p += kReduceThreads) s += vals[n * hw + p];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int k = kReduceThreads / 2; k > 0; k /= 2) {
    if (static_cast<int>(threadIdx.x) < k) part[threadIdx.x] += part[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[n] = Math<T>::store(part[0] / static_cast<A>(hw));
}

// g0,k = a0 q_k - a0^2 (f0,k / r0) sum_c q_c f0,c, g1 likewise negated, with
// q_c = 2 (gd_n / hw) w_c (a0 f0,c - a1 f1,c).
template <class T>
__global__ void lpips_backward(const T* gd, const T* f0, const T* f1, const T* w, T* g0, T* g1,
                               Dims d, typename Math<T>::Acc eps, typename Math<T>::Acc floor) {
  using A = typename Math<T>::Acc;
  const int64_t total = d.n * d.hw;
  for (int64_t t = rt::grid_index(); t < total; t += rt::grid_stride()) {
    const int64_t n = t / d.hw, p = t % d.hw;
    const int64_t base = n * d.c * d.hw + p;
    const Norms<T> nm(f0 + base, f1 + base, d.c, d.hw, eps, floor);
    const A scale = A(2) * Math<T>::load(gd[n]) / static_cast<A>(d.hw);
    A qf0 = 0, qf1 = 0;
    for (int64_t c = 0; c < d.c; ++c) {
      const A x0 = Math<T>::load(f0[base + c * d.hw]), x1 = Math<T>::load(f1[base + c * d.hw]);
      const A q = scale * Math<T>::load(w[c]) * unit_diff(nm.a0, x0, nm.a1, x1);
      qf0 += q * x0;
      qf1 += q * x1;
    }
    const A k0 = nm.a0 * nm.a0 * qf0 / nm.r0, k1 = nm.a1 * nm.a1 * qf1 / nm.r1;
    for (int64_t c = 0; c < d.c; ++c) {
      const int64_t i = base + c * d.hw;
      const A x0 = Math<T>::load(f0[i]), x1 = Math<T>::load(f1[i]);
      const A q = scale * Math<T>::load(w[c]) * unit_diff(nm.a0, x0, nm.a1, x1);
      g0[i] = Math<T>::store(nm.a0 * q - k0 * x0);
      g1[i] = Math<T>::store(-(nm.a1 * q - k1 * x1));
    }
  }
}

void lpips_tap_cuda(const OpCall& c) {
  const Tensor &f0 = c.in.at(0), &f1 = c.in.at(1), &w = c.in.at(2), &out = c.out.at(0);
  const Dims d = dims_of(f0);
  launch_on(out.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(f0.dtype(), "lpips_tap", [&](auto tag) {
      using T = decltype(tag);
      using A = typename Math<T>::Acc;
      const DType acc = sizeof(A) == 8 ? DType::F64 : DType::F32;
      Tensor vals = Tensor::empty(Shape{d.n * d.hw}, acc, out.device());
      PSVAE_LAUNCH(rt::grid_for(d.n * d.hw, dev), rt::kBlockThreads, 0, s, lpips_positions<T>)
      (static_cast<const T*>(f0.raw_data()), static_cast<const T*>(f1.raw_data()),
       static_cast<const T*>(w.raw_data()), static_cast<A*>(vals.raw_data()), d,
       static_cast<A>(c.reals[0]), static_cast<A>(c.reals[1]));
      PSVAE_LAUNCH(static_cast<unsigned>(d.n), kReduceThreads, 0, s, lpips_mean<T>)
      (static_cast<const A*>(vals.raw_data()), static_cast<T*>(out.raw_data()), d.hw);
    });
  });
}

void lpips_tap_bwd_cuda(const OpCall& c) {
  const Tensor &gd = c.in.at(0), &f0 = c.in.at(1), &f1 = c.in.at(2), &w = c.in.at(3);
  const Tensor &g0 = c.out.at(0), &g1 = c.out.at(1);
  const Dims d = dims_of(f0);
  launch_on(g0.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(f0.dtype(), "lpips_tap_bwd", [&](auto tag) {
      using T = decltype(tag);
      using A = typename Math<T>::Acc;
      PSVAE_LAUNCH(rt::grid_for(d.n * d.hw, dev), rt::kBlockThreads, 0, s, lpips_backward<T>)
      (static_cast<const T*>(gd.raw_data()), static_cast<const T*>(f0.raw_data()),
       static_cast<const T*>(f1.raw_data()), static_cast<const T*>(w.raw_data()),
       static_cast<T*>(g0.raw_data()), static_cast<T*>(g1.raw_data()), d,
       static_cast<A>(c.reals[0]), static_cast<A>(c.reals[1]));
    });
  });
}

}  // namespace

void register_lpips(OpTable& t) {
  t[Op::lpips_tap].cuda = &lpips_tap_cuda;
  t[Op::lpips_tap_bwd].cuda = &lpips_tap_bwd_cuda;
}

}  // namespace psvae::kernels::cuda
