// CUDA attention forward on Hopper's warpgroup MMA (the `wgmma` forward, PSVAE_ATTN_FWD):
// the algorithm of attention_fwd.cu's MMA kernel (FlashAttention-2's online softmax in the log2
// domain, no T x T matrix, lse saved), with both products on wgmma instead of mma.sync, as
// FlashAttention-3 (Shah et al. 2024) does:
//   S = Q K^T  wgmma.m64n128k16 with Q and K read from shared memory through descriptors (both
//              K-major: the head dim is contiguous in both);
//   O += P V   wgmma.m64nDk16 with P in registers (the S accumulators rounded to bf16 pairs are
//              already its A fragment, mma_sm90.cuh) and V from shared memory, MN-major (the
//              head dim, wgmma's N, is contiguous in V), which wgmma transposes on read.
// Why: mma.sync is Ampere's instruction, each warp's 16 rows fed from registers that ldmatrix
// loads; Hopper's full tensor-core rate is reached through wgmma, which reads shared memory
// itself for a warpgroup's 64 rows. How far mma.sync falls short on an H200 is for bench_gemm
// (rows own / own wgmma) and bench_attention (mma / mma wgmma) to say; PyTorch's default SDPA on
// Hopper, the issue's baseline, is cuDNN's sm90 kernel (docs/kernels.md).
//
// Design (bf16 in, fp32 softmax state and accumulators), built for sm_90a alone:
//   - Block: 2 warpgroups (256 threads), 128 query rows of one (batch, head) pair, warpgroup w
//     owns rows 64 w .. 64 w + 63. Key tiles of kBN = 128, double-buffered.
//   - Head-dim capacity kD = 64 or 128 (d, dv <= kD, multiples of 8; columns past them are
//     zero-filled, so they add nothing to S and come out of P V as zeros that are not stored).
//   - Shared memory, every tile in attention_wgmma.cuh's 128-byte-swizzled slabs of 64 head-dim
//     columns: Q 128 rows, K and V kBN rows each, two buffers of K and V, the keys' biases;
//     kD = 128: 32 + 2 x (32 + 32) KiB + 1 KiB + 1 KiB of alignment = 162 KiB (one block per
//     SM); kD = 64: 82 KiB. Q and K are read K-major (S = Q K^T), V MN-major (O += P V).
//   - Per key tile j: wait for its copies (cp.async), fence.proxy.async, barrier (which also ends
//     every warpgroup's reads of the other buffer: each retired its P V of tile j - 1), start the
//     copies of tile j + 1 into the other buffer, then per warpgroup: S by kD / 16 wgmma, wait;
//     scale, bias, row max over the quad, rescale O, P = exp2(S - m) as bf16 A fragments; P V by
//     kBN / 16 wgmma, wait. The two warpgroups interleave on their own (one's softmax under the
//     other's wgmma); FlashAttention-3's explicit ping-pong and its overlap of S(j + 1) with the
//     softmax of tile j (a second S in registers) are not done: the next steps once a GPU has
//     measured this one (docs/kernels.md).
// Semantics, tails and masks as attention_fwd.cu: keys past Tk and masked keys get a -inf bias,
// a row with no key ends with o = 0 and lse = -inf, rows past Tq are computed on zeros and not
// stored. Each output element is written by one thread; no atomics.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/cuda/attention_wgmma.cuh"

namespace psvae::kernels::cuda::attn {

namespace {

constexpr int kWarpgroups = 2;
constexpr int kThreads = kWarpgroups * kWgThreads;
constexpr int kBQ = 64 * kWarpgroups;  // query rows per block
constexpr int kBN = 128;               // keys per tile

template <int kD>
constexpr int smem_bytes() {
  return tile_bytes<kD>(kBQ) + 4 * tile_bytes<kD>(kBN) + 2 * kBN * 4 + kSwizzlePeriod;
}

template <int kD>
__global__ void __launch_bounds__(kThreads, 1) fwd_wgmma_kernel(FwdArgs a) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // compiled for sm_90a only (CMakeLists.txt); this branch is never built
#else
  unsigned char* Qs = swizzle_aligned_smem();
  unsigned char* Ks = Qs + tile_bytes<kD>(kBQ);                          // 2 buffers
  unsigned char* Vs = Ks + 2 * tile_bytes<kD>(kBN);                      // 2 buffers
  float* bias = reinterpret_cast<float*>(Vs + 2 * tile_bytes<kD>(kBN));  // 2 x kBN

  const Dims n = a.n;
  const int tid = threadIdx.x, wg = tid / kWgThreads, lane = tid & 31, t = lane & 3;
  const FwdBlock fb = fwd_block<kBQ>(a);
  const HeadAt& at = fb.at;
  const int64_t q0 = fb.q0, b = at.b;
  const bf16_t *qb = fb.q, *kb = fb.k, *vb = fb.v;
  const int64_t nkt = (n.Tk + kBN - 1) / kBN;

  auto load_kv = [&](int64_t j, int st) {
    load_slabs<kBN, kD, kThreads>(Ks + st * tile_bytes<kD>(kBN), kb, at.sk, j * kBN, n.Tk, n.d);
    load_slabs<kBN, kD, kThreads>(Vs + st * tile_bytes<kD>(kBN), vb, at.sv, j * kBN, n.Tk, n.dv);
    for (int c = tid; c < kBN; c += kThreads)
      bias[st * kBN + c] = key_bias<float>(a.mask, b, n.Tk, j * kBN + c);
  };
  load_slabs<kBQ, kD, kThreads>(Qs, qb, at.sq, q0, n.Tq, n.d);
  if (nkt > 0) load_kv(0, 0);
  cp_async_commit();

  const uint32_t q_addr = sm90::smem_addr(Qs), k_addr = sm90::smem_addr(Ks);
  const uint32_t v_addr = sm90::smem_addr(Vs);
  const float sl2 = static_cast<float>(a.scale * kLog2e);
  // Accumulator fragments, as attention_common.cuh's softmax_tile takes them; wgmma takes the
  // same registers flat: x[c][2 h + j] = X(16 w + g + 8 h, 8 c + 2 t + j).
  float o[kD / 8][4];
#pragma unroll
  for (int c = 0; c < kD / 8; ++c) o[c][0] = o[c][1] = o[c][2] = o[c][3] = 0.f;
  auto& o_flat = reinterpret_cast<float(&)[kD / 2]>(o);
  float m[2] = {-inf<float>(), -inf<float>()}, l[2] = {0.f, 0.f};  // rows g and g + 8

  for (int64_t j = 0; j < nkt; ++j) {
    const int st = static_cast<int>(j & 1);
    cp_async_wait_all();
    sm90::fence_proxy_async();  // cp.async wrote through the generic proxy; wgmma reads async
    __syncthreads();  // tile j visible; every warpgroup is done with buffer st ^ 1 (tile j - 1)
    if (j + 1 < nkt) load_kv(j + 1, st ^ 1);
    cp_async_commit();

    const uint32_t kt = k_addr + static_cast<uint32_t>(st * tile_bytes<kD>(kBN));
    const uint32_t vt = v_addr + static_cast<uint32_t>(st * tile_bytes<kD>(kBN));
    float s[kBN / 8][4];
#pragma unroll
    for (int c = 0; c < kBN / 8; ++c) s[c][0] = s[c][1] = s[c][2] = s[c][3] = 0.f;
    auto& s_flat = reinterpret_cast<float(&)[kBN / 2]>(s);
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk)
      sm90::wgmma_m64n128k16_bf16<false, false>(s_flat, kmajor_desc<kBQ>(q_addr, 64 * wg, kk),
                                                kmajor_desc<kBN>(kt, 0, kk));
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>(s_flat);

    float alpha[2];
    softmax_tile<kBN>(s, bias + st * kBN, sl2, t, m, l, alpha);  // s becomes p
    scale_rows<kD>(o, alpha);
    uint32_t p[kBN / 16][4];  // P as the A fragments of k16 blocks kk (keys 16 kk ..)
    pack_a_frags<kBN>(p, s);

    sm90::wgmma_fence();  // o was rescaled by ordinary instructions
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk)
      sm90::wgmma_m64nNk16_bf16_rs<kD, true>(o_flat, p[kk], mnmajor_desc<kBN>(vt, 0, kk));
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>(o_flat);
  }
  cp_async_wait_all();  // only an empty group can be left; drain it before the block exits

  const int64_t row0 = q0 + 16 * (tid / 32);  // this warp's 16 rows
  float inv[2];
  softmax_finish(l, m, inv, elem<bf16_t>(a.lse, at.row), row0, n.Tq, lane);
  mma_store_rows<kD>(elem<bf16_t>(a.o, at.o), at.so, row0, n.Tq, n.dv, o, inv, lane);
#endif
}

template <int kD>
void fwd_wgmma(const FwdArgs& a, cudaStream_t s) {
  const int64_t blocks = a.n.B * a.n.H * ((a.n.Tq + kBQ - 1) / kBQ);
  if (blocks == 0) return;
  launch_big_smem(fwd_wgmma_kernel<kD>, static_cast<unsigned>(blocks), kThreads, smem_bytes<kD>(),
                  s, a);
}

}  // namespace

void launch_fwd_wgmma(const FwdArgs& a, cudaStream_t s) {
  if (std::max(a.n.d, a.n.dv) <= 64)
    fwd_wgmma<64>(a, s);
  else
    fwd_wgmma<128>(a, s);
}

}  // namespace psvae::kernels::cuda::attn
