// CPU kernels: losses (mse, l1, Gaussian KL, cross-entropy), each forward next to its backward.
//
// Every loss reduces a whole tensor to one scalar, so the reduction is the one place where a
// thread count could leak into the result. It never does here: the n terms are cut into chunks of
// kChunk elements (the cut depends only on n), each chunk is summed serially in double by whichever
// thread gets it, and the partials are added in chunk order by one thread. The scalar is therefore
// bit-identical for any OMP_NUM_THREADS, yet a 1M-element loss (a 256x256x16 latent batch) still
// spreads over every core. Terms are formed in double too, so f32 losses carry only the final
// rounding: they are the reference the CUDA kernels will be checked against.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_common.h"

namespace psvae::kernels::cpu {

namespace {

// 4096 doubles of partial work per chunk: 245 chunks for 1M elements, plenty for 16 threads,
// while the partials array stays tiny.
constexpr int64_t kChunk = 4096;

// sum_{i<n} term(i) in double, in an order fixed by n alone (see the file comment).
template <class F>
double chunked_sum(int64_t n, F term) {
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(nchunks), 0.0);
#pragma omp parallel for if (n > kParallelGrain)
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t hi = std::min(n, (c + 1) * kChunk);
    double s = 0;
    for (int64_t i = c * kChunk; i < hi; ++i) s += term(i);
    partial[static_cast<size_t>(c)] = s;
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

// gy is a one-element tensor of the loss dtype.
template <class T>
double scalar_of(const Tensor& gy) {
  return static_cast<double>(gy.data<T>()[0]);
}

// ---- mse: mean (a-b)^2; d/da = 2 (a-b) / n ------------------------------------------------------
void mse_loss_cpu(const OpCall& c) {
  const Tensor &a = c.in[0], &b = c.in[1];
  dispatch_float(a.dtype(), "mse_loss", [&](auto tag) {
    using T = decltype(tag);
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    const int64_t n = a.numel();
    double s = chunked_sum(n, [&](int64_t i) {
      double d = static_cast<double>(pa[i]) - static_cast<double>(pb[i]);
      return d * d;
    });
    c.out[0].data<T>()[0] = static_cast<T>(s / static_cast<double>(n));
  });
}

// The difference is formed in double, so calling this with (gy, b, a) yields exactly -ga: IEEE
// subtraction is sign-symmetric. The autograd function gets gb that way.
void mse_loss_bwd_cpu(const OpCall& c) {
  const Tensor &gy = c.in[0], &a = c.in[1], &b = c.in[2];
  dispatch_float(a.dtype(), "mse_loss_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* ga = c.out[0].data<T>();
    const int64_t n = a.numel();
    const double k = 2.0 * scalar_of<T>(gy) / static_cast<double>(n);
#pragma omp parallel for if (n > kParallelGrain)
    for (int64_t i = 0; i < n; ++i)
      ga[i] = static_cast<T>(k * (static_cast<double>(pa[i]) - static_cast<double>(pb[i])));
  });
}

// ---- l1: mean |a-b|; d/da = sign(a-b) / n, 0 where a == b (PyTorch's sgn) ----------------------
void l1_loss_cpu(const OpCall& c) {
  const Tensor &a = c.in[0], &b = c.in[1];
  dispatch_float(a.dtype(), "l1_loss", [&](auto tag) {
    using T = decltype(tag);
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    const int64_t n = a.numel();
    double s = chunked_sum(n, [&](int64_t i) {
      return std::fabs(static_cast<double>(pa[i]) - static_cast<double>(pb[i]));
    });
    c.out[0].data<T>()[0] = static_cast<T>(s / static_cast<double>(n));
  });
}

void l1_loss_bwd_cpu(const OpCall& c) {
  const Tensor &gy = c.in[0], &a = c.in[1], &b = c.in[2];
  dispatch_float(a.dtype(), "l1_loss_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* ga = c.out[0].data<T>();
    const int64_t n = a.numel();
    const double k = scalar_of<T>(gy) / static_cast<double>(n);
#pragma omp parallel for if (n > kParallelGrain)
    for (int64_t i = 0; i < n; ++i) {
      double d = static_cast<double>(pa[i]) - static_cast<double>(pb[i]);
      // A NaN difference stays NaN in the gradient instead of being silently zeroed.
      double s = d > 0 ? 1.0 : d < 0 ? -1.0 : d == 0 ? 0.0 : d;
      ga[i] = static_cast<T>(k * s);
    }
  });
}

// ---- KL(N(mu, e^logvar) || N(0, 1)) = 0.5 sum(mu^2 + e^logvar - 1 - logvar) / normaliser -------
// expm1 keeps e^lv - 1 accurate for |lv| << 1, where a VAE's posterior usually sits; e^lv - 1 in
// plain arithmetic loses all digits below 1e-16 absolute there.
void kl_gauss_cpu(const OpCall& c) {
  const Tensor &mu = c.in[0], &lv = c.in[1];
  const double norm = c.reals[0];
  dispatch_float(mu.dtype(), "kl_gauss", [&](auto tag) {
    using T = decltype(tag);
    const T* pm = mu.data<T>();
    const T* pl = lv.data<T>();
    double s = chunked_sum(mu.numel(), [&](int64_t i) {
      double m = pm[i], l = pl[i];
      return m * m + (std::expm1(l) - l);
    });
    c.out[0].data<T>()[0] = static_cast<T>(0.5 * s / norm);
  });
}

// d/dmu = mu / normaliser, d/dlogvar = 0.5 (e^logvar - 1) / normaliser.
void kl_gauss_bwd_cpu(const OpCall& c) {
  const Tensor &gy = c.in[0], &mu = c.in[1], &lv = c.in[2];
  const double norm = c.reals[0];
  dispatch_float(mu.dtype(), "kl_gauss_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T* pm = mu.data<T>();
    const T* pl = lv.data<T>();
    T* gmu = c.out[0].data<T>();
    T* glv = c.out[1].data<T>();
    const int64_t n = mu.numel();
    const double k = scalar_of<T>(gy) / norm;
#pragma omp parallel for if (n > kParallelGrain)
    for (int64_t i = 0; i < n; ++i) {
      gmu[i] = static_cast<T>(k * static_cast<double>(pm[i]));
      glv[i] = static_cast<T>(0.5 * k * std::expm1(static_cast<double>(pl[i])));
    }
  });
}

// ---- cross-entropy over logits (N, C) with class targets (N) ------------------------------------
// Checked serially before any parallel loop: an exception must not escape an OpenMP region.
void check_targets(const char* op, const Tensor& target, int64_t n, int64_t classes) {
  for (int64_t i = 0; i < n; ++i) {
    int64_t y = id_at(target, i);
    if (y < 0 || y >= classes)
      throw std::invalid_argument(
          fmt::format("{}: target[{}] = {} is outside [0, C) with C = {}", op, i, y, classes));
  }
}

// Per row: lse = max + log sum e^(x - max) (the shift keeps e^x finite for logits of +-1000), and
// NLL = lse - x[target]. Rows run in parallel; the mean over rows is one serial sum in row order.
void cross_entropy_cpu(const OpCall& c) {
  const Tensor &x = c.in[0], &target = c.in[1];
  const int64_t n = x.size(0), classes = x.size(1);
  check_targets("cross_entropy", target, n, classes);
  dispatch_float(x.dtype(), "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* lse = c.out[1].data<T>();
    std::vector<double> nll(static_cast<size_t>(n));
#pragma omp parallel for if (n * classes > kParallelGrain)
    for (int64_t i = 0; i < n; ++i) {
      const T* row = px + i * classes;
      double mx = row[0];
      for (int64_t k = 1; k < classes; ++k) mx = std::max(mx, static_cast<double>(row[k]));
      double s = 0;
      for (int64_t k = 0; k < classes; ++k) s += std::exp(static_cast<double>(row[k]) - mx);
      double l = mx + std::log(s);
      lse[i] = static_cast<T>(l);
      nll[static_cast<size_t>(i)] = l - static_cast<double>(row[id_at(target, i)]);
    }
    double total = 0;
    for (double v : nll) total += v;
    c.out[0].data<T>()[0] = static_cast<T>(total / static_cast<double>(n));
  });
}

// glogits = gy (softmax - onehot) / N, softmax rebuilt from the saved lse as e^(x - lse).
void cross_entropy_bwd_cpu(const OpCall& c) {
  const Tensor &gy = c.in[0], &x = c.in[1], &target = c.in[2], &lse = c.in[3];
  const int64_t n = x.size(0), classes = x.size(1);
  check_targets("cross_entropy_bwd", target, n, classes);
  dispatch_float(x.dtype(), "cross_entropy_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    const T* pl = lse.data<T>();
    T* gx = c.out[0].data<T>();
    const double k = scalar_of<T>(gy) / static_cast<double>(n);
#pragma omp parallel for if (n * classes > kParallelGrain)
    for (int64_t i = 0; i < n; ++i) {
      const T* row = px + i * classes;
      T* grow = gx + i * classes;
      const double l = pl[i];
      const int64_t y = id_at(target, i);
      for (int64_t j = 0; j < classes; ++j) {
        double p = std::exp(static_cast<double>(row[j]) - l);
        grow[j] = static_cast<T>(k * (p - (j == y ? 1.0 : 0.0)));
      }
    }
  });
}

}  // namespace

void register_loss(OpTable& t) {
  t[Op::mse_loss].cpu = &mse_loss_cpu;
  t[Op::mse_loss_bwd].cpu = &mse_loss_bwd_cpu;
  t[Op::l1_loss].cpu = &l1_loss_cpu;
  t[Op::l1_loss_bwd].cpu = &l1_loss_bwd_cpu;
  t[Op::kl_gauss].cpu = &kl_gauss_cpu;
  t[Op::kl_gauss_bwd].cpu = &kl_gauss_bwd_cpu;
  t[Op::cross_entropy].cpu = &cross_entropy_cpu;
  t[Op::cross_entropy_bwd].cpu = &cross_entropy_bwd_cpu;
}

}  // namespace psvae::kernels::cpu
