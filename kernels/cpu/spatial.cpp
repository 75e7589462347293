// CPU kernels: spatial family (NCHW): conv2d as im2col + GEMM, nearest / bilinear upsampling,
// average and max pooling, each with its backward.
//
// Threading: every op splits independent outputs only: conv over samples, the others over
// (n, c) planes. Scatter-style backwards (col2im, upsample, pooling) add into one plane serially
// in a fixed order, and conv2d's weight gradient is a sum of per-sample partials taken in sample
// order, so every result is bit-identical for any thread count.
//
// Eigen is built single-threaded, as in linalg.cpp (kernels/cpu/eigen_util.h says why).
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/eigen_util.h"

namespace psvae::kernels::cpu {

namespace {

// ---- conv2d ------------------------------------------------------------------------------------

// Geometry shared by the forward and backward of one conv2d call.
struct ConvGeom {
  int64_t N, C, H, W, O, kh, kw, Ho, Wo, sh, sw, ph, pw;
  int64_t K() const { return C * kh * kw; }  // GEMM depth: one column of im2col
  int64_t P() const { return Ho * Wo; }      // output pixels per sample
  // A 1x1 stride-1 unpadded conv is a plain GEMM on the sample's (C, H*W) matrix: no im2col.
  bool pointwise() const { return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
};

ConvGeom conv_geom(const Tensor& x, const Tensor& w, const Tensor& y, const OpCall& c) {
  return {x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(2), w.size(3),
          y.size(2), y.size(3), c.ints[0], c.ints[1], c.ints[2], c.ints[3]};
}

// Output columns ow in [lo, hi) read input column iw = ow*s - p + j inside [0, W); the rest land
// in the padding. Computing the range once per (j) row lets the copy loops run without a bounds
// test per element (the per-element test made im2col ~18% of a demo PS-VAE step).
struct ColRange {
  int64_t lo, hi;
};

ColRange valid_cols(int64_t Wo, int64_t W, int64_t s, int64_t p, int64_t j) {
  // lo = ceil((p - j) / s) clamped at 0, hi = floor((W - 1 + p - j) / s) + 1 clamped at Wo;
  // floor division written for possibly negative numerators.
  auto floordiv = [](int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
  int64_t lo = std::max<int64_t>(0, -floordiv(j - p, s));
  int64_t hi = std::min<int64_t>(Wo, floordiv(W - 1 + p - j, s) + 1);
  return {lo, std::max(lo, hi)};
}

// col (K, P): row (ci, i, j) holds x[ci, oh*sh - ph + i, ow*sw - pw + j] for every output pixel
// (oh, ow), zero where that lands in the padding.
template <class T>
void im2col(const T* x, const ConvGeom& g, T* col) {
  for (int64_t ci = 0; ci < g.C; ++ci)
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        T* row = col + ((ci * g.kh + i) * g.kw + j) * g.P();
        const T* plane = x + ci * g.H * g.W;
        const ColRange r = valid_cols(g.Wo, g.W, g.sw, g.pw, j);
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          int64_t ih = oh * g.sh - g.ph + i;
          T* out = row + oh * g.Wo;
          if (ih < 0 || ih >= g.H) {
            std::fill(out, out + g.Wo, T(0));
            continue;
          }
          std::fill(out, out + r.lo, T(0));
          const T* src = plane + ih * g.W;
          const int64_t off = j - g.pw;  // iw = ow * sw + off
          if (g.sw == 1)
            std::copy(src + r.lo + off, src + r.hi + off, out + r.lo);
          else
            for (int64_t ow = r.lo; ow < r.hi; ++ow) out[ow] = src[ow * g.sw + off];
          std::fill(out + r.hi, out + g.Wo, T(0));
        }
      }
}

// The transpose of im2col: gx = 0, then every column entry is added back to the pixel it was read
// from, in im2col's order (so the sum order is fixed).
template <class T>
void col2im(const T* col, const ConvGeom& g, T* gx) {
  std::fill(gx, gx + g.C * g.H * g.W, T(0));
  for (int64_t ci = 0; ci < g.C; ++ci)
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        const T* row = col + ((ci * g.kh + i) * g.kw + j) * g.P();
        T* plane = gx + ci * g.H * g.W;
        const ColRange r = valid_cols(g.Wo, g.W, g.sw, g.pw, j);
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          int64_t ih = oh * g.sh - g.ph + i;
          if (ih < 0 || ih >= g.H) continue;
          T* dst = plane + ih * g.W;
          const T* src = row + oh * g.Wo;
          const int64_t off = j - g.pw;  // iw = ow * sw + off
          if (g.sw == 1)
            for (int64_t ow = r.lo; ow < r.hi; ++ow) dst[ow + off] += src[ow];
          else
            for (int64_t ow = r.lo; ow < r.hi; ++ow) dst[ow * g.sw + off] += src[ow];
        }
      }
}

// Per-sample GEMMs go parallel above this many multiply-adds in the whole call (2^20, a few
// hundred microseconds serial); below it the fork/join is a visible share of the time.
constexpr int64_t kConvParallelWork = 1 << 20;

// y[n] (O, P) = w (O, K) @ col(x[n]) (K, P) + b.
void conv2d_cpu(const OpCall& c) {
  const Tensor &x = c.in[0], &w = c.in[1], &y = c.out[0];
  const Tensor* b = c.in.size() > 2 && c.in[2].defined() ? &c.in[2] : nullptr;
  ConvGeom g = conv_geom(x, w, y, c);
  dispatch_float(x.dtype(), "conv2d", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    const T* pb = b ? b->data<T>() : nullptr;
    T* py = y.data<T>();
    ConstMap<T> wm(w.data<T>(), g.O, g.K());
    bool par = g.N > 1 && g.N * g.O * g.K() * g.P() > kConvParallelWork;
#pragma omp parallel if (par)
    {
      // One column buffer per thread, not per sample, and not zero-filled: im2col writes it all.
      std::unique_ptr<T[]> col(g.pointwise() ? nullptr : new T[g.K() * g.P()]);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < g.N; ++n) {
        const T* xn = px + n * g.C * g.H * g.W;
        if (col) im2col(xn, g, col.get());
        ConstMap<T> cm(col ? col.get() : xn, g.K(), g.P());
        MutMap<T> ym(py + n * g.O * g.P(), g.O, g.P());
        ym.noalias() = wm * cm;
        if (pb)
          for (int64_t o = 0; o < g.O; ++o) ym.row(o).array() += pb[o];
      }
    }
  });
}

// (gy, x, w) -> gx, gw, [gb].
//   gx[n]  = col2im(w^T (K, O) @ gy[n] (O, P))
//   gw     = sum_n gy[n] (O, P) @ col(x[n])^T (P, K)   per-sample partials, summed in sample order
//   gb[o]  = sum over n, p of gy[n, o, p]               serial per o, in double
// The partials are made in chunks of kGwChunk samples to bound memory (a 512->512 3x3 conv has
// O*K = 2.4M weights, so a chunk of 8 holds 75 MB in f32); chunking does not change the order in
// which partials are added, so the result does not depend on it either.
constexpr int64_t kGwChunk = 8;

void conv2d_bwd_cpu(const OpCall& c) {
  const Tensor &gy = c.in[0], &x = c.in[1], &w = c.in[2];
  const Tensor &gx = c.out[0], &gw = c.out[1];
  const Tensor* gb = c.out.size() > 2 && c.out[2].defined() ? &c.out[2] : nullptr;
  ConvGeom g = conv_geom(x, w, gy, c);
  dispatch_float(x.dtype(), "conv2d_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T* pgy = gy.data<T>();
    const T* px = x.data<T>();
    T* pgx = gx.data<T>();
    ConstMap<T> wm(w.data<T>(), g.O, g.K());
    const int64_t OK = g.O * g.K();
    bool par = g.N > 1 && g.N * OK * g.P() > kConvParallelWork;

    std::vector<double> gw_acc(static_cast<size_t>(OK), 0.0);
    std::vector<T> partial(static_cast<size_t>(std::min(g.N, kGwChunk) * OK));
    for (int64_t n0 = 0; n0 < g.N; n0 += kGwChunk) {
      int64_t nb = std::min(kGwChunk, g.N - n0);
#pragma omp parallel if (par)
      {
        std::unique_ptr<T[]> col(g.pointwise() ? nullptr : new T[g.K() * g.P()]);
#pragma omp for schedule(static)
        for (int64_t k = 0; k < nb; ++k) {
          int64_t n = n0 + k;
          const T* xn = px + n * g.C * g.H * g.W;
          ConstMap<T> gym(pgy + n * g.O * g.P(), g.O, g.P());
          MutMap<T> gwn(partial.data() + k * OK, g.O, g.K());
          if (!col) {  // pointwise: x[n] is its own column matrix
            ConstMap<T> xm(xn, g.C, g.H * g.W);
            gwn.noalias() = gym * xm.transpose();
            MutMap<T> gxm(pgx + n * g.C * g.H * g.W, g.C, g.H * g.W);
            gxm.noalias() = wm.transpose() * gym;
            continue;
          }
          im2col(xn, g, col.get());
          ConstMap<T> cm(col.get(), g.K(), g.P());
          gwn.noalias() = gym * cm.transpose();
          // Reuse the buffer for the column gradient.
          MutMap<T> gcol(col.get(), g.K(), g.P());
          gcol.noalias() = wm.transpose() * gym;
          col2im(col.get(), g, pgx + n * g.C * g.H * g.W);
        }
      }
      for (int64_t k = 0; k < nb; ++k) {
        const T* p = partial.data() + k * OK;
        for (int64_t e = 0; e < OK; ++e) gw_acc[static_cast<size_t>(e)] += p[e];
      }
    }
    T* pgw = gw.data<T>();
    for (int64_t e = 0; e < OK; ++e) pgw[e] = static_cast<T>(gw_acc[static_cast<size_t>(e)]);

    if (gb) {
      T* pgb = gb->data<T>();
      for (int64_t o = 0; o < g.O; ++o) {
        double s = 0;
        for (int64_t n = 0; n < g.N; ++n) {
          const T* row = pgy + (n * g.O + o) * g.P();
          for (int64_t p = 0; p < g.P(); ++p) s += row[p];
        }
        pgb[o] = static_cast<T>(s);
      }
    }
  });
}

// ---- upsampling
// ----------------------------------------------------------------------------------

// PyTorch 'nearest' with an output size: scale = in/out as a float (even for f64 data), and
// src = min(floor(dst * scale), in - 1) in float arithmetic, as ATen's nearest_idx does.
std::vector<int64_t> nearest_src(int64_t in, int64_t out) {
  std::vector<int64_t> src(static_cast<size_t>(out));
  float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int64_t d = 0; d < out; ++d)
    src[static_cast<size_t>(d)] =
        std::min(static_cast<int64_t>(std::floor(static_cast<float>(d) * scale)), in - 1);
  return src;
}

// Runs body(plane) for each of `planes` NCHW planes, in parallel when the work is large enough.
template <class Fn>
void for_planes(int64_t planes, int64_t work, Fn&& body) {
#pragma omp parallel for schedule(static) if (work > kParallelGrain)
  for (int64_t p = 0; p < planes; ++p) body(p);
}

void upsample_nearest_cpu(const OpCall& c) {
  const Tensor &x = c.in[0], &y = c.out[0];
  int64_t H = x.size(2), W = x.size(3), Ho = y.size(2), Wo = y.size(3);
  std::vector<int64_t> sh = nearest_src(H, Ho), sw = nearest_src(W, Wo);
  dispatch_float(x.dtype(), "upsample_nearest", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    for_planes(x.size(0) * x.size(1), y.numel(), [&](int64_t p) {
      const T* xp = px + p * H * W;
      T* yp = py + p * Ho * Wo;
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow)
          yp[oh * Wo + ow] = xp[sh[static_cast<size_t>(oh)] * W + sw[static_cast<size_t>(ow)]];
    });
  });
}

// gy (N, C, Ho, Wo) -> gx (N, C, H, W): each output pixel's gradient added to its source, serially
// per plane.
void upsample_nearest_bwd_cpu(const OpCall& c) {
  const Tensor &gy = c.in[0], &gx = c.out[0];
  int64_t H = gx.size(2), W = gx.size(3), Ho = gy.size(2), Wo = gy.size(3);
  std::vector<int64_t> sh = nearest_src(H, Ho), sw = nearest_src(W, Wo);
  dispatch_float(gy.dtype(), "upsample_nearest_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T* pgy = gy.data<T>();
    T* pgx = gx.data<T>();
    for_planes(gy.size(0) * gy.size(1), gy.numel(), [&](int64_t p) {
      const T* gyp = pgy + p * Ho * Wo;
      T* gxp = pgx + p * H * W;
      std::fill(gxp, gxp + H * W, T(0));
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow)
          gxp[sh[static_cast<size_t>(oh)] * W + sw[static_cast<size_t>(ow)]] += gyp[oh * Wo + ow];
    });
  });
}

// One output coordinate of bilinear resampling: y reads (1 - lambda) * x[i0] + lambda * x[i1].
template <class T>
struct LinearTap {
  int64_t i0, i1;
  T lambda;
};

// PyTorch's upsample_bilinear2d index math, in the data's type (ATen's opmath for f32/f64):
//   align_corners: src = dst * (in - 1) / (out - 1), 0 when out == 1;
//   otherwise:     src = max((dst + 0.5) * in / out - 0.5, 0).
// i0 = min(floor(src), in - 1), i1 = min(i0 + 1, in - 1), lambda = clamp(src - i0, 0, 1).
template <class T>
std::vector<LinearTap<T>> linear_taps(int64_t in, int64_t out, bool align) {
  std::vector<LinearTap<T>> taps(static_cast<size_t>(out));
  T scale = align ? (out > 1 ? static_cast<T>(in - 1) / static_cast<T>(out - 1) : T(0))
                  : static_cast<T>(in) / static_cast<T>(out);
  for (int64_t d = 0; d < out; ++d) {
    T src = align ? scale * static_cast<T>(d)
                  : std::max(scale * (static_cast<T>(d) + T(0.5)) - T(0.5), T(0));
    int64_t i0 = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
    T lambda = std::min(std::max(src - static_cast<T>(i0), T(0)), T(1));
    taps[static_cast<size_t>(d)] = {i0, std::min(i0 + 1, in - 1), lambda};
  }
  return taps;
}

void upsample_bilinear_cpu(const OpCall& c) {
  const Tensor &x = c.in[0], &y = c.out[0];
  int64_t H = x.size(2), W = x.size(3), Ho = y.size(2), Wo = y.size(3);
  bool align = c.ints[0] != 0;
  dispatch_float(x.dtype(), "upsample_bilinear", [&](auto tag) {
    using T = decltype(tag);
    auto th = linear_taps<T>(H, Ho, align), tw = linear_taps<T>(W, Wo, align);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    for_planes(x.size(0) * x.size(1), y.numel(), [&](int64_t p) {
      const T* xp = px + p * H * W;
      T* yp = py + p * Ho * Wo;
      for (int64_t oh = 0; oh < Ho; ++oh) {
        const LinearTap<T>& a = th[static_cast<size_t>(oh)];
        const T* r0 = xp + a.i0 * W;
        const T* r1 = xp + a.i1 * W;
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const LinearTap<T>& e = tw[static_cast<size_t>(ow)];
          T top = (T(1) - e.lambda) * r0[e.i0] + e.lambda * r0[e.i1];
          T bot = (T(1) - e.lambda) * r1[e.i0] + e.lambda * r1[e.i1];
          yp[oh * Wo + ow] = (T(1) - a.lambda) * top + a.lambda * bot;
        }
      }
    });
  });
}

// The transpose of the forward: each output gradient is spread over its four taps with the same
// weights, serially per plane.
void upsample_bilinear_bwd_cpu(const OpCall& c) {
  const Tensor &gy = c.in[0], &gx = c.out[0];
  int64_t H = gx.size(2), W = gx.size(3), Ho = gy.size(2), Wo = gy.size(3);
  bool align = c.ints[0] != 0;
  dispatch_float(gy.dtype(), "upsample_bilinear_bwd", [&](auto tag) {
    using T = decltype(tag);
    auto th = linear_taps<T>(H, Ho, align), tw = linear_taps<T>(W, Wo, align);
    const T* pgy = gy.data<T>();
    T* pgx = gx.data<T>();
    for_planes(gy.size(0) * gy.size(1), gy.numel(), [&](int64_t p) {
      const T* gyp = pgy + p * Ho * Wo;
      T* gxp = pgx + p * H * W;
      std::fill(gxp, gxp + H * W, T(0));
      for (int64_t oh = 0; oh < Ho; ++oh) {
        const LinearTap<T>& a = th[static_cast<size_t>(oh)];
        T* r0 = gxp + a.i0 * W;
        T* r1 = gxp + a.i1 * W;
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const LinearTap<T>& e = tw[static_cast<size_t>(ow)];
          T g = gyp[oh * Wo + ow];
          T top = (T(1) - a.lambda) * g, bot = a.lambda * g;
          r0[e.i0] += (T(1) - e.lambda) * top;
          r0[e.i1] += e.lambda * top;
          r1[e.i0] += (T(1) - e.lambda) * bot;
          r1[e.i1] += e.lambda * bot;
        }
      }
    });
  });
}

// ---- pooling
// -------------------------------------------------------------------------------------

struct PoolGeom {
  int64_t H, W, Ho, Wo, kh, kw, sh, sw, ph, pw;
};

PoolGeom pool_geom(const Tensor& x, const Tensor& y, const OpCall& c) {
  return {x.size(2), x.size(3), y.size(2), y.size(3), c.ints[0],
          c.ints[1], c.ints[2], c.ints[3], c.ints[4], c.ints[5]};
}

// Average over each window with the padding counted as zeros: always / (kh * kw), PyTorch's
// count_include_pad=True. (With ceil_mode off and pad <= k/2 no window leaves the padded input,
// so ATen's clipped divisor is kh * kw too.) Sums in double.
void avg_pool2d_cpu(const OpCall& c) {
  const Tensor &x = c.in[0], &y = c.out[0];
  PoolGeom g = pool_geom(x, y, c);
  dispatch_float(x.dtype(), "avg_pool2d", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    double inv = 1.0 / static_cast<double>(g.kh * g.kw);
    for_planes(x.size(0) * x.size(1), y.numel() * g.kh * g.kw, [&](int64_t p) {
      const T* xp = px + p * g.H * g.W;
      T* yp = py + p * g.Ho * g.Wo;
      for (int64_t oh = 0; oh < g.Ho; ++oh)
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
          double s = 0;
          for (int64_t ih = std::max<int64_t>(h0, 0); ih < std::min(h0 + g.kh, g.H); ++ih)
            for (int64_t iw = std::max<int64_t>(w0, 0); iw < std::min(w0 + g.kw, g.W); ++iw)
              s += xp[ih * g.W + iw];
          yp[oh * g.Wo + ow] = static_cast<T>(s * inv);
        }
    });
  });
}

// gy -> gx: every window adds gy / (kh * kw) to its in-bounds pixels, serially per plane.
void avg_pool2d_bwd_cpu(const OpCall& c) {
  const Tensor &gy = c.in[0], &gx = c.out[0];
  PoolGeom g = pool_geom(gx, gy, c);
  dispatch_float(gy.dtype(), "avg_pool2d_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T* pgy = gy.data<T>();
    T* pgx = gx.data<T>();
    T inv = T(1) / static_cast<T>(g.kh * g.kw);
    for_planes(gy.size(0) * gy.size(1), gy.numel() * g.kh * g.kw, [&](int64_t p) {
      const T* gyp = pgy + p * g.Ho * g.Wo;
      T* gxp = pgx + p * g.H * g.W;
      std::fill(gxp, gxp + g.H * g.W, T(0));
      for (int64_t oh = 0; oh < g.Ho; ++oh)
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
          T v = gyp[oh * g.Wo + ow] * inv;
          for (int64_t ih = std::max<int64_t>(h0, 0); ih < std::min(h0 + g.kh, g.H); ++ih)
            for (int64_t iw = std::max<int64_t>(w0, 0); iw < std::min(w0 + g.kw, g.W); ++iw)
              gxp[ih * g.W + iw] += v;
        }
    });
  });
}

// Max over each window, padding as -inf; argmax = ih * W + iw in the input plane. The first
// maximum in row-major window order wins, and a NaN is taken over any number (ATen's rule,
// `val > max || isnan(val)`), so NaNs propagate.
void max_pool2d_cpu(const OpCall& c) {
  const Tensor &x = c.in[0], &y = c.out[0], &am = c.out[1];
  PoolGeom g = pool_geom(x, y, c);
  dispatch_float(x.dtype(), "max_pool2d", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    int64_t* pa = am.data<int64_t>();
    for_planes(x.size(0) * x.size(1), y.numel() * g.kh * g.kw, [&](int64_t p) {
      const T* xp = px + p * g.H * g.W;
      T* yp = py + p * g.Ho * g.Wo;
      int64_t* ap = pa + p * g.Ho * g.Wo;
      for (int64_t oh = 0; oh < g.Ho; ++oh)
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          int64_t hs = std::max<int64_t>(oh * g.sh - g.ph, 0),
                  he = std::min(oh * g.sh - g.ph + g.kh, g.H);
          int64_t ws = std::max<int64_t>(ow * g.sw - g.pw, 0),
                  we = std::min(ow * g.sw - g.pw + g.kw, g.W);
          T best = -std::numeric_limits<T>::infinity();
          int64_t arg = hs * g.W + ws;
          for (int64_t ih = hs; ih < he; ++ih)
            for (int64_t iw = ws; iw < we; ++iw) {
              T v = xp[ih * g.W + iw];
              if (v > best || std::isnan(v)) {
                best = v;
                arg = ih * g.W + iw;
              }
            }
          yp[oh * g.Wo + ow] = best;
          ap[oh * g.Wo + ow] = arg;
        }
    });
  });
}

// (gy, argmax) -> gx: each output gradient added at its argmax, serially per plane (windows
// overlap when stride < kernel, so one pixel may receive several).
void max_pool2d_bwd_cpu(const OpCall& c) {
  const Tensor &gy = c.in[0], &am = c.in[1], &gx = c.out[0];
  int64_t HW = gx.size(2) * gx.size(3), P = gy.size(2) * gy.size(3);
  dispatch_float(gy.dtype(), "max_pool2d_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T* pgy = gy.data<T>();
    const int64_t* pa = am.data<int64_t>();
    T* pgx = gx.data<T>();
    for_planes(gy.size(0) * gy.size(1), gy.numel() + gx.numel(), [&](int64_t p) {
      T* gxp = pgx + p * HW;
      std::fill(gxp, gxp + HW, T(0));
      for (int64_t i = 0; i < P; ++i) gxp[pa[p * P + i]] += pgy[p * P + i];
    });
  });
}

}  // namespace

void register_spatial(OpTable& t) {
  t[Op::conv2d].cpu = &conv2d_cpu;
  t[Op::conv2d_bwd].cpu = &conv2d_bwd_cpu;
  t[Op::upsample_nearest].cpu = &upsample_nearest_cpu;
  t[Op::upsample_nearest_bwd].cpu = &upsample_nearest_bwd_cpu;
  t[Op::upsample_bilinear].cpu = &upsample_bilinear_cpu;
  t[Op::upsample_bilinear_bwd].cpu = &upsample_bilinear_bwd_cpu;
  t[Op::avg_pool2d].cpu = &avg_pool2d_cpu;
  t[Op::avg_pool2d_bwd].cpu = &avg_pool2d_bwd_cpu;
  t[Op::max_pool2d].cpu = &max_pool2d_cpu;
  t[Op::max_pool2d_bwd].cpu = &max_pool2d_bwd_cpu;
}

}  // namespace psvae::kernels::cpu
