// CUDA kernels of the spatial family (NCHW) but conv2d (kernels/cuda/conv.cu): nearest and bilinear
// upsampling, average and max pooling, each with its backward, with the semantics and the index
// conventions of kernels/cpu/spatial.cpp (PyTorch's).
//
// Every kernel has one thread per OUTPUT element and writes it once; the backwards are gathers,
// so no atomics on floats and a fixed summation order: each input-gradient element adds the output
// gradients that read it, in the row-major (oh, ow) order in which the CPU kernel scatters them,
// in the CPU's accumulator type (f32 in f32, f64 in f64; bf16 in f32). Products and sums use the
// explicitly rounded intrinsics (__fmul_rn, __fadd_rn, ...) so nvcc forms no FMA: each step rounds
// as the CPU's source expression does.
//   upsample: a small kernel first tabulates, per output row/column, its source taps (i0, i1,
//     lambda), and per input row/column the contiguous run [lo, hi) of output rows/columns that
//     read it (the taps are monotone in the output index, so that set is one run). The forward
//     reads the taps, the backward loops over the runs.
//   avg_pool2d: forward sums the clipped window in double and multiplies by 1 / (kh kw) as the CPU
//     does; backward visits the windows that cover the pixel, ranges from the pool geometry.
//   max_pool2d: forward keeps the CPU's rule (first maximum in window order, a NaN wins over any
//     number); backward has no pool geometry (the op passes only gy and argmax), so a pre-pass
//     takes, per output row oh, the min and max argmax row over the whole batch (likewise per
//     column), from which each input pixel gets the run of output rows/columns whose argmax can
//     land on it. Exact for any argmax tensor, and a window or two per pixel for a real pooling.
// dtypes: f32, bf16, f64 (others throw "not yet supported on CUDA"); argmax i64.
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/op_table.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda {

namespace {

namespace rt = ::psvae::cuda;
using namespace detail;  // the shared helpers of elementwise_common.cuh

// Index division: detail::Div, make_div and divide (elementwise_common.cuh), FastDiv32's multiply-
// high and shift when the launch's k32 says every dividend is below 2^31.

// u -> (plane p, row a, column b) of a (planes, A, B) tensor.
__device__ __forceinline__ void decode(int64_t u, const Div& A, const Div& B, bool k32, int64_t& p,
                                       int64_t& a, int64_t& b) {
  const int64_t r = divide(u, B, k32);
  b = u - r * B.d;
  p = divide(r, A, k32);
  a = r - p * A.d;
}

// ---- rounding-explicit arithmetic (no FMA contraction) ------------------------------------------
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }

void check_nchw(const char* op, const char* what, const Tensor& t) {
  if (t.rank() != 4)
    throw std::invalid_argument(std::string(op) + ": " + what + " must be (N, C, H, W), got " +
                                t.str());
  for (int d = 2; d < 4; ++d)
    if (t.size(d) > INT32_MAX)
      unsupported(op, std::string("spatial extents above 2^31 (") + what + " " + t.str() + ")");
}

// in and out are (N, C, ., .) with the same N, C and dtype.
void check_pair(const char* op, const Tensor& in, const Tensor& out) {
  check_nchw(op, "input", in);
  check_nchw(op, "output", out);
  if (in.dtype() != out.dtype() || in.size(0) != out.size(0) || in.size(1) != out.size(1))
    throw std::invalid_argument(std::string(op) + ": " + in.str() + " and " + out.str() +
                                " must share N, C and dtype");
}

unsigned grid_of(int64_t n, int dev) { return rt::grid_for(n, dev); }

// ---- upsampling: axis tables --------------------------------------------------------------------
enum class Mode { kNearest, kBilinear };

// The tap parameters of one axis (in -> out), computed on the host in the CPU kernel's types.
template <class A>
struct TapParams {
  int64_t in = 1, out = 1;
  float nscale = 1;  // nearest: in / out in float (even for f64 data), as ATen
  A scale = 0;       // bilinear: (in-1)/(out-1) (align_corners) or in/out
  bool align = false;
};

template <class A>
TapParams<A> tap_params(int64_t in, int64_t out, bool align) {
  TapParams<A> t;
  t.in = in;
  t.out = out;
  t.align = align;
  t.nscale = static_cast<float>(in) / static_cast<float>(out);
  t.scale = align ? (out > 1 ? static_cast<A>(in - 1) / static_cast<A>(out - 1) : A(0))
                  : static_cast<A>(in) / static_cast<A>(out);
  return t;
}

// Output index d reads input indices i0, i1 with weights (1 - lam), lam:
//   nearest:  i0 = i1 = min(floor(float(d) * nscale), in - 1), lam = 0;
//   bilinear: src = align ? scale d : max(scale (d + 0.5) - 0.5, 0), i0 = min(floor(src), in - 1),
//             i1 = min(i0 + 1, in - 1), lam = clamp(src - i0, 0, 1).
// std::max/min's argument order is kept (max(a, b) = a < b ? b : a).
template <Mode M, class A>
__device__ __forceinline__ void tap(int64_t d, const TapParams<A>& t, int& i0, int& i1, A& lam) {
  if constexpr (M == Mode::kNearest) {
    const float f = floorf(__fmul_rn(static_cast<float>(d), t.nscale));
    const int64_t i = static_cast<int64_t>(f);
    i0 = i1 = static_cast<int>(i < t.in - 1 ? i : t.in - 1);
    lam = A(0);
  } else {
    const A dd = static_cast<A>(d);
    A src;
    if (t.align) {
      src = mul_rn(t.scale, dd);
    } else {
      src = sub_rn(mul_rn(t.scale, add_rn(dd, A(0.5))), A(0.5));
      src = src < A(0) ? A(0) : src;
    }
    const int64_t f = static_cast<int64_t>(floor(src));
    const int64_t c0 = f < t.in - 1 ? f : t.in - 1;
    A l = sub_rn(src, static_cast<A>(c0));
    l = l < A(0) ? A(0) : l;
    lam = A(1) < l ? A(1) : l;
    i0 = static_cast<int>(c0);
    i1 = static_cast<int>(c0 + 1 < t.in - 1 ? c0 + 1 : t.in - 1);
  }
}

// Tables of one axis in device memory.
template <class A>
struct Axis {
  int* i0 = nullptr;  // [out]
  int* i1 = nullptr;  // [out]
  A* lam = nullptr;   // [out]
  int* lo = nullptr;  // [in]: output indices [lo, hi) read input index q (0, 0: none)
  int* hi = nullptr;  // [in]
};

// One thread per output index d: its taps, and the run ends of the inputs it reads. The outputs
// reading q form one run (i0, i1 are non-decreasing in d, and i1 is i0 or i0 + 1), so lo[q] is
// written only by the run's first d (whose predecessor does not read q) and hi[q] only by its last:
// one writer per entry. Entries of unread inputs keep the zeros set before the launch.
template <Mode M, class A>
__global__ void __launch_bounds__(rt::kBlockThreads) axis_kernel(TapParams<A> t, Axis<A> ax) {
  for (int64_t d = rt::grid_index(); d < t.out; d += rt::grid_stride()) {
    int i0, i1, p0 = -1, p1 = -1, n0 = -1, n1 = -1;
    A lam, unused;
    tap<M>(d, t, i0, i1, lam);
    ax.i0[d] = i0;
    ax.i1[d] = i1;
    ax.lam[d] = lam;
    if (d > 0) tap<M>(d - 1, t, p0, p1, unused);
    if (d + 1 < t.out) tap<M>(d + 1, t, n0, n1, unused);
    const int q2[2] = {i0, i1};
#pragma unroll
    for (int k = 0; k < 2; ++k) {  // i0 == i1 writes the same values twice, from this thread
      const int q = q2[k];
      if (p0 != q && p1 != q) ax.lo[q] = static_cast<int>(d);
      if (n0 != q && n1 != q) ax.hi[q] = static_cast<int>(d + 1);
    }
  }
}

// Both axes' tables in one temporary; the Tensor keeps the memory alive (the caching allocator
// frees it stream-ordered).
template <class A>
struct Axes {
  Tensor buf;
  Axis<A> h, w;
};

template <class A>
size_t axis_bytes(int64_t in, int64_t out) {
  auto up8 = [](size_t b) { return (b + 7) / 8 * 8; };
  return 2 * up8(static_cast<size_t>(out) * 4) + up8(static_cast<size_t>(out) * sizeof(A)) +
         2 * up8(static_cast<size_t>(in) * 4);
}

template <class A>
Axis<A> carve_axis(char*& p, int64_t in, int64_t out) {
  auto take = [&](size_t bytes) {
    char* r = p;
    p += (bytes + 7) / 8 * 8;
    return r;
  };
  Axis<A> a;
  a.i0 = reinterpret_cast<int*>(take(static_cast<size_t>(out) * 4));
  a.i1 = reinterpret_cast<int*>(take(static_cast<size_t>(out) * 4));
  a.lam = reinterpret_cast<A*>(take(static_cast<size_t>(out) * sizeof(A)));
  a.lo = reinterpret_cast<int*>(take(static_cast<size_t>(in) * 4));
  a.hi = reinterpret_cast<int*>(take(static_cast<size_t>(in) * 4));
  return a;
}

template <Mode M, class A>
Axes<A> make_axes(int64_t H, int64_t Ho, int64_t W, int64_t Wo, bool align, const Device& dev_,
                  cudaStream_t s, int dev) {
  const size_t bytes = axis_bytes<A>(H, Ho) + axis_bytes<A>(W, Wo);
  Axes<A> ax;
  ax.buf = Tensor::empty({static_cast<int64_t>(bytes / 8)}, DType::I64, dev_);
  char* p = static_cast<char*>(ax.buf.raw_data());
  PSVAE_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, s));  // the runs' "no reader" default
  ax.h = carve_axis<A>(p, H, Ho);
  ax.w = carve_axis<A>(p, W, Wo);
  PSVAE_LAUNCH(grid_of(Ho, dev), rt::kBlockThreads, 0, s, axis_kernel<M, A>)
  (tap_params<A>(H, Ho, align), ax.h);
  PSVAE_LAUNCH(grid_of(Wo, dev), rt::kBlockThreads, 0, s, axis_kernel<M, A>)
  (tap_params<A>(W, Wo, align), ax.w);
  return ax;
}

// ---- upsampling: forward ------------------------------------------------------------------------
// y[p, oh, ow]: nearest copies x[p, i0(oh), i0(ow)] (exact); bilinear, as the CPU,
//   top = (1 - lw) x[i0h, i0w] + lw x[i0h, i1w], bot likewise on row i1h,
//   y = (1 - lh) top + lh bot.
// Bytes: 2 x (x and y once each); x rows are re-read from L1/L2 by neighbouring outputs.
template <Mode M, class T>
__global__ void __launch_bounds__(rt::kBlockThreads)
    upsample_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, Axis<typename Math<T>::Acc> ah,
                        Axis<typename Math<T>::Acc> aw, int64_t H, int64_t W, Div Ho, Div Wo,
                        int64_t n, bool k32) {
  using A = typename Math<T>::Acc;
  for (int64_t u = rt::grid_index(); u < n; u += rt::grid_stride()) {
    int64_t p, oh, ow;
    decode(u, Ho, Wo, k32, p, oh, ow);
    const T* xp = x + p * H * W;
    if constexpr (M == Mode::kNearest) {
      y[u] = xp[static_cast<int64_t>(ah.i0[oh]) * W + aw.i0[ow]];
    } else {
      const T* r0 = xp + static_cast<int64_t>(ah.i0[oh]) * W;
      const T* r1 = xp + static_cast<int64_t>(ah.i1[oh]) * W;
      const int w0 = aw.i0[ow], w1 = aw.i1[ow];
      const A lw = aw.lam[ow], lh = ah.lam[oh];
      const A mw = sub_rn(A(1), lw), mh = sub_rn(A(1), lh);
      const A top = add_rn(mul_rn(mw, Math<T>::load(r0[w0])), mul_rn(lw, Math<T>::load(r0[w1])));
      const A bot = add_rn(mul_rn(mw, Math<T>::load(r1[w0])), mul_rn(lw, Math<T>::load(r1[w1])));
      y[u] = Math<T>::store(add_rn(mul_rn(mh, top), mul_rn(lh, bot)));
    }
  }
}

// ---- upsampling: backward (gather) --------------------------------------------------------------
// gx[p, ih, iw] = the sum over the output pixels (oh, ow) of the runs of ih and iw, in row-major
// order, of the contributions the CPU scatters: nearest gy; bilinear, per (oh, ow) and in the CPU's
// order r0[i0w], r0[i1w], r1[i0w], r1[i1w] (r0 = row i0h, r1 = row i1h), those landing on (ih, iw):
//   (1 - lw) top, lw top, (1 - lw) bot, lw bot   with top = (1 - lh) g, bot = lh g.
template <Mode M, class T>
__global__ void __launch_bounds__(rt::kBlockThreads)
    upsample_bwd_kernel(const T* __restrict__ gy, T* __restrict__ gx,
                        Axis<typename Math<T>::Acc> ah, Axis<typename Math<T>::Acc> aw, int64_t Ho,
                        int64_t Wo, Div H, Div W, int64_t n, bool k32) {
  using A = typename Math<T>::Acc;
  for (int64_t u = rt::grid_index(); u < n; u += rt::grid_stride()) {
    int64_t p, ih, iw;
    decode(u, H, W, k32, p, ih, iw);
    const T* gp = gy + p * Ho * Wo;
    const int oh0 = ah.lo[ih], oh1 = ah.hi[ih], ow0 = aw.lo[iw], ow1 = aw.hi[iw];
    A acc = A(0);
    for (int oh = oh0; oh < oh1; ++oh) {
      const T* grow = gp + static_cast<int64_t>(oh) * Wo;
      if constexpr (M == Mode::kNearest) {
        for (int ow = ow0; ow < ow1; ++ow) acc = add_rn(acc, Math<T>::load(grow[ow]));
      } else {
        const bool on0 = ah.i0[oh] == ih, on1 = ah.i1[oh] == ih;
        const A lh = ah.lam[oh], mh = sub_rn(A(1), lh);
        for (int ow = ow0; ow < ow1; ++ow) {
          const A g = Math<T>::load(grow[ow]);
          const A top = mul_rn(mh, g), bot = mul_rn(lh, g);
          const bool at0 = aw.i0[ow] == iw, at1 = aw.i1[ow] == iw;
          const A lw = aw.lam[ow], mw = sub_rn(A(1), lw);
          if (on0 && at0) acc = add_rn(acc, mul_rn(mw, top));
          if (on0 && at1) acc = add_rn(acc, mul_rn(lw, top));
          if (on1 && at0) acc = add_rn(acc, mul_rn(mw, bot));
          if (on1 && at1) acc = add_rn(acc, mul_rn(lw, bot));
        }
      }
    }
    gx[u] = Math<T>::store(acc);
  }
}

template <Mode M, bool kBwd>
void upsample_cuda(const OpCall& c, const char* op) {
  const Tensor &in = c.in.at(0), &out = c.out.at(0);
  check_pair(op, in, out);
  if (out.numel() == 0) return;
  // Forward: x (H, W) -> y (Ho, Wo). Backward: gy (Ho, Wo) -> gx (H, W).
  const Tensor& small = kBwd ? out : in;
  const Tensor& big = kBwd ? in : out;
  const int64_t H = small.size(2), W = small.size(3), Ho = big.size(2), Wo = big.size(3);
  if (H == 0 || W == 0)
    throw std::invalid_argument(std::string(op) + ": empty source plane " + small.str());
  const bool align = c.ints[0] != 0;
  dispatch_float(out.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Math<T>::Acc;
    launch_on(out.device(), [&](cudaStream_t s, int dev) {
      const Axes<A> ax = make_axes<M, A>(H, Ho, W, Wo, align, out.device(), s, dev);
      const int64_t n = out.numel();
      const bool k32 = n <= INT32_MAX;
      const T* src = static_cast<const T*>(in.raw_data());
      T* dst = static_cast<T*>(out.raw_data());
      if constexpr (kBwd)
        PSVAE_LAUNCH(grid_of(n, dev), rt::kBlockThreads, 0, s, upsample_bwd_kernel<M, T>)
      (src, dst, ax.h, ax.w, Ho, Wo, make_div(H), make_div(W), n, k32);
      else PSVAE_LAUNCH(grid_of(n, dev), rt::kBlockThreads, 0, s, upsample_fwd_kernel<M, T>)(
          src, dst, ax.h, ax.w, H, W, make_div(Ho), make_div(Wo), n, k32);
    });
  });
}

void upsample_nearest_cuda(const OpCall& c) {
  upsample_cuda<Mode::kNearest, false>(c, "upsample_nearest");
}
void upsample_nearest_bwd_cuda(const OpCall& c) {
  upsample_cuda<Mode::kNearest, true>(c, "upsample_nearest_bwd");
}
void upsample_bilinear_cuda(const OpCall& c) {
  upsample_cuda<Mode::kBilinear, false>(c, "upsample_bilinear");
}
void upsample_bilinear_bwd_cuda(const OpCall& c) {
  upsample_cuda<Mode::kBilinear, true>(c, "upsample_bilinear_bwd");
}

// ---- pooling ------------------------------------------------------------------------------------
struct Pool {
  int64_t H, W, Ho, Wo, kh, kw, sh, sw, ph, pw;
};

// x (H, W) pooled to y (Ho, Wo) with ints kh, kw, sh, sw, ph, pw.
Pool pool_of(const char* op, const Tensor& x, const Tensor& y, const OpCall& c) {
  check_pair(op, x, y);
  Pool g{x.size(2), x.size(3), y.size(2), y.size(3), c.ints[0],
         c.ints[1], c.ints[2], c.ints[3], c.ints[4], c.ints[5]};
  if (g.kh < 1 || g.kw < 1 || g.sh < 1 || g.sw < 1 || g.ph < 0 || g.pw < 0)
    throw std::invalid_argument(std::string(op) + ": kernel " + std::to_string(g.kh) + "x" +
                                std::to_string(g.kw) + ", stride " + std::to_string(g.sh) + "x" +
                                std::to_string(g.sw) + ", padding " + std::to_string(g.ph) + "x" +
                                std::to_string(g.pw) + " (need kernel, stride >= 1, pad >= 0)");
  return g;
}

// Window of output (oh, ow) clipped to the input: rows [hs, he), columns [ws, we).
struct Window {
  int64_t hs, he, ws, we;
};
__device__ __forceinline__ Window window(const Pool& g, int64_t oh, int64_t ow) {
  const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  return {h0 > 0 ? h0 : 0, h0 + g.kh < g.H ? h0 + g.kh : g.H, w0 > 0 ? w0 : 0,
          w0 + g.kw < g.W ? w0 + g.kw : g.W};
}

// Outputs along one axis whose window covers input index i: o with o s - p <= i <= o s - p + k - 1,
// i.e. [ceil((i + p - k + 1) / s), floor((i + p) / s)] clipped to [0, out).
__device__ __forceinline__ void covering(int64_t i, int64_t k, int64_t s, int64_t p, int64_t out,
                                         int64_t& lo, int64_t& hi) {
  const int64_t a = i + p - k + 1;
  lo = a <= 0 ? 0 : (a + s - 1) / s;
  const int64_t h = (i + p) / s + 1;  // i + p >= 0
  hi = h < out ? h : out;
}

// avg forward: the CPU's double sum over the clipped window (rows, then columns), times the
// double 1 / (kh kw) (padding counted), rounded once to T. Reads kh kw inputs per output (from
// L1/L2 after the first), writes one.
template <class T>
__global__ void __launch_bounds__(rt::kBlockThreads)
    avg_pool_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, Pool g, Div Ho, Div Wo,
                        int64_t n, bool k32, double inv) {
  for (int64_t u = rt::grid_index(); u < n; u += rt::grid_stride()) {
    int64_t p, oh, ow;
    decode(u, Ho, Wo, k32, p, oh, ow);
    const T* xp = x + p * g.H * g.W;
    const Window w = window(g, oh, ow);
    double s = 0;
    for (int64_t ih = w.hs; ih < w.he; ++ih)
      for (int64_t iw = w.ws; iw < w.we; ++iw)
        s = __dadd_rn(s, static_cast<double>(Math<T>::load(xp[ih * g.W + iw])));
    y[u] = from_double<T>(__dmul_rn(s, inv));
  }
}

// avg backward: gx[ih, iw] = sum over the covering windows, row-major, of gy * inv in T (the CPU's
// `T v = gy * inv; gx += v`).
template <class T>
__global__ void __launch_bounds__(rt::kBlockThreads)
    avg_pool_bwd_kernel(const T* __restrict__ gy, T* __restrict__ gx, Pool g, Div H, Div W,
                        int64_t n, bool k32, typename Math<T>::Acc inv) {
  using A = typename Math<T>::Acc;
  for (int64_t u = rt::grid_index(); u < n; u += rt::grid_stride()) {
    int64_t p, ih, iw;
    decode(u, H, W, k32, p, ih, iw);
    int64_t oh0, oh1, ow0, ow1;
    covering(ih, g.kh, g.sh, g.ph, g.Ho, oh0, oh1);
    covering(iw, g.kw, g.sw, g.pw, g.Wo, ow0, ow1);
    const T* gp = gy + p * g.Ho * g.Wo;
    A acc = A(0);
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t ow = ow0; ow < ow1; ++ow)
        acc = add_rn(acc, mul_rn(Math<T>::load(gp[oh * g.Wo + ow]), inv));
    gx[u] = Math<T>::store(acc);
  }
}

// max forward: best = -inf, arg = first window pixel; take v when v > best or v is NaN (ATen's
// rule: the first maximum wins ties, a NaN propagates). Values move unchanged (bf16 compares in
// f32, exactly).
template <class T>
__global__ void __launch_bounds__(rt::kBlockThreads)
    max_pool_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t* __restrict__ am,
                        Pool g, Div Ho, Div Wo, int64_t n, bool k32) {
  using A = typename Math<T>::Acc;
  for (int64_t u = rt::grid_index(); u < n; u += rt::grid_stride()) {
    int64_t p, oh, ow;
    decode(u, Ho, Wo, k32, p, oh, ow);
    const T* xp = x + p * g.H * g.W;
    const Window w = window(g, oh, ow);
    A best = -std::numeric_limits<A>::infinity();
    int64_t arg = w.hs * g.W + w.ws;
    for (int64_t ih = w.hs; ih < w.he; ++ih)
      for (int64_t iw = w.ws; iw < w.we; ++iw) {
        const A v = Math<T>::load(xp[ih * g.W + iw]);
        if (v > best || isnan(v)) {
          best = v;
          arg = ih * g.W + iw;
        }
      }
    y[u] = Math<T>::store(best);
    am[u] = arg;
  }
}

template <bool kMax>
void pool_fwd_cuda(const OpCall& c, const char* op) {
  const Tensor &x = c.in.at(0), &y = c.out.at(0);
  const Pool g = pool_of(op, x, y, c);
  if (kMax) {
    const Tensor& am = c.out.at(1);
    if (am.dtype() != DType::I64 || am.shape() != y.shape())
      throw std::invalid_argument(std::string(op) + ": argmax " + am.str() + " must be i64 of " +
                                  y.shape().str());
  }
  if (y.numel() == 0) return;
  const int64_t n = y.numel();
  const bool k32 = n <= INT32_MAX;
  dispatch_float(y.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    launch_on(y.device(), [&](cudaStream_t s, int dev) {
      const T* px = static_cast<const T*>(x.raw_data());
      T* py = static_cast<T*>(y.raw_data());
      if constexpr (kMax)
        PSVAE_LAUNCH(grid_of(n, dev), rt::kBlockThreads, 0, s, max_pool_fwd_kernel<T>)
      (px, py, static_cast<int64_t*>(c.out.at(1).raw_data()), g, make_div(g.Ho), make_div(g.Wo), n,
       k32);
      else PSVAE_LAUNCH(grid_of(n, dev), rt::kBlockThreads, 0, s, avg_pool_fwd_kernel<T>)(
          px, py, g, make_div(g.Ho), make_div(g.Wo), n, k32,
          1.0 / static_cast<double>(g.kh * g.kw));
    });
  });
}

void avg_pool2d_cuda(const OpCall& c) { pool_fwd_cuda<false>(c, "avg_pool2d"); }
void max_pool2d_cuda(const OpCall& c) { pool_fwd_cuda<true>(c, "max_pool2d"); }

void avg_pool2d_bwd_cuda(const OpCall& c) {
  const Tensor &gy = c.in.at(0), &gx = c.out.at(0);
  const Pool g = pool_of("avg_pool2d_bwd", gx, gy, c);
  if (gx.numel() == 0) return;
  const int64_t n = gx.numel();
  dispatch_float(gx.dtype(), "avg_pool2d_bwd", [&](auto tag) {
    using T = decltype(tag);
    using A = typename Math<T>::Acc;
    launch_on(gx.device(), [&](cudaStream_t s, int dev) {
      PSVAE_LAUNCH(grid_of(n, dev), rt::kBlockThreads, 0, s, avg_pool_bwd_kernel<T>)
      (static_cast<const T*>(gy.raw_data()), static_cast<T*>(gx.raw_data()), g, make_div(g.H),
       make_div(g.W), n, n <= INT32_MAX, A(1) / static_cast<A>(g.kh * g.kw));
    });
  });
}

// ---- max_pool2d backward ------------------------------------------------------------------------
// 1. bounds: rmin[oh], rmax[oh] = min, max argmax row over every plane and column of output row oh;
//    cmin[ow], cmax[ow] likewise for columns. Integer min/max (order-free, so deterministic): a
//    block reduces into shared memory (a warp whose 32 outputs share one row first reduces with
//    __reduce_min_sync, so the row entries see one atomic per warp), then flushes to global with
//    one atomic per entry. Argmax entries outside the plane are skipped (they land nowhere).
// 2. runs: hlo[ih], hhi[ih] = first and last + 1 output row oh with rmin[oh] <= ih <= rmax[oh]
//    (every output whose argmax is on row ih lies in it); likewise for columns.
// 3. gather: gx[p, ih, iw] = sum, over (oh, ow) in the runs in row-major order, of gy where
//    argmax == ih W + iw: the CPU's scatter order.
constexpr int kNoRow = INT_MAX;

__global__ void __launch_bounds__(rt::kBlockThreads)
    bounds_init_kernel(int* __restrict__ b, int64_t rows, int64_t cols) {
  // Layout: rmin[rows], rmax[rows], cmin[cols], cmax[cols]; min slots start high, max slots low.
  for (int64_t i = rt::grid_index(); i < 2 * (rows + cols); i += rt::grid_stride()) {
    const bool is_min = i < rows || (i >= 2 * rows && i < 2 * rows + cols);
    b[i] = is_min ? kNoRow : -1;
  }
}

__global__ void __launch_bounds__(rt::kBlockThreads)
    argmax_bounds_kernel(const int64_t* __restrict__ am, int64_t n, Div Ho, Div Wo, int64_t W,
                         int64_t HW, int* __restrict__ gb, bool k32) {
  PSVAE_DYNAMIC_SMEM(sb_raw);
  int* sb = reinterpret_cast<int*>(sb_raw);
  const int rows = static_cast<int>(Ho.d), cols = static_cast<int>(Wo.d);
  int *rmin = sb, *rmax = sb + rows, *cmin = sb + 2 * rows, *cmax = sb + 2 * rows + cols;
  for (int i = threadIdx.x; i < rows; i += blockDim.x) {
    rmin[i] = kNoRow;
    rmax[i] = -1;
  }
  for (int i = threadIdx.x; i < cols; i += blockDim.x) {
    cmin[i] = kNoRow;
    cmax[i] = -1;
  }
  __syncthreads();  // the slots are set before any thread updates them
  const unsigned kAll = 0xffffffffu;
  const int lane = threadIdx.x & 31;
  // The loop is per warp: every lane runs the same iterations, so the warp intrinsics below see
  // all 32 lanes (lanes past n just contribute nothing).
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x + (threadIdx.x & ~31u);
       base < n; base += step) {
    const int64_t u = base + lane;
    int oh = -1, ow = -1, ah = 0, aw = 0;
    bool valid = false;
    if (u < n) {
      int64_t p, r, c;
      decode(u, Ho, Wo, k32, p, r, c);
      oh = static_cast<int>(r);
      ow = static_cast<int>(c);
      const int64_t a = am[u];
      if (a >= 0 && a < HW) {
        valid = true;
        ah = static_cast<int>(a / W);
        aw = static_cast<int>(a - static_cast<int64_t>(ah) * W);
      }
    }
    const int oh_lane0 = __shfl_sync(kAll, oh, 0);  // lane 0 has u = base < n
    if (__all_sync(kAll, u >= n || oh == oh_lane0)) {
      const int lo = __reduce_min_sync(kAll, valid ? ah : kNoRow);
      const int hi = __reduce_max_sync(kAll, valid ? ah : -1);
      if (lane == 0 && lo <= hi) {
        atomicMin(&rmin[oh_lane0], lo);
        atomicMax(&rmax[oh_lane0], hi);
      }
    } else if (valid) {
      atomicMin(&rmin[oh], ah);
      atomicMax(&rmax[oh], ah);
    }
    if (valid) {
      atomicMin(&cmin[ow], aw);
      atomicMax(&cmax[ow], aw);
    }
  }
  __syncthreads();  // every update of this block is in shared memory before the flush
  for (int i = threadIdx.x; i < rows; i += blockDim.x)
    if (rmin[i] <= rmax[i]) {
      atomicMin(&gb[i], rmin[i]);
      atomicMax(&gb[rows + i], rmax[i]);
    }
  for (int i = threadIdx.x; i < cols; i += blockDim.x)
    if (cmin[i] <= cmax[i]) {
      atomicMin(&gb[2 * rows + i], cmin[i]);
      atomicMax(&gb[2 * rows + cols + i], cmax[i]);
    }
}

// Thread q < H: the run of output rows for input row q; thread H + q: the run of output columns
// for input column q. A linear scan over the output rows (Ho of them): H Ho steps in all.
__global__ void __launch_bounds__(rt::kBlockThreads)
    argmax_runs_kernel(const int* __restrict__ gb, int64_t Ho, int64_t Wo, int64_t H, int64_t W,
                       int* __restrict__ runs) {
  for (int64_t t = rt::grid_index(); t < H + W; t += rt::grid_stride()) {
    const bool is_row = t < H;
    const int q = static_cast<int>(is_row ? t : t - H);
    const int64_t O = is_row ? Ho : Wo;
    const int* bmin = is_row ? gb : gb + 2 * Ho;
    const int* bmax = bmin + O;
    int lo = 0, hi = 0;
    bool found = false;
    for (int o = 0; o < O; ++o)
      if (bmin[o] <= q && q <= bmax[o]) {
        if (!found) lo = o;
        found = true;
        hi = o + 1;
      }
    // Layout: hlo[H], hhi[H], wlo[W], whi[W].
    int* base = is_row ? runs : runs + 2 * H;
    const int64_t len = is_row ? H : W;
    base[q] = lo;
    base[len + q] = hi;
  }
}

template <class T>
__global__ void __launch_bounds__(rt::kBlockThreads)
    max_pool_bwd_kernel(const T* __restrict__ gy, const int64_t* __restrict__ am,
                        T* __restrict__ gx, const int* __restrict__ runs, int64_t Ho, int64_t Wo,
                        Div H, Div W, int64_t n, bool k32) {
  using A = typename Math<T>::Acc;
  const int* hlo = runs;
  const int* hhi = runs + H.d;
  const int* wlo = runs + 2 * H.d;
  const int* whi = wlo + W.d;
  for (int64_t u = rt::grid_index(); u < n; u += rt::grid_stride()) {
    int64_t p, ih, iw;
    decode(u, H, W, k32, p, ih, iw);
    const int64_t target = ih * W.d + iw;
    const int64_t P = Ho * Wo;
    const T* gp = gy + p * P;
    const int64_t* ap = am + p * P;
    const int oh1 = hhi[ih], ow0 = wlo[iw], ow1 = whi[iw];
    A acc = A(0);
    for (int oh = hlo[ih]; oh < oh1; ++oh)
      for (int ow = ow0; ow < ow1; ++ow) {
        const int64_t i = static_cast<int64_t>(oh) * Wo + ow;
        if (ap[i] == target) acc = add_rn(acc, Math<T>::load(gp[i]));
      }
    gx[u] = Math<T>::store(acc);
  }
}

void max_pool2d_bwd_cuda(const OpCall& c) {
  const char* op = "max_pool2d_bwd";
  const Tensor &gy = c.in.at(0), &am = c.in.at(1), &gx = c.out.at(0);
  check_pair(op, gx, gy);
  if (am.dtype() != DType::I64 || am.shape() != gy.shape())
    throw std::invalid_argument(std::string(op) + ": argmax " + am.str() + " must be i64 of gy's " +
                                gy.shape().str());
  if (gx.numel() == 0) return;
  const int64_t H = gx.size(2), W = gx.size(3), Ho = gy.size(2), Wo = gy.size(3);
  const int64_t n_out = gy.numel(), n = gx.numel();
  dispatch_float(gx.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    launch_on(gx.device(), [&](cudaStream_t s, int dev) {
      if (n_out == 0) {  // no output gradient: gx = 0
        PSVAE_CUDA_CHECK(cudaMemsetAsync(gx.raw_data(), 0, gx.nbytes(), s));
        return;
      }
      // Bounds (2 (Ho + Wo) ints) then runs (2 (H + W) ints) in one temporary.
      const int64_t nb = 2 * (Ho + Wo), nr = 2 * (H + W);
      Tensor tmp = Tensor::empty({(nb + nr + 1) / 2}, DType::I64, gx.device());
      int* bounds = static_cast<int*>(tmp.raw_data());
      int* runs = bounds + nb;
      const size_t smem = static_cast<size_t>(nb) * sizeof(int);
      int optin = 0;
      PSVAE_CUDA_CHECK(
          cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
      if (smem > static_cast<size_t>(optin))
        unsupported(op, "pooled maps with Ho + Wo above " + std::to_string(optin / 8) + " (gy " +
                            gy.str() + ")");
      if (smem > 48 * 1024)
        PSVAE_CUDA_CHECK(cudaFuncSetAttribute(argmax_bounds_kernel,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(smem)));
      PSVAE_LAUNCH(grid_of(nb, dev), rt::kBlockThreads, 0, s, bounds_init_kernel)(bounds, Ho, Wo);
      // Each block pays 2 (Ho + Wo) shared slots to set and flush: a few blocks per SM suffice
      // for the single read of argmax.
      const unsigned gridb = static_cast<unsigned>(std::min<int64_t>(
          (n_out + rt::kBlockThreads - 1) / rt::kBlockThreads, rt::sm_count(dev) * 2));
      PSVAE_LAUNCH(gridb, rt::kBlockThreads, smem, s, argmax_bounds_kernel)
      (static_cast<const int64_t*>(am.raw_data()), n_out, make_div(Ho), make_div(Wo), W, H * W,
       bounds, n_out <= INT32_MAX);
      PSVAE_LAUNCH(grid_of(H + W, dev), rt::kBlockThreads, 0, s, argmax_runs_kernel)
      (bounds, Ho, Wo, H, W, runs);
      PSVAE_LAUNCH(grid_of(n, dev), rt::kBlockThreads, 0, s, max_pool_bwd_kernel<T>)
      (static_cast<const T*>(gy.raw_data()), static_cast<const int64_t*>(am.raw_data()),
       static_cast<T*>(gx.raw_data()), runs, Ho, Wo, make_div(H), make_div(W), n, n <= INT32_MAX);
    });
  });
}

}  // namespace

void register_spatial(OpTable& t) {
  t[Op::upsample_nearest].cuda = &upsample_nearest_cuda;
  t[Op::upsample_nearest_bwd].cuda = &upsample_nearest_bwd_cuda;
  t[Op::upsample_bilinear].cuda = &upsample_bilinear_cuda;
  t[Op::upsample_bilinear_bwd].cuda = &upsample_bilinear_bwd_cuda;
  t[Op::avg_pool2d].cuda = &avg_pool2d_cuda;
  t[Op::avg_pool2d_bwd].cuda = &avg_pool2d_bwd_cuda;
  t[Op::max_pool2d].cuda = &max_pool2d_cuda;
  t[Op::max_pool2d_bwd].cuda = &max_pool2d_bwd_cuda;
}

}  // namespace psvae::kernels::cuda
