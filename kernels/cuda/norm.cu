// CUDA kernels of the norm family, mirroring kernels/cpu/norm.cpp: layernorm, modulate, groupnorm
// and their backwards, plus the fused DiT kernels declared in kernels/cuda/norm_fused.h (layernorm
// + adaLN modulate, gated residual add). f32 and bf16 compute in f32 (statistics, sums, partials),
// f64 in f64; mean and rstd are stored in the input's dtype, as the CPU does.
//
// LayerNorm (and the fused layernorm + modulate): one warp per row, rows strided over the grid.
//   - Register path (D a multiple of the 16-byte pack, pointers 16-byte aligned, D small enough):
//     lane l holds packs (c*32 + l) for c < C, i.e. C*V values (V = 4 f32, 8 bf16, 2 f64), loaded
//     by LDG.128 once. Forward: exact two-pass moments over the registers (sum, then sum of
//     squared deviations), then y. Backward: gy and x packs kept, two warp sums, then gx.
//   - Loop path (any other D or alignment): the warp loops over the row's packs (or elements);
//     forward merges per-pack Welford moments (Chan's formula), backward sums, then a second sweep
//     (row now in L1/L2) writes the output.
// Parameter gradients (gw, gb of layernorm; gshift, gscale of the fused op and of modulate;
// ggate of the gated residual) never use atomics: a block owns a chunk of rows of one segment
// (all rows, or the T rows of sample n) and writes the chunk's column sums to a partial buffer
// [segments][chunks][D] (f32, f64 for f64); reduce_partials_kernel then adds the chunks of each
// segment in index order. In the register path each warp keeps its columns' sums in its own
// slice of shared memory and the block adds its 8 slices in warp order; in the loop path the
// column kernel (col_kernel) re-reads gy and x, one thread per column pack walking the rows.
// modulate_bwd and the gated residual backward are that column kernel alone (it also writes gx).
// modulate and gated residual forward: one warp per row, elementwise with the (N, D) operand.
//
// GroupNorm: one block per (sample, group), i.e. per contiguous run of L = C/G * S values.
// Forward: Welford moments merged in a fixed order (threads, then warps), then y. Backward: per
// channel of the group the block sums gy and gy*xhat (these are also the per-(n, c) partials of
// gw and gb), the group's two means follow, then gx. Both re-read the group (from L2) for the
// output sweep.
//
// Launches are checked by launch_on; every reduction is in a fixed order, so a call repeated on
// the same inputs gives the same bits.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/cuda/norm_fused.h"
#include "kernels/op_table.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda {

namespace {

namespace rt = ::psvae::cuda;
using detail::aligned16;
using detail::dispatch_float;
using detail::kVec;
using detail::launch_on;
using detail::Math;
using detail::Pack;

constexpr int kThreads = 256;          // every kernel here but col_kernel: 8 warps
constexpr int kWarps = kThreads / 32;  // the block reductions below assume exactly this
constexpr unsigned kFull = 0xffffffffu;
// Packs (or rows) a thread loads before it stores anything: a store may alias the inputs as far as
// the compiler knows, so it cannot hoist later loads above it; batching keeps several 16-byte
// loads per thread in flight in the streaming loops. 2 for bf16, whose 8-value packs the compiler
// widens to 8 f32 registers as soon as they arrive (4 would cost ~160 registers per thread).
template <class T>
constexpr int kBatchOf = sizeof(T) == 2 ? 2 : 4;

template <class T>
using AccOf = typename Math<T>::Acc;

// What layernorm's kernels do around the normalisation: nothing, an affine w/b per column, or the
// adaLN modulation (1 + scale[n]) / shift[n] of the sample n = row / seg_len.
enum Mode : int { kPlain = 0, kAffine = 1, kModulate = 2 };

// ---- device helpers -------------------------------------------------------------------------

template <class T, int V>
__device__ __forceinline__ Pack<T, V> ld(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}
template <class T, int V>
__device__ __forceinline__ void st(T* p, const Pack<T, V>& v) {
  *reinterpret_cast<Pack<T, V>*>(p) = v;
}

// A product that the compiler never fuses into an FMA: the backward computes g = gy * f in two
// sweeps and subtracts its mean; with D = 1 (or a one-element group) g - mean(g) must be exactly
// 0, which an FMA (exact product minus the rounded one) would break.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// Sum over the warp; every lane gets the same bits (a + b == b + a in IEEE arithmetic).
template <class A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Running moments: count, mean and sum of squared deviations (Welford / Chan et al.). Numerically
// sound where the one-pass E[x^2] - E[x]^2 cancels. A plain aggregate, so it can live in
// __shared__.
template <class A>
struct Welford {
  int n;
  A mean, m2;
};

// Chan's merge of two disjoint sets' moments. Not symmetric in rounding: callers fix the order.
template <class A>
__device__ __forceinline__ Welford<A> wf_merge(const Welford<A>& a, const Welford<A>& b) {
  if (b.n == 0) return a;
  if (a.n == 0) return b;
  const int n = a.n + b.n;
  const A delta = b.mean - a.mean;
  const A rb = A(b.n) / A(n);
  return {n, a.mean + delta * rb, a.m2 + b.m2 + delta * delta * A(a.n) * rb};
}

// Exact two-pass moments of one pack of V values.
template <class A, int V>
__device__ __forceinline__ Welford<A> wf_of(const A (&v)[V]) {
  A s = 0;
#pragma unroll
  for (int i = 0; i < V; ++i) s += v[i];
  const A m = s / A(V);
  A q = 0;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const A d = v[i] - m;
    q += d * d;
  }
  return {V, m, q};
}

// Moments of the whole warp: a shuffle-down tree (lane l merges lane l + o; only lane 0's chain is
// complete and its order is fixed), then lane 0's result broadcast so every lane uses the same
// bits.
template <class A>
__device__ __forceinline__ Welford<A> warp_welford(Welford<A> w) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Welford<A> u;
    u.n = __shfl_down_sync(kFull, w.n, o);
    u.mean = __shfl_down_sync(kFull, w.mean, o);
    u.m2 = __shfl_down_sync(kFull, w.m2, o);
    w = wf_merge(w, u);
  }
  w.n = __shfl_sync(kFull, w.n, 0);
  w.mean = __shfl_sync(kFull, w.mean, 0);
  w.m2 = __shfl_sync(kFull, w.m2, 0);
  return w;
}

// Moments of the whole block (kThreads threads). Every thread merges the 8 warp results in warp
// order itself, so all get the same bits with one barrier; the second barrier frees sh for reuse.
template <class A>
__device__ Welford<A> block_welford(Welford<A> w, Welford<A>* sh) {
  w = warp_welford(w);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) sh[warp] = w;
  __syncthreads();
  Welford<A> t = sh[0];
  for (int i = 1; i < kWarps; ++i) t = wf_merge(t, sh[i]);
  __syncthreads();
  return t;
}

// Block sums of two values (kThreads threads), same bits in every thread; sh: [2][kWarps].
template <class A>
__device__ void block_sum2(A& a, A& b, A (*sh)[kWarps]) {
  a = warp_sum(a);
  b = warp_sum(b);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    sh[0][warp] = a;
    sh[1][warp] = b;
  }
  __syncthreads();
  a = sh[0][0];
  b = sh[1][0];
  for (int i = 1; i < kWarps; ++i) {
    a += sh[0][i];
    b += sh[1][i];
  }
  __syncthreads();
}

// ---- layernorm forward ----------------------------------------------------------------------

// Y: y's storage type, T's own or, for the fused layernorm + modulate on f32, bf16 (the dtype of
// the GEMM that reads y: what a cast after the kernel would give, without its pass; the f32 value
// is rounded once to bf16, as that cast rounds it).
template <class T, class Y = T>
struct LnFwd {
  const T* x;
  const T* w;      // kAffine: (D)
  const T* b;      // kAffine: (D)
  const T* shift;  // kModulate: (N, D)
  const T* scale;  // kModulate: (N, D)
  Y* y;
  T* mean;  // (rows)
  T* rstd;  // (rows)
  int64_t rows;
  int64_t seg_len;  // kModulate: rows per sample (T)
  int D;
  int mode;
  AccOf<T> eps;
};

// y for one pack of V values at column col of a row; soff = n * D for kModulate.
template <class T, int V, class Y>
__device__ __forceinline__ Pack<Y, V> ln_out(const LnFwd<T, Y>& a, int64_t soff, int col,
                                             const AccOf<T> (&v)[V], AccOf<T> mu, AccOf<T> rs) {
  using M = Math<T>;
  using MY = Math<Y>;
  using A = AccOf<T>;
  Pack<Y, V> o;
  if (a.mode == kAffine) {
    const Pack<T, V> w = ld<T, V>(a.w + col), b = ld<T, V>(a.b + col);
#pragma unroll
    for (int i = 0; i < V; ++i)
      o.v[i] = MY::store((v[i] - mu) * rs * M::load(w.v[i]) + M::load(b.v[i]));
  } else if (a.mode == kModulate) {
    const Pack<T, V> sh = ld<T, V>(a.shift + soff + col), sc = ld<T, V>(a.scale + soff + col);
#pragma unroll
    for (int i = 0; i < V; ++i)
      o.v[i] = MY::store((v[i] - mu) * rs * (A(1) + M::load(sc.v[i])) + M::load(sh.v[i]));
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) o.v[i] = MY::store((v[i] - mu) * rs);
  }
  return o;
}

// Register path: lane l holds packs c*32 + l (c < C) of its warp's row; needs D % V == 0 and
// D <= 32 * V * C. Packs past D are neither read nor written and hold 0.
template <class T, int C, class Y>
__global__ void __launch_bounds__(kThreads) ln_fwd_reg_kernel(const LnFwd<T, Y> a) {
  using M = Math<T>;
  using A = AccOf<T>;
  constexpr int V = kVec<T>;
  const int lane = threadIdx.x & 31;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t r = first; r < a.rows; r += step) {
    const T* xr = a.x + r * a.D;
    A v[C][V];
    A s = 0;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int col = (c * 32 + lane) * V;
      if (col < a.D) {
        const Pack<T, V> p = ld<T, V>(xr + col);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          v[c][i] = M::load(p.v[i]);
          s += v[c][i];
        }
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) v[c][i] = A(0);
      }
    }
    const A mu = warp_sum(s) / A(a.D);
    A q = 0;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      if ((c * 32 + lane) * V < a.D) {
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const A d = v[c][i] - mu;
          q += d * d;
        }
      }
    }
    const A rs = A(1) / sqrt(warp_sum(q) / A(a.D) + a.eps);
    const int64_t soff = a.mode == kModulate ? r / a.seg_len * a.D : 0;
    Y* yr = a.y + r * a.D;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int col = (c * 32 + lane) * V;
      if (col < a.D) st<Y, V>(yr + col, ln_out<T, V, Y>(a, soff, col, v[c], mu, rs));
    }
    if (lane == 0) {
      a.mean[r] = M::store(mu);
      a.rstd[r] = M::store(rs);
    }
  }
}

// Loop path, any D: V = kVec (D % V == 0, aligned) or 1. Welford over the lane's packs, merged
// over the warp; then a second sweep writes y.
template <class T, int V, class Y>
__global__ void __launch_bounds__(kThreads) ln_fwd_loop_kernel(const LnFwd<T, Y> a) {
  using M = Math<T>;
  using A = AccOf<T>;
  const int lane = threadIdx.x & 31;
  const int P = a.D / V;  // packs per row
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t r = first; r < a.rows; r += step) {
    const T* xr = a.x + r * a.D;
    Welford<A> w{0, A(0), A(0)};
    for (int p = lane; p < P; p += 32) {
      const Pack<T, V> xp = ld<T, V>(xr + p * V);
      A v[V];
#pragma unroll
      for (int i = 0; i < V; ++i) v[i] = M::load(xp.v[i]);
      w = wf_merge(w, wf_of<A, V>(v));
    }
    w = warp_welford(w);
    const A mu = w.mean;
    const A rs = A(1) / sqrt(w.m2 / A(a.D) + a.eps);
    const int64_t soff = a.mode == kModulate ? r / a.seg_len * a.D : 0;
    Y* yr = a.y + r * a.D;
    for (int p = lane; p < P; p += 32) {
      const Pack<T, V> xp = ld<T, V>(xr + p * V);
      A v[V];
#pragma unroll
      for (int i = 0; i < V; ++i) v[i] = M::load(xp.v[i]);
      st<Y, V>(yr + p * V, ln_out<T, V, Y>(a, soff, p * V, v, mu, rs));
    }
    if (lane == 0) {
      a.mean[r] = M::store(mu);
      a.rstd[r] = M::store(rs);
    }
  }
}

// ---- layernorm backward ---------------------------------------------------------------------

// G: gy's storage type, T's own or, for the fused layernorm + modulate on f32, bf16 (the dX of
// the GEMM that read y, taken as it comes: widening bf16 to f32 is exact, so the result is the
// same as after a cast to f32, without that pass).
template <class T, class G = T>
struct LnBwd {
  const G* gy;
  const T* x;
  const T* mean;   // (rows)
  const T* rstd;   // (rows)
  const T* w;      // kAffine: (D)
  const T* scale;  // kModulate: (N, D)
  const T* gres;   // kModulate, or null: the gradient already waiting for x, added into gx
  T* gx;
  AccOf<T>* pw;  // register path with kAcc: partials of sum gy*xhat, [nseg][K][D]
  AccOf<T>* pb;  // ... and of sum gy
  int64_t rows;
  int64_t seg_len;  // rows per segment: all rows (kAffine, kPlain) or T (kModulate)
  int64_t rpc;      // rows per chunk (register path)
  int K;            // chunks per segment (register path)
  int D;
  int mode;
};

// f with g = gy * f the gradient w.r.t. xhat: w (kAffine), 1 + scale[n] (kModulate) or 1.
template <class T, int V, class G>
__device__ __forceinline__ void ln_factor(const LnBwd<T, G>& a, int64_t soff, int col,
                                          AccOf<T> (&f)[V]) {
  using M = Math<T>;
  using A = AccOf<T>;
  if (a.mode == kAffine) {
    const Pack<T, V> p = ld<T, V>(a.w + col);
#pragma unroll
    for (int i = 0; i < V; ++i) f[i] = M::load(p.v[i]);
  } else if (a.mode == kModulate) {
    const Pack<T, V> p = ld<T, V>(a.scale + soff + col);
#pragma unroll
    for (int i = 0; i < V; ++i) f[i] = A(1) + M::load(p.v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) f[i] = A(1);
  }
}

// Adds the gradient already waiting for x (the fused layernorm + modulate backward with gres: the
// residual stream's gradient from the gated residual, autograd/engine.cpp) into one pack of gx at
// element offset off. o holds gx rounded to T (its last product by mul_rn, so no FMA takes the add
// into it), so the sum has the bits of a separate add after the kernel; what it saves is that
// add's pass (read both, write one).
template <class T, int V, class G>
__device__ __forceinline__ void add_waiting(const LnBwd<T, G>& a, int64_t off, Pack<T, V>& o) {
  using M = Math<T>;
  if (a.gres == nullptr) return;
  const Pack<T, V> w = ld<T, V>(a.gres + off);
#pragma unroll
  for (int i = 0; i < V; ++i) o.v[i] = M::store(M::load(o.v[i]) + M::load(w.v[i]));
}

// The dynamic shared memory of a kernel, as an array of A. One declaration (unsigned char, 16-byte
// aligned) for every kernel, as CUDA requires of extern __shared__ arrays.
template <class A>
__device__ __forceinline__ A* dyn_smem() {
  PSVAE_DYNAMIC_SMEM(norm_dyn_smem);
  return reinterpret_cast<A*>(norm_dyn_smem);
}

// Register path. Block b owns rows [r0, r1): chunk k = b % K of segment seg = b / K; its warps
// take rows r0 + warp, r0 + warp + 8, ... For kModulate the segment is the sample (seg_len = T).
// With kAcc each warp also sums gy*xhat and gy of its lanes' columns over its rows, in its own
// slice of shared memory (registers would hold 2 C*V more values per lane and halve the warps per
// SM, hence the loads in flight). Slice layout: 16-byte units of A, unit (c*UP + q)*32 + lane for
// pack c, part q of the lane, so that each lane only ever touches its own units (no barrier until
// the end) and a warp's 32 LDS.128/STS.128 are consecutive (no bank conflicts). At the end the
// block adds its 8 slices in warp order and writes the chunk's partial row b of pw and pb.
// Dynamic shared memory: kAcc ? kWarps * 2 * C*V*32 * sizeof(A) : 0 (74 KB f32 C=9, 80 KB bf16
// C=5).
template <class T, int C, bool kAcc, class G>
__global__ void __launch_bounds__(kThreads) ln_bwd_reg_kernel(const LnBwd<T, G> a) {
  using M = Math<T>;
  using MG = Math<G>;
  using A = AccOf<T>;
  constexpr int V = kVec<T>;
  constexpr int U = 16 / static_cast<int>(sizeof(A));  // A values per 16-byte unit
  constexpr int UP = V / U;                            // units per pack: 1 f32, 2 bf16, 1 f64
  constexpr int kUnits = C * UP * 32;                  // units per warp per sum
  using Unit = Pack<A, U>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t seg = blockIdx.x / a.K, k = blockIdx.x % a.K;
  const int64_t r0 = seg * a.seg_len + k * a.rpc;
  const int64_t r1 = seg * a.seg_len + imin(a.seg_len, (k + 1) * a.rpc);
  const int64_t soff = a.mode == kModulate ? seg * a.D : 0;
  Unit* accw = nullptr;  // this warp's slices: sum gy*xhat, sum gy
  Unit* accb = nullptr;
  if constexpr (kAcc) {
    accw = dyn_smem<Unit>() + warp * 2 * kUnits;
    accb = accw + kUnits;
    for (int u = lane; u < kUnits; u += 32) {  // exactly this lane's units
#pragma unroll
      for (int i = 0; i < U; ++i) accw[u].v[i] = accb[u].v[i] = A(0);
    }
  }
  for (int64_t r = r0 + warp; r < r1; r += kWarps) {
    const A mu = M::load(a.mean[r]), rs = M::load(a.rstd[r]);
    const G* gr = a.gy + r * a.D;
    const T* xr = a.x + r * a.D;
    // All loads first (2C LDG.128 in flight per lane), kept as packs: bf16 stays 2 per register.
    Pack<G, V> gp[C];
    Pack<T, V> xp[C];
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int col = (c * 32 + lane) * V;
      if (col < a.D) {
        gp[c] = ld<G, V>(gr + col);
        xp[c] = ld<T, V>(xr + col);
      }
    }
    A s1 = 0, s2 = 0;  // sum g, sum g*xhat
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int col = (c * 32 + lane) * V;
      if (col < a.D) {
        A f[V], gv[V], xh[V];
        ln_factor<T, V>(a, soff, col, f);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          gv[i] = MG::load(gp[c].v[i]);
          xh[i] = (M::load(xp[c].v[i]) - mu) * rs;
          const A g = mul_rn(gv[i], f[i]);
          s1 += g;
          s2 += g * xh[i];
        }
        if constexpr (kAcc) {
#pragma unroll
          for (int q = 0; q < UP; ++q) {
            const int u = (c * UP + q) * 32 + lane;
            Unit w = accw[u], b = accb[u];
#pragma unroll
            for (int i = 0; i < U; ++i) {
              w.v[i] += gv[q * U + i] * xh[q * U + i];
              b.v[i] += gv[q * U + i];
            }
            accw[u] = w;
            accb[u] = b;
          }
        }
      }
    }
    s1 = warp_sum(s1) / A(a.D);
    s2 = warp_sum(s2) / A(a.D);
    T* gxr = a.gx + r * a.D;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int col = (c * 32 + lane) * V;
      if (col < a.D) {
        A f[V];
        ln_factor<T, V>(a, soff, col, f);
        Pack<T, V> o;
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const A xh = (M::load(xp[c].v[i]) - mu) * rs;
          const A g = mul_rn(MG::load(gp[c].v[i]), f[i]);
          o.v[i] = M::store(mul_rn(rs, g - s1 - xh * s2));
        }
        add_waiting<T, V>(a, r * a.D + col, o);
        st<T, V>(gxr + col, o);
      }
    }
  }
  if constexpr (kAcc) {
    __syncthreads();  // every warp's slices are complete
    // Value e of a slice is element i = e % U of unit u = e / U: lane u % 32, pack c, part q.
    const A* sm = dyn_smem<A>();
    constexpr int n = kUnits * U;  // values per slice
    A* const part[2] = {a.pw + static_cast<int64_t>(blockIdx.x) * a.D,
                        a.pb + static_cast<int64_t>(blockIdx.x) * a.D};
    for (int t = threadIdx.x; t < 2 * n; t += kThreads) {
      const int which = t / n, e = t % n;
      const int u = e / U, i = e % U;
      const int ul = u % 32, c = u / 32 / UP, q = u / 32 % UP;
      const int pack_col = (c * 32 + ul) * V;
      if (pack_col < a.D) {
        A sum = 0;
        for (int w = 0; w < kWarps; ++w) sum += sm[(w * 2 + which) * n + e];
        part[which][pack_col + q * U + i] = sum;
      }
    }
  }
}

// Loop path, any D: gx only (the parameter sums come from col_kernel). V = kVec or 1.
template <class T, int V, class G>
__global__ void __launch_bounds__(kThreads) ln_bwd_loop_kernel(const LnBwd<T, G> a) {
  using M = Math<T>;
  using MG = Math<G>;
  using A = AccOf<T>;
  const int lane = threadIdx.x & 31;
  const int P = a.D / V;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t r = first; r < a.rows; r += step) {
    const A mu = M::load(a.mean[r]), rs = M::load(a.rstd[r]);
    const int64_t soff = a.mode == kModulate ? r / a.seg_len * a.D : 0;
    const G* gr = a.gy + r * a.D;
    const T* xr = a.x + r * a.D;
    A s1 = 0, s2 = 0;
    for (int p = lane; p < P; p += 32) {
      const Pack<G, V> gp = ld<G, V>(gr + p * V);
      const Pack<T, V> xp = ld<T, V>(xr + p * V);
      A f[V];
      ln_factor<T, V>(a, soff, p * V, f);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const A g = mul_rn(MG::load(gp.v[i]), f[i]);
        s1 += g;
        s2 += g * ((M::load(xp.v[i]) - mu) * rs);
      }
    }
    s1 = warp_sum(s1) / A(a.D);
    s2 = warp_sum(s2) / A(a.D);
    T* gxr = a.gx + r * a.D;
    for (int p = lane; p < P; p += 32) {
      const Pack<G, V> gp = ld<G, V>(gr + p * V);
      const Pack<T, V> xp = ld<T, V>(xr + p * V);
      A f[V];
      ln_factor<T, V>(a, soff, p * V, f);
      Pack<T, V> o;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const A xh = (M::load(xp.v[i]) - mu) * rs;
        const A g = mul_rn(MG::load(gp.v[i]), f[i]);
        o.v[i] = M::store(mul_rn(rs, g - s1 - xh * s2));
      }
      add_waiting<T, V>(a, r * a.D + p * V, o);
      st<T, V>(gxr + p * V, o);
    }
  }
}

// ---- column sums: parameter partials, modulate_bwd, gated residual backward -------------------

// kColXhat: pw += gy * xhat (xhat from the row's mean and rstd), pb += gy; writes nothing else.
// kColModulate: gx = gy (1 + f[n]), pw += gy * x, pb += gy (modulate_bwd; f = scale).
// kColGate: gx = gy * f[n], pw += gy * x (gated residual: x = h, f = gate); pb unused.
enum ColKind : int { kColXhat = 0, kColModulate = 1, kColGate = 2 };

// G, X: the storage types of gy and of x and gx; T's own, or bf16 beside f32 for the fused DiT ops
// (G: layernorm + modulate's bf16 gy; X: the gated residual's bf16 h and gh).
template <class T, class G = T, class X = T>
struct ColArgs {
  const G* gy;
  const X* x;
  const T* mean;  // kColXhat: (rows)
  const T* rstd;
  const T* f;  // (N, D): scale or gate
  X* gx;
  AccOf<T>* pw;  // [nseg][K][D]
  AccOf<T>* pb;  // [nseg][K][D], or null
  int64_t seg_len;
  int64_t rpc;
  int K;
  int D;
  int kind;
};

// Column-kernel blocks: up to 512 threads, sized so that the packs of a row divide evenly over
// the passes (a 288-pack row takes one pass of 288 threads, not 256 + 32).
constexpr int kColThreads = 512;

// Block b owns rows [r0, r1) of segment seg = b / K (chunk b % K); thread t owns column packs
// t, t + blockDim, ... and walks the rows in order, summing in registers: no reduction between
// threads at all. Consecutive threads read consecutive packs of a row (coalesced); kBatch rows'
// loads are issued before their sums and stores.
template <class T, int V, class G, class X>
__global__ void __launch_bounds__(kColThreads) col_kernel(const ColArgs<T, G, X> a) {
  using M = Math<T>;
  using MG = Math<G>;
  using MX = Math<X>;
  using A = AccOf<T>;
  constexpr int kBatch = kBatchOf<T>;
  const int64_t seg = blockIdx.x / a.K, k = blockIdx.x % a.K;
  const int64_t r0 = seg * a.seg_len + k * a.rpc;
  const int64_t r1 = seg * a.seg_len + imin(a.seg_len, (k + 1) * a.rpc);
  const int64_t part = static_cast<int64_t>(blockIdx.x) * a.D;
  const int P = a.D / V;
  for (int p = threadIdx.x; p < P; p += blockDim.x) {
    const int col = p * V;
    A f[V];
    if (a.kind != kColXhat) {
      const Pack<T, V> fp = ld<T, V>(a.f + seg * a.D + col);
#pragma unroll
      for (int i = 0; i < V; ++i)
        f[i] = a.kind == kColModulate ? A(1) + M::load(fp.v[i]) : M::load(fp.v[i]);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) f[i] = A(0);
    }
    A aw[V], ab[V];
#pragma unroll
    for (int i = 0; i < V; ++i) aw[i] = ab[i] = A(0);
    for (int64_t rb = r0; rb < r1; rb += kBatch) {
      Pack<G, V> gp[kBatch];
      Pack<X, V> xp[kBatch];
      A mu[kBatch], rs[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int64_t r = rb + j;
        mu[j] = rs[j] = A(0);
        if (r < r1) {
          gp[j] = ld<G, V>(a.gy + r * a.D + col);
          xp[j] = ld<X, V>(a.x + r * a.D + col);
          if (a.kind == kColXhat) {
            mu[j] = M::load(a.mean[r]);
            rs[j] = M::load(a.rstd[r]);
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {  // rows in order
        const int64_t r = rb + j;
        if (r >= r1) continue;
        if (a.kind == kColXhat) {
#pragma unroll
          for (int i = 0; i < V; ++i) {
            const A gv = MG::load(gp[j].v[i]);
            aw[i] += gv * ((MX::load(xp[j].v[i]) - mu[j]) * rs[j]);
            ab[i] += gv;
          }
        } else {
          Pack<X, V> o;
#pragma unroll
          for (int i = 0; i < V; ++i) {
            const A gv = MG::load(gp[j].v[i]);
            aw[i] += gv * MX::load(xp[j].v[i]);
            ab[i] += gv;
            o.v[i] = MX::store(gv * f[i]);
          }
          st<X, V>(a.gx + r * a.D + col, o);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < V; ++i) {
      a.pw[part + col + i] = aw[i];
      if (a.pb) a.pb[part + col + i] = ab[i];
    }
  }
}

// out[seg][d] = sum over k < K, in order, of p[seg][k][d]: the second, fixed-order stage of every
// parameter gradient here.
template <class T>
__global__ void reduce_partials_kernel(const AccOf<T>* p, T* out, int64_t nseg, int K, int64_t D) {
  for (int64_t i = rt::grid_index(); i < nseg * D; i += rt::grid_stride()) {
    const int64_t seg = i / D, d = i - seg * D;
    const AccOf<T>* q = p + seg * K * D + d;
    AccOf<T> s = 0;
    for (int k = 0; k < K; ++k) s += q[k * D];
    out[i] = Math<T>::store(s);
  }
}

// ---- modulate and gated residual forward --------------------------------------------------

enum BcastKind : int { kBcastModulate = 0, kBcastGate = 1 };

// H: h's storage type, T's own or, for the gated residual on f32, bf16 (the output of the GEMM
// that made h, read as it comes: the sum is the same as after a cast to f32, without that pass).
template <class T, class H = T>
struct BcastArgs {
  const T* x;
  const H* h;   // kBcastGate: (N, T, D)
  const T* p0;  // shift (modulate) or gate, (N, D)
  const T* p1;  // scale (modulate)
  T* y;
  int64_t rows;
  int64_t seg_len;  // T
  int D;
  int kind;
};

// One warp per row: modulate y = x (1 + scale[n]) + shift[n]; gate y = x + gate[n] h. Each lane
// loads kBatch packs (p, p + 32, ...) before it stores any.
template <class T, int V, class H>
__global__ void __launch_bounds__(kThreads) bcast_fwd_kernel(const BcastArgs<T, H> a) {
  using M = Math<T>;
  using MH = Math<H>;
  using A = AccOf<T>;
  constexpr int kBatch = kBatchOf<T>;
  const int lane = threadIdx.x & 31;
  const int P = a.D / V;
  const bool gate = a.kind == kBcastGate;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t r = first; r < a.rows; r += step) {
    const int64_t off = r * a.D, soff = r / a.seg_len * a.D;
    for (int pb = lane; pb < P; pb += kBatch * 32) {
      // x and h (modulate: shift and scale) packs of kBatch columns.
      Pack<T, V> xp[kBatch], q0[kBatch], q1[kBatch];
      Pack<H, V> hp[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int col = (pb + j * 32) * V;
        if (pb + j * 32 < P) {
          xp[j] = ld<T, V>(a.x + off + col);
          q0[j] = ld<T, V>(a.p0 + soff + col);
          if (gate)
            hp[j] = ld<H, V>(a.h + off + col);
          else
            q1[j] = ld<T, V>(a.p1 + soff + col);
        }
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        if (pb + j * 32 < P) {
          Pack<T, V> o;
#pragma unroll
          for (int i = 0; i < V; ++i) {
            const A xv = M::load(xp[j].v[i]), v0 = M::load(q0[j].v[i]);
            o.v[i] = gate ? M::store(xv + v0 * MH::load(hp[j].v[i]))
                          : M::store(xv * (A(1) + M::load(q1[j].v[i])) + v0);
          }
          st<T, V>(a.y + off + (pb + j * 32) * V, o);
        }
      }
    }
  }
}

// ---- groupnorm ------------------------------------------------------------------------------

template <class T>
struct GnArgs {
  const T* x;
  const T* gy;  // backward
  const T* w;   // (C) when affine
  const T* b;
  T* y;     // forward: y; backward: gx
  T* mean;  // (N, G): forward output, backward input
  T* rstd;
  AccOf<T>* pw;        // backward with affine: per (n, c) sums of gy*xhat, [N][C]
  AccOf<T>* pb;        // ... and of gy
  int64_t NG;          // N * G
  int G, Cg, S, L, C;  // groups, channels per group, spatial size, Cg * S, channels
  bool affine;
  AccOf<T> eps;
};

// Block per group ng (grid-stride): the group is the L contiguous values at ng * L. V = kVec needs
// S % V == 0 (a pack never straddles two channels) and aligned pointers; else V = 1.
template <class T, int V>
__global__ void __launch_bounds__(kThreads) gn_fwd_kernel(const GnArgs<T> a) {
  using M = Math<T>;
  using A = AccOf<T>;
  constexpr int kBatch = kBatchOf<T>;
  __shared__ Welford<A> sh[kWarps];
  const int P = a.L / V;
  for (int64_t ng = blockIdx.x; ng < a.NG; ng += gridDim.x) {
    const int64_t base = ng * a.L;
    Welford<A> w{0, A(0), A(0)};
    for (int pb = threadIdx.x; pb < P; pb += kBatch * kThreads) {
      Pack<T, V> xp[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j)
        if (pb + j * kThreads < P) xp[j] = ld<T, V>(a.x + base + (pb + j * kThreads) * V);
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        if (pb + j * kThreads < P) {
          A v[V];
#pragma unroll
          for (int i = 0; i < V; ++i) v[i] = M::load(xp[j].v[i]);
          w = wf_merge(w, wf_of<A, V>(v));
        }
      }
    }
    w = block_welford(w, sh);
    // An empty group (S = 0) has mean 0/0 as on the CPU; m2 / 0 is NaN already.
    const A mu = a.L > 0 ? w.mean : std::numeric_limits<A>::quiet_NaN();
    const A rs = A(1) / sqrt(w.m2 / A(a.L) + a.eps);
    const int c0 = static_cast<int>(ng % a.G) * a.Cg;
    for (int pb = threadIdx.x; pb < P; pb += kBatch * kThreads) {
      Pack<T, V> xp[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j)
        if (pb + j * kThreads < P) xp[j] = ld<T, V>(a.x + base + (pb + j * kThreads) * V);
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        if (pb + j * kThreads < P) {
          const int i = (pb + j * kThreads) * V;
          const int c = c0 + i / a.S;
          const A sc = a.affine ? rs * M::load(a.w[c]) : rs;  // y = (x - mu) sc + off, as the CPU
          const A off = a.affine ? M::load(a.b[c]) : A(0);
          Pack<T, V> o;
#pragma unroll
          for (int e = 0; e < V; ++e) o.v[e] = M::store((M::load(xp[j].v[e]) - mu) * sc + off);
          st<T, V>(a.y + base + i, o);
        }
      }
    }
    if (threadIdx.x == 0) {
      a.mean[ng] = M::store(mu);
      a.rstd[ng] = M::store(rs);
    }
  }
}

// Block per group. For each channel c of the group, in order: B_c = sum gy, W_c = sum gy*xhat over
// its S values (block sums; with affine also written as the (n, c) partials of gb and gw). Then
// mean(g) = sum_c w_c B_c / L and mean(g xhat) = sum_c w_c W_c / L, and a second sweep writes gx.
template <class T, int V>
__global__ void __launch_bounds__(kThreads) gn_bwd_kernel(const GnArgs<T> a) {
  using M = Math<T>;
  using A = AccOf<T>;
  constexpr int kBatch = kBatchOf<T>;
  __shared__ A red[2][kWarps];
  const int PS = a.S / V, P = a.L / V;
  for (int64_t ng = blockIdx.x; ng < a.NG; ng += gridDim.x) {
    const int64_t n = ng / a.G, base = ng * a.L;
    const int c0 = static_cast<int>(ng % a.G) * a.Cg;
    const A mu = M::load(a.mean[ng]), rs = M::load(a.rstd[ng]);
    A s1 = 0, s2 = 0;  // identical in every thread: built from block sums in channel order
    for (int ci = 0; ci < a.Cg; ++ci) {
      const int64_t cb = base + static_cast<int64_t>(ci) * a.S;
      A sb = 0, sw = 0;
      for (int pb = threadIdx.x; pb < PS; pb += kBatch * kThreads) {
        Pack<T, V> gp[kBatch], xp[kBatch];
#pragma unroll
        for (int j = 0; j < kBatch; ++j) {
          if (pb + j * kThreads < PS) {
            gp[j] = ld<T, V>(a.gy + cb + (pb + j * kThreads) * V);
            xp[j] = ld<T, V>(a.x + cb + (pb + j * kThreads) * V);
          }
        }
#pragma unroll
        for (int j = 0; j < kBatch; ++j) {
          if (pb + j * kThreads < PS) {
#pragma unroll
            for (int e = 0; e < V; ++e) {
              const A gv = M::load(gp[j].v[e]);
              sb += gv;
              sw += gv * ((M::load(xp[j].v[e]) - mu) * rs);
            }
          }
        }
      }
      block_sum2(sb, sw, red);
      const A wc = a.affine ? M::load(a.w[c0 + ci]) : A(1);
      s1 += mul_rn(wc, sb);
      s2 += mul_rn(wc, sw);
      if (a.affine && threadIdx.x == 0) {
        a.pb[n * a.C + c0 + ci] = sb;
        a.pw[n * a.C + c0 + ci] = sw;
      }
    }
    s1 /= A(a.L);
    s2 /= A(a.L);
    for (int pb = threadIdx.x; pb < P; pb += kBatch * kThreads) {
      Pack<T, V> gp[kBatch], xp[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        if (pb + j * kThreads < P) {
          gp[j] = ld<T, V>(a.gy + base + (pb + j * kThreads) * V);
          xp[j] = ld<T, V>(a.x + base + (pb + j * kThreads) * V);
        }
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        if (pb + j * kThreads < P) {
          const int i = (pb + j * kThreads) * V;
          const int c = c0 + i / a.S;
          const A wc = a.affine ? M::load(a.w[c]) : A(1);
          Pack<T, V> o;
#pragma unroll
          for (int e = 0; e < V; ++e) {
            const A xh = (M::load(xp[j].v[e]) - mu) * rs;
            o.v[e] = M::store(rs * (mul_rn(M::load(gp[j].v[e]), wc) - s1 - xh * s2));
          }
          st<T, V>(a.y + base + i, o);
        }
      }
    }
  }
}

// ---- host side: checks ----------------------------------------------------------------------

[[noreturn]] void bad(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

std::string desc(const Tensor& t) { return t.defined() ? t.str() : std::string("undefined"); }

// t must be defined, of `shape`, of x's dtype and on x's device.
void expect_like(const char* op, const char* name, const Tensor& t, const Shape& shape,
                 const Tensor& x) {
  if (!t.defined() || t.shape() != shape || t.dtype() != x.dtype() || t.device() != x.device())
    bad(op, std::string(name) + " must be " + shape.str() + " (" + dtype_name(x.dtype()) + ", " +
                x.device().str() + "), got " + desc(t));
}

// The statistics: any shape with `count` elements (the CPU kernels only read the data), x's
// dtype and device.
void expect_count(const char* op, const char* name, const Tensor& t, int64_t count,
                  const Tensor& x) {
  if (!t.defined() || t.numel() != count || t.dtype() != x.dtype() || t.device() != x.device())
    bad(op, std::string(name) + " must have " + std::to_string(count) + " elements (" +
                dtype_name(x.dtype()) + "), got " + desc(t));
}

void expect_cuda(const char* op, const Tensor& x) {
  if (!x.defined() || !x.device().is_cuda()) bad(op, "x must be a CUDA tensor, got " + desc(x));
}

// Row lengths, group sizes and the like index in 32 bits inside the kernels; half the int range
// leaves room for the loops' last increments (p += blocks of threads) without overflow.
int to_int(const char* op, const char* what, int64_t v) {
  if (v > INT_MAX / 2) detail::unsupported(op, std::string(what) + " of " + std::to_string(v));
  return static_cast<int>(v);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool all_aligned(std::initializer_list<const void*> ps) {
  for (const void* p : ps)
    if (!aligned16(p)) return false;
  return true;
}

template <class T>
T* ptr(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr;
}

DType acc_dtype(DType dt) { return dt == DType::F64 ? DType::F64 : DType::F32; }

// t as expect_like, but of a dtype gemm_side_dtype_ok (op_table.h) beside x's.
void expect_side(const char* op, const char* name, const Tensor& t, const Shape& shape,
                 const Tensor& x) {
  if (!t.defined() || t.shape() != shape || !gemm_side_dtype_ok(t.dtype(), x.dtype()) ||
      t.device() != x.device())
    bad(op, std::string(name) + " must be " + shape.str() + " (" + dtype_name(x.dtype()) +
                (x.dtype() == DType::F32 ? " or bf16" : "") + ", " + x.device().str() + "), got " +
                desc(t));
}

// fn(T{}, S{}): T the storage type of dtype `main` (f32, bf16, f64), S that of a side operand of
// dtype `side` beside it (checked by expect_side): T itself, or bf16 beside f32. The bf16 form is
// compiled for f32 only.
template <class Fn>
void dispatch_pair(DType main, DType side, const char* op, Fn&& fn) {
  dispatch_float(main, op, [&](auto tag) {
    if constexpr (std::is_same<decltype(tag), float>::value) {
      if (side != main) {
        fn(tag, __nv_bfloat16{});
        return;
      }
    }
    fn(tag, tag);
  });
}

void zero(const Tensor& t, cudaStream_t s) {
  if (t.numel() > 0) PSVAE_CUDA_CHECK(cudaMemsetAsync(t.raw_data(), 0, t.nbytes(), s));
}

// Threads of a column-kernel block for P packs per row: the fewest passes of at most kColThreads,
// and a whole number of warps per pass.
int col_threads(int P) {
  const int passes = (P + kColThreads - 1) / kColThreads;
  const int per_pass = (P + passes - 1) / passes;
  return std::max(32, (per_pass + 31) / 32 * 32);
}

// Grid of a warp-per-row kernel: a warp per row up to one full wave, then warps stride.
template <class Kernel>
unsigned row_grid(Kernel kernel, int64_t rows, int dev) {
  return static_cast<unsigned>(std::max<int64_t>(
      1, std::min(ceil_div(rows, kWarps), rt::resident_blocks(kernel, kThreads, dev))));
}

// nseg segments of seg_len rows, each cut into K chunks of rpc rows (the last may be shorter,
// none is empty): about one wave of blocks, chunks of at least min_rows rows where the segment
// allows, so that the partials (K rows of D per segment) stay small against the data.
struct Chunks {
  int64_t rpc = 1;
  int K = 1;
};
Chunks make_chunks(const char* op, int64_t nseg, int64_t seg_len, int64_t resident,
                   int64_t min_rows) {
  int64_t k = std::max<int64_t>(1, resident / nseg);
  k = std::min(k, std::max<int64_t>(1, seg_len / min_rows));
  Chunks c;
  c.rpc = std::max<int64_t>(1, ceil_div(seg_len, k));
  c.K = static_cast<int>(std::max<int64_t>(1, ceil_div(seg_len, c.rpc)));
  if (nseg * c.K > INT_MAX) detail::unsupported(op, std::to_string(nseg) + " segments");
  return c;
}

template <class T>
void reduce_partials(const AccOf<T>* p, T* out, int64_t nseg, int K, int64_t D, cudaStream_t s,
                     int dev) {
  if (nseg * D == 0) return;
  PSVAE_LAUNCH(rt::grid_for(nseg * D, dev), rt::kBlockThreads, 0, s, reduce_partials_kernel<T>)
  (p, out, nseg, K, D);
}

// ---- host side: layernorm (also the fused layernorm + modulate) ------------------------------

// Register chunk counts C (packs per lane) compiled, and the most values per lane (C * V) each
// kernel may hold: the forward keeps C*V accumulators; the backward 2 C packs and, with parameter
// sums, 2 C*V accumulators more. With these caps the register path covers D <= 1536 (f32 and bf16
// forward), 1152 (f32 backward), 1280 (bf16 backward), 384 (f64); larger D takes the loop path.
template <class T>
constexpr int kFwdMaxE = std::is_same<T, double>::value ? 12 : 48;
template <class T>
constexpr int kBwdMaxE = std::is_same<T, double>::value ? 12 : 40;

template <class T, int kMaxE, int C, class Fn>
void try_chunks(int need, bool& done, Fn& fn) {
  if constexpr (C * kVec<T> <= kMaxE) {
    if (!done && need <= C) {
      fn(std::integral_constant<int, C>{});
      done = true;
    }
  }
}

// Calls fn(integral_constant<C>) with the smallest compiled C that holds a row of D; false when
// D is too long for the register path.
template <class T, int kMaxE, class Fn>
bool with_chunks(int D, Fn&& fn) {
  constexpr int V = kVec<T>;
  const int need = (D + 32 * V - 1) / (32 * V);
  bool done = false;
  try_chunks<T, kMaxE, 1>(need, done, fn);
  try_chunks<T, kMaxE, 2>(need, done, fn);
  try_chunks<T, kMaxE, 3>(need, done, fn);
  try_chunks<T, kMaxE, 4>(need, done, fn);
  try_chunks<T, kMaxE, 5>(need, done, fn);
  try_chunks<T, kMaxE, 6>(need, done, fn);
  try_chunks<T, kMaxE, 9>(need, done, fn);
  try_chunks<T, kMaxE, 12>(need, done, fn);
  return done;
}

// Row length and rows of x (...,D); a 0-d tensor is one row of one element.
void rows_of(const Tensor& x, int64_t& rows, int64_t& D) {
  D = x.rank() == 0 ? 1 : x.size(x.rank() - 1);
  rows = D > 0 ? x.numel() / D : 0;
}

// x (rows, D) -> y, mean, rstd; mode kAffine takes w, b (D), kModulate shift, scale (N, D) with
// seg_len rows per sample. Shapes are checked by the callers.
void ln_forward(const char* op, const Tensor& x, const Tensor& w, const Tensor& b,
                const Tensor& shift, const Tensor& scale, int mode, int64_t seg_len, double eps,
                const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  int64_t rows = 0, D64 = 0;
  rows_of(x, rows, D64);
  if (rows == 0) return;
  const int D = to_int(op, "a row length", D64);
  launch_on(x.device(), [&](cudaStream_t s, int dev) {
    dispatch_pair(x.dtype(), y.dtype(), op, [&](auto tag, auto ytag) {
      using T = decltype(tag);
      using Y = decltype(ytag);
      constexpr int V = kVec<T>;
      LnFwd<T, Y> a{};
      a.x = ptr<const T>(x);
      a.w = ptr<const T>(w);
      a.b = ptr<const T>(b);
      a.shift = ptr<const T>(shift);
      a.scale = ptr<const T>(scale);
      a.y = ptr<Y>(y);
      a.mean = ptr<T>(mean);
      a.rstd = ptr<T>(rstd);
      a.rows = rows;
      a.seg_len = seg_len;
      a.D = D;
      a.mode = mode;
      a.eps = static_cast<AccOf<T>>(eps);
      const bool vec = D % V == 0 && all_aligned({a.x, a.w, a.b, a.shift, a.scale, a.y});
      bool done = false;
      if (vec) {
        done = with_chunks<T, kFwdMaxE<T>>(D, [&](auto cc) {
          constexpr int C = decltype(cc)::value;
          auto* k = &ln_fwd_reg_kernel<T, C, Y>;
          PSVAE_LAUNCH(row_grid(k, rows, dev), kThreads, 0, s, k)(a);
        });
      }
      if (!done) {
        auto* k = vec ? &ln_fwd_loop_kernel<T, V, Y> : &ln_fwd_loop_kernel<T, 1, Y>;
        PSVAE_LAUNCH(row_grid(k, rows, dev), kThreads, 0, s, k)(a);
      }
    });
  });
}

// gy, x (rows, D), mean, rstd (rows) -> gx; with kAffine (w) or kModulate (scale (N, D), seg_len
// rows per sample) also psum_w = sum gy*xhat and psum_b = sum gy per segment: gw and gb (D), or
// gscale and gshift (N, D). gres (like x, or undefined) is added into gx.
void ln_backward(const char* op, const Tensor& gy, const Tensor& x, const Tensor& mean,
                 const Tensor& rstd, const Tensor& w, const Tensor& scale, int mode, int64_t nseg,
                 int64_t seg_len, const Tensor& gx, const Tensor& psum_w, const Tensor& psum_b,
                 const Tensor& gres = Tensor()) {
  int64_t rows = 0, D64 = 0;
  rows_of(x, rows, D64);
  const bool acc = mode != kPlain;
  launch_on(x.device(), [&](cudaStream_t s, int dev) {
    if (rows == 0) {  // no rows: the parameter sums are 0, as on the CPU
      if (acc) {
        zero(psum_w, s);
        zero(psum_b, s);
      }
      return;
    }
    const int D = to_int(op, "a row length", D64);
    dispatch_pair(x.dtype(), gy.dtype(), op, [&](auto tag, auto gtag) {
      using T = decltype(tag);
      using G = decltype(gtag);
      using A = AccOf<T>;
      constexpr int V = kVec<T>;
      LnBwd<T, G> a{};  // pw, pb, rpc and K are set per path below
      a.gy = ptr<const G>(gy);
      a.x = ptr<const T>(x);
      a.mean = ptr<const T>(mean);
      a.rstd = ptr<const T>(rstd);
      a.w = ptr<const T>(w);
      a.scale = ptr<const T>(scale);
      a.gres = ptr<const T>(gres);
      a.gx = ptr<T>(gx);
      a.rows = rows;
      a.seg_len = seg_len;
      a.rpc = 1;
      a.K = 1;
      a.D = D;
      a.mode = mode;
      const bool vec = D % V == 0 && all_aligned({a.gy, a.x, a.w, a.scale, a.gres, a.gx});
      Tensor part;  // partial sums; freed stream-ordered after the reduction below
      int K = 1;
      bool done = false;
      if (vec) {
        done = with_chunks<T, kBwdMaxE<T>>(D, [&](auto cc) {
          constexpr int C = decltype(cc)::value;
          if (acc) {
            auto* k = &ln_bwd_reg_kernel<T, C, true, G>;
            const size_t smem = static_cast<size_t>(kWarps) * 2 * C * V * 32 * sizeof(A);
            PSVAE_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                  static_cast<int>(smem)));
            const Chunks ch =
                make_chunks(op, nseg, seg_len, rt::resident_blocks(k, kThreads, dev, smem), 64);
            K = ch.K;
            part = Tensor::empty(Shape{2 * nseg * K * D64}, acc_dtype(x.dtype()), x.device());
            a.pw = static_cast<A*>(part.raw_data());
            a.pb = a.pw + nseg * K * D64;
            a.rpc = ch.rpc;
            a.K = K;
            PSVAE_LAUNCH(static_cast<unsigned>(nseg * K), kThreads, smem, s, k)(a);
          } else if constexpr (std::is_same<G, T>::value) {
            auto* k = &ln_bwd_reg_kernel<T, C, false, G>;
            const Chunks ch =
                make_chunks(op, 1, rows, rt::resident_blocks(k, kThreads, dev), kWarps);
            a.seg_len = rows;
            a.rpc = ch.rpc;
            a.K = ch.K;
            PSVAE_LAUNCH(static_cast<unsigned>(ch.K), kThreads, 0, s, k)(a);
          } else {  // not compiled: only layernorm_modulate_bwd (with sums) takes a bf16 gy
            bad(op, "a bf16 gy beside f32 x needs the modulate form");
          }
        });
      }
      if (!done) {
        auto* k = vec ? &ln_bwd_loop_kernel<T, V, G> : &ln_bwd_loop_kernel<T, 1, G>;
        PSVAE_LAUNCH(row_grid(k, rows, dev), kThreads, 0, s, k)(a);
        if (acc) {
          ColArgs<T, G, T> c{};
          c.gy = a.gy;
          c.x = a.x;
          c.mean = a.mean;
          c.rstd = a.rstd;
          c.seg_len = seg_len;
          c.D = D;
          c.kind = kColXhat;
          const int v = vec ? V : 1;
          const int threads = col_threads(D / v);
          auto* ck = vec ? &col_kernel<T, V, G, T> : &col_kernel<T, 1, G, T>;
          const Chunks ch =
              make_chunks(op, nseg, seg_len, rt::resident_blocks(ck, threads, dev), 64);
          K = ch.K;
          part = Tensor::empty(Shape{2 * nseg * K * D64}, acc_dtype(x.dtype()), x.device());
          c.pw = static_cast<A*>(part.raw_data());
          c.pb = c.pw + nseg * K * D64;
          c.rpc = ch.rpc;
          c.K = K;
          a.pw = c.pw;
          a.pb = c.pb;
          PSVAE_LAUNCH(static_cast<unsigned>(nseg * K), threads, 0, s, ck)(c);
        }
      }
      if (acc) {
        reduce_partials<T>(a.pw, ptr<T>(psum_w), nseg, K, D64, s, dev);
        reduce_partials<T>(a.pb, ptr<T>(psum_b), nseg, K, D64, s, dev);
      }
    });
  });
}

// in: x (..., D), optional w, b (D). out: y, mean, rstd (rows). reals: eps.
void layernorm_cuda(const OpCall& c) {
  const char* op = "layernorm";
  const Tensor& x = c.in.at(0);
  expect_cuda(op, x);
  if (x.rank() < 1) bad(op, "x must have rank >= 1, got " + x.str());
  int64_t rows = 0, D = 0;
  rows_of(x, rows, D);
  const bool affine = c.in.size() > 1;
  if (affine) {
    expect_like(op, "w", c.in.at(1), Shape{D}, x);
    expect_like(op, "b", c.in.at(2), Shape{D}, x);
  }
  expect_like(op, "y", c.out.at(0), x.shape(), x);
  expect_count(op, "mean", c.out.at(1), rows, x);
  expect_count(op, "rstd", c.out.at(2), rows, x);
  ln_forward(op, x, affine ? c.in[1] : Tensor(), affine ? c.in[2] : Tensor(), Tensor(), Tensor(),
             affine ? kAffine : kPlain, rows, c.reals[0], c.out[0], c.out[1], c.out[2]);
}

// in: gy, x, mean, rstd, optional w. out: gx, and gw, gb with w.
void layernorm_bwd_cuda(const OpCall& c) {
  const char* op = "layernorm_bwd";
  const Tensor& x = c.in.at(1);
  expect_cuda(op, x);
  if (x.rank() < 1) bad(op, "x must have rank >= 1, got " + x.str());
  int64_t rows = 0, D = 0;
  rows_of(x, rows, D);
  expect_like(op, "gy", c.in.at(0), x.shape(), x);
  expect_count(op, "mean", c.in.at(2), rows, x);
  expect_count(op, "rstd", c.in.at(3), rows, x);
  expect_like(op, "gx", c.out.at(0), x.shape(), x);
  const bool affine = c.in.size() > 4;
  if (affine) {
    expect_like(op, "w", c.in.at(4), Shape{D}, x);
    expect_like(op, "gw", c.out.at(1), Shape{D}, x);
    expect_like(op, "gb", c.out.at(2), Shape{D}, x);
  }
  ln_backward(op, c.in[0], x, c.in[2], c.in[3], affine ? c.in[4] : Tensor(), Tensor(),
              affine ? kAffine : kPlain, 1, rows, c.out[0], affine ? c.out[1] : Tensor(),
              affine ? c.out[2] : Tensor());
}

// ---- host side: modulate and gated residual ------------------------------------------------

// x (N, T, D) and its (N, D) operands; returns N, T, D.
void expect_ntd(const char* op, const Tensor& x, int64_t& N, int64_t& T, int64_t& D,
                const char* name = "x") {
  if (!x.defined() || !x.device().is_cuda() || x.rank() != 3)
    bad(op, std::string(name) + " must be a CUDA (N, T, D) tensor, got " + desc(x));
  N = x.size(0);
  T = x.size(1);
  D = x.size(2);
}

void bcast_forward(const char* op, int kind, const Tensor& x, const Tensor& h, const Tensor& p0,
                   const Tensor& p1, const Tensor& y) {
  const int64_t T = x.size(1), D64 = x.size(2), rows = x.size(0) * T;
  if (rows == 0 || D64 == 0) return;
  const int D = to_int(op, "a row length", D64);
  launch_on(x.device(), [&](cudaStream_t s, int dev) {
    dispatch_pair(x.dtype(), h.defined() ? h.dtype() : x.dtype(), op, [&](auto tag, auto htag) {
      using T_ = decltype(tag);
      using H = decltype(htag);
      constexpr int V = kVec<T_>;
      BcastArgs<T_, H> a{};
      a.x = ptr<const T_>(x);
      a.h = ptr<const H>(h);
      a.p0 = ptr<const T_>(p0);
      a.p1 = ptr<const T_>(p1);
      a.y = ptr<T_>(y);
      a.rows = rows;
      a.seg_len = T;
      a.D = D;
      a.kind = kind;
      const bool vec = D % V == 0 && all_aligned({a.x, a.h, a.p0, a.p1, a.y});
      auto* k = vec ? &bcast_fwd_kernel<T_, V, H> : &bcast_fwd_kernel<T_, 1, H>;
      PSVAE_LAUNCH(row_grid(k, rows, dev), kThreads, 0, s, k)(a);
    });
  });
}

// Column-kernel backward of modulate (kColModulate: pw -> gscale, pb -> gshift) or of the gated
// residual (kColGate: pw -> ggate): gy, x (N, T, D), f (N, D) -> gx (N, T, D) and the sums. gy, f
// and the sums are of one dtype; x and gx of that or (the gated residual's h, gh) bf16 beside f32.
void col_backward(const char* op, int kind, const Tensor& gy, const Tensor& x, const Tensor& f,
                  const Tensor& gx, const Tensor& sum_w, const Tensor& sum_b) {
  const int64_t N = x.size(0), T = x.size(1), D64 = x.size(2);
  if (N == 0 || D64 == 0) return;  // every output is empty
  const int D = to_int(op, "a row length", D64);
  launch_on(x.device(), [&](cudaStream_t s, int dev) {
    if (T == 0) {  // no tokens: the sums over t are 0
      zero(sum_w, s);
      if (sum_b.defined()) zero(sum_b, s);
      return;
    }
    dispatch_pair(f.dtype(), x.dtype(), op, [&](auto tag, auto xtag) {
      using T_ = decltype(tag);
      using X = decltype(xtag);
      using A = AccOf<T_>;
      constexpr int V = kVec<T_>;
      ColArgs<T_, T_, X> c{};  // pw, pb, rpc and K follow the chunking below
      c.gy = ptr<const T_>(gy);
      c.x = ptr<const X>(x);
      c.f = ptr<const T_>(f);
      c.gx = ptr<X>(gx);
      c.seg_len = T;
      c.D = D;
      c.kind = kind;
      const bool vec = D % V == 0 && all_aligned({c.gy, c.x, c.f, c.gx});
      const int v = vec ? V : 1;
      const int threads = col_threads(D / v);
      auto* k = vec ? &col_kernel<T_, V, T_, X> : &col_kernel<T_, 1, T_, X>;
      const Chunks ch = make_chunks(op, N, T, rt::resident_blocks(k, threads, dev), 64);
      const bool with_b = sum_b.defined();
      const int64_t plane = N * ch.K * D64;
      Tensor part =
          Tensor::empty(Shape{(with_b ? 2 : 1) * plane}, acc_dtype(f.dtype()), x.device());
      c.pw = static_cast<A*>(part.raw_data());
      c.pb = with_b ? c.pw + plane : nullptr;
      c.rpc = ch.rpc;
      c.K = ch.K;
      PSVAE_LAUNCH(static_cast<unsigned>(N * ch.K), threads, 0, s, k)(c);
      reduce_partials<T_>(c.pw, ptr<T_>(sum_w), N, ch.K, D64, s, dev);
      if (with_b) reduce_partials<T_>(c.pb, ptr<T_>(sum_b), N, ch.K, D64, s, dev);
    });
  });
}

// in: x (N, T, D), shift, scale (N, D). out: y.
void modulate_cuda(const OpCall& c) {
  const char* op = "modulate";
  const Tensor& x = c.in.at(0);
  int64_t N, T, D;
  expect_ntd(op, x, N, T, D);
  expect_like(op, "shift", c.in.at(1), Shape{N, D}, x);
  expect_like(op, "scale", c.in.at(2), Shape{N, D}, x);
  expect_like(op, "y", c.out.at(0), x.shape(), x);
  bcast_forward(op, kBcastModulate, x, Tensor(), c.in[1], c.in[2], c.out[0]);
}

// in: gy, x (N, T, D), scale (N, D). out: gx, gshift, gscale.
void modulate_bwd_cuda(const OpCall& c) {
  const char* op = "modulate_bwd";
  const Tensor& x = c.in.at(1);
  int64_t N, T, D;
  expect_ntd(op, x, N, T, D);
  expect_like(op, "gy", c.in.at(0), x.shape(), x);
  expect_like(op, "scale", c.in.at(2), Shape{N, D}, x);
  expect_like(op, "gx", c.out.at(0), x.shape(), x);
  expect_like(op, "gshift", c.out.at(1), Shape{N, D}, x);
  expect_like(op, "gscale", c.out.at(2), Shape{N, D}, x);
  col_backward(op, kColModulate, c.in[0], x, c.in[2], c.out[0], c.out[2], c.out[1]);
}

// ---- host side: groupnorm -------------------------------------------------------------------

struct GnShape {
  int64_t N = 0, NG = 0;
  int G = 0, Cg = 0, S = 0, L = 0, C = 0;
};

GnShape gn_shape(const char* op, const Tensor& x, int64_t groups) {
  expect_cuda(op, x);
  if (x.rank() < 2) bad(op, "x must be (N, C, ...), got " + x.str());
  const int64_t C = x.size(1);
  if (groups <= 0 || C % groups != 0)
    bad(op, std::to_string(groups) + " groups do not divide the " + std::to_string(C) +
                " channels of x " + x.shape().str());
  GnShape g;
  g.N = x.size(0);
  g.G = to_int(op, "a group count", groups);
  g.C = to_int(op, "a channel count", C);
  g.Cg = g.C / g.G;
  g.S = to_int(op, "a spatial size", x.shape().prod(2, x.rank()));
  g.L = to_int(op, "a group size", static_cast<int64_t>(g.Cg) * g.S);
  g.NG = g.N * g.G;
  return g;
}

template <class T>
GnArgs<T> gn_args(const GnShape& g, bool affine, double eps) {
  GnArgs<T> a{};
  a.NG = g.NG;
  a.G = g.G;
  a.Cg = g.Cg;
  a.S = g.S;
  a.L = g.L;
  a.C = g.C;
  a.affine = affine;
  a.eps = static_cast<AccOf<T>>(eps);
  return a;
}

// in: x (N, C, ...), optional w, b (C). out: y, mean, rstd (N, G). ints: groups. reals: eps.
void groupnorm_cuda(const OpCall& c) {
  const char* op = "groupnorm";
  const Tensor& x = c.in.at(0);
  const GnShape g = gn_shape(op, x, c.ints[0]);
  const bool affine = c.in.size() > 1;
  if (affine) {
    expect_like(op, "w", c.in.at(1), Shape{g.C}, x);
    expect_like(op, "b", c.in.at(2), Shape{g.C}, x);
  }
  expect_like(op, "y", c.out.at(0), x.shape(), x);
  expect_count(op, "mean", c.out.at(1), g.NG, x);
  expect_count(op, "rstd", c.out.at(2), g.NG, x);
  if (g.NG == 0) return;
  launch_on(x.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(x.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      constexpr int V = kVec<T>;
      GnArgs<T> a = gn_args<T>(g, affine, c.reals[0]);
      a.x = ptr<const T>(x);
      a.w = affine ? ptr<const T>(c.in[1]) : nullptr;
      a.b = affine ? ptr<const T>(c.in[2]) : nullptr;
      a.y = ptr<T>(c.out[0]);
      a.mean = ptr<T>(c.out[1]);
      a.rstd = ptr<T>(c.out[2]);
      const bool vec = g.S % V == 0 && all_aligned({a.x, a.y});
      auto* k = vec ? &gn_fwd_kernel<T, V> : &gn_fwd_kernel<T, 1>;
      const auto grid =
          static_cast<unsigned>(std::min(g.NG, rt::resident_blocks(k, kThreads, dev)));
      PSVAE_LAUNCH(grid, kThreads, 0, s, k)(a);
    });
  });
}

// in: gy, x, mean, rstd, optional w. out: gx, and gw, gb with w. ints: groups.
void groupnorm_bwd_cuda(const OpCall& c) {
  const char* op = "groupnorm_bwd";
  const Tensor& x = c.in.at(1);
  const GnShape g = gn_shape(op, x, c.ints[0]);
  expect_like(op, "gy", c.in.at(0), x.shape(), x);
  expect_count(op, "mean", c.in.at(2), g.NG, x);
  expect_count(op, "rstd", c.in.at(3), g.NG, x);
  expect_like(op, "gx", c.out.at(0), x.shape(), x);
  const bool affine = c.in.size() > 4;
  if (affine) {
    expect_like(op, "w", c.in.at(4), Shape{g.C}, x);
    expect_like(op, "gw", c.out.at(1), Shape{g.C}, x);
    expect_like(op, "gb", c.out.at(2), Shape{g.C}, x);
  }
  const int K = to_int(op, "a batch", g.N);
  launch_on(x.device(), [&](cudaStream_t s, int dev) {
    if (g.NG == 0) {  // no samples: gw = gb = 0 as on the CPU
      if (affine) {
        zero(c.out[1], s);
        zero(c.out[2], s);
      }
      return;
    }
    dispatch_float(x.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      using A = AccOf<T>;
      constexpr int V = kVec<T>;
      GnArgs<T> a = gn_args<T>(g, affine, 0.0);
      a.gy = ptr<const T>(c.in[0]);
      a.x = ptr<const T>(x);
      a.mean = ptr<T>(c.in[2]);
      a.rstd = ptr<T>(c.in[3]);
      a.w = affine ? ptr<const T>(c.in[4]) : nullptr;
      a.y = ptr<T>(c.out[0]);
      Tensor part;  // [2][N][C] partials of gw, gb
      if (affine) {
        part = Tensor::empty(Shape{2 * g.N * g.C}, acc_dtype(x.dtype()), x.device());
        a.pw = static_cast<A*>(part.raw_data());
        a.pb = a.pw + g.N * g.C;
      }
      const bool vec = g.S % V == 0 && all_aligned({a.gy, a.x, a.y});
      auto* k = vec ? &gn_bwd_kernel<T, V> : &gn_bwd_kernel<T, 1>;
      const auto grid =
          static_cast<unsigned>(std::min(g.NG, rt::resident_blocks(k, kThreads, dev)));
      PSVAE_LAUNCH(grid, kThreads, 0, s, k)(a);
      if (affine) {
        reduce_partials<T>(a.pw, ptr<T>(c.out[1]), 1, K, g.C, s, dev);
        reduce_partials<T>(a.pb, ptr<T>(c.out[2]), 1, K, g.C, s, dev);
      }
    });
  });
}

}  // namespace

// ---- fused kernels (kernels/cuda/norm_fused.h) ------------------------------------------------

void layernorm_modulate_fwd(const Tensor& x, const Tensor& shift, const Tensor& scale, double eps,
                            const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  const char* op = "layernorm_modulate_fwd";
  int64_t N, T, D;
  expect_ntd(op, x, N, T, D);
  expect_like(op, "shift", shift, Shape{N, D}, x);
  expect_like(op, "scale", scale, Shape{N, D}, x);
  expect_side(op, "y", y, x.shape(), x);
  expect_like(op, "mean", mean, Shape{N, T}, x);
  expect_like(op, "rstd", rstd, Shape{N, T}, x);
  ln_forward(op, x, Tensor(), Tensor(), shift, scale, kModulate, T, eps, y, mean, rstd);
}

void layernorm_modulate_bwd(const Tensor& gy, const Tensor& x, const Tensor& mean,
                            const Tensor& rstd, const Tensor& scale, const Tensor& gx,
                            const Tensor& gshift, const Tensor& gscale, const Tensor& gres) {
  const char* op = "layernorm_modulate_bwd";
  int64_t N, T, D;
  expect_ntd(op, x, N, T, D);
  expect_side(op, "gy", gy, x.shape(), x);
  expect_like(op, "mean", mean, Shape{N, T}, x);
  expect_like(op, "rstd", rstd, Shape{N, T}, x);
  expect_like(op, "scale", scale, Shape{N, D}, x);
  expect_like(op, "gx", gx, x.shape(), x);
  expect_like(op, "gshift", gshift, Shape{N, D}, x);
  expect_like(op, "gscale", gscale, Shape{N, D}, x);
  if (gres.defined()) {
    expect_like(op, "gres", gres, x.shape(), x);
    if (x.dtype() == DType::BF16)  // the CPU could not match it: it widens bf16 calls to f32
      bad(op, "gres needs an f32 or f64 x (the sum is rounded once, in x's dtype), got bf16");
  }
  if (N == 0 || D == 0) return;  // every output is empty
  ln_backward(op, gy, x, mean, rstd, Tensor(), scale, kModulate, N, T, gx, gscale, gshift, gres);
}

void gated_residual_fwd(const Tensor& x, const Tensor& gate, const Tensor& h, const Tensor& out) {
  const char* op = "gated_residual_fwd";
  int64_t N, T, D;
  expect_ntd(op, x, N, T, D);
  expect_like(op, "gate", gate, Shape{N, D}, x);
  expect_side(op, "h", h, x.shape(), x);
  expect_like(op, "out", out, x.shape(), x);
  bcast_forward(op, kBcastGate, x, h, gate, Tensor(), out);
}

void gated_residual_bwd(const Tensor& gout, const Tensor& gate, const Tensor& h, const Tensor& gh,
                        const Tensor& ggate) {
  const char* op = "gated_residual_bwd";
  int64_t N, T, D;
  expect_ntd(op, gout, N, T, D, "gout");
  expect_like(op, "gate", gate, Shape{N, D}, gout);
  expect_side(op, "h", h, gout.shape(), gout);
  expect_like(op, "gh", gh, h.shape(), h);
  expect_like(op, "ggate", ggate, Shape{N, D}, gout);
  col_backward(op, kColGate, gout, h, gate, gh, ggate, Tensor());
}

void register_norm(OpTable& t) {
  t[Op::layernorm].cuda = &layernorm_cuda;
  t[Op::layernorm_bwd].cuda = &layernorm_bwd_cuda;
  t[Op::modulate].cuda = &modulate_cuda;
  t[Op::modulate_bwd].cuda = &modulate_bwd_cuda;
  t[Op::groupnorm].cuda = &groupnorm_cuda;
  t[Op::groupnorm_bwd].cuda = &groupnorm_bwd_cuda;
  // The fused adaLN-Zero ops (kernels/cpu/adaln.cpp for the CPU side) through norm_fused.h.
  t[Op::layernorm_modulate].cuda = [](const OpCall& c) {
    layernorm_modulate_fwd(c.in.at(0), c.in.at(1), c.in.at(2), c.reals[0], c.out.at(0), c.out.at(1),
                           c.out.at(2));
  };
  t[Op::layernorm_modulate_bwd].cuda = [](const OpCall& c) {
    layernorm_modulate_bwd(c.in.at(0), c.in.at(1), c.in.at(2), c.in.at(3), c.in.at(4), c.out.at(0),
                           c.out.at(1), c.out.at(2), c.in.size() > 5 ? c.in[5] : Tensor());
  };
  t[Op::gated_residual].cuda = [](const OpCall& c) {
    gated_residual_fwd(c.in.at(0), c.in.at(1), c.in.at(2), c.out.at(0));
  };
  t[Op::gated_residual_bwd].cuda = [](const OpCall& c) {
    gated_residual_bwd(c.in.at(0), c.in.at(1), c.in.at(2), c.out.at(0), c.out.at(1));
  };
}

}  // namespace psvae::kernels::cuda
