// CPU kernels: the LPIPS v0.1 distance at one tap, fused (Zhang et al. 2018, "The Unreasonable
// Effectiveness of Deep Features as a Perceptual Metric"). For feature maps f0, f1 (N,C,H,W) of
// the two images and the tap's linear weights w (C), at every position p = (h, w):
//   r_i = sqrt(sum_c f_i,c^2 + floor),  a_i = 1 / (r_i + eps),  u_i = a_i f_i   (unit vectors)
//   d_n = 1/(H W) sum_p sum_c w_c (u0,c - u1,c)^2
// Composed from table ops this is 9 ops and 6 full-size temporaries per image pair and tap; fused,
// it reads f0 and f1 once (twice in the backward) and writes d (N) or the two gradients.
//
// Backward, with q_c = 2 (gd_n / HW) w_c (u0,c - u1,c), the gradient of the loss w.r.t. u0 (and -q
// w.r.t. u1), and da/df_k = -a^2 f_k / r:
//   g0,k = a0 q_k - a0^2 (f0,k / r0) sum_c q_c f0,c
//   g1,k = -(a1 q_k - a1^2 (f1,k / r1) sum_c q_c f1,c)
// The lin weights are fixed (LPIPS ships them), so w gets no gradient.
//
// Everything is formed in double. The mean over positions is a fixed-order sum: positions are cut
// into chunks of kChunk (the cut depends only on the shape), each chunk summed serially, the
// partials added in order, so the result is the same for any thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_common.h"

namespace psvae::kernels::cpu {

namespace {

constexpr int64_t kChunk = 1024;  // positions per partial sum

struct Dims {
  int64_t n, c, hw;
};
Dims dims_of(const Tensor& f) { return {f.size(0), f.size(1), f.size(2) * f.size(3)}; }

// The per-position quantities both passes need, for position p of sample n.
template <class T>
struct Position {
  const T *f0, *f1;  // channel 0 of this position; channel c is at c * hw
  int64_t hw;
  double r0 = 0, r1 = 0, a0 = 0, a1 = 0;
  Position(const T* f0_, const T* f1_, int64_t hw_, int64_t channels, double eps, double floor)
      : f0(f0_), f1(f1_), hw(hw_) {
    double s0 = floor, s1 = floor;
    for (int64_t c = 0; c < channels; ++c) {
      const double x0 = static_cast<double>(f0[c * hw]), x1 = static_cast<double>(f1[c * hw]);
      s0 += x0 * x0;
      s1 += x1 * x1;
    }
    r0 = std::sqrt(s0), r1 = std::sqrt(s1);
    a0 = 1.0 / (r0 + eps), a1 = 1.0 / (r1 + eps);
  }
  double delta(int64_t c) const {
    return a0 * static_cast<double>(f0[c * hw]) - a1 * static_cast<double>(f1[c * hw]);
  }
};

void lpips_tap_cpu(const OpCall& c) {
  const Tensor &f0 = c.in[0], &f1 = c.in[1], &w = c.in[2];
  const double eps = c.reals[0], floor = c.reals[1];
  const Dims d = dims_of(f0);
  dispatch_float(f0.dtype(), "lpips_tap", [&](auto tag) {
    using T = decltype(tag);
    const T *p0 = f0.data<T>(), *p1 = f1.data<T>(), *pw = w.data<T>();
    T* out = c.out[0].data<T>();
    const int64_t chunks = (d.hw + kChunk - 1) / kChunk;
    std::vector<double> partial(static_cast<size_t>(d.n * chunks));
#pragma omp parallel for if (d.n * d.hw * d.c > kParallelGrain)
    for (int64_t t = 0; t < d.n * chunks; ++t) {
      const int64_t n = t / chunks, p_lo = (t % chunks) * kChunk;
      const int64_t p_hi = std::min(d.hw, p_lo + kChunk);
      double s = 0;
      for (int64_t p = p_lo; p < p_hi; ++p) {
        const int64_t base = n * d.c * d.hw + p;
        const Position<T> pos(p0 + base, p1 + base, d.hw, d.c, eps, floor);
        for (int64_t ch = 0; ch < d.c; ++ch) {
          const double dl = pos.delta(ch);
          s += static_cast<double>(pw[ch]) * dl * dl;
        }
      }
      partial[static_cast<size_t>(t)] = s;
    }
    for (int64_t n = 0; n < d.n; ++n) {
      double s = 0;
      for (int64_t k = 0; k < chunks; ++k) s += partial[static_cast<size_t>(n * chunks + k)];
      out[n] = static_cast<T>(s / static_cast<double>(d.hw));
    }
  });
}

void lpips_tap_bwd_cpu(const OpCall& c) {
  const Tensor &gd = c.in[0], &f0 = c.in[1], &f1 = c.in[2], &w = c.in[3];
  const double eps = c.reals[0], floor = c.reals[1];
  const Dims d = dims_of(f0);
  dispatch_float(f0.dtype(), "lpips_tap_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T *p0 = f0.data<T>(), *p1 = f1.data<T>(), *pw = w.data<T>(), *pg = gd.data<T>();
    T *g0 = c.out[0].data<T>(), *g1 = c.out[1].data<T>();
#pragma omp parallel for if (d.n * d.hw * d.c > kParallelGrain)
    for (int64_t t = 0; t < d.n * d.hw; ++t) {
      const int64_t n = t / d.hw, p = t % d.hw;
      const int64_t base = n * d.c * d.hw + p;
      const Position<T> pos(p0 + base, p1 + base, d.hw, d.c, eps, floor);
      const double scale = 2.0 * static_cast<double>(pg[n]) / static_cast<double>(d.hw);
      double qf0 = 0, qf1 = 0;  // sum_c q_c f0,c and sum_c q_c f1,c
      for (int64_t ch = 0; ch < d.c; ++ch) {
        const double q = scale * static_cast<double>(pw[ch]) * pos.delta(ch);
        qf0 += q * static_cast<double>(pos.f0[ch * d.hw]);
        qf1 += q * static_cast<double>(pos.f1[ch * d.hw]);
      }
      const double k0 = pos.a0 * pos.a0 * qf0 / pos.r0, k1 = pos.a1 * pos.a1 * qf1 / pos.r1;
      for (int64_t ch = 0; ch < d.c; ++ch) {
        const double q = scale * static_cast<double>(pw[ch]) * pos.delta(ch);
        const int64_t i = base + ch * d.hw;
        g0[i] = static_cast<T>(pos.a0 * q - k0 * static_cast<double>(p0[i]));
        g1[i] = static_cast<T>(-(pos.a1 * q - k1 * static_cast<double>(p1[i])));
      }
    }
  });
}

}  // namespace

void register_lpips(OpTable& t) {
  t[Op::lpips_tap].cpu = &lpips_tap_cpu;
  t[Op::lpips_tap_bwd].cpu = &lpips_tap_bwd_cpu;
}

}  // namespace psvae::kernels::cpu
