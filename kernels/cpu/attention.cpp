// CPU kernels: attention, the reference the CUDA flash attention is tested against.
//
// Layout (B,T,H,d) as the qkv projection produces it: row (b,t,h) of q starts at ((b*T+t)*H+h)*d,
// so the (T, d) matrix of one (b, h) pair is a strided view (row stride H*d) that Eigen maps
// directly (OuterStride), with no gather. Per pair and per block of kQBlock query rows:
//   S = Q K^T (GEMM), P = softmax(scale S) row-wise (max-subtracted, exp and sum in double),
//   O = P V (GEMM), lse = m + log(sum).
// The forward keeps lse so the backward rebuilds P = exp(scale S - lse) without another softmax
// pass (FlashAttention-2, Dao 2023, Algorithm 2).
//
// Why GEMMs: the demo encoder (65 tokens, d = 32, 3 heads, batch 32) spent ~45% of a step in the
// old one-query-row-at-a-time loops (scalar dot products in double); Eigen's packed f32 kernels
// do the same multiply-adds several times faster. The GEMMs accumulate in the data's type, like
// linalg.cpp's (K = d or Tk here, a few hundred at most: relative error ~ sqrt(K) * 6e-8 in f32);
// the softmax's max, exp and row sums stay in double.
//
// Determinism: OpenMP splits (b, h) pairs only; each pair's work (all its query blocks, and in
// the backward the sums over queries into gk, gv) runs serially in one thread in a fixed order,
// and each Eigen GEMM is serial with a blocking that depends only on its shape (eigen_util.h).
// The bits are therefore the same for any thread count (tested in spec_attention.cpp).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/eigen_util.h"

namespace psvae::kernels::cpu {

namespace {

struct Dims {
  int64_t B, Tq, Tk, H, d, dv;
};

Dims dims_of(const Tensor& q, const Tensor& k, const Tensor& v) {
  return {q.size(0), q.size(1), k.size(1), q.size(2), q.size(3), v.size(3)};
}

// Query rows per block: bounds the per-thread score buffers to kQBlock * Tk elements (Tk = 4096
// would otherwise need 64 MB per (Tq, Tk) matrix in f32) while keeping the GEMMs large enough
// for Eigen's packing to pay off. The demo's 65 queries fit in one block.
constexpr int64_t kQBlock = 128;

// The (rows, cols) matrix of one (b, h) pair inside a (B, T, H, cols) tensor.
template <class T>
using StridedMap = Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using ConstStridedMap = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;

template <class T>
ConstStridedMap<T> pair_view(const T* base, int64_t b, int64_t h, int64_t row0, int64_t rows,
                             int64_t T_, int64_t H, int64_t cols) {
  return ConstStridedMap<T>(base + ((b * T_ + row0) * H + h) * cols, rows, cols,
                            Eigen::OuterStride<>(H * cols));
}

template <class T>
StridedMap<T> pair_view_mut(T* base, int64_t b, int64_t h, int64_t row0, int64_t rows, int64_t T_,
                            int64_t H, int64_t cols) {
  return StridedMap<T>(base + ((b * T_ + row0) * H + h) * cols, rows, cols,
                       Eigen::OuterStride<>(H * cols));
}

// exp in the data's precision: for f32 data expf is 2-3x cheaper than exp and its 1-ulp error
// (6e-8 relative) is far below what the f32 GEMMs around it add. Arguments are <= 0 here (scores
// minus their row max or minus lse), so nothing overflows.
inline double exp_as(float, double x) { return std::exp(static_cast<float>(x)); }
inline double exp_as(double, double x) { return std::exp(x); }

// (q, k, v, [key_mask]) -> (o, lse); reals: scale.
template <class T>
void attention_typed(const OpCall& c) {
  const Tensor &q = c.in[0], &k = c.in[1], &v = c.in[2];
  const int32_t* mask = c.in.size() > 3 ? c.in[3].data<int32_t>() : nullptr;
  const Dims n = dims_of(q, k, v);
  const double scale = c.reals[0];
  const T *qp = q.data<T>(), *kp = k.data<T>(), *vp = v.data<T>();
  T* op = c.out[0].data<T>();
  T* lp = c.out[1].data<T>();
  const int64_t pairs = n.B * n.H;
  const int64_t work = pairs * n.Tq * n.Tk * (n.d + n.dv);
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
#pragma omp parallel if (work > kParallelGrain && pairs > 1)
  {
    RowMat<T> P(std::min(kQBlock, n.Tq), n.Tk);
    std::vector<double> rowsum(static_cast<size_t>(std::min(kQBlock, n.Tq)));
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < pairs; ++bh) {
      const int64_t b = bh / n.H, h = bh % n.H;
      const int32_t* mb = mask ? mask + b * n.Tk : nullptr;
      auto K = pair_view(kp, b, h, 0, n.Tk, n.Tk, n.H, n.d);
      auto V = pair_view(vp, b, h, 0, n.Tk, n.Tk, n.H, n.dv);
      for (int64_t i0 = 0; i0 < n.Tq; i0 += kQBlock) {
        const int64_t m = std::min(kQBlock, n.Tq - i0);
        auto Q = pair_view(qp, b, h, i0, m, n.Tq, n.H, n.d);
        auto O = pair_view_mut(op, b, h, i0, m, n.Tq, n.H, n.dv);
        auto S = P.topRows(m);
        if (n.d > 0)
          S.noalias() = Q * K.transpose();
        else
          S.setZero();
        for (int64_t i = 0; i < m; ++i) {
          T* s = S.row(i).data();
          double mx = kNegInf;
          for (int64_t j = 0; j < n.Tk; ++j)
            if (!mb || mb[j] != 0) mx = std::max(mx, scale * static_cast<double>(s[j]));
          double sum = 0;
          if (mx != kNegInf)
            for (int64_t j = 0; j < n.Tk; ++j) {
              double p = 0;
              if (!mb || mb[j] != 0) p = exp_as(T{}, scale * static_cast<double>(s[j]) - mx);
              sum += p;
              s[j] = static_cast<T>(p);
            }
          rowsum[static_cast<size_t>(i)] = sum;
          lp[bh * n.Tq + i0 + i] = mx == kNegInf ? -std::numeric_limits<T>::infinity()
                                                 : static_cast<T>(mx + std::log(sum));
        }
        if (n.dv == 0) continue;
        if (n.Tk > 0)
          O.noalias() = S * V;
        else
          O.setZero();
        for (int64_t i = 0; i < m; ++i) {  // every key masked: o = 0 (the GEMM read no P)
          const double sum = rowsum[static_cast<size_t>(i)];
          if (sum > 0)
            O.row(i) *= static_cast<T>(1.0 / sum);
          else
            O.row(i).setZero();
        }
      }
    }
  }
}

void attention_cpu(const OpCall& c) {
  dispatch_float(c.in[0].dtype(), "attention",
                 [&](auto tag) { attention_typed<decltype(tag)>(c); });
}

// (go, q, k, v, o, lse, [key_mask]) -> (gq, gk, gv); reals: scale. With P = exp(S*scale - lse),
// D_i = go_i . o_i, dP = go V^T, dS = P (dP - D):
//   gq = scale dS K,  gk = scale dS^T Q,  gv = P^T go.
// gk and gv sum over queries: the query blocks of one (b, h) pair run serially in order in one
// thread, adding into that pair's gk and gv, so the result is deterministic for any thread count.
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
#pragma omp parallel if (work > kParallelGrain && pairs > 1)
  {
    const int64_t rows = std::min(kQBlock, n.Tq);
    RowMat<T> P(rows, n.Tk), dS(rows, n.Tk);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < pairs; ++bh) {
      const int64_t b = bh / n.H, h = bh % n.H;
      const int32_t* mb = mask ? mask + b * n.Tk : nullptr;
      auto K = pair_view(kp, b, h, 0, n.Tk, n.Tk, n.H, n.d);
      auto V = pair_view(vp, b, h, 0, n.Tk, n.Tk, n.H, n.dv);
      auto gK = pair_view_mut(gkp, b, h, 0, n.Tk, n.Tk, n.H, n.d);
      auto gV = pair_view_mut(gvp, b, h, 0, n.Tk, n.Tk, n.H, n.dv);
      gK.setZero();
      gV.setZero();
      for (int64_t i0 = 0; i0 < n.Tq; i0 += kQBlock) {
        const int64_t m = std::min(kQBlock, n.Tq - i0);
        auto Q = pair_view(qp, b, h, i0, m, n.Tq, n.H, n.d);
        auto gO = pair_view(gop, b, h, i0, m, n.Tq, n.H, n.dv);
        auto O = pair_view(opp, b, h, i0, m, n.Tq, n.H, n.dv);
        auto gQ = pair_view_mut(gqp, b, h, i0, m, n.Tq, n.H, n.d);
        auto Pb = P.topRows(m);
        auto dSb = dS.topRows(m);
        if (n.d > 0)
          Pb.noalias() = Q * K.transpose();
        else
          Pb.setZero();
        if (n.dv > 0)
          dSb.noalias() = gO * V.transpose();  // dP
        else
          dSb.setZero();
        for (int64_t i = 0; i < m; ++i) {
          T* p = Pb.row(i).data();
          T* ds = dSb.row(i).data();
          const double l = static_cast<double>(lp[bh * n.Tq + i0 + i]);
          if (l == -std::numeric_limits<double>::infinity()) {  // every key masked: no grad
            std::fill(p, p + n.Tk, T(0));
            std::fill(ds, ds + n.Tk, T(0));
            continue;
          }
          double D = 0;
          for (int64_t e = 0; e < n.dv; ++e)
            D += static_cast<double>(gO(i, e)) * static_cast<double>(O(i, e));
          for (int64_t j = 0; j < n.Tk; ++j) {
            double pj = 0;
            if (!mb || mb[j] != 0) pj = exp_as(T{}, scale * static_cast<double>(p[j]) - l);
            p[j] = static_cast<T>(pj);
            // scale folded into dS: gq = (scale dS) K and gk = (scale dS)^T Q.
            ds[j] = static_cast<T>(scale * pj * (static_cast<double>(ds[j]) - D));
          }
        }
        if (n.d > 0) {
          if (n.Tk > 0)
            gQ.noalias() = dSb * K;
          else
            gQ.setZero();  // an empty sum; Eigen's product would leave nothing to read
          gK.noalias() += dSb.transpose() * Q;
        }
        if (n.dv > 0) gV.noalias() += Pb.transpose() * gO;
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
