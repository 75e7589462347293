// CPU kernels: norm family (layernorm, modulate, groupnorm), forward and backward side by side.
//
// Statistics are accumulated in double with two passes (mean, then sum of squared deviations):
// the one-pass E[x^2] - E[x]^2 loses all digits when |mean| >> std, e.g. activations around 1e3
// with std 1 leave ~1e-10 of f64 precision but nothing of f32. Parameter gradients (gw, gb,
// gshift, gscale) sum over rows; each of their elements is owned by one thread that adds the rows
// in order, so the bits do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_common.h"

namespace psvae::kernels::cpu {

namespace {

// Parameter-gradient columns per task: 64 doubles of accumulator, 256-512 contiguous bytes of
// each input row, which keeps the row-strided walk cache friendly.
constexpr int64_t kColBlock = 64;

// ---- layernorm ------------------------------------------------------------------------------
// in: x (R, D) (leading dims flattened), optional w (D), b (D). out: y, mean (R), rstd (R).
void layernorm_cpu(const OpCall& c) {
  const Tensor& X = c.in[0];
  bool affine = c.in.size() > 1;
  int64_t D = X.size(-1), R = D > 0 ? X.numel() / D : 0;
  double eps = c.reals[0];
  dispatch_float(X.dtype(), "layernorm", [&](auto tag) {
    using T = decltype(tag);
    const T* x = X.data<T>();
    const T* w = affine ? c.in[1].data<T>() : nullptr;
    const T* b = affine ? c.in[2].data<T>() : nullptr;
    T* y = c.out[0].data<T>();
    T* mean = c.out[1].data<T>();
    T* rstd = c.out[2].data<T>();
#pragma omp parallel for schedule(static) if (R * D > kParallelGrain)
    for (int64_t r = 0; r < R; ++r) {
      const T* xr = x + r * D;
      T* yr = y + r * D;
      double mu, rs;
      row_moments(xr, D, eps, mu, rs);
      for (int64_t d = 0; d < D; ++d) {
        double xhat = (xr[d] - mu) * rs;
        yr[d] = static_cast<T>(affine ? xhat * w[d] + b[d] : xhat);
      }
      mean[r] = static_cast<T>(mu);
      rstd[r] = static_cast<T>(rs);
    }
  });
}

// in: gy, x (R, D), mean, rstd (R), optional w (D). out: gx, and gw, gb (D) when w is given.
// With xhat = (x - mean) rstd and g = gy w (or gy):
//   gx = rstd (g - mean_d(g) - xhat mean_d(g xhat)),  gw = sum_r gy xhat,  gb = sum_r gy.
void layernorm_bwd_cpu(const OpCall& c) {
  const Tensor& X = c.in[1];
  bool affine = c.in.size() > 4;
  int64_t D = X.size(-1), R = D > 0 ? X.numel() / D : 0;
  dispatch_float(X.dtype(), "layernorm_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T* gy = c.in[0].data<T>();
    const T* x = X.data<T>();
    const T* mean = c.in[2].data<T>();
    const T* rstd = c.in[3].data<T>();
    const T* w = affine ? c.in[4].data<T>() : nullptr;
    T* gx = c.out[0].data<T>();
#pragma omp parallel for schedule(static) if (R * D > kParallelGrain)
    for (int64_t r = 0; r < R; ++r) {
      const T *gr = gy + r * D, *xr = x + r * D;
      double mu = mean[r], rs = rstd[r], s1 = 0, s2 = 0;
      for (int64_t d = 0; d < D; ++d) {
        double g = affine ? static_cast<double>(gr[d]) * w[d] : gr[d];
        s1 += g;
        s2 += g * (xr[d] - mu) * rs;
      }
      s1 /= static_cast<double>(D);
      s2 /= static_cast<double>(D);
      for (int64_t d = 0; d < D; ++d) {
        double g = affine ? static_cast<double>(gr[d]) * w[d] : gr[d];
        double xhat = (xr[d] - mu) * rs;
        gx[r * D + d] = static_cast<T>(rs * (g - s1 - xhat * s2));
      }
    }
    if (!affine) return;
    T* gw = c.out[1].data<T>();
    T* gb = c.out[2].data<T>();
    int64_t nblk = (D + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (R * D > kParallelGrain)
    for (int64_t blk = 0; blk < nblk; ++blk) {
      int64_t d0 = blk * kColBlock, nd = std::min(kColBlock, D - d0);
      double aw[kColBlock] = {}, ab[kColBlock] = {};
      for (int64_t r = 0; r < R; ++r) {
        double mu = mean[r], rs = rstd[r];
        const T *gr = gy + r * D + d0, *xr = x + r * D + d0;
        for (int64_t j = 0; j < nd; ++j) {
          aw[j] += static_cast<double>(gr[j]) * ((xr[j] - mu) * rs);
          ab[j] += gr[j];
        }
      }
      for (int64_t j = 0; j < nd; ++j) {
        gw[d0 + j] = static_cast<T>(aw[j]);
        gb[d0 + j] = static_cast<T>(ab[j]);
      }
    }
  });
}

// ---- modulate (adaLN) -----------------------------------------------------------------------
// in: x (N, T, D), shift (N, D), scale (N, D). out: y = x (1 + scale) + shift.
void modulate_cpu(const OpCall& c) {
  const Tensor& X = c.in[0];
  int64_t N = X.size(0), T_ = X.size(1), D = X.size(2);
  dispatch_float(X.dtype(), "modulate", [&](auto tag) {
    using T = decltype(tag);
    const T* x = X.data<T>();
    const T* shift = c.in[1].data<T>();
    const T* scale = c.in[2].data<T>();
    T* y = c.out[0].data<T>();
#pragma omp parallel for schedule(static) if (N * T_ * D > kParallelGrain)
    for (int64_t row = 0; row < N * T_; ++row) {
      int64_t n = row / T_;
      const T *sh = shift + n * D, *sc = scale + n * D, *xr = x + row * D;
      T* yr = y + row * D;
      for (int64_t d = 0; d < D; ++d) yr[d] = xr[d] * (T(1) + sc[d]) + sh[d];
    }
  });
}

// in: gy, x (N, T, D), scale (N, D). out: gx = gy (1 + scale), gshift = sum_t gy,
// gscale = sum_t gy x (both (N, D)).
void modulate_bwd_cpu(const OpCall& c) {
  const Tensor& X = c.in[1];
  int64_t N = X.size(0), T_ = X.size(1), D = X.size(2);
  dispatch_float(X.dtype(), "modulate_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T* gy = c.in[0].data<T>();
    const T* x = X.data<T>();
    const T* scale = c.in[2].data<T>();
    T* gx = c.out[0].data<T>();
    T* gshift = c.out[1].data<T>();
    T* gscale = c.out[2].data<T>();
    int64_t nblk = (D + kColBlock - 1) / kColBlock;
    // One task per (sample, column block): it writes that block of gx for every t and owns the
    // matching gshift/gscale entries, summing t in order.
#pragma omp parallel for schedule(static) if (N * T_ * D > kParallelGrain)
    for (int64_t task = 0; task < N * nblk; ++task) {
      int64_t n = task / nblk, d0 = (task % nblk) * kColBlock, nd = std::min(kColBlock, D - d0);
      const T* sc = scale + n * D + d0;
      double ash[kColBlock] = {}, asc[kColBlock] = {};
      for (int64_t t = 0; t < T_; ++t) {
        int64_t off = (n * T_ + t) * D + d0;
        for (int64_t j = 0; j < nd; ++j) {
          T g = gy[off + j];
          gx[off + j] = g * (T(1) + sc[j]);
          ash[j] += g;
          asc[j] += static_cast<double>(g) * x[off + j];
        }
      }
      for (int64_t j = 0; j < nd; ++j) {
        gshift[n * D + d0 + j] = static_cast<T>(ash[j]);
        gscale[n * D + d0 + j] = static_cast<T>(asc[j]);
      }
    }
  });
}

// ---- groupnorm ------------------------------------------------------------------------------
// x (N, C, S...) with S the product of the spatial dims (1 when there are none): group g of
// sample n is the contiguous run of (C/G) * S elements starting at (n C + g C/G) S.
struct GroupDims {
  int64_t N, C, G, Cg, S;
};
GroupDims group_dims(const Tensor& x, int64_t groups) {
  GroupDims g;
  g.N = x.size(0);
  g.C = x.size(1);
  g.G = groups;
  g.Cg = g.C / groups;
  g.S = x.shape().prod(2, x.rank());
  return g;
}

// in: x (N, C, ...), optional w (C), b (C). out: y, mean (N, G), rstd (N, G). ints: groups.
void groupnorm_cpu(const OpCall& c) {
  const Tensor& X = c.in[0];
  bool affine = c.in.size() > 1;
  GroupDims gd = group_dims(X, c.ints[0]);
  int64_t L = gd.Cg * gd.S;
  double eps = c.reals[0];
  dispatch_float(X.dtype(), "groupnorm", [&](auto tag) {
    using T = decltype(tag);
    const T* x = X.data<T>();
    const T* w = affine ? c.in[1].data<T>() : nullptr;
    const T* b = affine ? c.in[2].data<T>() : nullptr;
    T* y = c.out[0].data<T>();
    T* mean = c.out[1].data<T>();
    T* rstd = c.out[2].data<T>();
#pragma omp parallel for schedule(static) if (X.numel() > kParallelGrain)
    for (int64_t ng = 0; ng < gd.N * gd.G; ++ng) {
      const T* xg = x + ng * L;
      T* yg = y + ng * L;
      double mu, rs;
      row_moments(xg, L, eps, mu, rs);
      int64_t c0 = (ng % gd.G) * gd.Cg;
      for (int64_t ci = 0; ci < gd.Cg; ++ci) {
        double a = affine ? rs * w[c0 + ci] : rs;  // y = (x - mu) a + b per channel
        double off = affine ? b[c0 + ci] : 0.0;
        for (int64_t s = 0; s < gd.S; ++s) {
          int64_t i = ci * gd.S + s;
          yg[i] = static_cast<T>((xg[i] - mu) * a + off);
        }
      }
      mean[ng] = static_cast<T>(mu);
      rstd[ng] = static_cast<T>(rs);
    }
  });
}

// in: gy, x (N, C, ...), mean, rstd (N, G), optional w (C). out: gx, and gw, gb (C) when w is
// given. ints: groups. Same formula as layernorm_bwd with the mean over a group's C/G * S values
// and w indexed by channel.
void groupnorm_bwd_cpu(const OpCall& c) {
  const Tensor& X = c.in[1];
  bool affine = c.in.size() > 4;
  GroupDims gd = group_dims(X, c.ints[0]);
  int64_t L = gd.Cg * gd.S;
  dispatch_float(X.dtype(), "groupnorm_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T* gy = c.in[0].data<T>();
    const T* x = X.data<T>();
    const T* mean = c.in[2].data<T>();
    const T* rstd = c.in[3].data<T>();
    const T* w = affine ? c.in[4].data<T>() : nullptr;
    T* gx = c.out[0].data<T>();
#pragma omp parallel for schedule(static) if (X.numel() > kParallelGrain)
    for (int64_t ng = 0; ng < gd.N * gd.G; ++ng) {
      const T *gg = gy + ng * L, *xg = x + ng * L;
      int64_t c0 = (ng % gd.G) * gd.Cg;
      double mu = mean[ng], rs = rstd[ng], s1 = 0, s2 = 0;
      for (int64_t ci = 0; ci < gd.Cg; ++ci) {
        double wc = affine ? static_cast<double>(w[c0 + ci]) : 1.0;
        for (int64_t s = 0; s < gd.S; ++s) {
          int64_t i = ci * gd.S + s;
          double g = gg[i] * wc;
          s1 += g;
          s2 += g * (xg[i] - mu) * rs;
        }
      }
      s1 /= static_cast<double>(L);
      s2 /= static_cast<double>(L);
      for (int64_t ci = 0; ci < gd.Cg; ++ci) {
        double wc = affine ? static_cast<double>(w[c0 + ci]) : 1.0;
        for (int64_t s = 0; s < gd.S; ++s) {
          int64_t i = ci * gd.S + s;
          double xhat = (xg[i] - mu) * rs;
          gx[ng * L + i] = static_cast<T>(rs * (gg[i] * wc - s1 - xhat * s2));
        }
      }
    }
    if (!affine) return;
    T* gw = c.out[1].data<T>();
    T* gb = c.out[2].data<T>();
    // One thread per channel, samples then positions in order.
#pragma omp parallel for schedule(static) if (X.numel() > kParallelGrain)
    for (int64_t ch = 0; ch < gd.C; ++ch) {
      int64_t g = ch / gd.Cg;
      double aw = 0, ab = 0;
      for (int64_t n = 0; n < gd.N; ++n) {
        double mu = mean[n * gd.G + g], rs = rstd[n * gd.G + g];
        const T *gr = gy + (n * gd.C + ch) * gd.S, *xr = x + (n * gd.C + ch) * gd.S;
        for (int64_t s = 0; s < gd.S; ++s) {
          aw += static_cast<double>(gr[s]) * ((xr[s] - mu) * rs);
          ab += gr[s];
        }
      }
      gw[ch] = static_cast<T>(aw);
      gb[ch] = static_cast<T>(ab);
    }
  });
}

}  // namespace

void register_norm(OpTable& t) {
  t[Op::layernorm].cpu = &layernorm_cpu;
  t[Op::layernorm_bwd].cpu = &layernorm_bwd_cpu;
  t[Op::modulate].cpu = &modulate_cpu;
  t[Op::modulate_bwd].cpu = &modulate_bwd_cpu;
  t[Op::groupnorm].cpu = &groupnorm_cpu;
  t[Op::groupnorm_bwd].cpu = &groupnorm_bwd_cpu;
}

}  // namespace psvae::kernels::cpu
