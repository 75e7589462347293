// CPU kernels: attention, the reference the CUDA flash attention is tested against.
//
// Layout (B,T,H,d) as the qkv projection produces it: row (b,t,h) of q starts at ((b*T+t)*H+h)*d.
// The forward materialises one query's scores at a time (Tk doubles), never the (Tq,Tk) matrix,
// and keeps lse = logsumexp of the scaled scores so the backward can rebuild P without another
// softmax pass (FlashAttention-2, Dao 2023, Algorithm 2). All sums run in double.
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_common.h"

namespace psvae::kernels::cpu {

namespace {

struct Dims {
  int64_t B, Tq, Tk, H, d, dv;
};

Dims dims_of(const Tensor& q, const Tensor& k, const Tensor& v) {
  return {q.size(0), q.size(1), k.size(1), q.size(2), q.size(3), v.size(3)};
}

template <class T>
double dot(const T* a, const T* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return s;
}

// (q, k, v, [key_mask]) -> (o, lse); reals: scale. One query row per iteration, rows independent.
template <class T>
void attention_typed(const OpCall& c) {
  const Tensor &q = c.in[0], &k = c.in[1], &v = c.in[2];
  const int32_t* mask = c.in.size() > 3 ? c.in[3].data<int32_t>() : nullptr;
  const Dims n = dims_of(q, k, v);
  const double scale = c.reals[0];
  const T *qp = q.data<T>(), *kp = k.data<T>(), *vp = v.data<T>();
  T* op = c.out[0].data<T>();
  T* lp = c.out[1].data<T>();
  const int64_t rows = n.B * n.H * n.Tq;  // ordered (b, h, i) like lse
  const int64_t work = rows * n.Tk * (n.d + n.dv);
#pragma omp parallel if (work > kParallelGrain)
  {
    std::vector<double> s(static_cast<size_t>(n.Tk)), acc(static_cast<size_t>(n.dv));
#pragma omp for
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = r % n.Tq, h = (r / n.Tq) % n.H, b = r / (n.Tq * n.H);
      const T* qi = qp + ((b * n.Tq + i) * n.H + h) * n.d;
      T* oi = op + ((b * n.Tq + i) * n.H + h) * n.dv;
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < n.Tk; ++j) {
        if (mask && mask[b * n.Tk + j] == 0) continue;
        s[static_cast<size_t>(j)] = scale * dot(qi, kp + ((b * n.Tk + j) * n.H + h) * n.d, n.d);
        m = std::max(m, s[static_cast<size_t>(j)]);
      }
      if (m == -std::numeric_limits<double>::infinity()) {  // every key masked
        for (int64_t e = 0; e < n.dv; ++e) oi[e] = T(0);
        lp[r] = -std::numeric_limits<T>::infinity();
        continue;
      }
      double sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < n.Tk; ++j) {
        if (mask && mask[b * n.Tk + j] == 0) continue;
        const double p = std::exp(s[static_cast<size_t>(j)] - m);
        sum += p;
        const T* vj = vp + ((b * n.Tk + j) * n.H + h) * n.dv;
        for (int64_t e = 0; e < n.dv; ++e) acc[static_cast<size_t>(e)] += p * vj[e];
      }
      for (int64_t e = 0; e < n.dv; ++e) oi[e] = static_cast<T>(acc[static_cast<size_t>(e)] / sum);
      lp[r] = static_cast<T>(m + std::log(sum));
    }
  }
}

void attention_cpu(const OpCall& c) {
  dispatch_float(c.in[0].dtype(), "attention",
                 [&](auto tag) { attention_typed<decltype(tag)>(c); });
}

// (go, q, k, v, o, lse, [key_mask]) -> (gq, gk, gv); reals: scale. With P = exp(S*scale - lse),
// D_i = go_i . o_i, dP_ij = go_i . v_j, dS = P (dP - D):
//   gq_i = scale sum_j dS_ij k_j,  gk_j = scale sum_i dS_ij q_i,  gv_j = sum_i P_ij go_i.
// gk and gv sum over queries, so the parallel loop is over (b, h) pairs and the queries of one pair
// run serially in order: deterministic for any thread count, no atomics.
template <class T>
void attention_bwd_typed(const OpCall& c) {
  const Tensor &go = c.in[0], &q = c.in[1], &k = c.in[2], &v = c.in[3], &o = c.in[4];
  const Tensor& lse = c.in[5];
  const int32_t* mask = c.in.size() > 6 ? c.in[6].data<int32_t>() : nullptr;
  const Dims n = dims_of(q, k, v);
  const double scale = c.reals[0];
  const T *gop = go.data<T>(), *qp = q.data<T>(), *kp = k.data<T>(), *vp = v.data<T>();
  const T *opp = o.data<T>(), *lp = lse.data<T>();
  T *gqp = c.out[0].data<T>(), *gkp = c.out[1].data<T>(), *gvp = c.out[2].data<T>();
  const int64_t pairs = n.B * n.H;
  const int64_t work = pairs * n.Tq * n.Tk * (n.d + n.dv);
#pragma omp parallel if (work > kParallelGrain)
  {
    std::vector<double> gk(static_cast<size_t>(n.Tk * n.d)), gv(static_cast<size_t>(n.Tk * n.dv));
    std::vector<double> gq(static_cast<size_t>(n.d));
#pragma omp for
    for (int64_t bh = 0; bh < pairs; ++bh) {
      const int64_t b = bh / n.H, h = bh % n.H;
      std::fill(gk.begin(), gk.end(), 0.0);
      std::fill(gv.begin(), gv.end(), 0.0);
      for (int64_t i = 0; i < n.Tq; ++i) {
        const int64_t qrow = (b * n.Tq + i) * n.H + h;
        const T* qi = qp + qrow * n.d;
        const T* goi = gop + qrow * n.dv;
        T* gqi = gqp + qrow * n.d;
        const double l = static_cast<double>(lp[(b * n.H + h) * n.Tq + i]);
        std::fill(gq.begin(), gq.end(), 0.0);
        if (l != -std::numeric_limits<double>::infinity()) {  // else every key masked: no grad
          const double D = dot(goi, opp + qrow * n.dv, n.dv);
          for (int64_t j = 0; j < n.Tk; ++j) {
            if (mask && mask[b * n.Tk + j] == 0) continue;
            const T* kj = kp + ((b * n.Tk + j) * n.H + h) * n.d;
            const T* vj = vp + ((b * n.Tk + j) * n.H + h) * n.dv;
            const double p = std::exp(scale * dot(qi, kj, n.d) - l);
            const double ds = p * (dot(goi, vj, n.dv) - D);
            double* gkj = gk.data() + j * n.d;
            double* gvj = gv.data() + j * n.dv;
            for (int64_t e = 0; e < n.d; ++e) {
              gq[static_cast<size_t>(e)] += ds * kj[e];
              gkj[e] += ds * qi[e];
            }
            for (int64_t e = 0; e < n.dv; ++e) gvj[e] += p * goi[e];
          }
        }
        for (int64_t e = 0; e < n.d; ++e)
          gqi[e] = static_cast<T>(scale * gq[static_cast<size_t>(e)]);
      }
      for (int64_t j = 0; j < n.Tk; ++j) {
        T* gkj = gkp + ((b * n.Tk + j) * n.H + h) * n.d;
        T* gvj = gvp + ((b * n.Tk + j) * n.H + h) * n.dv;
        for (int64_t e = 0; e < n.d; ++e)
          gkj[e] = static_cast<T>(scale * gk[static_cast<size_t>(j * n.d + e)]);
        for (int64_t e = 0; e < n.dv; ++e)
          gvj[e] = static_cast<T>(gv[static_cast<size_t>(j * n.dv + e)]);
      }
    }
  }
}

void attention_bwd_cpu(const OpCall& c) {
  dispatch_float(c.in[0].dtype(), "attention_bwd",
                 [&](auto tag) { attention_bwd_typed<decltype(tag)>(c); });
}

}  // namespace

void register_attention(OpTable& t) {
  t[Op::attention].cpu = &attention_cpu;
  t[Op::attention_bwd].cpu = &attention_bwd_cpu;
}

}  // namespace psvae::kernels::cpu
