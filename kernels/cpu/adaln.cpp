// CPU kernels: the DiT block's adaLN-Zero path, fused (Peebles & Xie 2023, "Scalable Diffusion
// Models with Transformers", Fig. 3): layernorm without affine weights followed by the per-sample
// modulation, and the gated residual add.
//   layernorm_modulate   y = xhat (1 + scale[n]) + shift[n],  xhat = (x - mean) rstd,
//                        rstd = 1 / sqrt(biased var + eps), over the last dim D
//   gated_residual       out = x + gate[n] h
// Composed from layernorm, modulate, mul and add they write 2 (resp. 1) extra full-size tensors
// per call and read them back; fused they do not, and the CUDA kernels (kernels/cuda/norm.cu) run
// each as one pass. Everything is formed in double and rounded once, so the fused results are the
// composition's up to its intermediate roundings (the spec checks both against an f64 reference).
//
// Backward of layernorm_modulate, with g = gy (1 + scale[n]):
//   gx = rstd (g - mean_d(g) - xhat mean_d(g xhat)),  gshift = sum_t gy,  gscale = sum_t gy xhat.
// Backward of gated_residual: gh = gout gate[n], ggate = sum_t gout h, and gx = gout (no kernel).
// Parameter-like gradients (gshift, gscale, ggate) are owned per (sample, column block) by one
// task that adds the T rows in order: the bits do not depend on the thread count.
#include <algorithm>

#include "kernels/cpu/cpu_common.h"

namespace psvae::kernels::cpu {

namespace {

constexpr int64_t kColBlock = 64;  // gradient columns per task (as kernels/cpu/norm.cpp)

struct NTD {
  int64_t n, t, d;
};
NTD ntd_of(const Tensor& x) { return {x.size(0), x.size(1), x.size(2)}; }

// in: x (N,T,D), shift, scale (N,D). out: y (N,T,D), mean, rstd (N,T). reals: eps.
void layernorm_modulate_cpu(const OpCall& c) {
  const NTD s = ntd_of(c.in[0]);
  const double eps = c.reals[0];
  dispatch_float(c.in[0].dtype(), "layernorm_modulate", [&](auto tag) {
    using T = decltype(tag);
    const T *x = c.in[0].data<T>(), *shift = c.in[1].data<T>(), *scale = c.in[2].data<T>();
    T *y = c.out[0].data<T>(), *mean = c.out[1].data<T>(), *rstd = c.out[2].data<T>();
#pragma omp parallel for schedule(static) if (s.n * s.t * s.d > kParallelGrain)
    for (int64_t r = 0; r < s.n * s.t; ++r) {
      const T *xr = x + r * s.d, *sh = shift + (r / s.t) * s.d, *sc = scale + (r / s.t) * s.d;
      double mu, rs;
      row_moments(xr, s.d, eps, mu, rs);
      for (int64_t j = 0; j < s.d; ++j) {
        const double xhat = (xr[j] - mu) * rs;
        y[r * s.d + j] = static_cast<T>(xhat * (1.0 + static_cast<double>(sc[j])) + sh[j]);
      }
      mean[r] = static_cast<T>(mu);
      rstd[r] = static_cast<T>(rs);
    }
  });
}

// in: gy, x (N,T,D), mean, rstd (N,T), scale (N,D), optional gres (N,T,D). out: gx (N,T,D),
// gshift, gscale (N,D). gres, the gradient already waiting for x, is added to gx rounded to T: the
// bits of a separate add.
void layernorm_modulate_bwd_cpu(const OpCall& c) {
  const NTD s = ntd_of(c.in[1]);
  dispatch_float(c.in[1].dtype(), "layernorm_modulate_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T *gy = c.in[0].data<T>(), *x = c.in[1].data<T>(), *mean = c.in[2].data<T>();
    const T *rstd = c.in[3].data<T>(), *scale = c.in[4].data<T>();
    T *gx = c.out[0].data<T>(), *gshift = c.out[1].data<T>(), *gscale = c.out[2].data<T>();
    const T* gres = c.in.size() > 5 ? c.in[5].data<T>() : nullptr;
#pragma omp parallel for schedule(static) if (s.n * s.t * s.d > kParallelGrain)
    for (int64_t r = 0; r < s.n * s.t; ++r) {
      const T *gr = gy + r * s.d, *xr = x + r * s.d, *sc = scale + (r / s.t) * s.d;
      const double mu = mean[r], rs = rstd[r];
      double s1 = 0, s2 = 0;  // sum_d g and sum_d g xhat
      for (int64_t j = 0; j < s.d; ++j) {
        const double g = static_cast<double>(gr[j]) * (1.0 + static_cast<double>(sc[j]));
        s1 += g;
        s2 += g * (xr[j] - mu) * rs;
      }
      s1 /= static_cast<double>(s.d);
      s2 /= static_cast<double>(s.d);
      for (int64_t j = 0; j < s.d; ++j) {
        const double g = static_cast<double>(gr[j]) * (1.0 + static_cast<double>(sc[j]));
        const T v = static_cast<T>(rs * (g - s1 - (xr[j] - mu) * rs * s2));
        gx[r * s.d + j] = gres ? static_cast<T>(v + gres[r * s.d + j]) : v;
      }
    }
    const int64_t nblk = (s.d + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (s.n * s.t * s.d > kParallelGrain)
    for (int64_t task = 0; task < s.n * nblk; ++task) {
      const int64_t n = task / nblk, d0 = (task % nblk) * kColBlock;
      const int64_t nd = std::min(kColBlock, s.d - d0);
      double ash[kColBlock] = {}, asc[kColBlock] = {};
      for (int64_t t = 0; t < s.t; ++t) {
        const int64_t r = n * s.t + t;
        const double mu = mean[r], rs = rstd[r];
        for (int64_t j = 0; j < nd; ++j) {
          const double g = gy[r * s.d + d0 + j];
          ash[j] += g;
          asc[j] += g * ((x[r * s.d + d0 + j] - mu) * rs);
        }
      }
      for (int64_t j = 0; j < nd; ++j) {
        gshift[n * s.d + d0 + j] = static_cast<T>(ash[j]);
        gscale[n * s.d + d0 + j] = static_cast<T>(asc[j]);
      }
    }
  });
}

// in: x (N,T,D), gate (N,D), h (N,T,D). out: x + gate[n] h.
void gated_residual_cpu(const OpCall& c) {
  const NTD s = ntd_of(c.in[0]);
  dispatch_float(c.in[0].dtype(), "gated_residual", [&](auto tag) {
    using T = decltype(tag);
    const T *x = c.in[0].data<T>(), *gate = c.in[1].data<T>(), *h = c.in[2].data<T>();
    T* out = c.out[0].data<T>();
#pragma omp parallel for schedule(static) if (s.n * s.t * s.d > kParallelGrain)
    for (int64_t r = 0; r < s.n * s.t; ++r) {
      const T* g = gate + (r / s.t) * s.d;
      for (int64_t j = 0; j < s.d; ++j) {
        const int64_t i = r * s.d + j;
        out[i] = static_cast<T>(static_cast<double>(x[i]) +
                                static_cast<double>(g[j]) * static_cast<double>(h[i]));
      }
    }
  });
}

// in: gout (N,T,D), gate (N,D), h (N,T,D). out: gh (N,T,D), ggate (N,D).
void gated_residual_bwd_cpu(const OpCall& c) {
  const NTD s = ntd_of(c.in[0]);
  dispatch_float(c.in[0].dtype(), "gated_residual_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T *go = c.in[0].data<T>(), *gate = c.in[1].data<T>(), *h = c.in[2].data<T>();
    T *gh = c.out[0].data<T>(), *ggate = c.out[1].data<T>();
    const int64_t nblk = (s.d + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (s.n * s.t * s.d > kParallelGrain)
    for (int64_t task = 0; task < s.n * nblk; ++task) {
      const int64_t n = task / nblk, d0 = (task % nblk) * kColBlock;
      const int64_t nd = std::min(kColBlock, s.d - d0);
      const T* g = gate + n * s.d + d0;
      double acc[kColBlock] = {};
      for (int64_t t = 0; t < s.t; ++t) {
        const int64_t off = (n * s.t + t) * s.d + d0;
        for (int64_t j = 0; j < nd; ++j) {
          gh[off + j] = static_cast<T>(static_cast<double>(go[off + j]) * g[j]);
          acc[j] += static_cast<double>(go[off + j]) * h[off + j];
        }
      }
      for (int64_t j = 0; j < nd; ++j) ggate[n * s.d + d0 + j] = static_cast<T>(acc[j]);
    }
  });
}

}  // namespace

void register_adaln(OpTable& t) {
  t[Op::layernorm_modulate].cpu = &layernorm_modulate_cpu;
  t[Op::layernorm_modulate_bwd].cpu = &layernorm_modulate_bwd_cpu;
  t[Op::gated_residual].cpu = &gated_residual_cpu;
  t[Op::gated_residual_bwd].cpu = &gated_residual_bwd_cpu;
}

}  // namespace psvae::kernels::cpu
