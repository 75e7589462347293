// Our own conv2d kernels: implicit GEMM (no im2col buffer), the fallback when cuDNN is absent or
// declines a call, the only path for f64, and the baseline bench/bench_conv.cu compares cuDNN with.
// Semantics as kernels/cpu/spatial.cpp: NCHW cross-correlation, zero padding, no dilation/groups.
//
// All three passes are one tiled GEMM C[m][n] = sum_k A[k][m] B[k][n] whose A and B tiles are
// gathered from the tensors by predicated loads (an out-of-image tap, a k past K or an m past M
// loads 0), with f32 accumulation (f64 for f64 data):
//   forward      m = (n, oh, ow), col = o, k = (c, i, j): A = x[n, c, oh sh - ph + i,
//                ow sw - pw + j], B = w[o, c, i, j]; y[n, o, oh, ow] = C + b[o].
//   data grad    the transposed convolution in gather form, split into the sh sw stride phases
//                (rh, rw) = ((ih + ph) mod sh, (iw + pw) mod sw): in a phase only the taps
//                i = rh + sh a, j = rw + sw b reach the pixel, from oh = (ih + ph - i) / sh
//                exactly, so no tap is wasted on a stride that does not divide. m = (n, ih, iw) of
//                the phase, col = c, k = (o, a, b): A = gy[n, o, oh, ow], B = w[o, c, i, j]. Each
//                gx element belongs to exactly one phase and is written once (a phase without taps,
//                a kernel smaller than the stride, writes zeros): deterministic, no atomics.
//   filter grad  m = k = (c, i, j), col = o, reduction over r = (n, oh, ow): A = x as in the
//                forward, B = gy[n, o, oh, ow]. The reduction (N Ho Wo, up to ~10^6) is split into
//                S contiguous chunks (split-K, S from the shape and the SM count only); block z
//                writes its partial gw into part[z], and a second kernel adds part[0..S) in that
//                order: deterministic, no atomics.
//
// 256 threads (8 warps) per block; "wide" 128 x 64 output tiles, "narrow" ones with 16 columns
// when the GEMM has at most 16 (O or C of 3 in an RGB layer). Two cores do the math (see below):
//   SimtCore  f32 and f64: register-blocked FMAs, 8 x 4 (wide) or 4 x 4 outputs per thread from
//             16-byte shared-memory vectors, BK = 16 (8 for f64);
//   MmaCore   bf16: tensor cores through mma.sync.m16n8k16 (bf16 operands, f32 accumulators),
//             each warp a 32 x 32 (wide) or 32 x 16 / 16 x 16 (narrow) sub-tile, BK = 32.
// Global -> register prefetch of tile t + 1 overlaps the math of tile t; shared memory is
// double-buffered, so one barrier per k tile suffices (see the main loop). The loaders are plain
// predicated element loads (no cp.async, no 16-byte vectors: a gathered row is not contiguous),
// which bounds the bf16 kernels well below the tensor-core peak; see docs/kernels.md.
//
// Index arithmetic is 32-bit inside a sample (offsets below 2^31 are checked on the host) and
// 64-bit for the sample base; every (m, k) -> tensor index decomposition is done once per block,
// and per k tile only an add-with-carry of BK in mixed radix (Digits) follows.
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda/conv.h"
#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/cuda/mma_sm80.cuh"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda::conv {

namespace {

namespace rt = ::psvae::cuda;
using detail::dispatch_float;
using detail::launch_on;
using detail::Math;

constexpr int kThreads = 256;
// Position of an absent row/column of a tile: any tap added to it stays negative, so the bounds
// test fails and nothing is loaded.
constexpr int kFar = -(1 << 29);

// ---- the two GEMM cores -----------------------------------------------------------------------
// A core owns the shared-memory tiles and the accumulators of one BM x BN output tile, BK deep,
// double-buffered. The loaders hand it tile element (k, m) of A and (k, n) of B with put_a /
// put_b; compute() accumulates one buffer; for_each(f) calls f(m, n, value) once for every
// accumulator the thread owns (each (m, n) of the tile is owned by exactly one thread).

// SIMT core (f32, f64): each thread owns TM = 4 GM rows (GM groups of 4 consecutive rows, BM / GM
// apart) and TN = 4 consecutive columns; shared tiles are k-major, rows padded by 4 elements (the
// row stride stays a multiple of 16 bytes for the vector reads, and the loaders' stores with lanes
// along k hit at most 2 lanes per bank). Per k step a thread reads one 16-byte vector per group of
// 4 from each tile and does TM x TN FMAs: 32 FMAs per 3 LDS.128 in the wide tile.
template <int N>
__device__ __forceinline__ void load4(const float* p, float (&v)[N], int at) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  v[at] = t.x, v[at + 1] = t.y, v[at + 2] = t.z, v[at + 3] = t.w;
}
template <int N>
__device__ __forceinline__ void load4(const double* p, double (&v)[N], int at) {
  const double2 t0 = *reinterpret_cast<const double2*>(p);
  const double2 t1 = *reinterpret_cast<const double2*>(p + 2);
  v[at] = t0.x, v[at + 1] = t0.y, v[at + 2] = t1.x, v[at + 3] = t1.y;
}

template <class T, int BM_, int BN_, int BK_, int GM_>
struct SimtCore {
  using M = Math<T>;
  using A = typename M::Acc;
  static constexpr int BM = BM_, BN = BN_, BK = BK_, GM = GM_;
  static constexpr int TM = 4 * GM, TN = 4;
  static constexpr int kThreadsM = BM / TM, kThreadsN = BN / TN;
  static constexpr int LDA = BM + 4, LDB = BN + 4;
  static_assert(kThreadsM * kThreadsN == kThreads, "one output block per thread");
  struct Smem {
    __align__(16) A a[2][BK][LDA];
    __align__(16) A b[2][BK][LDB];
  };
  static __device__ __forceinline__ void put_a(Smem& s, int buf, int k, int m, T v) {
    s.a[buf][k][m] = M::load(v);
  }
  static __device__ __forceinline__ void put_b(Smem& s, int buf, int k, int n, T v) {
    s.b[buf][k][n] = M::load(v);
  }

  int tm, tn;
  A acc[TM][TN];
  __device__ __forceinline__ void init() {
    tm = static_cast<int>(threadIdx.x) % kThreadsM;
    tn = static_cast<int>(threadIdx.x) / kThreadsM;
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = A(0);
  }
  // acc[4 g + a][j] += sum over kk of a[kk][g BM/GM + 4 tm + a] * b[kk][4 tn + j].
  __device__ __forceinline__ void compute(const Smem& s, int buf) {
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      A a[TM], b[TN];
#pragma unroll
      for (int g = 0; g < GM; ++g) load4(&s.a[buf][kk][g * (BM / GM) + 4 * tm], a, 4 * g);
      load4(&s.b[buf][kk][4 * tn], b, 0);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
  }
  template <class F>
  __device__ __forceinline__ void for_each(F&& f) const {
#pragma unroll
    for (int g = 0; g < GM; ++g)
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int j = 0; j < TN; ++j) f(g * (BM / GM) + 4 * tm + a, 4 * tn + j, acc[4 * g + a][j]);
  }
};

// Tensor-core core (bf16): mma.sync.m16n8k16 with bf16 operands and f32 accumulators (sm_80+).
// The 8 warps tile BM x BN as WM x WN warps of WTM x WTN, each warp MT x NT mma tiles of 16 x 8.
// Shared tiles are k-contiguous, a[m][k] and b[n][k], rows padded to LD = BK + 8 bf16: at BK = 32
// a row is 80 bytes = 20 words, and the 8 row groups g of a fragment load start at words 20 g mod
// 32 = 0, 20, 8, 28, 16, 4, 24, 12, each followed by the 4 words of q, so a warp's 32-bit fragment
// loads hit 32 different banks (BK = 16: 12 words a row, starts 0, 12, 24, 4, 16, 28, 8, 20: the
// same). The fragment layouts are mma_bf16_16816's (kernels/cuda/mma_sm80.cuh).

// The two bf16 at p, p + 1 (4-byte aligned) as one register.
__device__ __forceinline__ uint32_t ld_pair(const __nv_bfloat16* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

template <int BM_, int BN_, int WM_, int WN_, int BK_ = 32>
struct MmaCore {
  using T = __nv_bfloat16;
  using A = float;
  static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_;
  static constexpr int WTM = BM / WM, WTN = BN / WN, MT = WTM / 16, NT = WTN / 8, LD = BK + 8;
  static_assert(WM * WN == kThreads / 32, "one warp tile per warp");
  static_assert(WTM % 16 == 0 && WTN % 8 == 0 && BK % 16 == 0, "whole mma tiles");
  struct Smem {
    __align__(16) T a[2][BM][LD];
    __align__(16) T b[2][BN][LD];
  };
  static __device__ __forceinline__ void put_a(Smem& s, int buf, int k, int m, T v) {
    s.a[buf][m][k] = v;
  }
  static __device__ __forceinline__ void put_b(Smem& s, int buf, int k, int n, T v) {
    s.b[buf][n][k] = v;
  }

  int m_w, n_w, g, q;  // the warp's first row and column in the tile; the lane's fragment indices
  float acc[MT][NT][4];
  __device__ __forceinline__ void init() {
    const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
    m_w = (warp % WM) * WTM, n_w = (warp / WM) * WTN;
    g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.f;
  }
  __device__ __forceinline__ void compute(const Smem& s, int buf) {
#pragma unroll
    for (int k0 = 0; k0 < BK; k0 += 16) {
      uint32_t af[MT][4], bf[NT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const T* p = &s.a[buf][m_w + 16 * i + g][k0 + 2 * q];
        af[i][0] = ld_pair(p);
        af[i][1] = ld_pair(p + 8 * LD);
        af[i][2] = ld_pair(p + 8);
        af[i][3] = ld_pair(p + 8 * LD + 8);
      }
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const T* p = &s.b[buf][n_w + 8 * j + g][k0 + 2 * q];
        bf[j][0] = ld_pair(p);
        bf[j][1] = ld_pair(p + 8);
      }
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) sm80::mma_bf16_16816(acc[i][j], af[i], bf[j][0], bf[j][1]);
    }
  }
  template <class F>
  __device__ __forceinline__ void for_each(F&& f) const {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c)
          f(m_w + 16 * i + g + 8 * (c >> 1), n_w + 8 * j + 2 * q + (c & 1), acc[i][j][c]);
  }
};

// Tile choice per element type. "Wide" 128 x 64 tiles; "narrow" ones (256 x 16, or 128 x 16 for
// the bf16 filter gradient) when the GEMM has at most 16 columns (O or C of 3 in an RGB layer).
// The SIMT BK is 16 with f32 accumulators and 8 with f64 ones, so the double-buffered tiles fit
// 48 KB of static shared memory. The bf16 BK is 32, except 16 for the filter gradient's wide
// tile: its loader keeps a column table of BM / (256 / BK) entries per thread, and 16 entries of
// 3 registers pushed the kernel past the 128 registers of two resident blocks per SM.
template <class T>
struct Cores {
  static constexpr int kBK = sizeof(typename Math<T>::Acc) == 4 ? 16 : 8;
  using Wide = SimtCore<T, 128, 64, kBK, 2>;
  using Narrow = SimtCore<T, 256, 16, kBK, 1>;
  using WgradWide = Wide;
  using WgradNarrow = Narrow;
};
template <>
struct Cores<__nv_bfloat16> {
  using Wide = MmaCore<128, 64, 4, 2>;
  using Narrow = MmaCore<256, 16, 8, 1>;
  using WgradWide = MmaCore<128, 64, 4, 2, 16>;
  using WgradNarrow = MmaCore<128, 16, 8, 1>;
};
// The narrow tile when the GEMM has at most this many columns.
constexpr int64_t kNarrowCols = 16;

// Loader layouts every core must allow: warps own BK / 8 rows of the A tile in the gather kernel,
// and threads t mod BK own rows in the others.
template <class C>
constexpr bool loader_layouts_ok() {
  return C::BK % 8 == 0 && kThreads % C::BK == 0 && C::BM % 32 == 0 &&
         (C::BM * C::BK) % kThreads == 0;
}

// ---- mixed-radix counters --------------------------------------------------------------------
// v = (d2 R1 + d1) R0 + d0 with 0 <= d1 < R1, 0 <= d0 < R0 (d2 unbounded: d2 >= the top extent
// marks v past the end).
struct Digits {
  int d2, d1, d0;
};
__device__ __forceinline__ Digits split(int v, int R1, int R0) {
  const int t = v / R0;
  return {t / R1, t - (t / R1) * R1, v - t * R0};
}
// s += step (both normalised). d0 + step.d0 < 2 R0 and d1 + 1 + step.d1 < 2 R1, so one carry each.
__device__ __forceinline__ void advance(Digits& s, const Digits& step, int R1, int R0) {
  s.d0 += step.d0;
  if (s.d0 >= R0) s.d0 -= R0, ++s.d1;
  s.d1 += step.d1;
  if (s.d1 >= R1) s.d1 -= R1, ++s.d2;
  s.d2 += step.d2;
}

// ---- forward and data gradient: one gather GEMM ----------------------------------------------

// Shapes of the call, all checked < 2^31 on the host (args_of, with margins).
struct ConvArgs {
  int N, C, H, W, O, kh, kw, Ho, Wo, sh, sw, ph, pw;
};

struct GatherArgs {
  ConvArgs s;
  const void* src;   // x (forward) or gy (data gradient)
  const void* w;     // weights (O, C, kh, kw)
  const void* bias;  // (O) or null; forward only
  void* out;         // y or gx
  int tiles_n;       // column tiles; block x = tile_m * tiles_n + tile_n
};

// One GEMM of the gather form (per stride phase for the data gradient):
//   m = (n, my, mx) < N My Mx, col < Nn, k = (k2, k1, k0) < K2 R1 R0;
//   A[k][m] = src[n src_ns + (y0 + k1 ey) src_ws + (x0 + k0 ex) + k2 sa2 + k1 sa1 + k0 sa0],
//             (y0, x0) = (my ay + by, mx ax + bx), zero unless 0 <= y0 + k1 ey < src_h and
//             0 <= x0 + k0 ex < src_w (the sa terms hold the k1 ey src_ws + k0 ex shifts);
//   B[k][col] = w[wb + k2 sb2 + k1 sb1 + k0 sb0 + col sbn];
//   out[n out_ns + col out_cs + (my oay + oby) out_ws + mx oax + obx] = C[m][col] (+ bias[col]).
struct Geom {
  int Nn, My, Mx, M;
  int ay, by, ax, bx;
  int64_t src_ns;
  int src_ws, src_h, src_w;
  int K2, R1, R0, K;
  int sa2, sa1, sa0, ey, ex;
  int wb, sb2, sb1, sb0, sbn;
  int64_t out_ns;
  int out_cs, out_ws, oay, oby, oax, obx;
};

__device__ __forceinline__ Geom forward_geom(const ConvArgs& a) {
  Geom g;
  g.Nn = a.O;
  g.My = a.Ho, g.Mx = a.Wo, g.M = a.N * a.Ho * a.Wo;
  g.ay = a.sh, g.by = -a.ph, g.ax = a.sw, g.bx = -a.pw;  // (ih, iw) of tap (0, 0)
  g.src_ns = static_cast<int64_t>(a.C) * a.H * a.W;
  g.src_ws = a.W, g.src_h = a.H, g.src_w = a.W;
  g.K2 = a.C, g.R1 = a.kh, g.R0 = a.kw, g.K = a.C * a.kh * a.kw;        // k = (c, i, j)
  g.sa2 = a.H * a.W, g.sa1 = a.W, g.sa0 = 1, g.ey = 1, g.ex = 1;        // + c H W + i W + j
  g.wb = 0, g.sb2 = a.kh * a.kw, g.sb1 = a.kw, g.sb0 = 1, g.sbn = g.K;  // w[o K + k]
  g.out_ns = static_cast<int64_t>(a.O) * a.Ho * a.Wo;
  g.out_cs = a.Ho * a.Wo, g.out_ws = a.Wo;
  g.oay = 1, g.oby = 0, g.oax = 1, g.obx = 0;
  return g;
}

__host__ __device__ __forceinline__ int pos_mod(int v, int m) { return ((v % m) + m) % m; }
// Input rows (or columns) of phase r: ih = first + s t, 0 <= ih < extent, (ih + pad) mod s == r.
__host__ __device__ __forceinline__ int phase_first(int r, int pad, int s) {
  return pos_mod(r - pad, s);
}
__host__ __device__ __forceinline__ int phase_count(int r, int pad, int s, int extent) {
  const int f = phase_first(r, pad, s);
  return f < extent ? (extent - 1 - f) / s + 1 : 0;
}

// Phase (rh, rw) of the data gradient. Its pixels ih = fh + sh ti meet the taps i = rh + sh a
// (a < khp) at oh = (ih + ph - i) / sh = uy - a, uy = (fh + ph - rh) / sh + ti (exact: fh + ph is
// rh mod sh, and fh + ph - rh >= 0 because fh >= rh - ph). Same for the width.
__device__ __forceinline__ Geom data_grad_geom(const ConvArgs& a, int phase) {
  const int rh = phase / a.sw, rw = phase - (phase / a.sw) * a.sw;
  const int fh = phase_first(rh, a.ph, a.sh), fw = phase_first(rw, a.pw, a.sw);
  const int Hp = phase_count(rh, a.ph, a.sh, a.H), Wp = phase_count(rw, a.pw, a.sw, a.W);
  const int khp = rh < a.kh ? (a.kh - 1 - rh) / a.sh + 1 : 0;
  const int kwp = rw < a.kw ? (a.kw - 1 - rw) / a.sw + 1 : 0;
  Geom g;
  g.Nn = a.C;
  g.My = Hp, g.Mx = Wp, g.M = a.N * Hp * Wp;
  g.ay = 1, g.by = (fh + a.ph - rh) / a.sh, g.ax = 1, g.bx = (fw + a.pw - rw) / a.sw;  // (uy, ux)
  g.src_ns = static_cast<int64_t>(a.O) * a.Ho * a.Wo;
  g.src_ws = a.Wo, g.src_h = a.Ho, g.src_w = a.Wo;
  g.K2 = a.O, g.R1 = khp, g.R0 = kwp, g.K = a.O * khp * kwp;             // k = (o, a, b)
  g.sa2 = a.Ho * a.Wo, g.sa1 = -a.Wo, g.sa0 = -1, g.ey = -1, g.ex = -1;  // gy[o, uy - a, ux - b]
  // w[o, c, rh + sh a, rw + sw b] = w[o C kh kw + c kh kw + (rh + sh a) kw + rw + sw b]
  g.wb = rh * a.kw + rw, g.sb2 = a.C * a.kh * a.kw, g.sb1 = a.sh * a.kw, g.sb0 = a.sw;
  g.sbn = a.kh * a.kw;
  g.out_ns = static_cast<int64_t>(a.C) * a.H * a.W;
  g.out_cs = a.H * a.W, g.out_ws = a.W;
  g.oay = a.sh, g.oby = fh, g.oax = a.sw, g.obx = fw;  // gx[n, c, fh + sh ti, fw + sw tj]
  return g;
}

template <class T, class C, bool kDataGrad>
__global__ void __launch_bounds__(kThreads, 2) gather_gemm_kernel(GatherArgs args) {
  static_assert(loader_layouts_ok<C>(), "loader layouts");
  using M = Math<T>;
  using A = typename M::Acc;
  __shared__ typename C::Smem sm;

  const Geom g = kDataGrad ? data_grad_geom(args.s, blockIdx.z) : forward_geom(args.s);
  const int tile_n = static_cast<int>(blockIdx.x % args.tiles_n);
  const int m0 = static_cast<int>(blockIdx.x / args.tiles_n) * C::BM;
  const int n0 = tile_n * C::BN;
  // The grid is sized for the largest phase; a block past this phase's pixels has nothing to do.
  // (Uniform over the block, so no barrier below is skipped by part of it.)
  if (m0 >= g.M) return;

  const T* __restrict__ src = static_cast<const T*>(args.src);
  const T* __restrict__ wt = static_cast<const T*>(args.w);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const T zero = M::store(A(0));

  // A loader: warp w fills tile rows k = w + 8 rr, lane l the columns m = l + 32 q, so a warp reads
  // 32 consecutive output pixels (consecutive source columns at stride 1) of one tap.
  constexpr int kAQ = C::BM / 32, kARows = C::BK / 8;
  int64_t a_base[kAQ];
  int a_y[kAQ], a_x[kAQ];
  const int MyMx = g.My * g.Mx;
#pragma unroll
  for (int q = 0; q < kAQ; ++q) {
    const int m = m0 + lane + 32 * q;
    if (m < g.M) {
      const int n = m / MyMx, rem = m - n * MyMx;
      const int my = rem / g.Mx, mx = rem - my * g.Mx;
      a_y[q] = my * g.ay + g.by;
      a_x[q] = mx * g.ax + g.bx;
      a_base[q] = n * g.src_ns + static_cast<int64_t>(a_y[q]) * g.src_ws + a_x[q];
    } else {
      a_y[q] = kFar, a_x[q] = kFar, a_base[q] = 0;
    }
  }
  // B loader: thread t fills tile row k = t mod BK of columns t / BK + (256 / BK) q (lanes along
  // k, the contiguous direction of w in the forward).
  constexpr int kBCols = kThreads / C::BK;
  constexpr int kBQ = (C::BN + kBCols - 1) / kBCols;
  const int b_k = tid % C::BK, b_c = tid / C::BK;

  C core;
  core.init();
  const int ktiles = (g.K + C::BK - 1) / C::BK;  // 0 when a phase has no taps: C = 0
  if (ktiles > 0) {
    const Digits step = split(C::BK, g.R1, g.R0);
    Digits ak[kARows];
#pragma unroll
    for (int rr = 0; rr < kARows; ++rr) ak[rr] = split(warp + 8 * rr, g.R1, g.R0);
    Digits bk = split(b_k, g.R1, g.R0);
    T ra[kARows][kAQ], rb[kBQ];

    auto load_tiles = [&]() {
#pragma unroll
      for (int rr = 0; rr < kARows; ++rr) {
        const Digits& d = ak[rr];
        const bool kv = d.d2 < g.K2;  // a row past K is masked; its offset is never formed
        const int off = kv ? d.d2 * g.sa2 + d.d1 * g.sa1 + d.d0 * g.sa0 : 0;
        const int dy = d.d1 * g.ey, dx = d.d0 * g.ex;
#pragma unroll
        for (int q = 0; q < kAQ; ++q) {
          const int yy = a_y[q] + dy, xx = a_x[q] + dx;
          const bool ok = kv && static_cast<unsigned>(yy) < static_cast<unsigned>(g.src_h) &&
                          static_cast<unsigned>(xx) < static_cast<unsigned>(g.src_w);
          ra[rr][q] = ok ? src[a_base[q] + off] : zero;
        }
      }
      const bool kv = bk.d2 < g.K2;
      const int off = kv ? g.wb + bk.d2 * g.sb2 + bk.d1 * g.sb1 + bk.d0 * g.sb0 : 0;
#pragma unroll
      for (int q = 0; q < kBQ; ++q) {
        const int slot = b_c + kBCols * q, col = n0 + slot;
        const bool ok = kv && slot < C::BN && col < g.Nn;
        rb[q] = ok ? wt[off + col * g.sbn] : zero;
      }
    };
    auto store_tiles = [&](int buf) {
#pragma unroll
      for (int rr = 0; rr < kARows; ++rr)
#pragma unroll
        for (int q = 0; q < kAQ; ++q) C::put_a(sm, buf, warp + 8 * rr, lane + 32 * q, ra[rr][q]);
#pragma unroll
      for (int q = 0; q < kBQ; ++q) {
        const int slot = b_c + kBCols * q;
        if (slot < C::BN) C::put_b(sm, buf, b_k, slot, rb[q]);
      }
    };

    load_tiles();
    store_tiles(0);
    __syncthreads();  // tile 0 is in shared memory
    for (int t = 0; t < ktiles; ++t) {
      const bool more = t + 1 < ktiles;
      if (more) {  // fetch tile t + 1 into registers; its loads overlap the math below
#pragma unroll
        for (int rr = 0; rr < kARows; ++rr) advance(ak[rr], step, g.R1, g.R0);
        advance(bk, step, g.R1, g.R0);
        load_tiles();
      }
      core.compute(sm, t & 1);
      // Buffer (t + 1) & 1 was last read by the math of tile t - 1, which every thread finished
      // before the barrier that ended iteration t - 1: writing it now races with nobody.
      if (more) store_tiles((t + 1) & 1);
      // Tile t + 1 is visible to all, and buffer t & 1 free for tile t + 2.
      __syncthreads();
    }
  }

  // Epilogue: every (m, col) of the tile inside (M, Nn) is written once, by its owner.
  T* __restrict__ out = static_cast<T*>(args.out);
  const T* bias = kDataGrad ? nullptr : static_cast<const T*>(args.bias);
  core.for_each([&](int ml, int nl, A v) {
    const int m = m0 + ml, col = n0 + nl;
    if (m >= g.M || col >= g.Nn) return;
    const int n = m / MyMx, rem = m - n * MyMx;
    const int my = rem / g.Mx, mx = rem - my * g.Mx;
    const int64_t ob =
        n * g.out_ns + static_cast<int64_t>(my * g.oay + g.oby) * g.out_ws + (mx * g.oax + g.obx);
    if (bias != nullptr) v += M::load(bias[col]);
    out[ob + static_cast<int64_t>(col) * g.out_cs] = M::store(v);
  });
}

// ---- filter gradient: split-K GEMM, then a fixed-order reduction -----------------------------

struct WgradArgs {
  ConvArgs s;
  const void* x;
  const void* gy;
  void* part;  // (S, O, K) accumulator-typed partials
  int tiles_n;
  int chunk;  // reduction indices per split, a multiple of BK
};

// part[z][o][k] = sum over r in [z chunk, min(R, (z + 1) chunk)) of x-column k at r times gy[o] at
// r, r = (n, oh, ow), R = N Ho Wo.
template <class T, class C>
__global__ void __launch_bounds__(kThreads, 2) wgrad_kernel(WgradArgs args) {
  static_assert(loader_layouts_ok<C>(), "loader layouts");
  using M = Math<T>;
  using A = typename M::Acc;
  __shared__ typename C::Smem sm;

  const ConvArgs& s = args.s;
  const int khkw = s.kh * s.kw, K = s.C * khkw, P = s.Ho * s.Wo, R = s.N * P;
  const int HW = s.H * s.W;
  const int64_t CHW = static_cast<int64_t>(s.C) * HW, OP = static_cast<int64_t>(s.O) * P;
  const int tile_n = static_cast<int>(blockIdx.x % args.tiles_n);
  const int m0 = static_cast<int>(blockIdx.x / args.tiles_n) * C::BM;  // first k of the tile
  const int n0 = tile_n * C::BN;                                       // first o of the tile
  const int r_begin = static_cast<int>(blockIdx.z) * args.chunk;
  const int r_end =
      static_cast<int>(min(static_cast<int64_t>(R), static_cast<int64_t>(r_begin) + args.chunk));

  const T* __restrict__ x = static_cast<const T*>(args.x);
  const T* __restrict__ gy = static_cast<const T*>(args.gy);
  const int tid = threadIdx.x;
  const T zero = M::store(A(0));

  // Loaders: thread t fills tile row r_local = t mod BK (lanes along the reduction index, which
  // is the contiguous ow direction of both x and gy) of columns t / BK + (256 / BK) q.
  constexpr int kCols = kThreads / C::BK;
  constexpr int kAQ = C::BM / kCols;                // exact (loader_layouts_ok)
  constexpr int kBQ = (C::BN + kCols - 1) / kCols;  // the last pass may be partial
  const int r_local = tid % C::BK, c_first = tid / C::BK;
  // This thread's x columns k = (c, i, j): offset c H W + i W + j and the tap (i, j).
  int k_off[kAQ], k_i[kAQ], k_j[kAQ];
#pragma unroll
  for (int q = 0; q < kAQ; ++q) {
    const int k = m0 + c_first + kCols * q;
    if (k < K) {
      const int c = k / khkw, rem = k - c * khkw;
      k_i[q] = rem / s.kw;
      k_j[q] = rem - k_i[q] * s.kw;
      k_off[q] = c * HW + k_i[q] * s.W + k_j[q];
    } else {
      k_i[q] = kFar, k_j[q] = kFar, k_off[q] = 0;
    }
  }

  C core;
  core.init();
  const int ktiles = r_end > r_begin ? (r_end - r_begin + C::BK - 1) / C::BK : 0;
  if (ktiles > 0) {
    // This thread's reduction index r and its digits (n, oh, ow), advanced by BK per tile.
    int r = r_begin + r_local;
    Digits rd = split(r, s.Ho, s.Wo);
    const Digits step = split(C::BK, s.Ho, s.Wo);
    T ra[kAQ], rb[kBQ];

    auto load_tiles = [&]() {
      const bool rv = r < r_end;
      const int y0 = rd.d1 * s.sh - s.ph, x0 = rd.d0 * s.sw - s.pw;
      const int64_t xb = rd.d2 * CHW + static_cast<int64_t>(y0) * s.W + x0;
#pragma unroll
      for (int q = 0; q < kAQ; ++q) {
        const int yy = y0 + k_i[q], xx = x0 + k_j[q];
        const bool ok = rv && static_cast<unsigned>(yy) < static_cast<unsigned>(s.H) &&
                        static_cast<unsigned>(xx) < static_cast<unsigned>(s.W);
        ra[q] = ok ? x[xb + k_off[q]] : zero;
      }
      const int64_t gb = rd.d2 * OP + rd.d1 * s.Wo + rd.d0;
#pragma unroll
      for (int q = 0; q < kBQ; ++q) {
        const int slot = c_first + kCols * q, o = n0 + slot;
        const bool ok = rv && slot < C::BN && o < s.O;
        rb[q] = ok ? gy[gb + static_cast<int64_t>(o) * P] : zero;
      }
    };
    auto store_tiles = [&](int buf) {
#pragma unroll
      for (int q = 0; q < kAQ; ++q) C::put_a(sm, buf, r_local, c_first + kCols * q, ra[q]);
#pragma unroll
      for (int q = 0; q < kBQ; ++q) {
        const int slot = c_first + kCols * q;
        if (slot < C::BN) C::put_b(sm, buf, r_local, slot, rb[q]);
      }
    };

    load_tiles();
    store_tiles(0);
    __syncthreads();  // tile 0 is in shared memory
    for (int t = 0; t < ktiles; ++t) {
      const bool more = t + 1 < ktiles;
      if (more) {
        r += C::BK;
        advance(rd, step, s.Ho, s.Wo);
        load_tiles();
      }
      core.compute(sm, t & 1);
      if (more) store_tiles((t + 1) & 1);  // same double-buffer argument as gather_gemm_kernel
      __syncthreads();
    }
  }

  // Every (k, o) of the tile inside (K, O) is written, zeros for an empty chunk.
  A* __restrict__ part = static_cast<A*>(args.part) + static_cast<int64_t>(blockIdx.z) * s.O * K;
  core.for_each([&](int ml, int nl, A v) {
    const int k = m0 + ml, o = n0 + nl;
    if (k < K && o < s.O) part[static_cast<int64_t>(o) * K + k] = v;
  });
}

// out[e] = part[0][e] + part[1][e] + ... + part[S - 1][e], in that order.
template <class T, class A>
__global__ void __launch_bounds__(kThreads)
    reduce_splits_kernel(const A* __restrict__ part, T* __restrict__ out, int64_t count, int S) {
  for (int64_t e = rt::grid_index(); e < count; e += rt::grid_stride()) {
    A v = 0;
    for (int z = 0; z < S; ++z) v += part[z * count + e];
    out[e] = Math<T>::store(v);
  }
}

// ---- host side -------------------------------------------------------------------------------

// Every 32-bit quantity the kernels form stays below 2^31: per-sample offsets (with a channel and
// a stride of margin), the GEMM extents M (pixels of the whole batch, plus a tile of slack for the
// indices of the last tile) and K, and the stride phases fit grid.z.
ConvArgs args_of(const char* op, const Dims& d) {
  const int64_t lim = INT_MAX;
  auto ok = [&](int64_t v) { return v >= 0 && v < lim; };
  const bool fits =
      ok(d.N) && ok(d.C) && ok(d.H) && ok(d.W) && ok(d.O) && ok(d.kh) && ok(d.kw) && ok(d.Ho) &&
      ok(d.Wo) && ok(d.sh) && ok(d.sw) && ok(d.ph) && ok(d.pw) &&
      ok((d.C + 1) * (d.H + 2 * d.ph + d.sh) * (d.W + 2 * d.pw + d.sw)) &&
      ok((d.O + 1) * (d.Ho + 1) * (d.Wo + 1)) && ok((d.O + 1) * (d.C + 1) * d.kh * d.kw) &&
      ok(d.N * (d.Ho + 1) * (d.Wo + 1) + 1024) && ok(d.N * (d.H + 1) * (d.W + 1) + 1024) &&
      ok(d.sh * d.sw) && d.sh * d.sw <= 65535;
  if (!fits)
    throw std::invalid_argument(std::string(op) + ": x (" + std::to_string(d.N) + ", " +
                                std::to_string(d.C) + ", " + std::to_string(d.H) + ", " +
                                std::to_string(d.W) + ") with w (" + std::to_string(d.O) +
                                ", .., " + std::to_string(d.kh) + ", " + std::to_string(d.kw) +
                                ") exceeds the 32-bit indexing of the own CUDA conv kernels");
  ConvArgs a;
  a.N = static_cast<int>(d.N), a.C = static_cast<int>(d.C), a.H = static_cast<int>(d.H);
  a.W = static_cast<int>(d.W), a.O = static_cast<int>(d.O), a.kh = static_cast<int>(d.kh);
  a.kw = static_cast<int>(d.kw), a.Ho = static_cast<int>(d.Ho), a.Wo = static_cast<int>(d.Wo);
  a.sh = static_cast<int>(d.sh), a.sw = static_cast<int>(d.sw), a.ph = static_cast<int>(d.ph);
  a.pw = static_cast<int>(d.pw);
  return a;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned grid_x(const char* op, int64_t tiles_m, int64_t tiles_n) {
  const int64_t blocks = tiles_m * tiles_n;
  if (blocks > INT_MAX)
    throw std::invalid_argument(std::string(op) + ": too many tiles for the own CUDA conv kernel");
  return static_cast<unsigned>(std::max<int64_t>(blocks, 1));
}

template <class T, class C, bool kDataGrad>
void launch_gather(const char* op, GatherArgs ga, int64_t M, int64_t cols, int phases,
                   cudaStream_t stream) {
  const int64_t tiles_m = ceil_div(M, C::BM), tiles_n = ceil_div(cols, C::BN);
  ga.tiles_n = static_cast<int>(tiles_n);
  const dim3 grid(grid_x(op, tiles_m, tiles_n), 1, static_cast<unsigned>(phases));
  PSVAE_LAUNCH(grid, kThreads, 0, stream, gather_gemm_kernel<T, C, kDataGrad>)(ga);
}

}  // namespace

void own_forward(const Dims& d, const Tensor& x, const Tensor& w, const Tensor* b,
                 const Tensor& y) {
  if (y.numel() == 0) return;
  GatherArgs ga{};
  ga.s = args_of("conv2d", d);
  ga.src = x.raw_data();
  ga.w = w.raw_data();
  ga.bias = b ? b->raw_data() : nullptr;
  ga.out = y.raw_data();
  const int64_t M = d.N * d.Ho * d.Wo;
  launch_on(y.device(), [&](cudaStream_t s, int) {
    dispatch_float(y.dtype(), "conv2d", [&](auto tag) {
      using T = decltype(tag);
      if (d.O <= kNarrowCols)
        launch_gather<T, typename Cores<T>::Narrow, false>("conv2d", ga, M, d.O, 1, s);
      else
        launch_gather<T, typename Cores<T>::Wide, false>("conv2d", ga, M, d.O, 1, s);
    });
  });
}

void own_data_grad(const Dims& d, const Tensor& gy, const Tensor& w, const Tensor& gx) {
  if (gx.numel() == 0) return;
  GatherArgs ga{};
  ga.s = args_of("conv2d_bwd", d);
  ga.src = gy.raw_data();
  ga.w = w.raw_data();
  ga.bias = nullptr;
  ga.out = gx.raw_data();
  // Grid rows for the largest phase: N * max Hp * max Wp pixels.
  int64_t max_hp = 0, max_wp = 0;
  for (int r = 0; r < ga.s.sh; ++r)
    max_hp = std::max<int64_t>(max_hp, phase_count(r, ga.s.ph, ga.s.sh, ga.s.H));
  for (int r = 0; r < ga.s.sw; ++r)
    max_wp = std::max<int64_t>(max_wp, phase_count(r, ga.s.pw, ga.s.sw, ga.s.W));
  const int64_t M = d.N * max_hp * max_wp;
  const int phases = ga.s.sh * ga.s.sw;
  launch_on(gx.device(), [&](cudaStream_t s, int) {
    dispatch_float(gx.dtype(), "conv2d_bwd", [&](auto tag) {
      using T = decltype(tag);
      if (d.C <= kNarrowCols)
        launch_gather<T, typename Cores<T>::Narrow, true>("conv2d_bwd", ga, M, d.C, phases, s);
      else
        launch_gather<T, typename Cores<T>::Wide, true>("conv2d_bwd", ga, M, d.C, phases, s);
    });
  });
}

void own_filter_grad(const Dims& d, const Tensor& gy, const Tensor& x, const Tensor& gw) {
  if (gw.numel() == 0) return;
  WgradArgs wa{};
  wa.s = args_of("conv2d_bwd", d);
  wa.x = x.raw_data();
  wa.gy = gy.raw_data();
  const int64_t K = d.C * d.kh * d.kw, R = d.N * d.Ho * d.Wo, OK = d.O * K;
  launch_on(gw.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(gw.dtype(), "conv2d_bwd", [&](auto tag) {
      using T = decltype(tag);
      using A = typename Math<T>::Acc;
      auto run = [&](auto cfg) {
        using C = decltype(cfg);
        const int64_t tiles_m = ceil_div(K, C::BM), tiles_n = ceil_div(d.O, C::BN);
        // Splits: enough blocks for about four per SM (two waves of two resident blocks), but
        // no chunk shorter than 1024 reduction indices (64 k tiles), and at least one split.
        // S depends only on the shape and the SM count, so a rerun adds in the same order.
        constexpr int64_t kMinChunk = 1024;
        const int64_t want =
            ceil_div(4 * static_cast<int64_t>(rt::sm_count(dev)), tiles_m * tiles_n);
        int64_t S = std::max<int64_t>(1, std::min(want, R / kMinChunk));
        int64_t chunk = ceil_div(ceil_div(std::max<int64_t>(R, 1), S), C::BK) * C::BK;
        S = std::max<int64_t>(1, ceil_div(R, chunk));
        Tensor part =
            Tensor::empty(Shape{S * OK}, sizeof(A) == 8 ? DType::F64 : DType::F32, gw.device());
        wa.part = part.raw_data();
        wa.tiles_n = static_cast<int>(tiles_n);
        wa.chunk = static_cast<int>(chunk);
        const dim3 grid(grid_x("conv2d_bwd", tiles_m, tiles_n), 1, static_cast<unsigned>(S));
        PSVAE_LAUNCH(grid, kThreads, 0, s, wgrad_kernel<T, C>)(wa);
        PSVAE_LAUNCH(rt::grid_for(OK, dev), kThreads, 0, s, reduce_splits_kernel<T, A>)
        (static_cast<const A*>(part.raw_data()), static_cast<T*>(gw.raw_data()), OK,
         static_cast<int>(S));
      };
      if (d.O <= kNarrowCols)
        run(typename Cores<T>::WgradNarrow{});
      else
        run(typename Cores<T>::WgradWide{});
    });
  });
}

}  // namespace psvae::kernels::cuda::conv
