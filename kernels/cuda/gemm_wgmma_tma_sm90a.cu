// The Hopper-native variant of our bf16 GEMM tile kernel (the "wgmma_tma" backend of the dispatch,
// gemm.h): the operands come in through the bulk tensor copy engine (TMA) instead of cp.async,
// one warpgroup only feeds the ring while two others only multiply (warp specialisation), and each
// block owns a 128 x 256 output tile. It is the step past gemm_wgmma_sm90a.cu, whose 256 threads
// both compute every 16-byte copy address and issue the MMAs, on a 128 x 128 tile.
//
// Design (sm_90a, bf16 in, fp32 accumulators, one block per SM):
//   - 384 threads = 3 warpgroups. Warpgroup 0 is the producer: it gives its registers back
//     (setmaxnreg 40) and one of its threads issues every copy. Warpgroups 1 and 2 are the
//     consumers (setmaxnreg 232): consumer c owns rows 64 c .. 64 c + 63 and all 256 columns,
//     per 64-deep slab 4 x wgmma.m64n256k16, 128 fp32 accumulators per thread.
//   - A 4-stage ring of slabs, 16 KiB of A (128 x 64) + 32 KiB of B (256 x 64) a stage, 192 KiB +
//     1 KiB to put the ring on the 1024-byte swizzle period + the mbarriers. Two mbarriers a stage:
//     full[s] (1 arrival, the producer's arrive.expect_tx of the stage's 48 KiB, then the copies'
//     bytes) and empty[s] (2 arrivals, one per consumer once its wgmma reading the stage is done).
//   - Copies: tensor maps with the 128-byte swizzle write exactly the layouts the descriptors read
//     (the same as gemm_wgmma_sm90a.cu's). K-major operands (A as (M, K), B as (N, K)): one box
//     of 64 k x 128 (A) or 256 (B) rows, rows 128 B apart, groups of 8 rows 1024 B apart.
//     MN-major operands (A as (K, M), B as (K, N)): boxes of 64 m (n) x 64 k, 8 KiB each, 2 for A
//     and 4 for B, placed 8 KiB apart (the descriptors' leading offset). Out-of-bounds elements
//     arrive as zeros (the M, N and K edges); split-K ranges are multiples of 64, so no slab
//     straddles two splits.
//   - Producer, slab kt in stage s = kt % 4: wait empty[s] for the round before (a fresh barrier
//     passes parity 1 at once), arrive.expect_tx(full[s], 48 KiB), issue the copies. Consumer:
//     wait full[s], issue the slab's 4 wgmma as one group, wait until only that group is pending,
//     then release the previous slab's stage (arrive on its empty barrier). So a consumer's wgmma
//     runs back to back with the copies of up to 3 slabs ahead, and no thread computes an address.
//   - Epilogue straight from the accumulators (BlockTile::store, shared with the other kernels):
//     every epilogue and split-K work unchanged.
//   - Persistent (since the fourteenth session): a block takes tiles blockIdx.x, + gridDim.x, ...
//     of the (n tiles, m tiles, batch or splits) grid, x fastest, and the ring and its barriers'
//     phases run on across its tiles (one slab counter). So while the consumers store one tile's
//     accumulators the producer already copies the next tile's first slabs into the stages they
//     freed, and no block pays a launch, a barrier init and an empty pipeline per tile. The grid
//     is one block per SM (PSVAE_GEMM_TMA_GRID=persistent, the default) or one per tile
//     (PSVAE_GEMM_TMA_GRID=tiles: the loop runs once, the kernel as it was before), the same
//     kernel either way, so the two can be timed against each other.
//   - Not here: thread-block clusters with multicast, the consumers' epilogue under the other's
//     mainloop (CUTLASS's ping-pong), a TMA store of C, stmatrix. Untuned: no GPU has run it yet
//     (docs/kernels.md).
#include <cuda.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "kernels/cuda/gemm_tile_common.cuh"
#include "kernels/cuda/mma_sm90.cuh"
#include "kernels/cuda/tensor_map.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda::detail::tile {

namespace {

constexpr int kBK = 64;  // one 128-byte swizzle row of bf16
constexpr int kStages = 4;
constexpr int kThreads = 384;                   // producer + 2 consumer warpgroups
constexpr int kABytes = kBM * kBK * 2;          // 16384
constexpr int kBBytes = kTmaBN * kBK * 2;       // 32768
constexpr int kStageBytes = kABytes + kBBytes;  // 49152, the full barrier's transaction bytes
constexpr int kSwizzlePeriod = 1024;            // where a 128-byte swizzle pattern starts
constexpr int kBarrierBytes = 2 * kStages * 8;  // full[], empty[]
constexpr int kSmemBytes = kSwizzlePeriod + kStages * kStageBytes + kBarrierBytes;  // 197696
constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // 128 x 40 + 256 x 232 <= 65536
static_assert(kBM == 128 && kTmaBN == 256, "the layouts below assume 128 x 256 tiles");
static_assert(kSmemBytes <= 227 * 1024, "one block per SM must fit");

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

template <bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_bf16_wgmma_tma_kernel(const __grid_constant__ CUtensorMap map_a,
                               const __grid_constant__ CUtensorMap map_b, GemmParams<bf16_t> p,
                               TileGrid tiles, int64_t ntiles) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // compiled for sm_90a only (CMakeLists.txt); this branch is never built
#else
  PSVAE_DYNAMIC_SMEM(smem_raw);
  const uint32_t raw = sm90::smem_addr(smem_raw);
  const uint32_t ring = raw + (kSwizzlePeriod - raw % kSwizzlePeriod) % kSwizzlePeriod;
  const uint32_t bars = ring + kStages * kStageBytes;  // full[s] at + 8 s, empty[s] at + 8 (4 + s)
  auto full = [&](int s) { return bars + 8u * static_cast<uint32_t>(s); };
  auto empty = [&](int s) { return bars + 8u * static_cast<uint32_t>(kStages + s); };
  const int tid = threadIdx.x, wg = tid >> 7;
  // This block's tiles, and its slabs counted across them: slab `it` uses stage it % kStages in
  // round it / kStages, for the producer and the consumers alike.
  const int64_t first = blockIdx.x, step = gridDim.x;
  auto tile_of = [&](int64_t i) { return BlockTile<kTransA, kTransB, kTmaBN>(p, tiles.at(i)); };
  auto slabs_of = [&](const BlockTile<kTransA, kTransB, kTmaBN>& t) {
    return static_cast<int>((t.k_end - t.k_begin + kBK - 1) / kBK);
  };

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      sm90::mbarrier_init(full(s), 1);
      sm90::mbarrier_init(empty(s), 2);
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
      const auto t = tile_of(i);
      const int z = static_cast<int>(t.z), m0 = static_cast<int>(t.m0), n0 = static_cast<int>(t.n0),
                nk = slabs_of(t);
      for (int kt = 0; kt < nk; ++kt, ++it) {
        const int s = static_cast<int>(it % kStages);
        sm90::mbarrier_wait(empty(s), static_cast<int>((it / kStages) & 1) ^ 1);  // slot free
        sm90::mbarrier_arrive(full(s), kStageBytes);
        const int k0 = static_cast<int>(t.k_begin) + kt * kBK;
        const uint32_t sa = ring + static_cast<uint32_t>(s) * kStageBytes, sb = sa + kABytes;
        if (!kTransA) {
          sm90::tma_load_3d(sa, &map_a, k0, m0, z, full(s));  // (M, K): 64 k x 128 m
        } else {
          for (int j = 0; j < kBM / 64; ++j)  // (K, M): 64 m x 64 k blocks
            sm90::tma_load_3d(sa + j * sm90::kSlabBlockBytes, &map_a, m0 + 64 * j, k0, z, full(s));
        }
        if (kTransB) {
          sm90::tma_load_3d(sb, &map_b, k0, n0, z, full(s));  // (N, K): 64 k x 256 n
        } else {
          for (int j = 0; j < kTmaBN / 64; ++j)  // (K, N): 64 n x 64 k blocks
            sm90::tma_load_3d(sb + j * sm90::kSlabBlockBytes, &map_b, n0 + 64 * j, k0, z, full(s));
        }
      }
    }
    return;
  }

  // Consumers.
  sm90::setmaxnreg_inc<kConsumerRegs>();
  const int c = wg - 1;               // rows 64 c .. 64 c + 63 of each tile
  auto release = [&](int64_t slab) {  // this consumer is done with slab's stage
    if (tid % 128 == 0) sm90::mbarrier_arrive(empty(static_cast<int>(slab % kStages)));
  };
  float acc[128];
  int64_t it = 0;
  for (int64_t i = first; i < ntiles; i += step) {
    const auto t = tile_of(i);
    const int nk = slabs_of(t);
#pragma unroll
    for (int e = 0; e < 128; ++e) acc[e] = 0.f;
    for (int kt = 0; kt < nk; ++kt, ++it) {
      const int s = static_cast<int>(it % kStages);
      sm90::mbarrier_wait(full(s), static_cast<int>((it / kStages) & 1));  // slab it has landed
      const uint32_t sa = ring + static_cast<uint32_t>(s) * kStageBytes, sb = sa + kABytes;
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

// Both operands' maps for parameters p over `batch` entries; returns the first failure.
CUresult encode_operands(CUtensorMap* a, CUtensorMap* b, const GemmParams<bf16_t>& p, bool ta,
                         bool tb, int64_t batch) {
  // A: (M, K) is K-major, one box of 128 rows; (K, M) is M-major, boxes of 64 k rows.
  CUresult r = ta ? encode(a, p.A, p.M, p.K, p.lda, batch, p.stride_a, 64)
                  : encode(a, p.A, p.K, p.M, p.lda, batch, p.stride_a, kBM);
  if (r != CUDA_SUCCESS) return r;
  // B: (N, K) is K-major, one box of 256 rows; (K, N) is N-major, boxes of 64 k rows.
  return tb ? encode(b, p.B, p.K, p.N, p.ldb, batch, p.stride_b, kTmaBN)
            : encode(b, p.B, p.N, p.K, p.ldb, batch, p.stride_b, 64);
}

// PSVAE_GEMM_TMA_GRID (read at every launch, a getenv against a GEMM: nothing): "persistent"
// (default, also unset or empty: one block per SM, each taking every gridDim.x-th tile) or
// "tiles" (one block per tile). Anything else throws.
bool persistent_grid() {
  const char* env = std::getenv("PSVAE_GEMM_TMA_GRID");
  const std::string v = env ? env : "";
  if (v.empty() || v == "persistent") return true;
  if (v == "tiles") return false;
  throw std::invalid_argument("gemm: PSVAE_GEMM_TMA_GRID must be persistent or tiles, got '" + v +
                              "'");
}

template <bool kTA, bool kTB>
void launch(const CUtensorMap& a, const CUtensorMap& b, const GemmParams<bf16_t>& p, dim3 grid,
            int device, cudaStream_t s) {
  auto kernel = gemm_bf16_wgmma_tma_kernel<kTA, kTB>;
  static std::atomic<uint64_t> done{0};
  raise_smem_limit(kernel, kSmemBytes, device, done);
  const TileGrid tiles{grid.x, grid.y, grid.z};
  const int64_t n = tiles.count();
  const int64_t blocks = std::min<int64_t>(
      n, persistent_grid() ? static_cast<int64_t>(::psvae::cuda::sm_count(device)) : INT32_MAX);
  PSVAE_LAUNCH(dim3(static_cast<unsigned>(blocks)), kThreads, kSmemBytes, s, kernel)
  (a, b, p, tiles, n);
}

}  // namespace

bool wgmma_tma_available(int device) {
  return wgmma_available(device) && tensor_map_encoder_available();
}

bool wgmma_tma_fits(const GemmParams<bf16_t>& p, bool ta, bool tb, int64_t batch) {
  if (batch > 1 && (p.stride_a == 0 || p.stride_b == 0)) return false;  // broadcast: not tried
  if (p.K > INT32_MAX - kBK || p.M > INT32_MAX || p.N > INT32_MAX) return false;  // coordinates
  // The driver's own verdict on the maps this problem needs (host only, nothing launched).
  alignas(64) CUtensorMap a, b;
  return encode_operands(&a, &b, p, ta, tb, batch) == CUDA_SUCCESS;
}

void launch_wgmma_tma(const GemmParams<bf16_t>& p, bool ta, bool tb, dim3 grid, int device,
                      cudaStream_t s) {
  const int64_t batch = p.partial ? 1 : grid.z;
  alignas(64) CUtensorMap a, b;
  const CUresult r = encode_operands(&a, &b, p, ta, tb, batch);
  if (r != CUDA_SUCCESS)
    throw std::runtime_error("gemm: cuTensorMapEncodeTiled refused the operands of M=" +
                             std::to_string(p.M) + " N=" + std::to_string(p.N) +
                             " K=" + std::to_string(p.K) + " (CUresult " + std::to_string(r) + ")");
  if (!ta && !tb) launch<false, false>(a, b, p, grid, device, s);
  if (!ta && tb) launch<false, true>(a, b, p, grid, device, s);
  if (ta && !tb) launch<true, false>(a, b, p, grid, device, s);
  if (ta && tb) launch<true, true>(a, b, p, grid, device, s);
}

}  // namespace psvae::kernels::cuda::detail::tile
