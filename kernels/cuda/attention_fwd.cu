// CUDA attention forward, FlashAttention-2 style (Dao 2023, Algorithm 1): a block owns a tile of
// query rows of one (batch, head) pair and streams the pair's keys and values through shared
// memory in tiles, keeping per row the running max m (log2 domain), the running sum l of
// exp2(score - m) and the unnormalised output; o = acc / l and lse = ln2 (m + log2 l) at the end.
// A row whose keys are all masked (or Tk = 0) ends with l = 0: o = 0 and lse = -inf, as the CPU.
// Scores are biased by 0 / -inf per key (mask, tile tail) before the max, so masked keys weigh
// exactly 0. Each output element is written by exactly one thread; no atomics.
#include <cuda_bf16.h>

#include <stdexcept>

#include "kernels/cuda/attention_common.cuh"

namespace psvae::kernels::cuda::attn {

namespace {

using detail::Math;

// ---- SIMT forward ------------------------------------------------------------------------------
// Block: 256 threads, R = 16 * kRpt query rows (64 f32/bf16, 32 f64) of pair bh; key tiles of
// C = 32. Shared memory (math type A, row stride LD = kD + 1):
//   Qs R x LD | Ks C x LD | Vs C x LD | Ps R x (C + 1) | bias C
// f32 at kD = 128: 33 + 16.5 + 16.5 + 8.4 KB = 75 KB. Per key tile each thread computes the 4x2
// scores (rows ty*4+i, keys tx and tx+16), updates its rows' softmax state (row max by a
// half-warp shuffle; l kept per thread and summed at the end), writes P to Ps, and after a
// barrier adds P V into its 4 x kD/16 outputs (columns tx + 16 j).
template <class T, int kD>
__global__ void __launch_bounds__(kSimtThreads) fwd_simt_kernel(FwdArgs a) {
  using A = typename Math<T>::Acc;
  constexpr int kRpt = kSimtRpt<A>, R = 16 * kRpt, C = kSimtC, LD = kD + 1, LDP = C + 1;
  constexpr int NJ = kD / 16;  // head-dim columns per thread
  A* Qs = reinterpret_cast<A*>(attn_smem());
  A* Ks = Qs + R * LD;
  A* Vs = Ks + C * LD;
  A* Ps = Vs + C * LD;
  A* bias = Ps + R * LDP;

  const Dims n = a.n;
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
  const int64_t ntiles = (n.Tq + R - 1) / R;
  const int64_t bh = blockIdx.x / ntiles, q0 = (blockIdx.x % ntiles) * R;
  const HeadAt at = head_at(n, bh);
  const int64_t b = at.b;
  const T* qb = elem<T>(a.q, at.q);
  const T* kb = elem<T>(a.k, at.k);
  const T* vb = elem<T>(a.v, at.v);
  T* ob = elem<T>(a.o, at.o);
  T* lse = elem<T>(a.lse, at.row);

  simt_load_rows<kD>(Qs, qb, at.sq, q0, n.Tq, n.d, R);
  const A sl2 = static_cast<A>(a.scale * kLog2e);            // scores to the log2 domain
  const int d4 = static_cast<int>((n.d + 3) & ~int64_t(3));  // columns [d, d4) of Qs, Ks are 0

  A m[kRpt], l[kRpt], o[kRpt][NJ];
#pragma unroll
  for (int i = 0; i < kRpt; ++i) {
    m[i] = -inf<A>();
    l[i] = A(0);
#pragma unroll
    for (int j = 0; j < NJ; ++j) o[i][j] = A(0);
  }

  for (int64_t k0 = 0; k0 < n.Tk; k0 += C) {
    __syncthreads();  // every thread is done reading the previous tile's Ks, Vs, Ps, bias
    simt_load_rows<kD>(Ks, kb, at.sk, k0, n.Tk, n.d, C);
    simt_load_rows<kD>(Vs, vb, at.sv, k0, n.Tk, n.dv, C);
    if (tid < C) bias[tid] = key_bias<A>(a.mask, b, n.Tk, k0 + tid);
    __syncthreads();  // tiles (and Qs, on the first pass) visible to all

    A s[kRpt][2];
#pragma unroll
    for (int i = 0; i < kRpt; ++i) s[i][0] = s[i][1] = A(0);
    for (int e = 0; e < d4; e += 4) {
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const A k0v = Ks[tx * LD + e + u], k1v = Ks[(tx + 16) * LD + e + u];
#pragma unroll
        for (int i = 0; i < kRpt; ++i) {
          const A qv = Qs[(ty * kRpt + i) * LD + e + u];
          s[i][0] += qv * k0v;
          s[i][1] += qv * k1v;
        }
      }
    }
    const A b0 = bias[tx], b1 = bias[tx + 16];
#pragma unroll
    for (int i = 0; i < kRpt; ++i) {
      const A x0 = s[i][0] * sl2 + b0, x1 = s[i][1] * sl2 + b1;
      const A m_new = fmax(m[i], shfl_max(fmax(x0, x1), 8));  // max over the row's 32 keys
      // With no key seen yet m_new = -inf: subtract 0 instead so that no -inf - -inf = NaN
      // arises; every p and alpha is then exp2(-inf) = 0 and the state stays zero.
      const A m_use = m_new == -inf<A>() ? A(0) : m_new;
      const A alpha = ex2(m[i] - m_use);  // rescales the state kept so far (0 when m was -inf)
      const A p0 = ex2(x0 - m_use), p1 = ex2(x1 - m_use);
      l[i] = l[i] * alpha + p0 + p1;
      m[i] = m_new;
#pragma unroll
      for (int j = 0; j < NJ; ++j) o[i][j] *= alpha;
      Ps[(ty * kRpt + i) * LDP + tx] = p0;
      Ps[(ty * kRpt + i) * LDP + tx + 16] = p1;
    }
    __syncthreads();               // Ps complete
    for (int c = 0; c < C; ++c) {  // tail keys have p = 0 and zero-filled V rows
      A vv[NJ];
#pragma unroll
      for (int j = 0; j < NJ; ++j) vv[j] = Vs[c * LD + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < kRpt; ++i) {
        const A p = Ps[(ty * kRpt + i) * LDP + c];
#pragma unroll
        for (int j = 0; j < NJ; ++j) o[i][j] += p * vv[j];
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kRpt; ++i) {
    const A lsum = shfl_sum(l[i], 8);  // the row's 16 partial sums
    const int64_t row = q0 + ty * kRpt + i;
    if (row >= n.Tq) continue;
    const bool any = lsum > A(0);  // false: every key masked, or Tk = 0
    const A inv = any ? A(1) / lsum : A(0);
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const int col = tx + 16 * j;
      if (col < n.dv) ob[row * at.so + col] = Math<T>::store(o[i][j] * inv);
    }
    if (tx == 0)
      lse[row] = Math<T>::store(any ? (m[i] + lg2(lsum)) * static_cast<A>(kLn2) : -inf<A>());
  }
}

template <class T, int kD>
void fwd_simt(const FwdArgs& a, cudaStream_t s) {
  using A = typename Math<T>::Acc;
  constexpr int R = 16 * kSimtRpt<A>, C = kSimtC, LD = kD + 1;
  const size_t smem = sizeof(A) * static_cast<size_t>(R * LD + 2 * C * LD + R * (C + 1) + C);
  const int64_t blocks = a.n.B * a.n.H * ((a.n.Tq + R - 1) / R);
  if (blocks == 0) return;
  launch_big_smem(fwd_simt_kernel<T, kD>, static_cast<unsigned>(blocks), kSimtThreads, smem, s, a);
}

template <class T>
void fwd_simt_dispatch(const FwdArgs& a, cudaStream_t s) {
  switch (simt_capacity(std::max(a.n.d, a.n.dv))) {
    case 32: fwd_simt<T, 32>(a, s); return;
    case 64: fwd_simt<T, 64>(a, s); return;
    default: fwd_simt<T, 128>(a, s); return;
  }
}

// ---- MMA forward (bf16) ------------------------------------------------------------------------
// Block: kWarps warps, 16 query rows each (kBQ = 16 kWarps), key tiles of kBK. Shared memory
// (bf16, row stride kLds = kD + 8):
//   Qs kBQ x kLds | Ks 2 x kBK x kLds | Vs 2 x kBK x kLds | bias 2 x kBK f32
// kD = 128, kWarps = 4, kBK = 64: 17 + 2 x 2 x 17 KB + 0.5 KB = 87.5 KB (two blocks per SM).
// Pipeline: K/V tile j+1 is copied by cp.async into the other buffer while tile j is computed;
// one barrier per tile (after waiting for tile j) both publishes tile j and ends every warp's
// use of tile j-1's buffer, which the copy of tile j+1 then overwrites.
// Per tile each warp: S (16 x kBK) = Q K^T from its Q fragments (registers, loaded once) and K
// (ldmatrix), bias + scale into the log2 domain, row max over the 4 lanes of a quad (each lane
// holds 2 rows: g and g+8), p = exp2(s - m), O = alpha O + P V with P taken straight from the
// S registers as bf16 A fragments. Row sums l stay per lane (same alpha across the quad) and are
// summed across the quad once at the end.
constexpr int kFwdWarps = 4;
constexpr int kFwdBK = 64;

template <int kD, int kWarps, int kBK>
__global__ void __launch_bounds__(kWarps * 32) fwd_mma_kernel(FwdArgs a) {
  constexpr int kThreads = kWarps * 32, kBQ = 16 * kWarps, LDS = kLds<kD>;
  bf16_t* Qs = reinterpret_cast<bf16_t*>(attn_smem());
  bf16_t* Ks = Qs + kBQ * LDS;
  bf16_t* Vs = Ks + 2 * kBK * LDS;
  float* bias = reinterpret_cast<float*>(Vs + 2 * kBK * LDS);  // byte offset a multiple of 16

  const Dims n = a.n;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, t = lane & 3;
  const FwdBlock fb = fwd_block<kBQ>(a);
  const HeadAt& at = fb.at;
  const int64_t q0 = fb.q0, b = at.b;
  const bf16_t *qb = fb.q, *kb = fb.k, *vb = fb.v;
  const int64_t nkt = (n.Tk + kBK - 1) / kBK;

  auto load_kv = [&](int64_t j, int st) {
    mma_load_tile<kBK, kD, kThreads>(Ks + st * kBK * LDS, kb, at.sk, j * kBK, n.Tk, n.d);
    mma_load_tile<kBK, kD, kThreads>(Vs + st * kBK * LDS, vb, at.sv, j * kBK, n.Tk, n.dv);
    for (int c = tid; c < kBK; c += kThreads)
      bias[st * kBK + c] = key_bias<float>(a.mask, b, n.Tk, j * kBK + c);
  };
  mma_load_tile<kBQ, kD, kThreads>(Qs, qb, at.sq, q0, n.Tq, n.d);
  if (nkt > 0) load_kv(0, 0);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  uint32_t qf[kD / 16][4];  // this warp's 16 query rows as A fragments, for every tile
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) load_a_frag<kD>(qf[kk], Qs + warp * 16 * LDS, kk * 16, lane);
  auto q_frag = [&](int kk, uint32_t(&f)[4]) {
#pragma unroll
    for (int x = 0; x < 4; ++x) f[x] = qf[kk][x];
  };

  const float sl2 = static_cast<float>(a.scale * kLog2e);
  float o[kD / 8][4];
#pragma unroll
  for (int c = 0; c < kD / 8; ++c) o[c][0] = o[c][1] = o[c][2] = o[c][3] = 0.f;
  float m[2] = {-inf<float>(), -inf<float>()}, l[2] = {0.f, 0.f};  // rows g and g + 8

  for (int64_t j = 0; j < nkt; ++j) {
    const int st = static_cast<int>(j & 1);
    cp_async_wait_all();
    __syncthreads();  // tile j visible; every warp is done with buffer st ^ 1 (tile j - 1)
    if (j + 1 < nkt) load_kv(j + 1, st ^ 1);
    cp_async_commit();

    float s[kBK / 8][4];
#pragma unroll
    for (int c = 0; c < kBK / 8; ++c) s[c][0] = s[c][1] = s[c][2] = s[c][3] = 0.f;
    warp_gemm_nt<kD, kBK, kD>(s, q_frag, Ks + st * kBK * LDS, lane);

    float alpha[2];
    softmax_tile<kBK>(s, bias + st * kBK, sl2, t, m, l, alpha);  // s becomes p
    scale_rows<kD>(o, alpha);
    warp_gemm_nn_regs<kBK, kD, kD>(o, s, Vs + st * kBK * LDS, lane);
  }

  const int64_t row0 = q0 + warp * 16;
  float inv[2];
  softmax_finish(l, m, inv, elem<bf16_t>(a.lse, at.row), row0, n.Tq, lane);
  mma_store_rows<kD>(elem<bf16_t>(a.o, at.o), at.so, row0, n.Tq, n.dv, o, inv, lane);
}

template <int kD>
void fwd_mma(const FwdArgs& a, cudaStream_t s) {
  constexpr int kBQ = 16 * kFwdWarps, LDS = kLds<kD>;
  const size_t smem =
      sizeof(bf16_t) * static_cast<size_t>((kBQ + 4 * kFwdBK) * LDS) + sizeof(float) * 2 * kFwdBK;
  const int64_t blocks = a.n.B * a.n.H * ((a.n.Tq + kBQ - 1) / kBQ);
  if (blocks == 0) return;
  launch_big_smem(fwd_mma_kernel<kD, kFwdWarps, kFwdBK>, static_cast<unsigned>(blocks),
                  kFwdWarps * 32, smem, s, a);
}

}  // namespace

void launch_fwd_simt(const FwdArgs& a, DType dt, cudaStream_t s) {
  detail::dispatch_float(dt, "attention",
                         [&](auto tag) { fwd_simt_dispatch<decltype(tag)>(a, s); });
}

void launch_fwd_mma(const FwdArgs& a, cudaStream_t s) {
  switch (mma_capacity(std::max(a.n.d, a.n.dv))) {
    case 32: fwd_mma<32>(a, s); return;
    case 64: fwd_mma<64>(a, s); return;
    case 80: fwd_mma<80>(a, s); return;
    case 96: fwd_mma<96>(a, s); return;
    default: fwd_mma<128>(a, s); return;
  }
}

}  // namespace psvae::kernels::cuda::attn
