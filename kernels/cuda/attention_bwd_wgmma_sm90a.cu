// CUDA attention backward on Hopper's warpgroup MMA (PSVAE_ATTN_BWD=wgmma): the fused
// deterministic backward of attention_bwd.cu (a block per key tile: gk, gv in registers over all
// query tiles, its part of gq added to a running sum in key-tile order) with all five products on
// wgmma, as FlashAttention-3 (Shah et al. 2024) arranges them. With P = exp2(S sl2 - lse2) rebuilt
// from the saved lse, D = rowsum(go * o) (launch_rowdot) and dS = scale P (dP - D):
//   S^T  = K Q^T    wgmma m64n64k16, K (A) and Q (B) K-major from shared memory;
//   dP^T = V dO^T   the same with V and dO;
//   gv  += P^T dO   register-A wgmma: P^T is the S^T accumulator rounded to bf16 pairs, dO read
//                   MN-major (the head dim, N, is contiguous);
//   gk  += dS^T Q   the same with dS^T and Q;
//   gq_i = dS K     wgmma with A = dS from shared memory: dS^T is written there by the threads that
//                   hold it (4-byte stores, conflict-free through the swizzle) and read MN-major
//                   (the queries, M, contiguous), K read MN-major too.
// The scores are built transposed (keys are wgmma's M), so each thread's gk, gv rows stay in its
// registers, as in attention_bwd.cu's dkdv kernels (FlashAttention-3's "swap AB" for S and dP).
//
// Design (bf16 in, fp32 accumulators), built for sm_90a alone:
//   - Block: 2 warpgroups (256 threads), kBN = 128 keys of one (batch, head) pair, warpgroup w
//     owns keys 64 w .. 64 w + 63; query tiles of kBM = 64, double-buffered by cp.async with one
//     barrier per tile (as the wgmma forward).
//   - Head-dim capacity kD = 64 or 128 (d, dv <= kD, multiples of 8; zero columns past them).
//   - Shared memory in attention_wgmma.cuh's swizzled slabs: K, V kBN rows, two buffers of Q and
//     dO (kBM rows), dS^T (kBN key rows x 64 queries: one 16 KiB slab), lse2 and D of two query
//     tiles; kD = 128: 2 x 32 + 4 x 16 + 16 + 1 + 1 KiB of alignment = 146 KiB (one block per
//     SM); kD = 64: 82 KiB.
//   - gq_i = dS K: each warpgroup takes half the head-dim columns (M = the tile's 64 queries,
//     N = kD / 2, K = the block's 128 keys), adds it to the running sum after key tiles
//     0 .. kt - 1 (attention_common.cuh, fused_tile / dq_sum_pair, the counters of
//     block_order.cuh), and the next tile's barrier releases the counter.
//   - Per query tile i: wait for its copies, fence.proxy.async, barrier, release gq tile i - 1,
//     start the copies of tile i + 1; S^T and dP^T (2 kD / 16 wgmma, one group), wait; P^T and
//     dS^T in registers, packed to bf16 A fragments; dS^T stored to its slab, fence.proxy.async;
//     thread 0 waits for key tile kt - 1's part of gq tile i; barrier; gv, gk and gq's part
//     (4 + 4 + 8 wgmma, one group), wait; gq's part added.
//     gv and gk are issued with gq's part, after the barrier, not before the dS^T stores: in
//     flight across the spin-wait (a divergent branch) they make ptxas serialise every wgmma
//     (C7518), and in flight across the stores alone they push kD = 128 to 108 bytes of spill.
//     Each group's operands are pinned before its wgmma.fence (mma_sm90.cuh, fence_operands).
//     By bench/ptxas_report.py: without the pin on gq's part the compiler sinks its zeroing past
//     the fence and ptxas serialises every wgmma (C7520); without those on S^T and dP^T kD = 128
//     spills 128 bytes; without those on the A fragments nothing changes (kept: the ISA wants
//     them written before the fence).
//   - Registers (ptxas, nvcc 13.0): 255 at kD = 128, 249 at kD = 64, no spills: gk, gv 2 x kD / 2
//     accumulators, S^T and dP^T 2 x 32, their bf16 pairs 2 x 16 (live until the register-A wgmma
//     retire), gq's part kD / 4.
// Not done (the next steps once a GPU has measured this): a TMA producer warpgroup, the two
// warpgroups' explicit ping-pong, gq through TMA reduce-add (FlashAttention-3's atomics are not
// deterministic; its ordered form would be this one's counters).
// Semantics as attention_bwd.cu: keys past Tk and masked keys have P = 0 (their gk, gv rows are 0
// and add nothing to gq), queries past Tq or with lse = -inf have lse2 = +inf, so P = 0. Every
// output element is written by one thread in a fixed summation order: a run twice gives the same
// bits.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/cuda/attention_wgmma.cuh"
#include "kernels/cuda/block_order.cuh"

namespace psvae::kernels::cuda::attn {

namespace {

constexpr int kWarpgroups = 2;
constexpr int kThreads = kWarpgroups * kWgThreads;
constexpr int kBN = 64 * kWarpgroups;  // keys per block
constexpr int kBM = 64;                // queries per tile

template <int kD>
constexpr int smem_bytes() {
  return 2 * tile_bytes<kD>(kBN) + 4 * tile_bytes<kD>(kBM) + kBN * kSlabRow + 4 * kBM * 4 +
         kSwizzlePeriod;
}

template <int kD>
__global__ void __launch_bounds__(kThreads, 1) bwd_wgmma_kernel(BwdArgs a) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // compiled for sm_90a only (CMakeLists.txt); this branch is never built
#else
  unsigned char* Ks = swizzle_aligned_smem();
  unsigned char* Vs = Ks + tile_bytes<kD>(kBN);
  unsigned char* Qs = Vs + tile_bytes<kD>(kBN);       // 2 buffers
  unsigned char* dOs = Qs + 2 * tile_bytes<kD>(kBM);  // 2 buffers
  unsigned char* dSt = dOs + 2 * tile_bytes<kD>(kBM);
  float* lse2s = reinterpret_cast<float*>(dSt + kBN * kSlabRow);  // 2 x kBM
  float* Ds = lse2s + 2 * kBM;                                    // 2 x kBM

  const Dims n = a.n;
  const int tid = threadIdx.x, wg = tid / kWgThreads, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int wrow = 16 * ((tid / 32) % 4);  // this warp's first row of its warpgroup's 64
  const int64_t nkt = (n.Tk + kBN - 1) / kBN, nqt = (n.Tq + kBM - 1) / kBM;
  const FusedTile ft = fused_tile(a, nkt);
  const int64_t bh = ft.bh, kt = ft.kt, k0 = kt * kBN;
  const HeadAt at = head_at(n, bh);
  const int64_t b = at.b;
  const BwdInputs in = bwd_inputs(a, at);
  unsigned* done = a.order + 1 + bh * nqt;  // per query tile: key tiles that have added to it
  float* dq_acc = a.dq_acc ? a.dq_acc + bh * n.Tq * n.d : nullptr;
  bf16_t* gqb = elem<bf16_t>(a.gq, at.q);

  // This lane's two key rows (64 wg + wrow + g, + 8): 0 or -inf.
  float kbias[2];
#pragma unroll
  for (int r = 0; r < 2; ++r)
    kbias[r] = key_bias<float>(a.mask, b, n.Tk, k0 + 64 * wg + wrow + g + 8 * r);

  auto load_q = [&](int64_t i, int st) {
    load_slabs<kBM, kD, kThreads>(Qs + st * tile_bytes<kD>(kBM), in.q, at.sq, i * kBM, n.Tq, n.d);
    load_slabs<kBM, kD, kThreads>(dOs + st * tile_bytes<kD>(kBM), in.go, at.so, i * kBM, n.Tq,
                                  n.dv);
    load_row_stats<kBM, kThreads>(lse2s + st * kBM, Ds + st * kBM, in, i * kBM, n.Tq);
  };
  load_slabs<kBN, kD, kThreads>(Ks, in.k, at.sk, k0, n.Tk, n.d);
  load_slabs<kBN, kD, kThreads>(Vs, in.v, at.sv, k0, n.Tk, n.dv);
  if (nqt > 0) load_q(0, 0);
  cp_async_commit();

  const uint32_t k_addr = sm90::smem_addr(Ks), v_addr = sm90::smem_addr(Vs);
  const uint32_t q_addr = sm90::smem_addr(Qs), do_addr = sm90::smem_addr(dOs);
  const uint32_t ds_addr = sm90::smem_addr(dSt);
  const float sl2 = static_cast<float>(a.scale * kLog2e), scale = static_cast<float>(a.scale);

  // Accumulator fragments (x[c][2 h + j] = X(row 16 w + g + 8 h, column 8 c + 2 t + j) of the
  // warpgroup's 64 rows); wgmma takes the same registers flat.
  float dk[kD / 8][4], dv[kD / 8][4];
#pragma unroll
  for (int c = 0; c < kD / 8; ++c)
#pragma unroll
    for (int x = 0; x < 4; ++x) dk[c][x] = dv[c][x] = 0.f;
  auto& dk_flat = reinterpret_cast<float(&)[kD / 2]>(dk);
  auto& dv_flat = reinterpret_cast<float(&)[kD / 2]>(dv);

  for (int64_t i = 0; i < nqt; ++i) {
    const int st = static_cast<int>(i & 1);
    cp_async_wait_all();
    sm90::fence_proxy_async();  // cp.async wrote through the generic proxy; wgmma reads async
    // Query tile i (and K, V) visible; buffer st ^ 1 (tile i - 1) and dS^T free (every warpgroup
    // retired its wgmma of tile i - 1); every thread's part of gq tile i - 1 added.
    __syncthreads();
    if (tid == 0 && i > 0) block_order::release_count(done + i - 1, static_cast<unsigned>(kt + 1));
    if (i + 1 < nqt) load_q(i + 1, st ^ 1);
    cp_async_commit();

    const uint32_t qt = q_addr + static_cast<uint32_t>(st * tile_bytes<kD>(kBM));
    const uint32_t dot = do_addr + static_cast<uint32_t>(st * tile_bytes<kD>(kBM));
    float s[kBM / 8][4], dp[kBM / 8][4];
#pragma unroll
    for (int c = 0; c < kBM / 8; ++c)
#pragma unroll
      for (int x = 0; x < 4; ++x) s[c][x] = dp[c][x] = 0.f;
    auto& s_flat = reinterpret_cast<float(&)[kBM / 2]>(s);
    auto& dp_flat = reinterpret_cast<float(&)[kBM / 2]>(dp);
    sm90::fence_operands(s_flat);  // zeroed before the fence (mma_sm90.cuh)
    sm90::fence_operands(dp_flat);
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk)
      sm90::wgmma_m64n64k16_bf16<false, false>(s_flat, kmajor_desc<kBN>(k_addr, 64 * wg, kk),
                                               kmajor_desc<kBM>(qt, 0, kk));
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk)
      sm90::wgmma_m64n64k16_bf16<false, false>(dp_flat, kmajor_desc<kBN>(v_addr, 64 * wg, kk),
                                               kmajor_desc<kBM>(dot, 0, kk));
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>(s_flat);
    sm90::fence_operands(dp_flat);

    p_ds_transposed<kBM>(s, dp, kbias, lse2s + st * kBM, Ds + st * kBM, sl2, scale, t);
    uint32_t pa[kBM / 16][4], dsa[kBM / 16][4];  // A fragments of k16 blocks (queries 16 kk ..)
    pack_a_frags<kBM>(pa, s);
    pack_a_frags<kBM>(dsa, dp);

    // dS^T into its slab: key row r (of the block's 128) at r x 128 B, queries
    // 8 c .. in 16-byte chunk c ^ (r % 8); this lane's pair (queries 8 c + 2 t, + 1) is 4 bytes.
    // r % 8 = g: the 8 rows of a warp's store land in 8 different chunks, so its 32 lanes hit
    // 32 different banks.
#pragma unroll
    for (int c = 0; c < kBM / 8; ++c)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = 64 * wg + wrow + g + 8 * h;
        *reinterpret_cast<uint32_t*>(dSt + r * kSlabRow + ((c ^ g) << 4) + 4 * t) =
            dsa[c / 2][2 * (c % 2) + h];
      }
    sm90::fence_proxy_async();  // the dS^T stores are read by wgmma (the async proxy)
    if (tid == 0) block_order::wait_count(done + i, static_cast<unsigned>(kt));
    __syncthreads();  // dS^T complete; key tiles 0 .. kt - 1 have added to gq tile i

    float dq[kD / 16][4];
#pragma unroll
    for (int c = 0; c < kD / 16; ++c) dq[c][0] = dq[c][1] = dq[c][2] = dq[c][3] = 0.f;
    auto& dq_flat = reinterpret_cast<float(&)[kD / 4]>(dq);
    const int col0 = wg * (kD / 2);  // this warpgroup's head-dim columns
    sm90::fence_operands(dq_flat);
    sm90::fence_operands(reinterpret_cast<uint32_t(&)[kBM / 4]>(pa));
    sm90::fence_operands(reinterpret_cast<uint32_t(&)[kBM / 4]>(dsa));
    sm90::wgmma_fence();  // the A fragments and dq were written by ordinary instructions
#pragma unroll
    for (int kk = 0; kk < kBM / 16; ++kk)
      sm90::wgmma_m64nNk16_bf16_rs<kD, true>(dv_flat, pa[kk], mnmajor_desc<kBM>(dot, 0, kk));
#pragma unroll
    for (int kk = 0; kk < kBM / 16; ++kk)
      sm90::wgmma_m64nNk16_bf16_rs<kD, true>(dk_flat, dsa[kk], mnmajor_desc<kBM>(qt, 0, kk));
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk)
      // gq's part of this warpgroup (64 queries x kD / 2 columns) += dS (64 x 16, MN-major) K
      // (16 x kD / 2, MN-major).
      sm90::wgmma_m64nNk16_bf16<kD / 2, true, true>(dq_flat, mnmajor_desc<kBN>(ds_addr, 0, kk),
                                                    mnmajor_desc<kBN>(k_addr, col0, kk));
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>(dq_flat);  // and gv, gk of this tile
    sm90::fence_operands(dv_flat);
    sm90::fence_operands(dk_flat);

    // Rows past Tq and columns past d are skipped; d is a multiple of 8, so a pair of columns
    // never straddles it.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = i * kBM + wrow + g + 8 * h;
      if (row >= n.Tq) continue;
#pragma unroll
      for (int c = 0; c < kD / 16; ++c) {
        const int col = col0 + 8 * c + 2 * t;
        if (col < n.d)
          dq_sum_pair(dq_acc, gqb, at.sq, n.d, row, col,
                      make_float2(dq[c][2 * h], dq[c][2 * h + 1]), kt == 0, kt == nkt - 1);
      }
    }
  }
  cp_async_wait_all();  // with Tq = 0 the K, V copies are still outstanding
  __syncthreads();      // every thread's part of the last gq tile added
  if (tid == 0 && nqt > 0)
    block_order::release_count(done + nqt - 1, static_cast<unsigned>(kt + 1));

  const float one[2] = {1.f, 1.f};
  const int64_t row0 = k0 + 64 * wg + wrow;  // this warp's 16 keys
  mma_store_rows<kD>(elem<bf16_t>(a.gk, at.k), at.sk, row0, n.Tk, n.d, dk, one, lane);
  mma_store_rows<kD>(elem<bf16_t>(a.gv, at.v), at.sv, row0, n.Tk, n.dv, dv, one, lane);
#endif
}

template <int kD>
void bwd_wgmma(const BwdArgs& a, cudaStream_t s, int dev) {
  launch_fused<bwd_wgmma_kernel<kD>>(a, kThreads, smem_bytes<kD>(), (a.n.Tk + kBN - 1) / kBN,
                                     (a.n.Tq + kBM - 1) / kBM, s, dev);
}

}  // namespace

void launch_bwd_wgmma(const BwdArgs& a, cudaStream_t s, int dev) {
  if (std::max(a.n.d, a.n.dv) <= 64)
    bwd_wgmma<64>(a, s, dev);
  else
    bwd_wgmma<128>(a, s, dev);
}

}  // namespace psvae::kernels::cuda::attn
