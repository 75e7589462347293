// CUDA attention forward on Hopper with a copy warpgroup (the `wgmma_tma` forward,
// PSVAE_ATTN_FWD): attention_fwd_wgmma_sm90a.cu's algorithm and products (S = Q K^T from shared
// memory, O += P V with P in registers, the online softmax in the log2 domain), rearranged as
// FlashAttention-3 (Shah et al. 2024, Sections 3.1 and 3.2) arranges them:
//   - warp specialisation: one warpgroup only copies (TMA, bulk tensor copies that write the
//     128-byte-swizzled slabs the descriptors read) and writes the keys' biases; two warpgroups
//     only multiply and run the softmax, so no consumer thread computes a copy address or waits
//     for a block-wide barrier;
//   - intra-warpgroup pipelining: per key tile j a consumer issues S(j) = Q K_j^T and then
//     O += P(j - 1) V_(j - 1) as two wgmma groups, waits for the first only and runs the softmax
//     of S(j) while the tensor cores still run the P V; then it waits for that, rescales O and
//     packs P(j). The exp2 of one tile runs under the MMAs of the one before.
//   - optionally (kPingPong: PSVAE_ATTN_FWD=wgmma_pingpong) the ping-pong of the two consumers
//     (Section 3.1's "pingpong scheduling"): they take turns at issuing their wgmma through two
//     named barriers (wg_turns.cuh), so that the tensor cores run one consumer's GEMMs while the
//     other runs its softmax, instead of the two interleaving as the warp schedulers happen to.
//     A turn is the issue of S(j) and P(j - 1) V(j - 1) (turn 0 only S(0), turn nkt only the last
//     P V); the waits and the softmax stay outside the turns.
//
// Design (bf16 in, fp32 softmax state and accumulators), built for sm_90a alone:
//   - Block: 384 threads = 3 warpgroups, 128 query rows of one (batch, head) pair. Warpgroup 0
//     copies (setmaxnreg 24); consumer c = 0, 1 (warpgroups 1, 2; setmaxnreg 240) owns rows
//     64 c .. 64 c + 63. Registers: each thread starts with 168 (65536 / 384 rounded down to 8,
//     what __launch_bounds__(384, 1) lets ptxas assume), so the copy warpgroup frees 128 x 144
//     and the consumers take 256 x 72 = the same 18432: a request above what was freed would
//     leave setmaxnreg.inc waiting for ever.
//   - Key tiles of kBN = 128 at kD = 64 and 64 at kD = 128. A consumer thread holds O (kD / 2
//     fp32), S (kBN / 2) and the previous tile's P (kBN / 4 bf16 pairs) at once, the price of the
//     pipelining: 32 + 64 + 32 = 128 registers of accumulators at kD = 64, but 64 + 64 + 32 = 160
//     at kD = 128 with kBN = 128, which ptxas (nvcc 13.0) could not fit in 240 beside the
//     addresses and the softmax state: 264 bytes of spill and every wgmma serialised (warning
//     C7512). kBN = 64 there makes it 64 + 32 + 16 = 112, and ptxas fits it (docs/kernels.md,
//     "Registers and spills"); the price is twice the tiles, so twice the softmax row reductions
//     and barrier waits per key.
//   - Head-dim capacity kD = 64 or 128 as the other wgmma kernels (attention_wgmma.cuh: slabs of
//     64 head-dim columns, row r's 16-byte chunk c at c ^ (r % 8)). The copies are 4-D boxes of
//     64 columns x 1 head x 128 rows x 1 batch entry over q, k, v in their (B, T, H, d) layout:
//     rows past T and columns past d arrive as zeros, as the cp.async loader writes them. A slab
//     wholly past d (or dv) is never copied: it is zeroed once at the start.
//   - Shared memory: Q (128 rows), a ring of 4 stages of K and V (kBN rows each, 16 KiB either
//     capacity) and of the keys' biases, the mbarriers. kD = 128: 32 + 4 x 32 KiB + 1 KiB + 1 KiB
//     of alignment = 162 KiB; kD = 64: 16 + 4 x 32 + 2 + 1 = 147 KiB (one block per SM either
//     way: the consumers hold every register).
//   - mbarriers: q_full (1 arrival + Q's bytes), per stage k_full (the kBN first copy threads'
//     arrivals, each after its key's bias store, one of them with K's bytes), v_full (1 + V's
//     bytes) and empty (one arrival per consumer once its P V of the stage's tile has retired,
//     after its softmax read the biases). K and V have separate full barriers so that S(j) may
//     start before V_j has landed.
// Semantics, tails and masks as attention_fwd.cu: keys past Tk and masked keys get a -inf bias,
// a row with no key ends with o = 0 and lse = -inf, rows past Tq are computed on zeros and not
// stored. Each output element is written by one thread; no atomics.
#include <cuda.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/cuda/attention_wgmma.cuh"
#include "kernels/cuda/tensor_map.h"
#include "kernels/cuda/wg_turns.cuh"

namespace psvae::kernels::cuda::attn {

namespace {

constexpr int kThreads = 3 * kWgThreads;              // copy warpgroup + 2 consumers
constexpr int kBQ = 128;                              // query rows per block, 64 per consumer
constexpr int kEntryRegs = 65536 / kThreads / 8 * 8;  // 168 per thread at the start
constexpr int kCopyRegs = 24, kConsumerRegs = 240;
static_assert(kWgThreads * (kEntryRegs - kCopyRegs) >=
                  2 * kWgThreads * (kConsumerRegs - kEntryRegs),
              "the consumers may take only what the copy warpgroup gives back");

constexpr int kStages = 4;  // K/V ring depth

// Keys per tile at capacity kD (the register budget above); one bias per copy thread.
template <int kD>
constexpr int key_tile() {
  return kD == 128 ? 64 : 128;
}
static_assert(key_tile<64>() <= kWgThreads && key_tile<128>() <= kWgThreads, "a bias per thread");

// Byte offsets from the 1024-aligned start: Q, K stages, V stages, biases, mbarriers.
template <int kD>
struct Layout {
  static constexpr int kS = kStages, kBN = key_tile<kD>();
  static constexpr int kTile = tile_bytes<kD>(kBN);  // one K or V stage
  static constexpr int q = 0;
  static constexpr int k = q + tile_bytes<kD>(kBQ);
  static constexpr int v = k + kS * kTile;
  static constexpr int bias = v + kS * kTile;
  static constexpr int bars = bias + kS * kBN * 4;  // q_full, k_full[kS], v_full[kS], empty[kS]
  static constexpr int bytes = bars + 8 * (1 + 3 * kS) + kSwizzlePeriod;
  static_assert(bytes <= 227 * 1024, "one block per SM must fit");
};

template <int kD, bool kPingPong>
__global__ void __launch_bounds__(kThreads, 1)
    fwd_wgmma_tma_kernel(const __grid_constant__ CUtensorMap map_q,
                         const __grid_constant__ CUtensorMap map_k,
                         const __grid_constant__ CUtensorMap map_v, FwdArgs a) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // compiled for sm_90a only (CMakeLists.txt); this branch is never built
#else
  using L = Layout<kD>;
  constexpr int kS = L::kS, kBN = L::kBN;
  unsigned char* base = swizzle_aligned_smem();
  const uint32_t sbase = sm90::smem_addr(base);
  const uint32_t q_addr = sbase + L::q, k_addr = sbase + L::k, v_addr = sbase + L::v;
  float* bias = reinterpret_cast<float*>(base + L::bias);  // kS x kBN
  const uint32_t bars = sbase + L::bars;
  const uint32_t q_full = bars;
  auto k_full = [&](int s) { return bars + 8u * static_cast<uint32_t>(1 + s); };
  auto v_full = [&](int s) { return bars + 8u * static_cast<uint32_t>(1 + kS + s); };
  auto empty = [&](int s) { return bars + 8u * static_cast<uint32_t>(1 + 2 * kS + s); };
  // Stage s of the K and V rings.
  auto k_stage = [&](int s) { return k_addr + static_cast<uint32_t>(s * L::kTile); };
  auto v_stage = [&](int s) { return v_addr + static_cast<uint32_t>(s * L::kTile); };

  const Dims n = a.n;
  const int tid = threadIdx.x, wg = tid / kWgThreads;
  const FwdBlock fb = fwd_block<kBQ>(a);  // only its rows and head: the copies need no pointers
  const HeadAt& at = fb.at;
  // The copies' coordinates (launch_fwd_wgmma_tma checked that they fit in 32 bits).
  const int q0 = static_cast<int>(fb.q0), b = static_cast<int>(at.b), h = static_cast<int>(at.h);
  const int nkt = static_cast<int>((n.Tk + kBN - 1) / kBN);
  // Slabs that hold some of the head dim: the others are zeros, written once below.
  const int q_slabs = static_cast<int>((n.d + 63) / 64),
            v_slabs = static_cast<int>((n.dv + 63) / 64);

  if (tid == 0) {
    sm90::mbarrier_init(q_full, 1);
    for (int s = 0; s < kS; ++s) {
      sm90::mbarrier_init(k_full(s), kBN);
      sm90::mbarrier_init(v_full(s), 1);
      sm90::mbarrier_init(empty(s), 2);
    }
    sm90::fence_mbarrier_init();
  }
  // Slabs past d (Q, every K stage) and past dv (every V stage) as zeros: 16-byte stores.
  auto zero_slabs = [&](int off, int rows, int first, int count) {
    const int slab = rows * kSlabRow, words = (kD / 64 - first) * slab / 16;
    for (int i = tid; i < count * words; i += kThreads) {
      const int tile = i / words, w = i % words;
      reinterpret_cast<uint4*>(base + off + tile * (kD / 64) * slab + first * slab)[w] =
          make_uint4(0, 0, 0, 0);
    }
  };
  zero_slabs(L::q, kBQ, q_slabs, 1);
  zero_slabs(L::k, kBN, q_slabs, kS);
  zero_slabs(L::v, kBN, v_slabs, kS);
  sm90::fence_proxy_async();  // those stores are read by wgmma (the async proxy)
  __syncthreads();            // barriers initialised, zeros visible: the only block-wide barrier

  if (wg == 0) {
    // The copy warpgroup: thread 0 issues every copy, the first kBN write the biases (one key
    // each); at kBN = 64 the other 64 have nothing to do.
    sm90::setmaxnreg_dec<kCopyRegs>();
    if (tid >= kBN) return;
    if (tid == 0) {
      sm90::mbarrier_arrive(q_full, static_cast<uint32_t>(q_slabs * kBQ * kSlabRow));
      for (int sl = 0; sl < q_slabs; ++sl)
        sm90::tma_load_4d(q_addr + sl * kBQ * kSlabRow, &map_q, 64 * sl, h, q0, b, q_full);
    }
    for (int j = 0; j < nkt; ++j) {
      const int s = j % kS;
      sm90::mbarrier_wait(empty(s), ((j / kS) & 1) ^ 1);  // its previous tile consumed
      bias[s * kBN + tid] = key_bias<float>(a.mask, b, n.Tk, int64_t(j) * kBN + tid);
      if (tid != 0) {
        sm90::mbarrier_arrive(k_full(s));  // releases the bias store
        continue;
      }
      const uint32_t ks = k_stage(s), vs = v_stage(s);
      sm90::mbarrier_arrive(k_full(s), static_cast<uint32_t>(q_slabs * kBN * kSlabRow));
      for (int sl = 0; sl < q_slabs; ++sl)
        sm90::tma_load_4d(ks + sl * kBN * kSlabRow, &map_k, 64 * sl, h, j * kBN, b, k_full(s));
      sm90::mbarrier_arrive(v_full(s), static_cast<uint32_t>(v_slabs * kBN * kSlabRow));
      for (int sl = 0; sl < v_slabs; ++sl)
        sm90::tma_load_4d(vs + sl * kBN * kSlabRow, &map_v, 64 * sl, h, j * kBN, b, v_full(s));
    }
    return;
  }

  // Consumers.
  sm90::setmaxnreg_inc<kConsumerRegs>();
  const int c = wg - 1, ct = tid - kWgThreads, lane = tid & 31, t = lane & 3;
  const float sl2 = static_cast<float>(a.scale * kLog2e);
  float o[kD / 8][4];  // the running O, accumulator fragment (attention_fwd_wgmma_sm90a.cu)
#pragma unroll
  for (int i = 0; i < kD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  auto& o_flat = reinterpret_cast<float(&)[kD / 2]>(o);
  float m[2] = {-inf<float>(), -inf<float>()}, l[2] = {0.f, 0.f};  // rows g and g + 8
  float s[kBN / 8][4];      // S of the newest tile, then its P
  uint32_t p[kBN / 16][4];  // P of the tile before, as register A fragments
  auto& s_flat = reinterpret_cast<float(&)[kBN / 2]>(s);

  // S = Q K^T of tile j into s, issued as one group (not waited for).
  auto issue_s = [&](int j) {
    const uint32_t ks = k_stage(j % kS);
#pragma unroll
    for (int i = 0; i < kBN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
    sm90::fence_operands(s_flat);
    sm90::mbarrier_wait(k_full(j % kS), (j / kS) & 1);
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk)
      sm90::wgmma_m64nNk16_bf16<kBN, false, false>(s_flat, kmajor_desc<kBQ>(q_addr, 64 * c, kk),
                                                   kmajor_desc<kBN>(ks, 0, kk));
    sm90::wgmma_commit();
  };
  // O += P V of tile j, issued as one group (not waited for).
  auto issue_pv = [&](int j) {
    const uint32_t vs = v_stage(j % kS);
    sm90::mbarrier_wait(v_full(j % kS), (j / kS) & 1);
    sm90::fence_operands(reinterpret_cast<uint32_t(&)[kBN / 4]>(p));
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk)
      sm90::wgmma_m64nNk16_bf16_rs<kD, true>(o_flat, p[kk], mnmajor_desc<kBN>(vs, 0, kk));
    sm90::wgmma_commit();
  };
  // One consumer's arrival on the stage of tile j: its P V has retired, its softmax is done.
  auto release = [&](int j) {
    if (ct % kWgThreads == 0) sm90::mbarrier_arrive(empty(j % kS));
  };

  // The consumers' turns at the tensor cores (kPingPong; ids 1, 2: 0 is __syncthreads').
  const WarpgroupTurns<1> turns{c};
  auto begin_turn = [&](int i) {
    if (kPingPong) turns.begin(i);
  };
  auto end_turn = [&](int i) {
    if (kPingPong) turns.end(i, nkt);
  };

  sm90::mbarrier_wait(q_full, 0);
  if (nkt > 0) {
    float alpha[2];
    begin_turn(0);
    issue_s(0);
    end_turn(0);
    sm90::wgmma_wait<0>(s_flat);
    softmax_tile<kBN>(s, bias, sl2, t, m, l, alpha);  // O is still 0: alpha is not needed
    pack_a_frags<kBN>(p, s);
    for (int j = 1; j < nkt; ++j) {
      begin_turn(j);
      issue_s(j);       // the tensor cores' next work ...
      issue_pv(j - 1);  // ... and the work after it
      end_turn(j);
      sm90::wgmma_wait<1>(s_flat);  // S(j) has landed; P(j - 1) V(j - 1) may still run
      softmax_tile<kBN>(s, bias + (j % kS) * kBN, sl2, t, m, l, alpha);
      sm90::wgmma_wait<0>(o_flat);
      release(j - 1);
      scale_rows<kD>(o, alpha);
      pack_a_frags<kBN>(p, s);
    }
    begin_turn(nkt);
    issue_pv(nkt - 1);
    end_turn(nkt);
    sm90::wgmma_wait<0>(o_flat);
    release(nkt - 1);
  }

  const int64_t row0 = fb.q0 + 16 * (ct / 32);  // this warp's 16 rows
  float inv[2];
  softmax_finish(l, m, inv, elem<bf16_t>(a.lse, at.row), row0, n.Tq, lane);
  mma_store_rows<kD>(elem<bf16_t>(a.o, at.o), at.so, row0, n.Tq, n.dv, o, inv, lane);
#endif
}

// A (B, T, H, width) bf16 tensor whose tokens are `stride` elements apart (H * width dense, more
// for q, k, v inside packed qkv rows) as a 4-D map with boxes of 64 columns x 1 head x `rows`
// rows x 1 entry. T = 0 (no keys) has no map; no copy of it is issued, so a 1-row extent stands in.
CUresult encode_bthd(CUtensorMap* map, const void* base, const Dims& n, int64_t T, int64_t width,
                     int64_t stride, uint32_t rows) {
  const uint64_t dims[4] = {static_cast<uint64_t>(width), static_cast<uint64_t>(n.H),
                            static_cast<uint64_t>(std::max<int64_t>(T, 1)),
                            static_cast<uint64_t>(n.B)};
  const uint64_t head = static_cast<uint64_t>(width) * 2, token = static_cast<uint64_t>(stride) * 2;
  const uint64_t strides[3] = {head, token, token * std::max<int64_t>(T, 1)};  // bytes
  const uint32_t box[4] = {64, 1, rows, 1};
  return detail::encode_bf16_sw128(map, base, 4, dims, strides, box);
}

template <int kD, bool kPingPong>
void fwd_wgmma_tma(const FwdArgs& a, cudaStream_t s) {
  const Dims& n = a.n;
  constexpr uint32_t kBN = key_tile<kD>();
  alignas(64) CUtensorMap mq, mk, mv;
  CUresult r = encode_bthd(&mq, a.q, n, n.Tq, n.d, n.sq, kBQ);
  if (r == CUDA_SUCCESS) r = encode_bthd(&mk, a.k, n, n.Tk, n.d, n.sk, kBN);
  if (r == CUDA_SUCCESS) r = encode_bthd(&mv, a.v, n, n.Tk, n.dv, n.sv, kBN);
  if (r != CUDA_SUCCESS)
    throw std::runtime_error(
        "attention: cuTensorMapEncodeTiled refused q, k or v of B=" + std::to_string(n.B) +
        " Tq=" + std::to_string(n.Tq) + " Tk=" + std::to_string(n.Tk) +
        " H=" + std::to_string(n.H) + " d=" + std::to_string(n.d) + " dv=" + std::to_string(n.dv) +
        " (CUresult " + std::to_string(r) + ")");
  const int64_t blocks = n.B * n.H * ((n.Tq + kBQ - 1) / kBQ);
  if (blocks == 0) return;
  launch_big_smem(fwd_wgmma_tma_kernel<kD, kPingPong>, static_cast<unsigned>(blocks), kThreads,
                  Layout<kD>::bytes, s, mq, mk, mv, a);
}

}  // namespace

void launch_fwd_wgmma_tma(const FwdArgs& a, bool pingpong, cudaStream_t s) {
  const Dims& n = a.n;
  if (n.Tq > INT32_MAX - kBQ || n.Tk > INT32_MAX - kBQ || n.B > INT32_MAX || n.H > INT32_MAX)
    throw std::runtime_error(
        "attention: PSVAE_ATTN_FWD=wgmma_tma and wgmma_pingpong take sequence lengths, batch "
        "and heads below 2^31 (the copies' coordinates)");
  const bool d64 = std::max(n.d, n.dv) <= 64;
  if (pingpong)
    d64 ? fwd_wgmma_tma<64, true>(a, s) : fwd_wgmma_tma<128, true>(a, s);
  else
    d64 ? fwd_wgmma_tma<64, false>(a, s) : fwd_wgmma_tma<128, false>(a, s);
}

}  // namespace psvae::kernels::cuda::attn
