// CUDA attention backward, FlashAttention-2 style (Dao 2023, Algorithm 2) made deterministic:
// with P = exp(scale S - lse) rebuilt from the saved lse, D_i = go_i . o_i, dP = go V^T and
// dS = scale P (dP - D) (scale folded in, as kernels/cpu/attention.cpp):
//   gq = dS K,   gk = dS^T Q,   gv = P^T go.
// gk, gv sum over queries and gq over keys. FA2 sums gq with float atomics, whose order (and so
// whose bits) vary from run to run; here two kernels each own their sums instead:
//   dkdv  a block per key tile: loops over all query tiles, accumulates gk, gv in registers;
//   dq    a block per query tile: loops over all key tiles, accumulates gq in registers;
// both rebuild S and dP (two extra GEMMs of the seven), and every output element is written once
// by one thread in a fixed summation order: a run twice gives the same bits.
// A query row with lse = -inf (every key masked) has P = 0, so no gradient flows through it; a
// masked key has P = 0, so its gk, gv rows are 0 and it adds nothing to gq. Both as the CPU.
#include <cuda_bf16.h>

#include <algorithm>
#include <stdexcept>

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/block_order.cuh"

namespace psvae::kernels::cuda::attn {

namespace {

using detail::Math;

// ---- D = rowsum(go * o) ------------------------------------------------------------------------
// A warp per (b, t, h) row (go and o rows are contiguous, dv elements), lanes striding over the
// row, a shuffle sum in a fixed order; D is stored (B, H, Tq) like lse.
template <class T>
__global__ void __launch_bounds__(256)
    rowdot_kernel(const T* go, const T* o, typename Math<T>::Acc* D, int64_t rows, int64_t dv,
                  int64_t Tq, int64_t H) {
  using A = typename Math<T>::Acc;
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; r < rows;
       r += warps) {
    A s = A(0);
    for (int64_t e = lane; e < dv; e += 32)
      s += Math<T>::load(go[r * dv + e]) * Math<T>::load(o[r * dv + e]);
    s = shfl_sum(s, 16);
    if (lane == 0) {
      const int64_t b = r / (Tq * H), t = (r / H) % Tq, h = r % H;
      D[(b * H + h) * Tq + t] = s;
    }
  }
}

// ---- SIMT backward -----------------------------------------------------------------------------
// dq: block of 256 threads per R = 16 kRpt query rows of pair bh, key tiles of C = 32. Shared
// memory (math type, LD = kD + 1): Qs, dOs R x LD | Ks, Vs C x LD | dSs R x (C+1) | bias C |
// lse2 R | Dr R. f32 kD = 128: 66 + 33 + 8.4 KB = 108 KB.
template <class T, int kD>
__global__ void __launch_bounds__(kSimtThreads) dq_simt_kernel(BwdArgs a) {
  using A = typename Math<T>::Acc;
  constexpr int kRpt = kSimtRpt<A>, R = 16 * kRpt, C = kSimtC, LD = kD + 1, LDP = C + 1;
  constexpr int NJ = kD / 16;
  A* Qs = reinterpret_cast<A*>(attn_smem());
  A* dOs = Qs + R * LD;
  A* Ks = dOs + R * LD;
  A* Vs = Ks + C * LD;
  A* dSs = Vs + C * LD;
  A* bias = dSs + R * LDP;
  A* lse2 = bias + C;
  A* Dr = lse2 + R;

  const Dims n = a.n;
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
  const int64_t ntiles = (n.Tq + R - 1) / R;
  const int64_t bh = blockIdx.x / ntiles, q0 = (blockIdx.x % ntiles) * R;
  const HeadAt at = head_at(n, bh);
  const int64_t b = at.b;
  const T* qb = elem<T>(a.q, at.q);
  const T* gob = elem<T>(a.go, at.o);
  const T* kb = elem<T>(a.k, at.k);
  const T* vb = elem<T>(a.v, at.v);
  const T* lse = elem<T>(a.lse, at.row);
  const A* D = elem<A>(a.D, at.row);

  simt_load_rows<kD>(Qs, qb, at.sq, q0, n.Tq, n.d, R);
  simt_load_rows<kD>(dOs, gob, at.so, q0, n.Tq, n.dv, R);
  if (tid < R) {
    const bool valid = q0 + tid < n.Tq;
    lse2[tid] = lse2_of<A>(valid ? Math<T>::load(lse[q0 + tid]) : A(0), valid);
    Dr[tid] = valid ? D[q0 + tid] : A(0);
  }
  const A sl2 = static_cast<A>(a.scale * kLog2e), scale = static_cast<A>(a.scale);
  const int d4 = static_cast<int>((n.d + 3) & ~int64_t(3));
  const int dv4 = static_cast<int>((n.dv + 3) & ~int64_t(3));

  A dq[kRpt][NJ];
#pragma unroll
  for (int i = 0; i < kRpt; ++i)
#pragma unroll
    for (int j = 0; j < NJ; ++j) dq[i][j] = A(0);

  for (int64_t k0 = 0; k0 < n.Tk; k0 += C) {
    __syncthreads();  // the previous tile's Ks, Vs, dSs, bias reads are done
    simt_load_rows<kD>(Ks, kb, at.sk, k0, n.Tk, n.d, C);
    simt_load_rows<kD>(Vs, vb, at.sv, k0, n.Tk, n.dv, C);
    if (tid < C) bias[tid] = key_bias<A>(a.mask, b, n.Tk, k0 + tid);
    __syncthreads();  // tiles visible (and Qs, dOs, lse2, Dr on the first pass)

    A s[kRpt][2], dp[kRpt][2];
#pragma unroll
    for (int i = 0; i < kRpt; ++i) s[i][0] = s[i][1] = dp[i][0] = dp[i][1] = A(0);
    for (int e = 0; e < d4; ++e) {  // S = Q K^T (columns [d, d4) are zero)
      const A k0v = Ks[tx * LD + e], k1v = Ks[(tx + 16) * LD + e];
#pragma unroll
      for (int i = 0; i < kRpt; ++i) {
        const A qv = Qs[(ty * kRpt + i) * LD + e];
        s[i][0] += qv * k0v;
        s[i][1] += qv * k1v;
      }
    }
    for (int e = 0; e < dv4; ++e) {  // dP = dO V^T
      const A v0 = Vs[tx * LD + e], v1 = Vs[(tx + 16) * LD + e];
#pragma unroll
      for (int i = 0; i < kRpt; ++i) {
        const A gv = dOs[(ty * kRpt + i) * LD + e];
        dp[i][0] += gv * v0;
        dp[i][1] += gv * v1;
      }
    }
#pragma unroll
    for (int i = 0; i < kRpt; ++i) {
      const int r = ty * kRpt + i;
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int c = tx + 16 * jj;
        const A p = ex2(s[i][jj] * sl2 + bias[c] - lse2[r]);
        dSs[r * LDP + c] = p * (dp[i][jj] - Dr[r]) * scale;
      }
    }
    __syncthreads();               // dSs complete
    for (int c = 0; c < C; ++c) {  // gq += dS K
      A kv[NJ];
#pragma unroll
      for (int j = 0; j < NJ; ++j) kv[j] = Ks[c * LD + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < kRpt; ++i) {
        const A ds = dSs[(ty * kRpt + i) * LDP + c];
#pragma unroll
        for (int j = 0; j < NJ; ++j) dq[i][j] += ds * kv[j];
      }
    }
  }

  T* gqb = elem<T>(a.gq, at.q);
#pragma unroll
  for (int i = 0; i < kRpt; ++i) {
    const int64_t row = q0 + ty * kRpt + i;
    if (row >= n.Tq) continue;
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const int col = tx + 16 * j;
      if (col < n.d) gqb[row * at.sq + col] = Math<T>::store(dq[i][j]);
    }
  }
}

// dkdv: block of 256 threads per R key rows of pair bh (stationary K, V), query tiles of C = 32.
// The scores are built transposed (keys x queries), so each thread owns whole gk, gv rows:
//   S^T = K Q^T, dP^T = V dO^T, P^T = exp2(S^T sl2 + bias_key - lse2_query),
//   dS^T = scale P^T (dP^T - D_query), gv += P^T dO, gk += dS^T Q.
// Shared memory: Ks, Vs R x LD | Qs, dOs C x LD | Ps, dSs R x (C+1) | kbias R | lse2 C | Dq C.
// f32 kD = 128: 66 + 33 + 17 KB = 116 KB.
template <class T, int kD>
__global__ void __launch_bounds__(kSimtThreads) dkdv_simt_kernel(BwdArgs a) {
  using A = typename Math<T>::Acc;
  constexpr int kRpt = kSimtRpt<A>, R = 16 * kRpt, C = kSimtC, LD = kD + 1, LDP = C + 1;
  constexpr int NJ = kD / 16;
  A* Ks = reinterpret_cast<A*>(attn_smem());
  A* Vs = Ks + R * LD;
  A* Qs = Vs + R * LD;
  A* dOs = Qs + C * LD;
  A* Ps = dOs + C * LD;
  A* dSs = Ps + R * LDP;
  A* kbias = dSs + R * LDP;
  A* lse2 = kbias + R;
  A* Dq = lse2 + C;

  const Dims n = a.n;
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
  const int64_t ntiles = (n.Tk + R - 1) / R;
  const int64_t bh = blockIdx.x / ntiles, k0 = (blockIdx.x % ntiles) * R;
  const HeadAt at = head_at(n, bh);
  const int64_t b = at.b;
  const T* qb = elem<T>(a.q, at.q);
  const T* gob = elem<T>(a.go, at.o);
  const T* kb = elem<T>(a.k, at.k);
  const T* vb = elem<T>(a.v, at.v);
  const T* lse = elem<T>(a.lse, at.row);
  const A* D = elem<A>(a.D, at.row);

  simt_load_rows<kD>(Ks, kb, at.sk, k0, n.Tk, n.d, R);
  simt_load_rows<kD>(Vs, vb, at.sv, k0, n.Tk, n.dv, R);
  if (tid < R) kbias[tid] = key_bias<A>(a.mask, b, n.Tk, k0 + tid);
  const A sl2 = static_cast<A>(a.scale * kLog2e), scale = static_cast<A>(a.scale);
  const int d4 = static_cast<int>((n.d + 3) & ~int64_t(3));
  const int dv4 = static_cast<int>((n.dv + 3) & ~int64_t(3));

  A dk[kRpt][NJ], dv[kRpt][NJ];
#pragma unroll
  for (int i = 0; i < kRpt; ++i)
#pragma unroll
    for (int j = 0; j < NJ; ++j) dk[i][j] = dv[i][j] = A(0);

  for (int64_t q0 = 0; q0 < n.Tq; q0 += C) {
    __syncthreads();  // the previous tile's Qs, dOs, Ps, dSs, lse2, Dq reads are done
    simt_load_rows<kD>(Qs, qb, at.sq, q0, n.Tq, n.d, C);
    simt_load_rows<kD>(dOs, gob, at.so, q0, n.Tq, n.dv, C);
    if (tid < C) {
      const bool valid = q0 + tid < n.Tq;
      lse2[tid] = lse2_of<A>(valid ? Math<T>::load(lse[q0 + tid]) : A(0), valid);
      Dq[tid] = valid ? D[q0 + tid] : A(0);
    }
    __syncthreads();  // tiles visible (and Ks, Vs, kbias on the first pass)

    A s[kRpt][2], dp[kRpt][2];
#pragma unroll
    for (int i = 0; i < kRpt; ++i) s[i][0] = s[i][1] = dp[i][0] = dp[i][1] = A(0);
    for (int e = 0; e < d4; ++e) {  // S^T = K Q^T
      const A q0v = Qs[tx * LD + e], q1v = Qs[(tx + 16) * LD + e];
#pragma unroll
      for (int i = 0; i < kRpt; ++i) {
        const A kv = Ks[(ty * kRpt + i) * LD + e];
        s[i][0] += kv * q0v;
        s[i][1] += kv * q1v;
      }
    }
    for (int e = 0; e < dv4; ++e) {  // dP^T = V dO^T
      const A g0 = dOs[tx * LD + e], g1 = dOs[(tx + 16) * LD + e];
#pragma unroll
      for (int i = 0; i < kRpt; ++i) {
        const A vv = Vs[(ty * kRpt + i) * LD + e];
        dp[i][0] += vv * g0;
        dp[i][1] += vv * g1;
      }
    }
#pragma unroll
    for (int i = 0; i < kRpt; ++i) {
      const int r = ty * kRpt + i;
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int c = tx + 16 * jj;
        const A p = ex2(s[i][jj] * sl2 + kbias[r] - lse2[c]);
        Ps[r * LDP + c] = p;
        dSs[r * LDP + c] = p * (dp[i][jj] - Dq[c]) * scale;
      }
    }
    __syncthreads();               // Ps, dSs complete
    for (int c = 0; c < C; ++c) {  // gv += P^T dO, gk += dS^T Q (tail queries have P = 0)
      A gv[NJ], qv[NJ];
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        gv[j] = dOs[c * LD + tx + 16 * j];
        qv[j] = Qs[c * LD + tx + 16 * j];
      }
#pragma unroll
      for (int i = 0; i < kRpt; ++i) {
        const A p = Ps[(ty * kRpt + i) * LDP + c], ds = dSs[(ty * kRpt + i) * LDP + c];
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
          dv[i][j] += p * gv[j];
          dk[i][j] += ds * qv[j];
        }
      }
    }
  }

  T* gkb = elem<T>(a.gk, at.k);
  T* gvb = elem<T>(a.gv, at.v);
#pragma unroll
  for (int i = 0; i < kRpt; ++i) {
    const int64_t row = k0 + ty * kRpt + i;
    if (row >= n.Tk) continue;
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const int col = tx + 16 * j;
      if (col < n.d) gkb[row * at.sk + col] = Math<T>::store(dk[i][j]);
      if (col < n.dv) gvb[row * at.sv + col] = Math<T>::store(dv[i][j]);
    }
  }
}

template <class T, int kD>
void bwd_simt(const BwdArgs& a, cudaStream_t s) {
  using A = typename Math<T>::Acc;
  constexpr int R = 16 * kSimtRpt<A>, C = kSimtC, LD = kD + 1, LDP = C + 1;
  const int64_t pairs = a.n.B * a.n.H;
  const int64_t kv_blocks = pairs * ((a.n.Tk + R - 1) / R);
  if (kv_blocks > 0) {
    const size_t smem =
        sizeof(A) * static_cast<size_t>(2 * R * LD + 2 * C * LD + 2 * R * LDP + R + 2 * C);
    launch_big_smem(dkdv_simt_kernel<T, kD>, static_cast<unsigned>(kv_blocks), kSimtThreads, smem,
                    s, a);
  }
  const int64_t q_blocks = pairs * ((a.n.Tq + R - 1) / R);
  if (q_blocks > 0) {
    const size_t smem =
        sizeof(A) * static_cast<size_t>(2 * R * LD + 2 * C * LD + R * LDP + C + 2 * R);
    launch_big_smem(dq_simt_kernel<T, kD>, static_cast<unsigned>(q_blocks), kSimtThreads, smem, s,
                    a);
  }
}

template <class T>
void bwd_simt_dispatch(const BwdArgs& a, cudaStream_t s) {
  switch (simt_capacity(std::max(a.n.d, a.n.dv))) {
    case 32: bwd_simt<T, 32>(a, s); return;
    case 64: bwd_simt<T, 64>(a, s); return;
    default: bwd_simt<T, 128>(a, s); return;
  }
}

// ---- MMA backward (bf16) -----------------------------------------------------------------------
// Both kernels: kWarps warps of 16 stationary rows each, a streamed tile double-buffered by
// cp.async with one barrier per tile (as the forward). The stationary rows' A fragments are
// re-read from shared memory by ldmatrix per GEMM (registers go to the accumulators).

// dq: per query tile of kBQ = 16 kWarps rows, key tiles of kBK. Each warp, per tile:
//   S = Q K^T, dP = dO V^T (16 x kBK each), dS = scale P (dP - D) in the S registers, then
//   gq += dS K (A = dS as bf16 fragments, B = K by ldmatrix.trans).
// Shared memory: Qs, dOs kBQ x kLds | Ks, Vs 2 x kBK x kLds | bias 2 x kBK f32.
// kD = 128, 4 warps, kBK = 64: 2 x 17 + 4 x 17 KB = 105 KB.
constexpr int kBwdWarps = 4;
constexpr int kDqBK = 64;

template <int kD, int kWarps, int kBK>
__global__ void __launch_bounds__(kWarps * 32) dq_mma_kernel(BwdArgs a) {
  constexpr int kThreads = kWarps * 32, kBQ = 16 * kWarps, LDS = kLds<kD>;
  bf16_t* Qs = reinterpret_cast<bf16_t*>(attn_smem());
  bf16_t* dOs = Qs + kBQ * LDS;
  bf16_t* Ks = dOs + kBQ * LDS;
  bf16_t* Vs = Ks + 2 * kBK * LDS;
  float* bias = reinterpret_cast<float*>(Vs + 2 * kBK * LDS);

  const Dims n = a.n;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int64_t ntiles = (n.Tq + kBQ - 1) / kBQ;
  const int64_t bh = blockIdx.x / ntiles, q0 = (blockIdx.x % ntiles) * kBQ;
  const HeadAt at = head_at(n, bh);
  const int64_t b = at.b;
  const bf16_t* qb = elem<bf16_t>(a.q, at.q);
  const bf16_t* gob = elem<bf16_t>(a.go, at.o);
  const bf16_t* kb = elem<bf16_t>(a.k, at.k);
  const bf16_t* vb = elem<bf16_t>(a.v, at.v);
  const int64_t nkt = (n.Tk + kBK - 1) / kBK;

  // This lane's two query rows (g and g + 8 of the warp): log2-domain lse and D.
  float lse2[2], Dr[2];
  {
    const bf16_t* lse = elem<bf16_t>(a.lse, at.row);
    const float* D = elem<float>(a.D, at.row);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t row = q0 + warp * 16 + g + 8 * r;
      const bool valid = row < n.Tq;
      lse2[r] = lse2_of<float>(valid ? __bfloat162float(lse[row]) : 0.f, valid);
      Dr[r] = valid ? D[row] : 0.f;
    }
  }

  auto load_kv = [&](int64_t j, int st) {
    mma_load_tile<kBK, kD, kThreads>(Ks + st * kBK * LDS, kb, at.sk, j * kBK, n.Tk, n.d);
    mma_load_tile<kBK, kD, kThreads>(Vs + st * kBK * LDS, vb, at.sv, j * kBK, n.Tk, n.dv);
    for (int c = tid; c < kBK; c += kThreads)
      bias[st * kBK + c] = key_bias<float>(a.mask, b, n.Tk, j * kBK + c);
  };
  mma_load_tile<kBQ, kD, kThreads>(Qs, qb, at.sq, q0, n.Tq, n.d);
  mma_load_tile<kBQ, kD, kThreads>(dOs, gob, at.so, q0, n.Tq, n.dv);
  if (nkt > 0) load_kv(0, 0);
  cp_async_commit();

  const bf16_t* q_rows = Qs + warp * 16 * LDS;
  const bf16_t* go_rows = dOs + warp * 16 * LDS;
  auto q_frag = [&](int kk, uint32_t(&f)[4]) { load_a_frag<kD>(f, q_rows, kk * 16, lane); };
  auto go_frag = [&](int kk, uint32_t(&f)[4]) { load_a_frag<kD>(f, go_rows, kk * 16, lane); };
  const float sl2 = static_cast<float>(a.scale * kLog2e), scale = static_cast<float>(a.scale);

  float dq[kD / 8][4];
#pragma unroll
  for (int c = 0; c < kD / 8; ++c) dq[c][0] = dq[c][1] = dq[c][2] = dq[c][3] = 0.f;

  for (int64_t j = 0; j < nkt; ++j) {
    const int st = static_cast<int>(j & 1);
    cp_async_wait_all();
    __syncthreads();  // tile j (and Q, dO) visible; buffer st ^ 1 (tile j - 1) free
    if (j + 1 < nkt) load_kv(j + 1, st ^ 1);
    cp_async_commit();

    const bf16_t* Kt = Ks + st * kBK * LDS;
    float s[kBK / 8][4], dp[kBK / 8][4];
#pragma unroll
    for (int c = 0; c < kBK / 8; ++c)
#pragma unroll
      for (int x = 0; x < 4; ++x) s[c][x] = dp[c][x] = 0.f;
    warp_gemm_nt<kD, kBK, kD>(s, q_frag, Kt, lane);
    warp_gemm_nt<kD, kBK, kD>(dp, go_frag, Vs + st * kBK * LDS, lane);
    const float* bs = bias + st * kBK;
#pragma unroll
    for (int c = 0; c < kBK / 8; ++c)
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int r = x >> 1;  // c[0..1]: row g, c[2..3]: row g + 8
        const float p = exp2f(fmaf(s[c][x], sl2, bs[c * 8 + 2 * t + (x & 1)]) - lse2[r]);
        s[c][x] = p * (dp[c][x] - Dr[r]) * scale;  // dS
      }
    warp_gemm_nn_regs<kBK, kD, kD>(dq, s, Kt, lane);
  }
  cp_async_wait_all();  // with Tk = 0 the Q, dO copies are still outstanding

  const float one[2] = {1.f, 1.f};
  bf16_t* gqb = elem<bf16_t>(a.gq, at.q);
  mma_store_rows<kD>(gqb, at.sq, q0 + warp * 16, n.Tq, n.d, dq, one, lane);
}

// The fused form's gq part (kFusedDq below). After the dk, dv GEMMs of query tile i the block
// holds dS^T (its kBKeys keys x kBQ queries) in registers; gq of tile i needs dS K summed over all
// key tiles. The warps put dS^T into shared memory (bf16, as the gk GEMM rounded it), and each
// computes a 16-query x (part of kD) slice of dS K: A = dS through ldmatrix.trans of the dS^T
// tile, B = the block's K tile (stationary). The slice is then added to the running sum in
// dq_acc in key-tile order: key tile kt waits until tiles 0..kt-1 have added theirs (counter
// order[1 + bh nqt + i] == kt), so gq = ((p_0 + p_1) + p_2) + ... in the same order every run.
// Tile 0 stores without reading; the last tile writes gq itself in bf16.
// Warp w takes query rows 16 (w % kRG) of the tile and the 16-column pairs w / kRG, + kCS, ...
// (kBQ = 64: each warp all kD columns of its 16 rows; kBQ = 32: two warps share each 16 rows).
template <int kD, int kWarps, int kBQ>
struct DqPart {
  static constexpr int kRG = kBQ / 16, kCS = kWarps / kRG, kPairs = kD / 16;
  static constexpr int kMyPairs = (kPairs + kCS - 1) / kCS;
  static constexpr int kLdt = kBQ + 8;  // dS^T row stride (16-byte pad: conflict-free ldmatrix)
  static_assert(kWarps % kRG == 0, "the query tile's row groups must divide the warps");

  // This warp's dS^T fragments (16 keys x kBQ queries) into the shared tile, as bf16 pairs.
  static __device__ __forceinline__ void put_dst(bf16_t* dst_tile, const float (&ds)[kBQ / 8][4],
                                                 int warp, int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int c = 0; c < kBQ / 8; ++c)
#pragma unroll
      for (int r = 0; r < 2; ++r)
        *reinterpret_cast<uint32_t*>(dst_tile + (warp * 16 + g + 8 * r) * kLdt + c * 8 + 2 * t) =
            pack_bf16(ds[c][2 * r], ds[c][2 * r + 1]);
  }

  // dS K for this warp's slice, added into the running sum (or written as gq by the last key
  // tile), kChunk column pairs at a time (8 accumulators each: the gk, gv accumulators are live
  // meanwhile). Rows past Tq and columns past d are skipped; d is a multiple of 8, so a pair of
  // columns never straddles it.
  static constexpr int kChunk = 2;
  static __device__ __forceinline__ void add(const bf16_t* dst_tile, const bf16_t* Ks, float* acc,
                                             bf16_t* gq, int64_t sq, int64_t row0, int64_t Tq,
                                             int64_t d, bool first, bool last, int warp, int lane) {
    const int rg = warp % kRG, cs = warp / kRG, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int c0 = 0; c0 < kMyPairs; c0 += kChunk) {
      float part[kChunk][2][4];
#pragma unroll
      for (int p = 0; p < kChunk; ++p)
#pragma unroll
        for (int x = 0; x < 4; ++x) part[p][0][x] = part[p][1][x] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kWarps; ++kk) {  // 16 keys per k-block, kBKeys = 16 kWarps
        // A(m = query, k = key) = dS^T[key][query]: matrices (keys k0.., queries m0..),
        // (k0.., m0+8..), (k0+8.., m0..), (k0+8.., m0+8..) transposed give a[0..3].
        uint32_t a[4];
        ldsm_x4_trans(a, dst_tile + (kk * 16 + (lane & 7) + ((lane >> 4) & 1) * 8) * kLdt +
                             rg * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int p = 0; p < kChunk; ++p) {
          const int np = cs + (c0 + p) * kCS;
          if (c0 + p >= kMyPairs || np >= kPairs) continue;
          uint32_t b[4];
          ldsm_x4_trans(b, Ks + (kk * 16 + (lane & 15)) * kLds<kD> + np * 16 + (lane >> 4) * 8);
          mma_bf16(part[p][0], a, b[0], b[1]);
          mma_bf16(part[p][1], a, b[2], b[3]);
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t row = row0 + rg * 16 + g + 8 * r;
        if (row >= Tq) continue;
#pragma unroll
        for (int p = 0; p < kChunk; ++p)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int np = cs + (c0 + p) * kCS, col = np * 16 + h * 8 + 2 * t;
            if (c0 + p >= kMyPairs || np >= kPairs || col >= d) continue;
            dq_sum_pair(acc, gq, sq, d, row, col,
                        make_float2(part[p][h][2 * r], part[p][h][2 * r + 1]), first, last);
          }
      }
    }
  }
};

// dkdv: per key tile of kBKeys = 16 kWarps rows, query tiles of kBQ. Each warp, per tile, on its
// 16 keys (transposed scores, keys x queries, so each lane's gk, gv rows stay in its registers):
//   S^T = K Q^T, dP^T = V dO^T (16 x kBQ), P^T = exp2(S^T sl2 + bias_key - lse2_query),
//   dS^T = scale P^T (dP^T - D_query), gv += P^T dO, gk += dS^T Q.
// With kFusedDq the block also adds its part of gq per query tile (DqPart above), and takes its
// (pair, key tile) from a ticket instead of blockIdx (attention_common.cuh, fused_tile).
// Shared memory: Ks, Vs kBKeys x kLds | Qs, dOs 2 x kBQ x kLds | lse2, D 2 x kBQ f32
// [| dS^T kBKeys x (kBQ + 8) bf16]. kD = 128, 4 warps, kBQ = 32: 2 x 17 + 4 x 8.7 KB = 70 KB
// (fused: 75 KB). kBQ is 32 for kD > 64 so that the two kD-wide accumulators (2 x kD/2
// registers) plus S^T and dP^T (2 x kBQ/2) stay in registers.
// Registers (ptxas, nvcc 13.0, sm_90): the fused form's second barrier and spin-wait per tile
// leave ptxas free to take 245 registers at kD = 64 and 248 at kD = 80 (split: 167, 170), which
// would drop those from 3 blocks per SM to 2. A minimum of 3 blocks there caps them at 168, with
// 4 and 12 bytes of spill. Which is faster is for a GPU to say. kD = 96 and 128 hold 2 blocks per
// SM in both forms (244-255 registers). 0 means no minimum: ptxas's own choice, which an explicit
// 1 is not (with 1 it took 242 registers for split's kD = 64 instead of 167).
template <int kD, bool kFusedDq>
constexpr int kDkdvMinBlocks = (kFusedDq && kD <= 80) ? 3 : 0;

template <int kD, int kWarps, int kBQ, bool kFusedDq>
__global__ void __launch_bounds__(kWarps * 32, (kDkdvMinBlocks<kD, kFusedDq>))
    dkdv_mma_kernel(BwdArgs a) {
  constexpr int kThreads = kWarps * 32, kBKeys = 16 * kWarps, LDS = kLds<kD>;
  using Dq = DqPart<kD, kWarps, kBQ>;
  bf16_t* Ks = reinterpret_cast<bf16_t*>(attn_smem());
  bf16_t* Vs = Ks + kBKeys * LDS;
  bf16_t* Qs = Vs + kBKeys * LDS;
  bf16_t* dOs = Qs + 2 * kBQ * LDS;
  float* lse2s = reinterpret_cast<float*>(dOs + 2 * kBQ * LDS);
  float* Ds = lse2s + 2 * kBQ;
  bf16_t* dSt = reinterpret_cast<bf16_t*>(Ds + 2 * kBQ);  // kFusedDq only

  const Dims n = a.n;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int64_t nkt = (n.Tk + kBKeys - 1) / kBKeys, nqt = (n.Tq + kBQ - 1) / kBQ;
  int64_t bh, kt;
  if constexpr (kFusedDq) {
    const FusedTile ft = fused_tile(a, nkt);
    bh = ft.bh;
    kt = ft.kt;
  } else {
    bh = blockIdx.x / nkt;
    kt = blockIdx.x % nkt;
  }
  const int64_t k0 = kt * kBKeys;
  const HeadAt at = head_at(n, bh);
  const int64_t b = at.b;
  const BwdInputs in = bwd_inputs(a, at);
  unsigned* done = kFusedDq ? a.order + 1 + bh * nqt : nullptr;  // per query tile: tiles added
  float* dq_acc = kFusedDq && a.dq_acc ? a.dq_acc + bh * n.Tq * n.d : nullptr;
  bf16_t* gqb = kFusedDq ? elem<bf16_t>(a.gq, at.q) : nullptr;

  // This lane's two key rows (g and g + 8 of the warp): 0 or -inf.
  float kbias[2];
#pragma unroll
  for (int r = 0; r < 2; ++r)
    kbias[r] = key_bias<float>(a.mask, b, n.Tk, k0 + warp * 16 + g + 8 * r);

  auto load_q = [&](int64_t i, int st) {
    mma_load_tile<kBQ, kD, kThreads>(Qs + st * kBQ * LDS, in.q, at.sq, i * kBQ, n.Tq, n.d);
    mma_load_tile<kBQ, kD, kThreads>(dOs + st * kBQ * LDS, in.go, at.so, i * kBQ, n.Tq, n.dv);
    load_row_stats<kBQ, kThreads>(lse2s + st * kBQ, Ds + st * kBQ, in, i * kBQ, n.Tq);
  };
  mma_load_tile<kBKeys, kD, kThreads>(Ks, in.k, at.sk, k0, n.Tk, n.d);
  mma_load_tile<kBKeys, kD, kThreads>(Vs, in.v, at.sv, k0, n.Tk, n.dv);
  if (nqt > 0) load_q(0, 0);
  cp_async_commit();

  const bf16_t* k_rows = Ks + warp * 16 * LDS;
  const bf16_t* v_rows = Vs + warp * 16 * LDS;
  auto k_frag = [&](int kk, uint32_t(&f)[4]) { load_a_frag<kD>(f, k_rows, kk * 16, lane); };
  auto v_frag = [&](int kk, uint32_t(&f)[4]) { load_a_frag<kD>(f, v_rows, kk * 16, lane); };
  const float sl2 = static_cast<float>(a.scale * kLog2e), scale = static_cast<float>(a.scale);

  float dk[kD / 8][4], dv[kD / 8][4];
#pragma unroll
  for (int c = 0; c < kD / 8; ++c)
#pragma unroll
    for (int x = 0; x < 4; ++x) dk[c][x] = dv[c][x] = 0.f;

  for (int64_t i = 0; i < nqt; ++i) {
    const int st = static_cast<int>(i & 1);
    cp_async_wait_all();
    // Query tile i (and K, V) visible; buffer st ^ 1 (tile i - 1) free; fused: every warp's part
    // of gq tile i - 1 added and the dS^T tile free.
    __syncthreads();
    if constexpr (kFusedDq)
      if (tid == 0 && i > 0)
        block_order::release_count(done + i - 1, static_cast<unsigned>(kt + 1));
    if (i + 1 < nqt) load_q(i + 1, st ^ 1);
    cp_async_commit();

    const bf16_t* Qt = Qs + st * kBQ * LDS;
    const bf16_t* dOt = dOs + st * kBQ * LDS;
    float s[kBQ / 8][4], dp[kBQ / 8][4];
#pragma unroll
    for (int c = 0; c < kBQ / 8; ++c)
#pragma unroll
      for (int x = 0; x < 4; ++x) s[c][x] = dp[c][x] = 0.f;
    warp_gemm_nt<kD, kBQ, kD>(s, k_frag, Qt, lane);
    warp_gemm_nt<kD, kBQ, kD>(dp, v_frag, dOt, lane);
    // s = P^T, dp = dS^T
    p_ds_transposed<kBQ>(s, dp, kbias, lse2s + st * kBQ, Ds + st * kBQ, sl2, scale, t);
    warp_gemm_nn_regs<kBQ, kD, kD>(dv, s, dOt, lane);
    warp_gemm_nn_regs<kBQ, kD, kD>(dk, dp, Qt, lane);
    if constexpr (kFusedDq) {
      Dq::put_dst(dSt, dp, warp, lane);
      if (tid == 0) block_order::wait_count(done + i, static_cast<unsigned>(kt));
      __syncthreads();  // dS^T complete; key tiles 0..kt-1 have added to gq tile i
      Dq::add(dSt, Ks, dq_acc, gqb, at.sq, i * kBQ, n.Tq, n.d, kt == 0, kt == nkt - 1, warp, lane);
    }
  }
  cp_async_wait_all();  // with Tq = 0 the K, V copies are still outstanding
  if constexpr (kFusedDq) {
    __syncthreads();  // every warp's part of the last gq tile added
    if (tid == 0 && nqt > 0)
      block_order::release_count(done + nqt - 1, static_cast<unsigned>(kt + 1));
  }

  const float one[2] = {1.f, 1.f};
  bf16_t* gkb = elem<bf16_t>(a.gk, at.k);
  bf16_t* gvb = elem<bf16_t>(a.gv, at.v);
  mma_store_rows<kD>(gkb, at.sk, k0 + warp * 16, n.Tk, n.d, dk, one, lane);
  mma_store_rows<kD>(gvb, at.sv, k0 + warp * 16, n.Tk, n.dv, dv, one, lane);
}

template <int kD>
constexpr int kDkdvBQ = kD <= 64 ? 64 : 32;  // query tile of dkdv

// Ticket groups of the fused kernels (a.group pairs each). Key tile kt of a pair waits for kt - 1
// to finish each query tile; their tickets are a.group apart. Blocks start at about
// `resident / nqt` per query-tile step (resident = blocks that fit on the GPU at once, each
// running nqt steps), so kt - 1 started a.group nqt / resident steps earlier. a.group = 4
// resident / nqt puts it about 4 steps ahead: no wait after the first wave, and in the first
// wave (which starts at once) waits of up to a quarter of the block's run. The running sums of a
// group, 4 resident x kBQ x d x 4 bytes (about 17 MB at kD = 128 on 132 SMs), stay in L2.
// Untuned: a GPU run should sweep the factor.
int64_t fused_group(int64_t pairs, int64_t nqt, int64_t resident) {
  return std::max<int64_t>(
      1, std::min<int64_t>(pairs, (4 * resident + nqt - 1) / std::max<int64_t>(nqt, 1)));
}

template <int kD>
void bwd_mma(const BwdArgs& a, BwdVariant variant, cudaStream_t s, int dev) {
  constexpr int LDS = kLds<kD>, kRows = 16 * kBwdWarps, kThreads = 32 * kBwdWarps;
  constexpr int kBQ = kDkdvBQ<kD>;
  const int64_t pairs = a.n.B * a.n.H, nkt = (a.n.Tk + kRows - 1) / kRows;
  const int64_t kv_blocks = pairs * nkt;
  const size_t smem =
      sizeof(bf16_t) * static_cast<size_t>((2 * kRows + 4 * kBQ) * LDS) + sizeof(float) * 4 * kBQ;
  if (variant == BwdVariant::kFused) {
    launch_fused<dkdv_mma_kernel<kD, kBwdWarps, kBQ, true>>(
        a, kThreads, smem + sizeof(bf16_t) * kRows * DqPart<kD, kBwdWarps, kBQ>::kLdt, nkt,
        (a.n.Tq + kBQ - 1) / kBQ, s, dev);
    return;
  }
  if (kv_blocks > 0)
    launch_big_smem(dkdv_mma_kernel<kD, kBwdWarps, kBQ, false>, static_cast<unsigned>(kv_blocks),
                    kThreads, smem, s, a);
  const int64_t q_blocks = pairs * ((a.n.Tq + kRows - 1) / kRows);
  if (q_blocks > 0) {
    const size_t qsmem = sizeof(bf16_t) * static_cast<size_t>((2 * kRows + 4 * kDqBK) * LDS) +
                         sizeof(float) * 2 * kDqBK;
    launch_big_smem(dq_mma_kernel<kD, kBwdWarps, kDqBK>, static_cast<unsigned>(q_blocks), kThreads,
                    qsmem, s, a);
  }
}

}  // namespace

FusedScratch fused_scratch(BwdArgs& a, int64_t nkt, int64_t nqt, int64_t resident, cudaStream_t s,
                           int dev) {
  FusedScratch f;
  f.launch = nkt > 0;
  if (!f.launch) {
    // No keys: gq = 0, row by row (gq may sit inside packed qkv gradient rows).
    const size_t row = sizeof(bf16_t) * static_cast<size_t>(a.n.H * a.n.d);
    if (a.n.B * a.n.Tq > 0 && row > 0)
      PSVAE_CUDA_CHECK(cudaMemset2DAsync(a.gq, sizeof(bf16_t) * static_cast<size_t>(a.n.sq), 0, row,
                                         static_cast<size_t>(a.n.B * a.n.Tq), s));
    return f;
  }
  // The running sums: B H Tq d x 4 bytes (302 MB for DiT-XL's batch 256).
  const int64_t pairs = a.n.B * a.n.H;
  const Device device = Device::cuda(dev);
  f.order = Tensor::empty({1 + pairs * nqt}, DType::I32, device);
  a.order = static_cast<unsigned*>(f.order.raw_data());
  PSVAE_CUDA_CHECK(
      cudaMemsetAsync(a.order, 0, sizeof(unsigned) * static_cast<size_t>(1 + pairs * nqt), s));
  if (nkt > 1) {
    f.dq_acc = Tensor::empty({pairs * a.n.Tq * a.n.d}, DType::F32, device);
    a.dq_acc = f.dq_acc.data<float>();
  }
  a.group = fused_group(pairs, nqt, resident);
  return f;
}

void launch_rowdot(const BwdArgs& a, DType dt, cudaStream_t s, int dev) {
  const int64_t rows = a.n.B * a.n.Tq * a.n.H;
  if (rows == 0) return;
  detail::dispatch_float(dt, "attention_bwd", [&](auto tag) {
    using T = decltype(tag);
    using A = typename Math<T>::Acc;
    PSVAE_LAUNCH(::psvae::cuda::grid_for(rows * 32, dev), 256, 0, s, rowdot_kernel<T>)
    (static_cast<const T*>(a.go), static_cast<const T*>(a.o), static_cast<A*>(a.D), rows, a.n.dv,
     a.n.Tq, a.n.H);
    PSVAE_CUDA_CHECK(cudaGetLastError());
  });
}

void launch_bwd_simt(const BwdArgs& a, DType dt, cudaStream_t s) {
  detail::dispatch_float(dt, "attention_bwd",
                         [&](auto tag) { bwd_simt_dispatch<decltype(tag)>(a, s); });
}

void launch_bwd_mma(const BwdArgs& a, BwdVariant variant, cudaStream_t s, int dev) {
  switch (mma_capacity(std::max(a.n.d, a.n.dv))) {
    case 32: bwd_mma<32>(a, variant, s, dev); return;
    case 64: bwd_mma<64>(a, variant, s, dev); return;
    case 80: bwd_mma<80>(a, variant, s, dev); return;
    case 96: bwd_mma<96>(a, variant, s, dev); return;
    default: bwd_mma<128>(a, variant, s, dev); return;
  }
}

}  // namespace psvae::kernels::cuda::attn
