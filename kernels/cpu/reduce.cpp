// CPU kernels: reduce family. Every reduction over one dim sees its input as (outer, n, inner)
// with the reduced dim in the middle and writes (outer, inner); whether the output keeps the dim
// as 1 is only a matter of its shape, which the wrapper chose. f32 data accumulates in double.
//
// Work is split into tiles of (one outer index, up to kTile inner columns): each tile walks the n
// rows in order with a small double accumulator per column, so reads stay contiguous along inner
// and every output element is summed serially in index order (bit-identical for any thread count).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_common.h"

namespace psvae::kernels::cpu {

namespace {

constexpr int64_t kTile = 256;

struct Dims {
  int64_t outer, n, inner;
};
Dims dims_of(const Shape& s, int dim) {
  return {s.prod(0, dim), s[dim], s.prod(dim + 1, s.rank())};
}

// fn(o, i0, w): handles outer index o, inner columns [i0, i0 + w).
template <class Fn>
void for_tiles(const Dims& d, Fn fn) {
  const int64_t per = (d.inner + kTile - 1) / kTile, tiles = d.outer * per;
#pragma omp parallel for if (d.outer * d.n * d.inner > kParallelGrain)
  for (int64_t t = 0; t < tiles; ++t) {
    int64_t o = t / per, i0 = (t % per) * kTile;
    fn(o, i0, std::min(kTile, d.inner - i0));
  }
}

void sum_dim_cpu(const OpCall& c) {
  const Tensor &x = c.in[0], &y = c.out[0];
  const Dims d = dims_of(x.shape(), static_cast<int>(c.ints[0]));
  dispatch_float(x.dtype(), "sum_dim", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    if (d.inner == 1) {  // rows: one contiguous serial sum each
#pragma omp parallel for if (d.outer * d.n > kParallelGrain)
      for (int64_t o = 0; o < d.outer; ++o) {
        double acc = 0;
        for (int64_t j = 0; j < d.n; ++j) acc += static_cast<double>(px[o * d.n + j]);
        py[o] = static_cast<T>(acc);
      }
      return;
    }
    for_tiles(d, [&](int64_t o, int64_t i0, int64_t w) {
      double acc[kTile] = {};
      for (int64_t j = 0; j < d.n; ++j) {
        const T* row = px + (o * d.n + j) * d.inner + i0;
        for (int64_t k = 0; k < w; ++k) acc[k] += static_cast<double>(row[k]);
      }
      for (int64_t k = 0; k < w; ++k) py[o * d.inner + i0 + k] = static_cast<T>(acc[k]);
    });
  });
}

void max_dim_cpu(const OpCall& c) {
  const Tensor &x = c.in[0], &y = c.out[0], &arg = c.out[1];
  const Dims d = dims_of(x.shape(), static_cast<int>(c.ints[0]));
  dispatch_float(x.dtype(), "max_dim", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    int64_t* pa = arg.data<int64_t>();
    for_tiles(d, [&](int64_t o, int64_t i0, int64_t w) {
      T best[kTile];
      int64_t at[kTile];
      const T* first = px + o * d.n * d.inner + i0;
      for (int64_t k = 0; k < w; ++k) best[k] = first[k], at[k] = 0;
      for (int64_t j = 1; j < d.n; ++j) {
        const T* row = px + (o * d.n + j) * d.inner + i0;
        // Strictly greater: the first index wins ties. A NaN wins once and stays (as PyTorch).
        for (int64_t k = 0; k < w; ++k)
          if (row[k] > best[k] || (std::isnan(row[k]) && !std::isnan(best[k])))
            best[k] = row[k], at[k] = j;
      }
      for (int64_t k = 0; k < w; ++k) {
        py[o * d.inner + i0 + k] = best[k];
        pa[o * d.inner + i0 + k] = at[k];
      }
    });
  });
}

// gx is zero except at each argmax, which receives its gy.
void max_dim_bwd_cpu(const OpCall& c) {
  const Tensor &gy = c.in[0], &arg = c.in[1], &gx = c.out[0];
  const Dims d = dims_of(gx.shape(), static_cast<int>(c.ints[0]));
  dispatch_float(gx.dtype(), "max_dim_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T* pg = gy.data<T>();
    const int64_t* pa = arg.data<int64_t>();
    T* px = gx.data<T>();
#pragma omp parallel for if (d.outer * d.n * d.inner > kParallelGrain)
    for (int64_t o = 0; o < d.outer; ++o) {
      std::fill(px + o * d.n * d.inner, px + (o + 1) * d.n * d.inner, T(0));
      for (int64_t i = 0; i < d.inner; ++i) {
        int64_t j = pa[o * d.inner + i];
        px[(o * d.n + j) * d.inner + i] = pg[o * d.inner + i];
      }
    }
  });
}

// Two passes (mean, then squared deviations) rather than E[x^2] - E[x]^2, which cancels badly
// when |mean| >> std.
void var_dim_cpu(const OpCall& c) {
  const Tensor &x = c.in[0], &var = c.out[0], &mean = c.out[1];
  const Dims d = dims_of(x.shape(), static_cast<int>(c.ints[0]));
  const double denom = static_cast<double>(d.n - c.ints[1]);
  dispatch_float(x.dtype(), "var_dim", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T *pv = var.data<T>(), *pm = mean.data<T>();
    for_tiles(d, [&](int64_t o, int64_t i0, int64_t w) {
      double mu[kTile] = {}, ss[kTile] = {};
      for (int64_t j = 0; j < d.n; ++j) {
        const T* row = px + (o * d.n + j) * d.inner + i0;
        for (int64_t k = 0; k < w; ++k) mu[k] += static_cast<double>(row[k]);
      }
      for (int64_t k = 0; k < w; ++k) mu[k] /= static_cast<double>(d.n);
      for (int64_t j = 0; j < d.n; ++j) {
        const T* row = px + (o * d.n + j) * d.inner + i0;
        for (int64_t k = 0; k < w; ++k) {
          double e = static_cast<double>(row[k]) - mu[k];
          ss[k] += e * e;
        }
      }
      for (int64_t k = 0; k < w; ++k) {
        pv[o * d.inner + i0 + k] = static_cast<T>(ss[k] / denom);
        pm[o * d.inner + i0 + k] = static_cast<T>(mu[k]);
      }
    });
  });
}

// d var / d x_j = 2 (x_j - mean) / (n - correction); the mean's own dependence on x cancels
// because the deviations sum to zero.
void var_dim_bwd_cpu(const OpCall& c) {
  const Tensor &gy = c.in[0], &x = c.in[1], &mean = c.in[2], &gx = c.out[0];
  const Dims d = dims_of(x.shape(), static_cast<int>(c.ints[0]));
  const double scale = 2.0 / static_cast<double>(d.n - c.ints[1]);
  dispatch_float(x.dtype(), "var_dim_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T *pg = gy.data<T>(), *px = x.data<T>(), *pm = mean.data<T>();
    T* pgx = gx.data<T>();
#pragma omp parallel for if (d.outer * d.n * d.inner > kParallelGrain)
    for (int64_t o = 0; o < d.outer; ++o)
      for (int64_t j = 0; j < d.n; ++j)
        for (int64_t i = 0; i < d.inner; ++i) {
          int64_t e = (o * d.n + j) * d.inner + i, r = o * d.inner + i;
          pgx[e] = static_cast<T>(static_cast<double>(pg[r]) * scale *
                                  (static_cast<double>(px[e]) - static_cast<double>(pm[r])));
        }
  });
}

// ---- softmax over the last dim: one row per task, exponentials of x - rowmax (all <= 1) --------

template <class Fn>
void for_rows(const Tensor& x, Fn fn) {
  const int64_t D = x.rank() ? x.size(-1) : 1, rows = D ? x.numel() / D : 0;
#pragma omp parallel for if (x.numel() > kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) fn(r * D, D);
}

template <class T>
double row_max(const T* x, int64_t D) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < D; ++j) m = std::max(m, static_cast<double>(x[j]));
  return m;
}

void softmax_cpu(const OpCall& c) {
  const Tensor &x = c.in[0], &y = c.out[0];
  dispatch_float(x.dtype(), "softmax", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    for_rows(x, [&](int64_t off, int64_t D) {
      const T* xr = px + off;
      T* yr = py + off;
      // One exp per element: stored in y, then scaled (f32 y rounds twice, < 1 ulp extra).
      double m = row_max(xr, D), s = 0;
      for (int64_t j = 0; j < D; ++j) {
        double e = std::exp(static_cast<double>(xr[j]) - m);
        s += e;
        yr[j] = static_cast<T>(e);
      }
      const double inv = 1.0 / s;
      for (int64_t j = 0; j < D; ++j) yr[j] = static_cast<T>(static_cast<double>(yr[j]) * inv);
    });
  });
}

// gx = y * (gy - sum_j gy_j y_j)
void softmax_bwd_cpu(const OpCall& c) {
  const Tensor &y = c.in[0], &gy = c.in[1], &gx = c.out[0];
  dispatch_float(y.dtype(), "softmax_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T *py = y.data<T>(), *pg = gy.data<T>();
    T* pgx = gx.data<T>();
    for_rows(y, [&](int64_t off, int64_t D) {
      double dot = 0;
      for (int64_t j = 0; j < D; ++j)
        dot += static_cast<double>(pg[off + j]) * static_cast<double>(py[off + j]);
      for (int64_t j = 0; j < D; ++j)
        pgx[off + j] = static_cast<T>(static_cast<double>(py[off + j]) *
                                      (static_cast<double>(pg[off + j]) - dot));
    });
  });
}

// y = x - max - log(sum exp(x - max))
void log_softmax_cpu(const OpCall& c) {
  const Tensor &x = c.in[0], &y = c.out[0];
  dispatch_float(x.dtype(), "log_softmax", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    for_rows(x, [&](int64_t off, int64_t D) {
      const T* xr = px + off;
      double m = row_max(xr, D), s = 0;
      for (int64_t j = 0; j < D; ++j) s += std::exp(static_cast<double>(xr[j]) - m);
      double lse = m + std::log(s);
      for (int64_t j = 0; j < D; ++j)
        py[off + j] = static_cast<T>(static_cast<double>(xr[j]) - lse);
    });
  });
}

// gx = gy - softmax * sum_j gy_j, with softmax = exp(y)
void log_softmax_bwd_cpu(const OpCall& c) {
  const Tensor &y = c.in[0], &gy = c.in[1], &gx = c.out[0];
  dispatch_float(y.dtype(), "log_softmax_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T *py = y.data<T>(), *pg = gy.data<T>();
    T* pgx = gx.data<T>();
    for_rows(y, [&](int64_t off, int64_t D) {
      double s = 0;
      for (int64_t j = 0; j < D; ++j) s += static_cast<double>(pg[off + j]);
      for (int64_t j = 0; j < D; ++j)
        pgx[off + j] = static_cast<T>(static_cast<double>(pg[off + j]) -
                                      std::exp(static_cast<double>(py[off + j])) * s);
    });
  });
}

}  // namespace

void register_reduce(OpTable& t) {
  t[Op::sum_dim].cpu = &sum_dim_cpu;
  t[Op::max_dim].cpu = &max_dim_cpu;
  t[Op::max_dim_bwd].cpu = &max_dim_bwd_cpu;
  t[Op::var_dim].cpu = &var_dim_cpu;
  t[Op::var_dim_bwd].cpu = &var_dim_bwd_cpu;
  t[Op::softmax].cpu = &softmax_cpu;
  t[Op::softmax_bwd].cpu = &softmax_bwd_cpu;
  t[Op::log_softmax].cpu = &log_softmax_cpu;
  t[Op::log_softmax_bwd].cpu = &log_softmax_bwd_cpu;
}

}  // namespace psvae::kernels::cpu
