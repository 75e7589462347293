// CPU kernels: attention, the reference the CUDA flash attention is tested against.
//
// Layout (B,T,H,d) as the qkv projection produces it: row (b,t,h) of q starts at (b*T+t)*sq+h*d,
// so the (T, d) matrix of one (b, h) pair is a strided view (row stride sq = H*d, or 3*H*d for q,
// k, v inside the packed rows (B,T,3,H,d) of attention_qkv) that Eigen maps directly
// (OuterStride), with no gather. Per pair and per block of kQBlock query rows:
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

// Sizes, and the row strides of q/gq, k/gk, v/gv (o and go are dense: H dv).
struct Dims {
  int64_t B, Tq, Tk, H, d, dv;
  int64_t sq, sk, sv;
};

Dims dims_of(const Tensor& q, const Tensor& k, const Tensor& v) {
  const int64_t H = q.size(2), d = q.size(3), dv = v.size(3);
  return {q.size(0), q.size(1), k.size(1), H, d, dv, H * d, H * d, H * dv};
}

// qkv (B,T,3,H,d): q, k, v at element offsets 0, H d, 2 H d of each row of 3 H d.
Dims packed_dims(const Tensor& qkv) {
  const int64_t H = qkv.size(3), d = qkv.size(4);
  return {qkv.size(0), qkv.size(1), qkv.size(1), H, d, d, 3 * H * d, 3 * H * d, 3 * H * d};
}

// q (B,Tq,H,d) dense, kv (B,Tk,2,H,d): k, v at element offsets 0, H d of each row of 2 H d.
Dims kv_packed_dims(const Tensor& q, const Tensor& kv) {
  const int64_t H = q.size(2), d = q.size(3);
  return {q.size(0), q.size(1), kv.size(1), H, d, d, H * d, 2 * H * d, 2 * H * d};
}

// p + k elements, or null for a null p (an empty tensor may have no storage).
template <class T>
T* offset(T* p, int64_t k) {
  return p ? p + k : p;
}

// The operands of one call, in the storage type.
template <class T>
struct FwdPtrs {
  const T *q, *k, *v;
  const int32_t* mask;
  T *o, *lse;
};
template <class T>
struct BwdPtrs {
  const T *go, *q, *k, *v, *o, *lse;
  const int32_t* mask;
  T *gq, *gk, *gv;
};

// Query rows per block: bounds the per-thread score buffers to kQBlock * Tk elements (Tk = 4096
// would otherwise need 64 MB per (Tq, Tk) matrix in f32) while keeping the GEMMs large enough
// for Eigen's packing to pay off. The demo's 65 queries fit in one block.
constexpr int64_t kQBlock = 128;

// The (rows, cols) matrix of one (b, h) pair inside a (B, T, H, cols) tensor whose tokens are
// `stride` elements apart.
template <class T>
using StridedMap = Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using ConstStridedMap = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;

template <class T>
ConstStridedMap<T> pair_view(const T* base, int64_t b, int64_t h, int64_t row0, int64_t rows,
                             int64_t T_, int64_t stride, int64_t cols) {
  return ConstStridedMap<T>(base + (b * T_ + row0) * stride + h * cols, rows, cols,
                            Eigen::OuterStride<>(stride));
}

template <class T>
StridedMap<T> pair_view_mut(T* base, int64_t b, int64_t h, int64_t row0, int64_t rows, int64_t T_,
                            int64_t stride, int64_t cols) {
  return StridedMap<T>(base + (b * T_ + row0) * stride + h * cols, rows, cols,
                       Eigen::OuterStride<>(stride));
}

// exp in the data's precision: for f32 data expf is 2-3x cheaper than exp and its 1-ulp error
// (6e-8 relative) is far below what the f32 GEMMs around it add. Arguments are <= 0 here (scores
// minus their row max or minus lse), so nothing overflows.
inline double exp_as(float, double x) { return std::exp(static_cast<float>(x)); }
inline double exp_as(double, double x) { return std::exp(x); }

// (q, k, v, [key_mask]) -> (o, lse) with the strides of n.
template <class T>
void attention_fwd_impl(const FwdPtrs<T>& a, const Dims& n, double scale) {
  const T *qp = a.q, *kp = a.k, *vp = a.v;
  const int32_t* mask = a.mask;
  T *op = a.o, *lp = a.lse;
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
      auto K = pair_view(kp, b, h, 0, n.Tk, n.Tk, n.sk, n.d);
      auto V = pair_view(vp, b, h, 0, n.Tk, n.Tk, n.sv, n.dv);
      for (int64_t i0 = 0; i0 < n.Tq; i0 += kQBlock) {
        const int64_t m = std::min(kQBlock, n.Tq - i0);
        auto Q = pair_view(qp, b, h, i0, m, n.Tq, n.sq, n.d);
        auto O = pair_view_mut(op, b, h, i0, m, n.Tq, n.H * n.dv, n.dv);
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

// (q, k, v, [key_mask]) -> (o, lse); reals: scale.
void attention_cpu(const OpCall& c) {
  dispatch_float(c.in[0].dtype(), "attention", [&](auto tag) {
    using T = decltype(tag);
    const FwdPtrs<T> a{c.in[0].data<T>(),  c.in[1].data<T>(),
                       c.in[2].data<T>(),  c.in.size() > 3 ? c.in[3].data<int32_t>() : nullptr,
                       c.out[0].data<T>(), c.out[1].data<T>()};
    attention_fwd_impl(a, dims_of(c.in[0], c.in[1], c.in[2]), c.reals[0]);
  });
}

// (qkv (B,T,3,H,d), [key_mask]) -> (o, lse); reals: scale. q, k, v read in place.
void attention_qkv_cpu(const OpCall& c) {
  dispatch_float(c.in[0].dtype(), "attention_qkv", [&](auto tag) {
    using T = decltype(tag);
    const Dims n = packed_dims(c.in[0]);
    const T* qkv = c.in[0].data<T>();
    const FwdPtrs<T> a{qkv,
                       offset(qkv, n.H * n.d),
                       offset(qkv, 2 * n.H * n.d),
                       c.in.size() > 1 ? c.in[1].data<int32_t>() : nullptr,
                       c.out[0].data<T>(),
                       c.out[1].data<T>()};
    attention_fwd_impl(a, n, c.reals[0]);
  });
}

// (q (B,Tq,H,d), kv (B,Tk,2,H,d), [key_mask]) -> (o, lse); reals: scale. k, v read in place.
void attention_kv_cpu(const OpCall& c) {
  dispatch_float(c.in[0].dtype(), "attention_kv", [&](auto tag) {
    using T = decltype(tag);
    const Dims n = kv_packed_dims(c.in[0], c.in[1]);
    const T* kv = c.in[1].data<T>();
    const FwdPtrs<T> a{c.in[0].data<T>(),     kv,
                       offset(kv, n.H * n.d), c.in.size() > 2 ? c.in[2].data<int32_t>() : nullptr,
                       c.out[0].data<T>(),    c.out[1].data<T>()};
    attention_fwd_impl(a, n, c.reals[0]);
  });
}

// (go, q, k, v, o, lse, [key_mask]) -> (gq, gk, gv) with the strides of n. With P = exp(S*scale -
// lse), D_i = go_i . o_i, dP = go V^T, dS = P (dP - D):
//   gq = scale dS K,  gk = scale dS^T Q,  gv = P^T go.
// gk and gv sum over queries: the query blocks of one (b, h) pair run serially in order in one
// thread, adding into that pair's gk and gv, so the result is deterministic for any thread count.
template <class T>
void attention_bwd_impl(const BwdPtrs<T>& a, const Dims& n, double scale) {
  const int32_t* mask = a.mask;
  const T *gop = a.go, *qp = a.q, *kp = a.k, *vp = a.v, *opp = a.o, *lp = a.lse;
  T *gqp = a.gq, *gkp = a.gk, *gvp = a.gv;
  const int64_t so = n.H * n.dv;  // o, go
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
      auto K = pair_view(kp, b, h, 0, n.Tk, n.Tk, n.sk, n.d);
      auto V = pair_view(vp, b, h, 0, n.Tk, n.Tk, n.sv, n.dv);
      auto gK = pair_view_mut(gkp, b, h, 0, n.Tk, n.Tk, n.sk, n.d);
      auto gV = pair_view_mut(gvp, b, h, 0, n.Tk, n.Tk, n.sv, n.dv);
      gK.setZero();
      gV.setZero();
      for (int64_t i0 = 0; i0 < n.Tq; i0 += kQBlock) {
        const int64_t m = std::min(kQBlock, n.Tq - i0);
        auto Q = pair_view(qp, b, h, i0, m, n.Tq, n.sq, n.d);
        auto gO = pair_view(gop, b, h, i0, m, n.Tq, so, n.dv);
        auto O = pair_view(opp, b, h, i0, m, n.Tq, so, n.dv);
        auto gQ = pair_view_mut(gqp, b, h, i0, m, n.Tq, n.sq, n.d);
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

// (go, q, k, v, o, lse, [key_mask]) -> (gq, gk, gv); reals: scale.
void attention_bwd_cpu(const OpCall& c) {
  dispatch_float(c.in[0].dtype(), "attention_bwd", [&](auto tag) {
    using T = decltype(tag);
    const BwdPtrs<T> a{c.in[0].data<T>(),
                       c.in[1].data<T>(),
                       c.in[2].data<T>(),
                       c.in[3].data<T>(),
                       c.in[4].data<T>(),
                       c.in[5].data<T>(),
                       c.in.size() > 6 ? c.in[6].data<int32_t>() : nullptr,
                       c.out[0].data<T>(),
                       c.out[1].data<T>(),
                       c.out[2].data<T>()};
    attention_bwd_impl(a, dims_of(c.in[1], c.in[2], c.in[3]), c.reals[0]);
  });
}

// (go, qkv, o, lse, [key_mask]) -> gqkv (B,T,3,H,d); reals: scale. gq, gk, gv written in place.
// Every element of gqkv is written: gK and gV are zeroed per pair, gQ set per query block.
void attention_qkv_bwd_cpu(const OpCall& c) {
  dispatch_float(c.in[0].dtype(), "attention_qkv_bwd", [&](auto tag) {
    using T = decltype(tag);
    const Dims n = packed_dims(c.in[1]);
    const int64_t C = n.H * n.d;
    const T* qkv = c.in[1].data<T>();
    T* g = c.out[0].data<T>();
    const BwdPtrs<T> a{c.in[0].data<T>(),
                       qkv,
                       offset(qkv, C),
                       offset(qkv, 2 * C),
                       c.in[2].data<T>(),
                       c.in[3].data<T>(),
                       c.in.size() > 4 ? c.in[4].data<int32_t>() : nullptr,
                       g,
                       offset(g, C),
                       offset(g, 2 * C)};
    attention_bwd_impl(a, n, c.reals[0]);
  });
}

// (go, q, kv, o, lse, [key_mask]) -> (gq, gkv (B,Tk,2,H,d)); reals: scale. gk, gv written in
// place into gkv (every element: gK and gV are zeroed per pair before their sums).
void attention_kv_bwd_cpu(const OpCall& c) {
  dispatch_float(c.in[0].dtype(), "attention_kv_bwd", [&](auto tag) {
    using T = decltype(tag);
    const Dims n = kv_packed_dims(c.in[1], c.in[2]);
    const int64_t C = n.H * n.d;
    const T* kv = c.in[2].data<T>();
    T* g = c.out[1].data<T>();
    const BwdPtrs<T> a{c.in[0].data<T>(),
                       c.in[1].data<T>(),
                       kv,
                       offset(kv, C),
                       c.in[3].data<T>(),
                       c.in[4].data<T>(),
                       c.in.size() > 5 ? c.in[5].data<int32_t>() : nullptr,
                       c.out[0].data<T>(),
                       g,
                       offset(g, C)};
    attention_bwd_impl(a, n, c.reals[0]);
  });
}

}  // namespace

void register_attention(OpTable& t) {
  t[Op::attention].cpu = &attention_cpu;
  t[Op::attention_bwd].cpu = &attention_bwd_cpu;
  t[Op::attention_qkv].cpu = &attention_qkv_cpu;
  t[Op::attention_qkv_bwd].cpu = &attention_qkv_bwd_cpu;
  t[Op::attention_kv].cpu = &attention_kv_cpu;
  t[Op::attention_kv_bwd].cpu = &attention_kv_bwd_cpu;
}

}  // namespace psvae::kernels::cpu
