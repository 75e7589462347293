// CUDA reductions over one dim, as kernels/cpu/reduce.cpp, and sum_to (elementwise family, the
// adjoint of expand, which is a chain of the same reductions):
//   sum_dim      x -> sum over dim
//   max_dim      x -> (max, argmax i64); the first index wins ties; a NaN wins over any number
//                and the first NaN over later ones (as the CPU and PyTorch)
//   max_dim_bwd  (gy, argmax) -> gx: gy at each argmax, 0 elsewhere
//   var_dim      x -> (var, mean), var = sum (x - mean)^2 / (n - correction)
//   var_dim_bwd  (gy, x, mean) -> gx = gy * 2 (x - mean) / (n - correction)
//   sum_to       x -> x summed down to the output shape
// Types f32, bf16 (accumulated in f32) and f64 (in f64).
//
// Every reduction sees x as (outer, R, inner) and writes (outer, inner). Two kernels:
//   inner == 1  row kernel: `tpr` threads (4 ... 256, a power of two) per contiguous row of R,
//               16-byte loads along the row when aligned, then warp shuffles (and one shared-
//               memory step when a row spans several warps);
//   inner > 1   column kernel: a block covers tc columns (threads side by side along inner, so
//               each warp reads contiguous memory) x 256/tc row lanes striding down R; sums read
//               16 bytes of columns per thread; the row lanes meet in a shared-memory tree.
// When (outer, inner) alone gives fewer blocks than two waves of the GPU (a bias gradient
// (N*T, D) -> (D): outer 1, inner D), R is cut into `nsplit` chunks: pass 1 writes one partial
// state per (outer, chunk, inner) to a temporary, pass 2 reduces those (the same kernels, R =
// nsplit). Every combination happens in an order fixed by the shape alone (no atomics), so a run
// repeated is bit-identical. Each thread accumulates its own elements serially, then the partials
// meet in trees: the f32 rounding error grows with R / (threads per output) plus log2 of those.
//
// States (a policy per op): sum -> one accumulator; max -> (value, index) with a total order (NaN
// above everything, then the larger value, then the smaller index), so any combination order
// gives the CPU's answer; var -> (mean, M2, count) merged by Chan et al.'s formula (Welford per
// element): one pass over x, and no E[x^2] - E[x]^2 cancellation.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/broadcast_layout.h"
#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/op_table.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda {

namespace {

namespace rt = ::psvae::cuda;

using namespace detail;  // the shared helpers of elementwise_common.cuh

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // loads issued per thread before their results are combined

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// ---- policies: state type, identity, element -> state, merge, warp shuffle ---------------------
template <class A>
struct SumP {
  using S = A;
  static constexpr bool kWideColumns = true;  // column kernel may hold kVec states per thread
  static __device__ __forceinline__ S identity() { return A(0); }
  static __device__ __forceinline__ S make(A v, int64_t) { return v; }
  static __device__ __forceinline__ S combine(S a, S b) { return a + b; }
  static __device__ __forceinline__ S shfl_down(S s, int off, int width) {
    return __shfl_down_sync(0xffffffffu, s, off, width);
  }
};

template <class A>
struct MaxState {
  A v;
  int64_t i;
};
template <class A>
struct MaxP {
  using S = MaxState<A>;
  static constexpr bool kWideColumns = false;
  // -inf at an index past every real one: any element beats it or ties and wins on index.
  static __device__ __forceinline__ S identity() { return {A(-INFINITY), INT64_MAX}; }
  static __device__ __forceinline__ S make(A v, int64_t j) { return {v, j}; }
  // The total order of the CPU's scan: NaN above all numbers; between two NaNs or two equal
  // numbers (+0 == -0) the smaller index; else the larger number.
  static __device__ __forceinline__ S combine(S a, S b) {
    const bool an = a.v != a.v, bn = b.v != b.v;  // NaN tests (no fast-math here)
    if (an != bn) return an ? a : b;
    if (!an && a.v != b.v) return a.v > b.v ? a : b;
    return a.i <= b.i ? a : b;
  }
  static __device__ __forceinline__ S shfl_down(S s, int off, int width) {
    S r;
    r.v = __shfl_down_sync(0xffffffffu, s.v, off, width);
    r.i = __shfl_down_sync(0xffffffffu, s.i, off, width);
    return r;
  }
};

template <class A>
struct VarState {
  A mean, m2;  // m2 = sum of squared deviations from mean
  int64_t n;
};
template <class A>
struct VarP {
  using S = VarState<A>;
  static constexpr bool kWideColumns = false;
  static __device__ __forceinline__ S identity() { return {A(0), A(0), 0}; }
  static __device__ __forceinline__ S make(A v, int64_t) { return {v, A(0), 1}; }
  // Chan, Golub & LeVeque: with d = mean_b - mean_a, mean = mean_a + d n_b / n and
  // m2 = m2_a + m2_b + d^2 n_a n_b / n. With b one element this is Welford's update.
  static __device__ __forceinline__ S combine(S a, S b) {
    if (a.n == 0) return b;
    if (b.n == 0) return a;
    const int64_t n = a.n + b.n;
    const A wb = A(b.n) / A(n);
    const A d = b.mean - a.mean;
    S r;
    r.n = n;
    r.mean = a.mean + d * wb;
    r.m2 = a.m2 + b.m2 + d * d * A(a.n) * wb;
    return r;
  }
  static __device__ __forceinline__ S shfl_down(S s, int off, int width) {
    S r;
    r.mean = __shfl_down_sync(0xffffffffu, s.mean, off, width);
    r.m2 = __shfl_down_sync(0xffffffffu, s.m2, off, width);
    r.n = __shfl_down_sync(0xffffffffu, s.n, off, width);
    return r;
  }
};

// ---- sources (what pass 1 / pass 2 read) and sinks (where states go) ---------------------------
// Elements of x, V at a time (one 16-byte load when V > 1: the host checked the alignment).
template <class T, class P>
struct ElemSrc {
  using S = typename P::S;
  static constexpr int kMaxVec = kVec<T>;
  const T* x;
  template <int V>
  __device__ __forceinline__ Pack<T, V> load(int64_t off) const {
    return *reinterpret_cast<const Pack<T, V>*>(x + off);
  }
  template <int V>
  __device__ __forceinline__ S state(const Pack<T, V>& r, int k, int64_t j) const {
    return P::make(Math<T>::load(r.v[k]), j);
  }
};
// Partial states of pass 1 (they carry their own indices).
template <class P>
struct StateSrc {
  using S = typename P::S;
  static constexpr int kMaxVec = 1;
  const S* p;
  template <int V>
  __device__ __forceinline__ S load(int64_t off) const {
    static_assert(V == 1, "states are read one at a time");
    return p[off];
  }
  template <int V>
  __device__ __forceinline__ S state(const S& r, int, int64_t) const {
    return r;
  }
};

template <class S>
struct StateSink {
  S* p;
  __device__ __forceinline__ void put(int64_t i, const S& s) const { p[i] = s; }
};
// Sum to Tout (the op's dtype, or the f32/f64 accumulator for sum_to's intermediate steps).
template <class Tout>
struct SumSink {
  Tout* y;
  __device__ __forceinline__ void put(int64_t i, typename Math<Tout>::Acc s) const {
    y[i] = Math<Tout>::store(s);
  }
};
template <class T>
struct MaxSink {
  T* y;
  int64_t* arg;
  __device__ __forceinline__ void put(int64_t i, const MaxState<typename Math<T>::Acc>& s) const {
    y[i] = Math<T>::store(s.v);  // exact: v is an element of x
    arg[i] = s.i;
  }
};
template <class T>
struct VarSink {
  using A = typename Math<T>::Acc;
  T *var, *mean;
  A denom;  // n - correction, as the CPU (0 / 0 = NaN for n = correction)
  __device__ __forceinline__ void put(int64_t i, const VarState<A>& s) const {
    var[i] = Math<T>::store(s.m2 / denom);
    mean[i] = Math<T>::store(s.n > 0 ? s.mean : A(NAN));  // the CPU's 0 / 0 for an empty dim
  }
};

// use(load(j), j) for j = j, j + step, ... < j1 in increasing order. Loads of kUnroll iterations
// are issued before any of them is used, so each thread keeps several memory requests in flight.
template <class Load, class Use>
__device__ __forceinline__ void strided(int64_t j, int64_t j1, int64_t step, Load load, Use use) {
  for (; j + (kUnroll - 1) * step < j1; j += kUnroll * step) {
    decltype(load(j)) v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = load(j + u * step);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) use(v[u], j + u * step);
  }
  for (; j < j1; j += step) use(load(j), j);
}

// ---- kernels -----------------------------------------------------------------------------------
// inner == 1. Task t = (row block, chunk): the block's 256 / tpr rows, elements [j0, j1) of each.
// Output (or partial) index: row * nsplit + chunk. V: elements per load (R and chunk multiples
// of V when V > 1).
template <class P, int V, class Src, class Sink>
__global__ void __launch_bounds__(kThreads) row_kernel(Src src, Sink sink, int64_t rows, int64_t R,
                                                       int64_t chunk, int64_t nsplit, int tpr) {
  using S = typename P::S;
  __shared__ S warp_part[kThreads / 32];  // one partial per warp when a row spans several warps
  const int rows_per_block = kThreads / tpr;
  const int lane = static_cast<int>(threadIdx.x) % tpr;  // this thread's place in its row
  const int row_in_block = static_cast<int>(threadIdx.x) / tpr;
  const int64_t tasks = ceil_div(rows, rows_per_block) * nsplit;
  for (int64_t t = blockIdx.x; t < tasks; t += gridDim.x) {  // block-uniform trip count
    const int64_t o = (t / nsplit) * rows_per_block + row_in_block, sp = t % nsplit;
    const int64_t j0 = sp * chunk, j1 = min(R, j0 + chunk);
    S acc = P::identity();
    if (o < rows) {
      const int64_t base = o * R;
      strided(
          j0 + int64_t(lane) * V, j1, int64_t(tpr) * V,
          [&](int64_t j) { return src.template load<V>(base + j); },
          [&](const auto& raw, int64_t j) {
#pragma unroll
            for (int k = 0; k < V; ++k) acc = P::combine(acc, src.template state<V>(raw, k, j + k));
          });
    }
    // All 32 lanes shuffle (rows past the end hold the identity); lane 0 of each tpr-group (or of
    // each warp when tpr > 32) ends with its group's state.
    const int width = tpr < 32 ? tpr : 32;
    for (int off = width / 2; off > 0; off >>= 1)
      acc = P::combine(acc, P::shfl_down(acc, off, width));
    if (tpr > 32) {  // block-uniform branch: every thread reaches both barriers
      const int warp = static_cast<int>(threadIdx.x) / 32;
      if (threadIdx.x % 32 == 0) warp_part[warp] = acc;
      __syncthreads();  // the row's warps' partials are visible
      if (lane == 0)    // first warp of the row: its own partial is acc; add the others in order
        for (int w = 1; w < tpr / 32; ++w) acc = P::combine(acc, warp_part[warp + w]);
      __syncthreads();  // warp_part is rewritten by the next task
    }
    if (lane == 0 && o < rows) sink.put(o * nsplit + sp, acc);
  }
}

// inner > 1. Task t = (outer o, column tile, chunk); thread (tx, ty) = (threadIdx % tc,
// threadIdx / tc) owns columns c .. c + CPT - 1 (c = tile start + tx * CPT) and rows j0 + ty,
// j0 + ty + rl, ... of the chunk. Output (or partial) index: (o * nsplit + chunk) * inner + c.
template <class P, int CPT, class Src, class Sink>
__global__ void __launch_bounds__(kThreads)
    col_kernel(Src src, Sink sink, int64_t outer, int64_t R, int64_t inner, int64_t chunk,
               int64_t nsplit, int tc) {
  using S = typename P::S;
  __shared__ S part[kThreads * CPT];  // thread-major: part[threadIdx.x * CPT + k]
  const int rl = kThreads / tc;       // row lanes, a power of two
  const int tx = static_cast<int>(threadIdx.x) % tc, ty = static_cast<int>(threadIdx.x) / tc;
  const int64_t cols_per_block = int64_t(tc) * CPT;
  const int64_t tiles = ceil_div(inner, cols_per_block);
  const int64_t tasks = outer * tiles * nsplit;
  S* mine = part + threadIdx.x * CPT;
  for (int64_t t = blockIdx.x; t < tasks; t += gridDim.x) {  // block-uniform trip count
    const int64_t sp = t % nsplit, ot = t / nsplit, o = ot / tiles;
    const int64_t c = (ot % tiles) * cols_per_block + int64_t(tx) * CPT;
    const int64_t j0 = sp * chunk, j1 = min(R, j0 + chunk);
    S acc[CPT];
#pragma unroll
    for (int k = 0; k < CPT; ++k) acc[k] = P::identity();
    if (c < inner) {  // CPT > 1 only when inner % CPT == 0: then all CPT columns exist
      const int64_t base = o * R * inner + c;
      strided(
          j0 + ty, j1, rl, [&](int64_t j) { return src.template load<CPT>(base + j * inner); },
          [&](const auto& raw, int64_t j) {
#pragma unroll
            for (int k = 0; k < CPT; ++k)
              acc[k] = P::combine(acc[k], src.template state<CPT>(raw, k, j));
          });
    }
#pragma unroll
    for (int k = 0; k < CPT; ++k) mine[k] = acc[k];
    __syncthreads();  // every row lane's partial is in shared memory
    // Tree over row lanes: lane ty < h takes ty + h (written in the previous step, read once).
    for (int h = rl / 2; h > 0; h >>= 1) {
      if (ty < h) {
        const S* other = part + (threadIdx.x + h * tc) * CPT;
#pragma unroll
        for (int k = 0; k < CPT; ++k) mine[k] = P::combine(mine[k], other[k]);
      }
      __syncthreads();
    }
    if (ty == 0 && c < inner) {
#pragma unroll
      for (int k = 0; k < CPT; ++k) sink.put((o * nsplit + sp) * inner + c + k, mine[k]);
    }
    __syncthreads();  // part is rewritten by the next task
  }
}

// ---- host: plan and launch ---------------------------------------------------------------------
struct Geometry {
  int64_t outer, R, inner;
};

struct Plan {
  bool rows;      // row kernel (inner == 1) or column kernel
  int width;      // row kernel: threads per row (tpr); column kernel: threads across columns (tc)
  int vec;        // elements per load: along the row, or across columns
  int64_t chunk;  // rows of R per task
  int64_t nsplit;
  int64_t tasks;
};

// Width: row kernel, the smallest power of two in [4, 256] giving each thread at most 16 loads
// (short rows share a warp, long rows get a block); column kernel, enough threads to cover inner
// (at most 32: one warp-wide row segment). Split R only while each thread keeps >= 16 loads.
Plan make_plan(const Geometry& g, int vec, int dev, bool allow_split) {
  Plan p{};
  p.rows = g.inner == 1;
  p.vec = vec;
  int64_t base = 0, min_chunk = 0;
  if (p.rows) {
    p.width = 4;
    while (p.width < kThreads && g.R > int64_t(p.width) * vec * 16) p.width *= 2;
    base = ceil_div(g.outer, kThreads / p.width);
    min_chunk = int64_t(p.width) * vec * 16;
  } else {
    p.width = 1;
    while (p.width < 32 && int64_t(p.width) * vec < g.inner) p.width *= 2;
    base = g.outer * ceil_div(g.inner, int64_t(p.width) * vec);
    min_chunk = int64_t(kThreads / p.width) * 16;
  }
  p.chunk = g.R;
  p.nsplit = 1;
  const int64_t target = int64_t(rt::sm_count(dev)) * 16;  // two waves of 8 blocks per SM
  if (allow_split && base < target) {
    const int64_t n = std::min(ceil_div(target, base), g.R / min_chunk);
    if (n > 1) {
      p.chunk = ceil_div(g.R, n);
      if (p.rows) p.chunk = ceil_div(p.chunk, vec) * vec;  // packs never straddle two chunks
      p.nsplit = ceil_div(g.R, p.chunk);                   // every chunk non-empty
    }
  }
  p.tasks = base * p.nsplit;
  return p;
}

template <class P, class Src, class Sink>
void launch_pass(Src src, Sink sink, const Geometry& g, const Plan& p, cudaStream_t s, int dev) {
  constexpr int kV = Src::kMaxVec;
  const unsigned grid = static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>(p.tasks, int64_t(rt::sm_count(dev)) * 32)));
  if (p.rows) {
    if (p.vec == kV && kV > 1) PSVAE_LAUNCH(grid, kThreads, 0, s, row_kernel<P, kV, Src, Sink>)
    (src, sink, g.outer, g.R, p.chunk, p.nsplit, p.width);
    else PSVAE_LAUNCH(grid, kThreads, 0, s, row_kernel<P, 1, Src, Sink>)(
        src, sink, g.outer, g.R, p.chunk, p.nsplit, p.width);
    return;
  }
  if constexpr (P::kWideColumns && kV > 1) {
    if (p.vec == kV) {
      PSVAE_LAUNCH(grid, kThreads, 0, s, col_kernel<P, kV, Src, Sink>)
      (src, sink, g.outer, g.R, g.inner, p.chunk, p.nsplit, p.width);
      return;
    }
  }
  PSVAE_LAUNCH(grid, kThreads, 0, s, col_kernel<P, 1, Src, Sink>)
  (src, sink, g.outer, g.R, g.inner, p.chunk, p.nsplit, p.width);
}

// Reduces x (outer, R, inner) to sink, in one pass or (R split) two.
template <class P, class T, class Sink>
void reduce(const T* x, Sink sink, const Geometry& g, cudaStream_t s, int dev) {
  using S = typename P::S;
  constexpr int kV = kVec<T>;
  int vec = 1;
  if (aligned16(x)) {
    if (g.inner == 1 && g.R % kV == 0) vec = kV;  // every row starts 16-byte aligned
    if (g.inner > 1 && P::kWideColumns && g.inner % kV == 0) vec = kV;
  }
  const Plan p = make_plan(g, vec, dev, true);
  const ElemSrc<T, P> src{x};
  if (p.nsplit == 1) {
    launch_pass<P>(src, sink, g, p, s, dev);
    return;
  }
  // Partials (outer, nsplit, inner) in a temporary from the stream-ordered caching allocator
  // (freed when `tmp` goes, after the kernels that use it in stream order).
  const int64_t bytes = g.outer * p.nsplit * g.inner * int64_t(sizeof(S));
  Tensor tmp = Tensor::empty(Shape{ceil_div(bytes, 8)}, DType::F64, Device::cuda(dev));
  S* part = static_cast<S*>(tmp.raw_data());
  launch_pass<P>(src, StateSink<S>{part}, g, p, s, dev);
  const Geometry g2{g.outer, p.nsplit, g.inner};
  launch_pass<P>(StateSrc<P>{part}, sink, g2, make_plan(g2, 1, dev, false), s, dev);
}

// ---- host: the ops -----------------------------------------------------------------------------
template <class T>
using AccOf = typename Math<T>::Acc;

Geometry geometry_of(const char* op, const Shape& s, int64_t dim) {
  if (s.rank() == 0 || dim < 0 || dim >= s.rank())
    throw std::invalid_argument(std::string(op) + ": dim " + std::to_string(dim) +
                                " out of range for shape " + s.str());
  const int d = static_cast<int>(dim);
  return {s.prod(0, d), s[d], s.prod(d + 1, s.rank())};
}

void check_out(const char* op, const Tensor& out, const Geometry& g, DType dt) {
  if (out.numel() != g.outer * g.inner || out.dtype() != dt)
    throw std::invalid_argument(std::string(op) + ": output " + out.str() + " does not match " +
                                std::to_string(g.outer) + " x " + std::to_string(g.inner) + " " +
                                dtype_name(dt) + " values");
}

void sum_dim_cuda(const OpCall& c) {
  const Tensor &x = c.in.at(0), &y = c.out.at(0);
  const Geometry g = geometry_of("sum_dim", x.shape(), c.ints[0]);
  check_out("sum_dim", y, g, x.dtype());
  if (y.numel() == 0) return;
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(x.dtype(), "sum_dim", [&](auto tag) {
      using T = decltype(tag);
      reduce<SumP<AccOf<T>>>(static_cast<const T*>(x.raw_data()),
                             SumSink<T>{static_cast<T*>(y.raw_data())}, g, s, dev);
    });
  });
}

void max_dim_cuda(const OpCall& c) {
  const Tensor &x = c.in.at(0), &y = c.out.at(0), &arg = c.out.at(1);
  const Geometry g = geometry_of("max_dim", x.shape(), c.ints[0]);
  check_out("max_dim", y, g, x.dtype());
  check_out("max_dim", arg, g, DType::I64);
  if (y.numel() == 0) return;
  if (g.R == 0)
    throw std::invalid_argument("max_dim: empty dim " + std::to_string(c.ints[0]) + " of " +
                                x.shape().str());
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(x.dtype(), "max_dim", [&](auto tag) {
      using T = decltype(tag);
      reduce<MaxP<AccOf<T>>>(
          static_cast<const T*>(x.raw_data()),
          MaxSink<T>{static_cast<T*>(y.raw_data()), static_cast<int64_t*>(arg.raw_data())}, g, s,
          dev);
    });
  });
}

void var_dim_cuda(const OpCall& c) {
  const Tensor &x = c.in.at(0), &var = c.out.at(0), &mean = c.out.at(1);
  const Geometry g = geometry_of("var_dim", x.shape(), c.ints[0]);
  check_out("var_dim", var, g, x.dtype());
  check_out("var_dim", mean, g, x.dtype());
  const int64_t corr = c.ints[1];
  if (corr != 0 && corr != 1)
    throw std::invalid_argument("var_dim: correction must be 0 or 1, got " + std::to_string(corr));
  if (var.numel() == 0) return;
  launch_on(var.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(x.dtype(), "var_dim", [&](auto tag) {
      using T = decltype(tag);
      using A = AccOf<T>;
      const VarSink<T> sink{static_cast<T*>(var.raw_data()), static_cast<T*>(mean.raw_data()),
                            static_cast<A>(g.R - corr)};
      reduce<VarP<A>>(static_cast<const T*>(x.raw_data()), sink, g, s, dev);
    });
  });
}

// ---- backwards: one output element per thread, (o, j, i) from its index by two FastDiv32 ------
// e = (o * R + j) * inner + i; oi = o * inner + i indexes gy, argmax and mean.
template <class Div>
__device__ __forceinline__ void split(typename Div::Index e, const Div& inner, const Div& R,
                                      typename Div::Index& oi, typename Div::Index& j) {
  typename Div::Index q, i, o;
  inner.divmod(e, q, i);  // q = o * R + j
  R.divmod(q, o, j);
  oi = o * inner.d + i;
}

// gx = gy where j is the argmax, else 0. Every element written; an argmax outside [0, R) (never
// produced by max_dim) matches no j and leaves zeros.
template <class T, class Div>
__global__ void max_bwd_kernel(const T* gy, const int64_t* arg, T* gx, Div inner, Div R,
                               typename Div::Index n) {
  using I = typename Div::Index;
  using A = typename Math<T>::Acc;
  for (I e = static_cast<I>(rt::grid_index()); e < n; e += static_cast<I>(rt::grid_stride())) {
    I oi, j;
    split(e, inner, R, oi, j);
    gx[e] = arg[oi] == static_cast<int64_t>(j) ? gy[oi] : Math<T>::store(A(0));
  }
}

// gx = gy * scale * (x - mean), scale = 2 / (n - correction).
template <class T, class Div>
__global__ void var_bwd_kernel(const T* gy, const T* x, const T* mean, T* gx,
                               typename Math<T>::Acc scale, Div inner, Div R,
                               typename Div::Index n) {
  using I = typename Div::Index;
  using M = Math<T>;
  for (I e = static_cast<I>(rt::grid_index()); e < n; e += static_cast<I>(rt::grid_stride())) {
    I oi, j;
    split(e, inner, R, oi, j);
    gx[e] = M::store(M::load(gy[oi]) * scale * (M::load(x[e]) - M::load(mean[oi])));
  }
}

// Calls launch(inner_div, R_div, n) with 32-bit dividers when every index fits.
template <class Launch>
void with_dividers(const Geometry& g, int64_t n, Launch&& launch) {
  if (n <= INT32_MAX)
    launch(FastDiv32::make(g.inner), FastDiv32::make(g.R), static_cast<uint32_t>(n));
  else
    launch(Div64::make(g.inner), Div64::make(g.R), n);
}

void max_dim_bwd_cuda(const OpCall& c) {
  const Tensor &gy = c.in.at(0), &arg = c.in.at(1), &gx = c.out.at(0);
  const Geometry g = geometry_of("max_dim_bwd", gx.shape(), c.ints[0]);
  check_out("max_dim_bwd", gy, g, gx.dtype());
  check_out("max_dim_bwd", arg, g, DType::I64);
  const int64_t n = gx.numel();
  if (n == 0) return;
  launch_on(gx.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(gx.dtype(), "max_dim_bwd", [&](auto tag) {
      using T = decltype(tag);
      with_dividers(g, n, [&](auto inner, auto R, auto count) {
        PSVAE_LAUNCH(rt::grid_for(n, dev), rt::kBlockThreads, 0, s,
                     max_bwd_kernel<T, decltype(inner)>)
        (static_cast<const T*>(gy.raw_data()), static_cast<const int64_t*>(arg.raw_data()),
         static_cast<T*>(gx.raw_data()), inner, R, count);
      });
    });
  });
}

void var_dim_bwd_cuda(const OpCall& c) {
  const Tensor &gy = c.in.at(0), &x = c.in.at(1), &mean = c.in.at(2), &gx = c.out.at(0);
  const Geometry g = geometry_of("var_dim_bwd", x.shape(), c.ints[0]);
  check_out("var_dim_bwd", gy, g, x.dtype());
  check_out("var_dim_bwd", mean, g, x.dtype());
  check_same("var_dim_bwd", x, gx);
  const int64_t n = gx.numel();
  if (n == 0) return;
  const double scale = 2.0 / static_cast<double>(g.R - c.ints[1]);
  launch_on(gx.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(gx.dtype(), "var_dim_bwd", [&](auto tag) {
      using T = decltype(tag);
      with_dividers(g, n, [&](auto inner, auto R, auto count) {
        PSVAE_LAUNCH(rt::grid_for(n, dev), rt::kBlockThreads, 0, s,
                     var_bwd_kernel<T, decltype(inner)>)
        (static_cast<const T*>(gy.raw_data()), static_cast<const T*>(x.raw_data()),
         static_cast<const T*>(mean.raw_data()), static_cast<T*>(gx.raw_data()),
         static_cast<AccOf<T>>(scale), inner, R, count);
      });
    });
  });
}

// ---- sum_to ------------------------------------------------------------------------------------
// x's dims (size-1 dims dropped) are classed kept or summed and adjacent dims of one class merged,
// as the CPU: (16, 288, 32, 32) -> (288, 1, 1) is summed 16, kept 288, summed 1024. Each summed
// group, last first, is one (outer, R, inner) reduction; intermediate results stay in the
// accumulator type (f32 for bf16, so bf16 rounds once, at the end).
struct Group {
  int64_t size;
  bool summed;
};

std::vector<Group> sum_groups(const Shape& xs, const Shape& ys) {
  std::vector<Group> gs;
  const int lead = xs.rank() - ys.rank();
  for (int d = 0; d < xs.rank(); ++d) {
    if (xs[d] == 1) continue;
    const bool summed = !(d >= lead && ys[d - lead] == xs[d]);
    if (!gs.empty() && gs.back().summed == summed)
      gs.back().size *= xs[d];
    else
      gs.push_back({xs[d], summed});
  }
  return gs;
}

void sum_to_cuda(const OpCall& c) {
  const Tensor &x = c.in.at(0), &y = c.out.at(0);
  const Shape &xs = x.shape(), &ys = y.shape();
  if (x.dtype() != y.dtype() || !broadcasts_to(ys, xs))
    throw std::invalid_argument("sum_to: " + x.str() + " cannot be summed to " + y.str() +
                                " (not a broadcast of it)");
  if (y.numel() == 0) return;
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    if (x.numel() == 0) {  // a summed dim of size 0: zeros (all-zero bits in f32, bf16, f64)
      PSVAE_CUDA_CHECK(cudaMemsetAsync(y.raw_data(), 0, y.nbytes(), s));
      return;
    }
    std::vector<Group> gs = sum_groups(xs, ys);
    const bool any_summed =
        std::any_of(gs.begin(), gs.end(), [](const Group& g) { return g.summed; });
    if (!any_summed) {  // only size-1 dims differ: the same elements in the same order
      PSVAE_CUDA_CHECK(
          cudaMemcpyAsync(y.raw_data(), x.raw_data(), y.nbytes(), cudaMemcpyDeviceToDevice, s));
      return;
    }
    dispatch_float(x.dtype(), "sum_to", [&](auto tag) {
      using T = decltype(tag);
      using A = AccOf<T>;
      const DType acc_dt = sizeof(A) == 8 ? DType::F64 : DType::F32;
      Tensor cur;  // the intermediate (accumulator type) read by the next step; x at first
      for (int k = static_cast<int>(gs.size()) - 1; k >= 0; --k) {
        if (!gs[static_cast<size_t>(k)].summed) continue;
        Geometry g{1, gs[static_cast<size_t>(k)].size, 1};
        for (int i = 0; i < k; ++i) g.outer *= gs[static_cast<size_t>(i)].size;
        for (size_t i = static_cast<size_t>(k) + 1; i < gs.size(); ++i) g.inner *= gs[i].size;
        gs.erase(gs.begin() + k);
        bool last = true;  // no summed group left before this one
        for (int i = 0; i < k; ++i) last = last && !gs[static_cast<size_t>(i)].summed;
        Tensor next = last ? Tensor() : Tensor::empty(Shape{g.outer * g.inner}, acc_dt, y.device());
        auto run = [&](const auto* in) {
          if (last)
            reduce<SumP<A>>(in, SumSink<T>{static_cast<T*>(y.raw_data())}, g, s, dev);
          else
            reduce<SumP<A>>(in, SumSink<A>{static_cast<A*>(next.raw_data())}, g, s, dev);
        };
        if (cur.defined())
          run(static_cast<const A*>(cur.raw_data()));
        else
          run(static_cast<const T*>(x.raw_data()));
        cur = next;  // the previous intermediate is freed in stream order
      }
    });
  });
}

}  // namespace

void register_reduce(OpTable& t) {
  t[Op::sum_dim].cuda = &sum_dim_cuda;
  t[Op::max_dim].cuda = &max_dim_cuda;
  t[Op::max_dim_bwd].cuda = &max_dim_bwd_cuda;
  t[Op::var_dim].cuda = &var_dim_cuda;
  t[Op::var_dim_bwd].cuda = &var_dim_bwd_cuda;
  t[Op::sum_to].cuda = &sum_to_cuda;
}

}  // namespace psvae::kernels::cuda
