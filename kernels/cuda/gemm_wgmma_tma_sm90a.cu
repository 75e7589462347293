// The Hopper-native variant of our bf16 GEMM tile kernel (the "wgmma_tma" backend of the dispatch,
// gemm.h): the operands come in through the bulk tensor copy engine (TMA) instead of cp.async,
// one warpgroup only feeds the ring while two others only multiply (warp specialisation), and the
// blocks are persistent. It is the step past gemm_wgmma_sm90a.cu, whose 256 threads both compute
// every 16-byte copy address and issue the MMAs, one block per 128 x 128 tile.
//
// Design (sm_90a, bf16 in, fp32 accumulators, one block per SM):
//   - 384 threads = 3 warpgroups. Warpgroup 0 is the producer: it gives its registers back
//     (setmaxnreg 40) and one of its threads issues every copy. Warpgroups 1 and 2 are the
//     consumers (setmaxnreg 232), 128 fp32 accumulators per thread. Two consumer schedules
//     (TmaSchedule, env PSVAE_GEMM_TMA_SCHEDULE; the same producer and ring for both):
//       cooperative (default): both consumers on one 128 x 256 tile, consumer c on rows
//         64 c .. 64 c + 63 and all 256 columns, per 64-deep slab 4 x wgmma.m64n256k16;
//       pingpong: each consumer on its own 128 x 128 tile, per slab 4 x 2 wgmma.m64n128k16 (rows
//         0..63 and 64..127), and the two mainloops take turns (named barriers, wg_turns.cuh),
//         so that one consumer stores its tile while the other's MMAs run: the tensor cores do
//         not wait for the epilogue (CUTLASS's "ping-pong" warp-specialised kernel).
//   - A ring of slabs, one A part (128 x 64, 16 KiB) and one B part (256 or 128 x 64: 32 or 16
//     KiB) a stage: 4 stages of 48 KiB (cooperative) or 6 of 32 KiB (ping-pong), 192 KiB either
//     way, + 1 KiB to put the ring on the 1024-byte swizzle period + the mbarriers. Two mbarriers
//     a stage: full[s] (1 arrival, the producer's arrive.expect_tx of the stage's bytes, then the
//     copies' bytes) and empty[s] (one arrival per consumer that reads the stage: 2 cooperative,
//     1 ping-pong, once its wgmma reading the stage is done).
//   - Copies: tensor maps with the 128-byte swizzle write exactly the layouts the descriptors read
//     (the same as gemm_wgmma_sm90a.cu's). K-major operands (A as (M, K), B as (N, K)): one box
//     of 64 k x 128 (A) or the tile width (B) rows, rows 128 B apart, groups of 8 rows 1024 B
//     apart. MN-major operands (A as (K, M), B as (K, N)): boxes of 64 m (n) x 64 k, 8 KiB each,
//     2 for A and 4 or 2 for B, placed 8 KiB apart (the descriptors' leading offset).
//     Out-of-bounds elements arrive as zeros (the M, N and K edges); split-K ranges are multiples
//     of 64, so no slab straddles two splits.
//   - Producer, slab `it` in stage s = it % stages: wait empty[s] for the round before (a fresh
//     barrier passes parity 1 at once), arrive.expect_tx(full[s], stage bytes), issue the copies.
//     Consumer: wait full[s], issue the slab's wgmma as one group, wait until only that group is
//     pending, then release the previous slab's stage (arrive on its empty barrier). So a
//     consumer's wgmma runs back to back with the copies of the slabs ahead, and no thread
//     computes an address.
//   - Epilogue straight from the accumulators (BlockTile::store, shared with the other kernels):
//     every epilogue and split-K work unchanged.
//   - Persistent (since the fourteenth session): a block takes tiles blockIdx.x, + gridDim.x, ...
//     of the (n tiles, m tiles, batch or splits) grid, x fastest, and the ring and its barriers'
//     phases run on across its tiles (one slab counter, which the producer and both consumers
//     count alike; a ping-pong consumer steps over the other's tiles' slabs). So while a
//     consumer stores one tile's accumulators the producer already copies the next tile's first
//     slabs into the stages freed, and no block pays a launch, a barrier init and an empty
//     pipeline per tile. The grid is one block per SM (PSVAE_GEMM_TMA_GRID=persistent, the
//     default) or one per tile (PSVAE_GEMM_TMA_GRID=tiles; ping-pong: one per pair of tiles, so
//     that each consumer has one), the same kernel either way, so the two can be timed against
//     each other.
//   - Not here: thread-block clusters with multicast, a TMA store of C, stmatrix. Untuned: no GPU
//     has run it yet (docs/kernels.md).
#include <cuda.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda/gemm_tile_common.cuh"
#include "kernels/cuda/mma_sm90.cuh"
#include "kernels/cuda/tensor_map.h"
#include "kernels/cuda/wg_turns.cuh"
#include "kernels/env_choice.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda::detail::tile {

namespace {

constexpr int kBK = 64;                                 // one 128-byte swizzle row of bf16
constexpr int kThreads = 384;                           // producer + 2 consumer warpgroups
constexpr int kABytes = kBM * kBK * 2;                  // 16384
constexpr int kSwizzlePeriod = 1024;                    // where a 128-byte swizzle pattern starts
constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // 128 x 40 + 256 x 232 <= 65536
static_assert(kBM == 128, "the layouts below assume 128-row tiles");

// What a schedule fixes: the tile width, the ring's depth, the arrivals that free a stage.
template <bool kPingPong>
struct Ring {
  static constexpr int kTileN = kPingPong ? kTmaPingPongBN : kTmaBN;
  static constexpr int kStages = kPingPong ? 6 : 4;
  static constexpr int kBBytes = kTileN * kBK * 2;       // 32768 or 16384
  static constexpr int kStageBytes = kABytes + kBBytes;  // the full barrier's transaction bytes
  static constexpr int kBarrierBytes = 2 * kStages * 8;  // full[], empty[]
  static constexpr int kReaders = kPingPong ? 1 : 2;     // consumers that read each stage
  static constexpr int kSmemBytes =
      kSwizzlePeriod + kStages * kStageBytes + kBarrierBytes;  // 197696 or 197728
  static_assert(kSmemBytes <= 227 * 1024, "one block per SM must fit");
};

// The tiles of one launch: n tiles x m tiles x (batch entries or K splits), the grid the
// one-tile-per-block kernels launch; tile i is (i % x, i / x % y, i / (x y)).
struct TileGrid {
  uint32_t x, y, z;
  __device__ __forceinline__ uint3 at(int64_t i) const {
    return uint3{static_cast<uint32_t>(i % x), static_cast<uint32_t>(i / x % y),
                 static_cast<uint32_t>(i / (int64_t(x) * y))};
  }
  int64_t count() const { return int64_t(x) * y * z; }
};

template <bool kTransA, bool kTransB, bool kPingPong>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_bf16_wgmma_tma_kernel(const __grid_constant__ CUtensorMap map_a,
                               const __grid_constant__ CUtensorMap map_b, GemmParams<bf16_t> p,
                               TileGrid tiles, int64_t ntiles) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // compiled for sm_90a only (CMakeLists.txt); this branch is never built
#else
  using R = Ring<kPingPong>;
  constexpr int kStages = R::kStages, kTileN = R::kTileN;
  using Tile = BlockTile<kTransA, kTransB, kTileN>;
  PSVAE_DYNAMIC_SMEM(smem_raw);
  const uint32_t raw = sm90::smem_addr(smem_raw);
  const uint32_t ring = raw + (kSwizzlePeriod - raw % kSwizzlePeriod) % kSwizzlePeriod;
  const uint32_t bars = ring + kStages * R::kStageBytes;  // full[s] at + 8 s, empty[s] after them
  auto full = [&](int s) { return bars + 8u * static_cast<uint32_t>(s); };
  auto empty = [&](int s) { return bars + 8u * static_cast<uint32_t>(kStages + s); };
  auto stage_a = [&](int s) { return ring + static_cast<uint32_t>(s) * R::kStageBytes; };
  const int tid = threadIdx.x, wg = tid >> 7;
  // This block's tiles, and its slabs counted across them: slab `it` uses stage it % kStages in
  // round it / kStages, for the producer and the consumers alike.
  const int64_t first = blockIdx.x, step = gridDim.x;
  auto tile_of = [&](int64_t i) { return Tile(p, tiles.at(i)); };
  auto slabs_of = [&](const Tile& t) {
    return static_cast<int>((t.k_end - t.k_begin + kBK - 1) / kBK);
  };

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      sm90::mbarrier_init(full(s), 1);
      sm90::mbarrier_init(empty(s), R::kReaders);
    }
    sm90::fence_mbarrier_init();
  }
  __syncthreads();  // the barriers are initialised for every thread (the only block-wide barrier)

  if (wg == 0) {
    // Producer. Only thread 0 issues; the rest of the warpgroup has nothing left to do.
    sm90::setmaxnreg_dec<kProducerRegs>();
    if (tid != 0) return;
    int64_t it = 0;
    for (int64_t i = first; i < ntiles; i += step) {
      const Tile t = tile_of(i);
      const int z = static_cast<int>(t.z), m0 = static_cast<int>(t.m0), n0 = static_cast<int>(t.n0),
                nk = slabs_of(t);
      for (int kt = 0; kt < nk; ++kt, ++it) {
        const int s = static_cast<int>(it % kStages);
        sm90::mbarrier_wait(empty(s), static_cast<int>((it / kStages) & 1) ^ 1);  // slot free
        sm90::mbarrier_arrive(full(s), R::kStageBytes);
        const int k0 = static_cast<int>(t.k_begin) + kt * kBK;
        const uint32_t sa = stage_a(s), sb = sa + kABytes;
        if (!kTransA) {
          sm90::tma_load_3d(sa, &map_a, k0, m0, z, full(s));  // (M, K): 64 k x 128 m
        } else {
          for (int j = 0; j < kBM / 64; ++j)  // (K, M): 64 m x 64 k blocks
            sm90::tma_load_3d(sa + j * sm90::kSlabBlockBytes, &map_a, m0 + 64 * j, k0, z, full(s));
        }
        if (kTransB) {
          sm90::tma_load_3d(sb, &map_b, k0, n0, z, full(s));  // (N, K): 64 k x kTileN n
        } else {
          for (int j = 0; j < kTileN / 64; ++j)  // (K, N): 64 n x 64 k blocks
            sm90::tma_load_3d(sb + j * sm90::kSlabBlockBytes, &map_b, n0 + 64 * j, k0, z, full(s));
        }
      }
    }
    return;
  }

  // Consumers.
  sm90::setmaxnreg_inc<kConsumerRegs>();
  const int c = wg - 1;
  auto release = [&](int64_t slab) {  // this consumer is done with slab's stage
    if (tid % 128 == 0) sm90::mbarrier_arrive(empty(static_cast<int>(slab % kStages)));
  };
  // Waits for the ring's slab `slab` to land and returns its stage's A part (the B part follows
  // it).
  auto landed = [&](int64_t slab) {
    const int s = static_cast<int>(slab % kStages);
    sm90::mbarrier_wait(full(s), static_cast<int>((slab / kStages) & 1));
    return stage_a(s);
  };
  int64_t it = 0;
  if constexpr (!kPingPong) {
    // Cooperative: rows 64 c .. 64 c + 63 of every tile of the block, all 256 columns.
    float acc[128];
    for (int64_t i = first; i < ntiles; i += step) {
      const Tile t = tile_of(i);
      const int nk = slabs_of(t);
#pragma unroll
      for (int e = 0; e < 128; ++e) acc[e] = 0.f;
      for (int kt = 0; kt < nk; ++kt, ++it) {
        const uint32_t sa = landed(it), sb = sa + kABytes;
        sm90::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk)  // A: this consumer's 64 rows; B: all 256 columns
          sm90::wgmma_m64n256k16_bf16<kTransA, !kTransB>(acc, sm90::slab_desc<kTransA>(sa, c, kk),
                                                         sm90::slab_desc<!kTransB>(sb, 0, kk));
        sm90::wgmma_commit();
        sm90::wgmma_wait<1>(acc);  // the slab before's group is done: its stage may be refilled
        if (kt > 0) release(it - 1);
      }
      sm90::wgmma_wait<0>(acc);
      if (nk > 0) release(it - 1);  // the tile's last slab: the next tile's copies may use it

      t.store_wgmma(p, acc, 64 * c);  // this consumer's rows, while the next slabs land
    }
  } else {
    // Ping-pong: the block's j-th tile (j = 0, 1, ...) is consumer j % 2's, all 128 x 128 of it,
    // and is that consumer's turn j / 2. Each consumer takes last + 1 turns, consumer 1 an empty
    // last one when the block has an odd number of tiles (WarpgroupTurns needs equal counts).
    const WarpgroupTurns<1> order{c};
    const int64_t mine = (ntiles - first + step - 1) / step;  // this block's tiles (>= 1)
    const int last = static_cast<int>((mine + 1) / 2) - 1;
    float acc[2][64];  // rows 0..63 and 64..127 of the tile
    int64_t j = 0;
    for (int64_t i = first; i < ntiles; i += step, ++j) {
      const Tile t = tile_of(i);
      const int nk = slabs_of(t);
      if (j % 2 != c) {
        it += nk;  // the other consumer's tile: its slabs pass this one by
        continue;
      }
#pragma unroll
      for (int e = 0; e < 64; ++e) acc[0][e] = acc[1][e] = 0.f;
      const int turn = static_cast<int>(j / 2);
      order.begin(turn);  // the other consumer has issued its whole mainloop
      for (int kt = 0; kt < nk; ++kt, ++it) {
        const uint32_t sa = landed(it), sb = sa + kABytes;
        sm90::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk)
#pragma unroll
          for (int h = 0; h < 2; ++h)  // A: rows 64 h .. 64 h + 63; B: all 128 columns
            sm90::wgmma_m64n128k16_bf16<kTransA, !kTransB>(
                acc[h], sm90::slab_desc<kTransA>(sa, h, kk), sm90::slab_desc<!kTransB>(sb, 0, kk));
        sm90::wgmma_commit();
        sm90::wgmma_wait<1>(acc[0]);
        sm90::fence_operands(acc[1]);
        if (kt > 0) release(it - 1);
      }
      order.end(turn, last);  // the other's MMAs may go in behind this one's last group
      sm90::wgmma_wait<0>(acc[0]);
      sm90::fence_operands(acc[1]);
      if (nk > 0) release(it - 1);

      t.store_wgmma_rows128(p, acc[0], acc[1]);  // under the other consumer's mainloop
    }
    if (c == 1 && mine % 2 == 1) {  // consumer 0 took one tile more: match its last turn
      order.begin(last);
      order.end(last, last);
    }
  }
#endif
}

// One operand as a 3-D map: `rows` rows of `inner` contiguous bf16, `ld` elements apart, in
// `batch` entries `batch_stride` apart; boxes of 64 inner x box_rows x 1, 128-byte swizzle, zeros
// outside. Returns the driver's result (CUDA_SUCCESS or why not).
CUresult encode(CUtensorMap* map, const bf16_t* base, int64_t inner, int64_t rows, int64_t ld,
                int64_t batch, int64_t batch_stride, uint32_t box_rows) {
  // K = 0 gives an empty operand, which a map cannot describe; no copy is issued then (no slab),
  // so a 1-element extent stands in.
  const uint64_t dims[3] = {static_cast<uint64_t>(std::max<int64_t>(inner, 1)),
                            static_cast<uint64_t>(std::max<int64_t>(rows, 1)),
                            static_cast<uint64_t>(batch)};
  // With one entry the batch stride is never stepped; the matrix's own size stands in for it.
  const int64_t bstride = batch > 1 ? batch_stride : ld * std::max<int64_t>(rows, 1);
  const uint64_t strides[2] = {static_cast<uint64_t>(ld) * 2, static_cast<uint64_t>(bstride) * 2};
  const uint32_t box[3] = {static_cast<uint32_t>(kBK), box_rows, 1};
  return encode_bf16_sw128(map, base, 3, dims, strides, box);
}

// Both operands' maps for parameters p over `batch` entries, B's boxes for tiles kTileN wide;
// returns the first failure.
CUresult encode_operands(CUtensorMap* a, CUtensorMap* b, const GemmParams<bf16_t>& p, bool ta,
                         bool tb, int64_t batch, int tile_n) {
  // A: (M, K) is K-major, one box of 128 rows; (K, M) is M-major, boxes of 64 k rows.
  CUresult r = ta ? encode(a, p.A, p.M, p.K, p.lda, batch, p.stride_a, 64)
                  : encode(a, p.A, p.K, p.M, p.lda, batch, p.stride_a, kBM);
  if (r != CUDA_SUCCESS) return r;
  // B: (N, K) is K-major, one box of tile_n rows; (K, N) is N-major, boxes of 64 k rows.
  return tb ? encode(b, p.B, p.K, p.N, p.ldb, batch, p.stride_b, static_cast<uint32_t>(tile_n))
            : encode(b, p.B, p.N, p.K, p.ldb, batch, p.stride_b, 64);
}

// PSVAE_GEMM_TMA_GRID (read at every launch, a getenv against a GEMM: nothing): "persistent"
// (default, also unset or empty: one block per SM, each taking every gridDim.x-th tile) or
// "tiles" (one block per tile; ping-pong: per pair of tiles). Anything else throws.
bool persistent_grid() {
  return env_choice("PSVAE_GEMM_TMA_GRID", {"persistent", "tiles"}, "gemm: ") == 0;
}

template <bool kTA, bool kTB, bool kPingPong>
void launch(const CUtensorMap& a, const CUtensorMap& b, const GemmParams<bf16_t>& p, dim3 grid,
            int device, cudaStream_t s) {
  auto kernel = gemm_bf16_wgmma_tma_kernel<kTA, kTB, kPingPong>;
  constexpr int kSmem = Ring<kPingPong>::kSmemBytes;
  static std::atomic<uint64_t> done{0};
  raise_smem_limit(kernel, kSmem, device, done);
  const TileGrid tiles{grid.x, grid.y, grid.z};
  const int64_t n = tiles.count();
  // The `tiles` grid: one block per tile (ping-pong: per pair, one for each consumer); past
  // 2^31 - 1 blocks the kernel's tile loop takes the rest.
  const int64_t per_block = kPingPong ? 2 : 1;
  const int64_t blocks =
      std::min<int64_t>(persistent_grid() ? std::min<int64_t>(n, ::psvae::cuda::sm_count(device))
                                          : (n + per_block - 1) / per_block,
                        INT32_MAX);
  PSVAE_LAUNCH(dim3(static_cast<unsigned>(blocks)), kThreads, kSmem, s, kernel)
  (a, b, p, tiles, n);
}

template <bool kPingPong>
void launch_any(const CUtensorMap& a, const CUtensorMap& b, const GemmParams<bf16_t>& p, bool ta,
                bool tb, dim3 grid, int device, cudaStream_t s) {
  if (!ta && !tb) launch<false, false, kPingPong>(a, b, p, grid, device, s);
  if (!ta && tb) launch<false, true, kPingPong>(a, b, p, grid, device, s);
  if (ta && !tb) launch<true, false, kPingPong>(a, b, p, grid, device, s);
  if (ta && tb) launch<true, true, kPingPong>(a, b, p, grid, device, s);
}

}  // namespace

TmaSchedule tma_schedule() {
  return env_choice("PSVAE_GEMM_TMA_SCHEDULE", {"cooperative", "pingpong"}, "gemm: ") == 0
             ? TmaSchedule::Cooperative
             : TmaSchedule::PingPong;
}

bool wgmma_tma_available(int device) {
  return wgmma_available(device) && tensor_map_encoder_available();
}

bool wgmma_tma_fits(const GemmParams<bf16_t>& p, bool ta, bool tb, int64_t batch,
                    TmaSchedule sched) {
  if (batch > 1 && (p.stride_a == 0 || p.stride_b == 0)) return false;  // broadcast: not tried
  if (p.K > INT32_MAX - kBK || p.M > INT32_MAX || p.N > INT32_MAX) return false;  // coordinates
  // The driver's own verdict on the maps this problem needs (host only, nothing launched).
  alignas(64) CUtensorMap a, b;
  return encode_operands(&a, &b, p, ta, tb, batch, tma_tile_n(sched)) == CUDA_SUCCESS;
}

void launch_wgmma_tma(const GemmParams<bf16_t>& p, bool ta, bool tb, TmaSchedule sched, dim3 grid,
                      int device, cudaStream_t s) {
  const int64_t batch = p.partial ? 1 : grid.z;
  alignas(64) CUtensorMap a, b;
  const CUresult r = encode_operands(&a, &b, p, ta, tb, batch, tma_tile_n(sched));
  if (r != CUDA_SUCCESS)
    throw std::runtime_error("gemm: cuTensorMapEncodeTiled refused the operands of M=" +
                             std::to_string(p.M) + " N=" + std::to_string(p.N) +
                             " K=" + std::to_string(p.K) + " (CUresult " + std::to_string(r) + ")");
  if (sched == TmaSchedule::PingPong)
    launch_any<true>(a, b, p, ta, tb, grid, device, s);
  else
    launch_any<false>(a, b, p, ta, tb, grid, device, s);
}

}  // namespace psvae::kernels::cuda::detail::tile
