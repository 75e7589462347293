// CUDA kernels of the loss family, forward and backward, as kernels/cpu/loss.cpp:
//   mse_loss      mean((a-b)^2)                      mse_loss_bwd  ga = 2 gy (a-b) / n
//   l1_loss       mean|a-b|                          l1_loss_bwd   ga = gy sgn(a-b) / n (0 at ties)
//   kl_gauss      0.5 sum(mu^2 + expm1(lv) - lv) / normaliser
//   kl_gauss_bwd  gmu = gy mu / normaliser, glv = 0.5 gy expm1(lv) / normaliser (one pass)
//   cross_entropy (N, C) logits -> mean NLL and lse (N)
//   cross_entropy_bwd  glogits = gy (e^(x - lse) - onehot) / N
// plus kl_gauss_fused (loss_fused.h): the KL value and both gradients in one pass.
//
// Types: f32 and bf16 inputs computed in f32, f64 in f64; every sum is accumulated in double (as
// the CPU kernels do), the scalar is stored in the inputs' dtype, as the op wrappers allocate it.
// gy, the gradient of the scalar loss, stays on the device: each backward kernel reads it.
//
// Determinism. Every reduction is two-pass with no atomics on floats: pass 1 runs a grid whose size
// depends on the element count and dtype alone (min(528, packs / 256) blocks of 256 threads), each
// thread sums whole packs of V elements (16 bytes) in a fixed grid-stride order and each block
// reduces its threads by a fixed shuffle tree into partial[block]; pass 2 is one block summing the
// partials in a fixed order. A pack is summed element by element in index order whether it was
// loaded by one 16-byte load or by V scalar loads (unaligned views, the tail), so even the
// alignment of the data cannot change the bits: the same inputs give the same scalar, always.
// cross_entropy's per-row NLLs go through the same two passes. The only atomic is an integer
// atomicMin recording the first row whose target is outside [0, C) (min is order-independent).
//
// Target check: as the CPU kernels, cross_entropy and its backward throw on a target outside
// [0, C), naming the row, the id and C. The targets may live on the device, so the kernel records
// the first bad row and the host reads that one int64 back: a stream synchronisation per call of
// these two ops (cheap next to a (4096, 32000) logits pass, but it stalls the host's queueing).
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/cuda/loss_fused.h"
#include "kernels/op_table.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda {

namespace {

namespace rt = ::psvae::cuda;
using namespace detail;  // the shared helpers of elementwise_common.cuh

constexpr int kThreads = 256;  // 8 warps per block, every kernel of this file
// Pass-1 blocks at most: 4 per SM of an H200 (132 SMs). With __launch_bounds__(256, 4) and the
// ~40 registers these kernels take, 6 blocks fit per SM, so the grid is a single wave (a fixed grid
// of 1024 would run as 1.3 waves, its tail on a fraction of the SMs). Each thread keeps two packs
// in flight (the loop is unrolled by 2): 4 x 256 threads x 64 bytes = 64 KiB per SM in flight.
// The constant must not depend on the device: it fixes the summation order.
constexpr int kMaxPartials = 528;

// ---- device helpers ----------------------------------------------------------------------------
template <class T>
__device__ __forceinline__ double to_double(T x) {
  return static_cast<double>(Math<T>::load(x));
}

__device__ __forceinline__ float expm1_of(float x) { return expm1f(x); }
__device__ __forceinline__ double expm1_of(double x) { return expm1(x); }

// ---- the reduction's terms: each sums one pack (in index order) and may write outputs ---------
// The sums use __dadd_rn/__dmul_rn: no multiply-add is ever contracted into an fma, so every
// instantiation (the kernels with and without gradient writes, vector or scalar loads) rounds the
// same way and the fused KL's loss is bit-identical to kl_gauss's.
// (a-b)^2 or |a-b|. The square is formed in double from the Acc difference (exact for f32 input).
template <class T, bool kL1>
struct PairTerm {
  static constexpr int V = kVec<T>;
  const T* a;
  const T* b;
  __device__ double operator()(int64_t base, int64_t n, bool vec) const {
    typename Math<T>::Acc va[V], vb[V];
    const int cnt = load_pack<T, V>(a, base, n, vec, va);
    load_pack<T, V>(b, base, n, vec, vb);
    double s = 0;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if (k < cnt) {
        const double d = static_cast<double>(va[k] - vb[k]);
        s = __dadd_rn(s, kL1 ? fabs(d) : __dmul_rn(d, d));
      }
    }
    return s;
  }
};

// mu^2 + (expm1(lv) - lv), expm1 in Acc, the rest in double (the CPU's order). With kGrad it also
// writes gmu = k mu and glv = hk expm1(lv) for the pack (the fused KL): every pack is visited once,
// so every gradient element is written once.
template <class T, bool kGrad>
struct KlTerm {
  static constexpr int V = kVec<T>;
  using A = typename Math<T>::Acc;
  const T* mu;
  const T* lv;
  T* gmu;  // kGrad only
  T* glv;  // kGrad only
  A k;     // gscale / normaliser
  A hk;    // 0.5 k
  __device__ double operator()(int64_t base, int64_t n, bool vec) const {
    A vm[V], vl[V], e[V];
    const int cnt = load_pack<T, V>(mu, base, n, vec, vm);
    load_pack<T, V>(lv, base, n, vec, vl);
#pragma unroll
    for (int k2 = 0; k2 < V; ++k2) e[k2] = expm1_of(vl[k2]);  // padding: expm1(0) = 0
    double s = 0;
#pragma unroll
    for (int k2 = 0; k2 < V; ++k2) {
      if (k2 < cnt) {
        const double m = static_cast<double>(vm[k2]);
        const double t = __dadd_rn(static_cast<double>(e[k2]), -static_cast<double>(vl[k2]));
        s = __dadd_rn(s, __dadd_rn(__dmul_rn(m, m), t));
      }
    }
    if (kGrad) {
      A g1[V], g2[V];
#pragma unroll
      for (int k2 = 0; k2 < V; ++k2) {
        g1[k2] = k * vm[k2];
        g2[k2] = hk * e[k2];
      }
      store_pack<T, V>(gmu, base, n, vec, g1);
      store_pack<T, V>(glv, base, n, vec, g2);
    }
    return s;
  }
};

// Plain sum of doubles (cross_entropy's per-row NLLs).
struct SumTerm {
  static constexpr int V = 2;
  const double* x;
  __device__ double operator()(int64_t base, int64_t n, bool vec) const {
    double v[V];
    const int cnt = load_pack<double, V>(x, base, n, vec, v);
    double s = 0;
#pragma unroll
    for (int k = 0; k < V; ++k)
      if (k < cnt) s += v[k];
    return s;
  }
};

// ---- the two passes ----------------------------------------------------------------------------
// Pass 1: partial[block] = sum over the packs p = block*256 + thread (+ grid stride) of term(p).
// Two packs per iteration so that both packs' loads are in flight together; the sum order is still
// p, p + stride, p + 2 stride, ... (acc + s0 + s1 in that order), as a plain grid-stride loop's.
template <class Term>
__global__ void __launch_bounds__(kThreads, 4)
    partial_sums_kernel(Term term, int64_t n, bool vec, double* partial) {
  __shared__ double sh[32];
  const int64_t npacks = (n + Term::V - 1) / Term::V;
  const int64_t stride = rt::grid_stride();
  int64_t p = rt::grid_index();
  double acc = 0;
  for (; p + stride < npacks; p += 2 * stride) {
    const double s0 = term(p * Term::V, n, vec);
    const double s1 = term((p + stride) * Term::V, n, vec);
    acc += s0;
    acc += s1;
  }
  if (p < npacks) acc += term(p * Term::V, n, vec);
  acc = block_sum_to_thread0(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Pass 2, one block: out[0] = mul * (sum of the partials) / div, rounded once to O. Thread t sums
// partials t, t + 256, ... in order, then the fixed tree.
template <class O>
__global__ void __launch_bounds__(kThreads)
    finish_kernel(const double* partial, int nparts, O* out, double mul, double div) {
  __shared__ double sh[32];
  double acc = 0;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += partial[i];
  acc = block_sum_to_thread0(acc, sh);
  if (threadIdx.x == 0) out[0] = from_double<O>(mul * acc / div);
}

// Launches both passes: out[0] = mul * sum_{i<n} term_i / div. The grid depends on n and the pack
// width alone (never on the device), which is what makes the scalar reproducible everywhere.
template <class Term, class O>
void reduce_to_scalar(const Term& term, int64_t n, bool vec, O* out, double mul, double div,
                      cudaStream_t s, int dev) {
  const int64_t npacks = (n + Term::V - 1) / Term::V;
  const int blocks = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(kMaxPartials, (npacks + kThreads - 1) / kThreads)));
  Tensor partial = Tensor::empty(Shape{blocks}, DType::F64, Device::cuda(dev));
  PSVAE_LAUNCH(blocks, kThreads, 0, s, partial_sums_kernel<Term>)
  (term, n, vec, partial.data<double>());
  PSVAE_LAUNCH(1, kThreads, 0, s, finish_kernel<O>)(partial.data<double>(), blocks, out, mul, div);
}

// ---- elementwise backwards ---------------------------------------------------------------------
// ga = k (a - b) (mse, k = 2 gy / n) or k sgn(a - b) (l1, k = gy / n; 0 at a tie, NaN kept).
// gy is read here, on the device: k = mul * gy / div in double, as the CPU forms it.
// __launch_bounds__(256, 8): at most 32 registers, so rt::grid_for's 8 blocks per SM are all
// resident (one wave); the grid-stride loops give every block the same work.
template <class T, bool kL1>
__global__ void __launch_bounds__(kThreads, 8)
    pair_bwd_kernel(const T* gy, const T* a, const T* b, T* ga, int64_t n, bool vec, double mul,
                    double div) {
  using A = typename Math<T>::Acc;
  constexpr int V = kVec<T>;
  const A k = static_cast<A>(mul * to_double(gy[0]) / div);
  const int64_t npacks = (n + V - 1) / V;
  for (int64_t p = rt::grid_index(); p < npacks; p += rt::grid_stride()) {
    A va[V], vb[V], out[V];
    load_pack<T, V>(a, p * V, n, vec, va);
    load_pack<T, V>(b, p * V, n, vec, vb);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const A d = va[j] - vb[j];
      if (kL1) {
        // A NaN difference stays NaN, as on the CPU.
        const A sg = d > A(0) ? A(1) : d < A(0) ? A(-1) : d == A(0) ? A(0) : d;
        out[j] = k * sg;
      } else {
        out[j] = k * d;
      }
    }
    store_pack<T, V>(ga, p * V, n, vec, out);
  }
}

// gmu = k mu, glv = 0.5 k expm1(lv), k = gy / normaliser (gy from the device, or gy_host when gy
// is null: the fused entry's gscale).
template <class T>
__global__ void __launch_bounds__(kThreads, 8)
    kl_bwd_kernel(const T* gy, double gy_host, const T* mu, const T* lv, T* gmu, T* glv, int64_t n,
                  bool vec, double normaliser) {
  using A = typename Math<T>::Acc;
  constexpr int V = kVec<T>;
  const double kd = (gy ? to_double(gy[0]) : gy_host) / normaliser;
  const A k = static_cast<A>(kd), hk = static_cast<A>(0.5 * kd);
  const int64_t npacks = (n + V - 1) / V;
  for (int64_t p = rt::grid_index(); p < npacks; p += rt::grid_stride()) {
    A vm[V], vl[V], g1[V], g2[V];
    load_pack<T, V>(mu, p * V, n, vec, vm);
    load_pack<T, V>(lv, p * V, n, vec, vl);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      g1[j] = k * vm[j];
      g2[j] = hk * expm1_of(vl[j]);
    }
    store_pack<T, V>(gmu, p * V, n, vec, g1);
    store_pack<T, V>(glv, p * V, n, vec, g2);
  }
}

// ---- cross-entropy -----------------------------------------------------------------------------
// Online log-sum-exp state of a set of logits: m = max, s = sum e^(x - m). Empty: (-inf, 0).
template <class A>
struct Lse {
  A m, s;
};

template <class A>
__device__ __forceinline__ void lse_push(Lse<A>& st, A x) {
  if (x > st.m) {  // new max: rescale the sum (e^(-inf) = 0 covers the first element)
    st.s = st.s * exp(st.m - x) + A(1);
    st.m = x;
  } else if (x != -INFINITY) {  // -inf adds e^-inf = 0; skipping it avoids -inf - -inf = NaN
    st.s += exp(x - st.m);      // a NaN x lands here and makes the row NaN, as on the CPU
  }
}

// Symmetric in its arguments (max and + commute), so every lane of a butterfly agrees.
template <class A>
__device__ __forceinline__ Lse<A> lse_merge(Lse<A> a, Lse<A> b) {
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const A m = a.m > b.m ? a.m : b.m;
  return {m, a.s * exp(a.m - m) + b.s * exp(b.m - m)};
}

// The block's merged state, in every thread. shm/shs: 32 slots each; the trailing barrier lets a
// caller looping over rows reuse them.
template <class A>
__device__ Lse<A> block_lse(Lse<A> st, A* shm, A* shs) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Lse<A> other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)};
    st = lse_merge(st, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    shm[warp] = st.m;
    shs[warp] = st.s;
  }
  __syncthreads();  // all warp states written
  if (warp == 0) {
    st = lane < static_cast<int>(blockDim.x >> 5) ? Lse<A>{shm[lane], shs[lane]}
                                                  : Lse<A>{-INFINITY, A(0)};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      Lse<A> other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)};
      st = lse_merge(st, other);
    }
    if (lane == 0) {
      shm[0] = st.m;
      shs[0] = st.s;
    }
  }
  __syncthreads();  // the block total is in slot 0
  st = Lse<A>{shm[0], shs[0]};
  __syncthreads();  // everyone has read slot 0 before the next row overwrites it
  return st;
}

__device__ __forceinline__ void record_bad_row(unsigned long long* bad, int64_t row) {
  atomicMin(bad, static_cast<unsigned long long>(row));  // integer min: order-independent
}

// One block per row (grid-stride over rows). Each thread folds the packs t, t + blockDim, ... of
// the row into an online (max, sum) in one read of the row; the block merges them; thread 0 forms
// lse = m + log s in double, stores it, and nll[row] = lse - x[target] in double (NaN and a
// recorded bad row when the target is outside [0, C), whose logit is then never read).
template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    ce_fwd_kernel(const T* x, const I* target, T* lse, double* nll, unsigned long long* bad,
                  int64_t N, int64_t C, bool vec) {
  using A = typename Math<T>::Acc;
  constexpr int V = kVec<T>;
  __shared__ A shm[32], shs[32];
  const int64_t npacks = (C + V - 1) / V;
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* row = x + r * C;
    Lse<A> st{-INFINITY, A(0)};
    for (int64_t p = threadIdx.x; p < npacks; p += blockDim.x) {
      A v[V];
      const int cnt = load_pack<T, V>(row, p * V, C, vec, v);
#pragma unroll
      for (int j = 0; j < V; ++j)
        if (j < cnt) lse_push(st, v[j]);
    }
    st = block_lse(st, shm, shs);
    if (threadIdx.x == 0) {
      const double l = static_cast<double>(st.m) + log(static_cast<double>(st.s));
      lse[r] = from_double<T>(l);
      const int64_t y = static_cast<int64_t>(target[r]);
      if (y < 0 || y >= C) {
        record_bad_row(bad, r);
        nll[r] = __longlong_as_double(0x7ff8000000000000LL);  // NaN
      } else {
        nll[r] = l - to_double(row[y]);
      }
    }
  }
}

// glogits[r, j] = k (e^(x - lse[r]) - [j == target[r]]), k = gy / N read on the device. One block
// per row, packs as in the forward. A bad target is recorded (and subtracts nothing).
template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    ce_bwd_kernel(const T* gy, const T* x, const I* target, const T* lse, T* gx,
                  unsigned long long* bad, int64_t N, int64_t C, bool vec) {
  using A = typename Math<T>::Acc;
  constexpr int V = kVec<T>;
  const A k = static_cast<A>(to_double(gy[0]) / static_cast<double>(N));
  const int64_t npacks = (C + V - 1) / V;
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* row = x + r * C;
    T* grow = gx + r * C;
    const A l = Math<T>::load(lse[r]);
    const int64_t y = static_cast<int64_t>(target[r]);
    if (threadIdx.x == 0 && (y < 0 || y >= C)) record_bad_row(bad, r);
    for (int64_t p = threadIdx.x; p < npacks; p += blockDim.x) {
      A v[V], g[V];
      load_pack<T, V>(row, p * V, C, vec, v);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const A onehot = p * V + j == y ? A(1) : A(0);
        g[j] = k * (exp(v[j] - l) - onehot);
      }
      store_pack<T, V>(grow, p * V, C, vec, g);
    }
  }
}

// ---- host side ---------------------------------------------------------------------------------
// Grid-stride launch size of the elementwise backwards (no reduction: any grid gives the same
// bits).
unsigned grid_for_packs(int64_t n, int V, int dev) { return rt::grid_for((n + V - 1) / V, dev); }

// Threads per cross-entropy row block: enough warps to give every thread a pack, at most 256. The
// row's result depends on this count, which depends on C and the dtype alone.
int ce_threads(int64_t C, int V) {
  const int64_t packs = (C + V - 1) / V;
  return static_cast<int>(
      std::min<int64_t>(kThreads, std::max<int64_t>(32, (packs + 31) / 32 * 32)));
}
unsigned ce_blocks(int64_t N) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(N, int64_t(1) << 20)));
}

template <class T>
const T* cptr(const Tensor& t) {
  return static_cast<const T*>(t.raw_data());
}
template <class T>
T* mptr(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}

void check_scalar_out(const char* op, const Tensor& y, const Tensor& like) {
  if (y.numel() != 1 || y.dtype() != like.dtype())
    throw std::invalid_argument(std::string(op) + ": the loss output must be one " +
                                dtype_name(like.dtype()) + " element, got " + y.str());
}
void check_gy(const char* op, const Tensor& gy, const Tensor& like) {
  if (gy.numel() != 1 || gy.dtype() != like.dtype())
    throw std::invalid_argument(std::string(op) + ": gy must be one " + dtype_name(like.dtype()) +
                                " element (the gradient of the scalar loss), got " + gy.str());
}

// mse_loss / l1_loss: in (a, b), out (y).
template <bool kL1>
void pair_fwd(const OpCall& c, const char* op) {
  const Tensor &a = c.in.at(0), &b = c.in.at(1), &y = c.out.at(0);
  check_same(op, a, b);
  check_scalar_out(op, y, a);
  const int64_t n = a.numel();
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(a.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      const bool vec = aligned16(a.raw_data()) && aligned16(b.raw_data());
      reduce_to_scalar(PairTerm<T, kL1>{cptr<T>(a), cptr<T>(b)}, n, vec, mptr<T>(y), 1.0,
                       static_cast<double>(n), s, dev);
    });
  });
}

// mse_loss_bwd / l1_loss_bwd: in (gy, a, b), out (ga).
template <bool kL1>
void pair_bwd(const OpCall& c, const char* op) {
  const Tensor &gy = c.in.at(0), &a = c.in.at(1), &b = c.in.at(2), &ga = c.out.at(0);
  check_same(op, a, b);
  check_same(op, a, ga);
  check_gy(op, gy, a);
  const int64_t n = a.numel();
  if (n == 0) return;
  launch_on(ga.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(a.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      constexpr int V = kVec<T>;
      const bool vec =
          aligned16(a.raw_data()) && aligned16(b.raw_data()) && aligned16(ga.raw_data());
      PSVAE_LAUNCH(grid_for_packs(n, V, dev), rt::kBlockThreads, 0, s, pair_bwd_kernel<T, kL1>)
      (cptr<T>(gy), cptr<T>(a), cptr<T>(b), mptr<T>(ga), n, vec, kL1 ? 1.0 : 2.0,
       static_cast<double>(n));
    });
  });
}

void mse_loss_cuda(const OpCall& c) { pair_fwd<false>(c, "mse_loss"); }
void mse_loss_bwd_cuda(const OpCall& c) { pair_bwd<false>(c, "mse_loss_bwd"); }
void l1_loss_cuda(const OpCall& c) { pair_fwd<true>(c, "l1_loss"); }
void l1_loss_bwd_cuda(const OpCall& c) { pair_bwd<true>(c, "l1_loss_bwd"); }

void check_normaliser(const char* op, double normaliser) {
  if (!(normaliser > 0))
    throw std::invalid_argument(std::string(op) + ": normaliser must be > 0, got " +
                                std::to_string(normaliser));
}

// kl_gauss: in (mu, logvar), out (y); reals[0] = normaliser. The loss is 0.5 * s / normaliser.
void kl_gauss_cuda(const OpCall& c) {
  const char* op = "kl_gauss";
  const Tensor &mu = c.in.at(0), &lv = c.in.at(1), &y = c.out.at(0);
  check_same(op, mu, lv);
  check_scalar_out(op, y, mu);
  const double norm = c.reals[0];
  check_normaliser(op, norm);
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(mu.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      using A = typename Math<T>::Acc;
      const bool vec = aligned16(mu.raw_data()) && aligned16(lv.raw_data());
      KlTerm<T, false> term{cptr<T>(mu), cptr<T>(lv), nullptr, nullptr, A(0), A(0)};
      reduce_to_scalar(term, mu.numel(), vec, mptr<T>(y), 0.5, norm, s, dev);
    });
  });
}

// kl_gauss_bwd: in (gy, mu, logvar), out (gmu, glogvar), one pass; reals[0] = normaliser.
void kl_gauss_bwd_cuda(const OpCall& c) {
  const char* op = "kl_gauss_bwd";
  const Tensor &gy = c.in.at(0), &mu = c.in.at(1), &lv = c.in.at(2);
  const Tensor &gmu = c.out.at(0), &glv = c.out.at(1);
  check_same(op, mu, lv);
  check_same(op, mu, gmu);
  check_same(op, mu, glv);
  check_gy(op, gy, mu);
  const double norm = c.reals[0];
  check_normaliser(op, norm);
  const int64_t n = mu.numel();
  if (n == 0) return;
  launch_on(gmu.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(mu.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      constexpr int V = kVec<T>;
      const bool vec = aligned16(mu.raw_data()) && aligned16(lv.raw_data()) &&
                       aligned16(gmu.raw_data()) && aligned16(glv.raw_data());
      PSVAE_LAUNCH(grid_for_packs(n, V, dev), rt::kBlockThreads, 0, s, kl_bwd_kernel<T>)
      (cptr<T>(gy), 0.0, cptr<T>(mu), cptr<T>(lv), mptr<T>(gmu), mptr<T>(glv), n, vec, norm);
    });
  });
}

// Cross-entropy shapes: logits (N, C), target (N) i32/i64, lse (N) of the logits' dtype.
void check_ce(const char* op, const Tensor& x, const Tensor& target, const Tensor& lse) {
  if (x.rank() != 2)
    throw std::invalid_argument(std::string(op) + ": logits must be (N, C), got " + x.str());
  if ((target.dtype() != DType::I64 && target.dtype() != DType::I32) || target.rank() != 1 ||
      target.size(0) != x.size(0))
    throw std::invalid_argument(std::string(op) + ": target must be (N) = (" +
                                std::to_string(x.size(0)) + ") i64 or i32 class ids for logits " +
                                x.str() + ", got " + target.str());
  if (lse.numel() != x.size(0) || lse.dtype() != x.dtype())
    throw std::invalid_argument(std::string(op) + ": lse must be (" + std::to_string(x.size(0)) +
                                ") " + dtype_name(x.dtype()) + ", got " + lse.str());
}

// The int64 the kernels atomicMin a bad row into, set to all ones (no bad row) on the stream.
Tensor bad_row_record(cudaStream_t s, int dev) {
  Tensor bad = Tensor::empty(Shape{1}, DType::I64, Device::cuda(dev));
  PSVAE_CUDA_CHECK(cudaMemsetAsync(bad.raw_data(), 0xFF, sizeof(int64_t), s));
  return bad;
}

// Reads the record back (a stream synchronisation) and throws the CPU kernel's message when a
// target was outside [0, C).
void throw_if_bad_row(const char* op, const Tensor& bad, const Tensor& target, int64_t C) {
  const int64_t row = bad.to_vector<int64_t>()[0];  // all ones = -1: none
  if (row < 0) return;
  const Tensor t = target.slice0(row, row + 1);
  const int64_t y = target.dtype() == DType::I64 ? t.to_vector<int64_t>()[0]
                                                 : static_cast<int64_t>(t.to_vector<int32_t>()[0]);
  throw std::invalid_argument(std::string(op) + ": target[" + std::to_string(row) +
                              "] = " + std::to_string(y) +
                              " is outside [0, C) with C = " + std::to_string(C));
}

template <class Fn>
void dispatch_index(DType dt, const char* op, Fn&& fn) {
  if (dt == DType::I64) return fn(int64_t{});
  if (dt == DType::I32) return fn(int32_t{});
  unsupported(op, std::string("target dtype ") + dtype_name(dt));
}

// cross_entropy: in (logits, target), out (loss, lse).
void cross_entropy_cuda(const OpCall& c) {
  const char* op = "cross_entropy";
  const Tensor &x = c.in.at(0), &target = c.in.at(1), &y = c.out.at(0), &lse = c.out.at(1);
  check_ce(op, x, target, lse);
  check_scalar_out(op, y, x);
  const int64_t N = x.size(0), C = x.size(1);
  Tensor bad;
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    bad = bad_row_record(s, dev);
    // Per-row NLLs in double, summed by the two passes in row order: a fixed order whatever N is.
    Tensor nll = Tensor::empty(Shape{std::max<int64_t>(N, 1)}, DType::F64, Device::cuda(dev));
    dispatch_float(x.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      constexpr int V = kVec<T>;
      dispatch_index(target.dtype(), op, [&](auto itag) {
        using I = decltype(itag);
        if (N > 0) {
          const bool vec = aligned16(x.raw_data()) && C % V == 0;
          PSVAE_LAUNCH(ce_blocks(N), ce_threads(C, V), 0, s, ce_fwd_kernel<T, I>)
          (cptr<T>(x), cptr<I>(target), mptr<T>(lse), nll.data<double>(),
           reinterpret_cast<unsigned long long*>(bad.raw_data()), N, C, vec);
        }
        reduce_to_scalar(SumTerm{nll.data<double>()}, N, aligned16(nll.raw_data()), mptr<T>(y), 1.0,
                         static_cast<double>(N), s, dev);
      });
    });
  });
  throw_if_bad_row(op, bad, target, C);
}

// cross_entropy_bwd: in (gy, logits, target, lse), out (glogits).
void cross_entropy_bwd_cuda(const OpCall& c) {
  const char* op = "cross_entropy_bwd";
  const Tensor &gy = c.in.at(0), &x = c.in.at(1), &target = c.in.at(2), &lse = c.in.at(3);
  const Tensor& gx = c.out.at(0);
  check_ce(op, x, target, lse);
  check_same(op, x, gx);
  check_gy(op, gy, x);
  const int64_t N = x.size(0), C = x.size(1);
  if (N == 0 || C == 0) return;
  Tensor bad;
  launch_on(gx.device(), [&](cudaStream_t s, int dev) {
    bad = bad_row_record(s, dev);
    dispatch_float(x.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      constexpr int V = kVec<T>;
      dispatch_index(target.dtype(), op, [&](auto itag) {
        using I = decltype(itag);
        const bool vec = aligned16(x.raw_data()) && aligned16(gx.raw_data()) && C % V == 0;
        PSVAE_LAUNCH(ce_blocks(N), ce_threads(C, V), 0, s, ce_bwd_kernel<T, I>)
        (cptr<T>(gy), cptr<T>(x), cptr<I>(target), cptr<T>(lse), mptr<T>(gx),
         reinterpret_cast<unsigned long long*>(bad.raw_data()), N, C, vec);
      });
    });
  });
  throw_if_bad_row(op, bad, target, C);
}

}  // namespace

// ---- kl_gauss_fused (loss_fused.h) -------------------------------------------------------------
void kl_gauss_fused(const Tensor& mu, const Tensor& logvar, double normaliser, double gscale,
                    const Tensor& loss_out, const Tensor& gmu, const Tensor& glogvar) {
  const char* op = "kl_gauss_fused";
  for (const Tensor* t : {&mu, &logvar, &loss_out, &gmu, &glogvar}) {
    if (!t->defined()) throw std::invalid_argument(std::string(op) + ": a tensor is undefined");
    if (!t->device().is_cuda() || t->device() != mu.device())
      throw std::invalid_argument(std::string(op) +
                                  ": every tensor must be on one CUDA device, got " + t->str() +
                                  " with mu " + mu.str());
  }
  check_same(op, mu, logvar);
  check_same(op, mu, gmu);
  check_same(op, mu, glogvar);
  if (loss_out.numel() != 1)
    throw std::invalid_argument(std::string(op) + ": loss_out must have one element, got " +
                                loss_out.str());
  check_normaliser(op, normaliser);
  if (mu.numel() == 0) throw std::invalid_argument(std::string(op) + ": empty inputs " + mu.str());
  const int64_t n = mu.numel();
  launch_on(mu.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(mu.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      using A = typename Math<T>::Acc;
      const bool vec = aligned16(mu.raw_data()) && aligned16(logvar.raw_data()) &&
                       aligned16(gmu.raw_data()) && aligned16(glogvar.raw_data());
      // k as kl_gauss_bwd forms it from gy: gscale / normaliser in double, then 0.5 k.
      const double kd = gscale / normaliser;
      KlTerm<T, true> term{cptr<T>(mu),      cptr<T>(logvar),    mptr<T>(gmu),
                           mptr<T>(glogvar), static_cast<A>(kd), static_cast<A>(0.5 * kd)};
      dispatch_float(loss_out.dtype(), op, [&](auto otag) {
        using O = decltype(otag);
        reduce_to_scalar(term, n, vec, mptr<O>(loss_out), 0.5, normaliser, s, dev);
      });
    });
  });
}

void register_loss(OpTable& t) {
  t[Op::mse_loss].cuda = &mse_loss_cuda;
  t[Op::mse_loss_bwd].cuda = &mse_loss_bwd_cuda;
  t[Op::l1_loss].cuda = &l1_loss_cuda;
  t[Op::l1_loss_bwd].cuda = &l1_loss_bwd_cuda;
  t[Op::kl_gauss].cuda = &kl_gauss_cuda;
  t[Op::kl_gauss_bwd].cuda = &kl_gauss_bwd_cuda;
  t[Op::cross_entropy].cuda = &cross_entropy_cuda;
  t[Op::cross_entropy_bwd].cuda = &cross_entropy_bwd_cuda;
}

}  // namespace psvae::kernels::cuda
