// The wgmma variant of our bf16 GEMM tile kernel (the "wgmma" backend of the dispatch, gemm.h):
// Hopper's warpgroup MMA, which reads both operands straight from shared memory and runs
// asynchronously, instead of mma.sync's per-warp fragments loaded with ldmatrix. Built for sm_90a
// alone (the file name's suffix; CMakeLists.txt), so it exists only as sm_90a machine code and
// wgmma_available() says whether the device can load it. Same parameters, tile, grid, split-K and
// epilogue as the mma.sync kernel (gemm_tile_common.cuh), so the two are interchangeable per call.
//
// Design (sm_90a, bf16 in, fp32 accumulators):
//   - Block tile 128 x 128 x 64, 256 threads = 2 warpgroups; warpgroup w owns rows 64 w .. +63 and
//     all 128 columns: per 64-deep slab 4 x wgmma.m64n128k16, 64 fp32 accumulators per thread.
//   - Operand tiles in shared memory with the 128-byte swizzle, the layout wgmma reads through its
//     descriptors (mma_sm90.cuh): 64 bf16 = 128 bytes per row, 16-byte chunk c of row r at chunk
//     c ^ (r % 8), so the 8 rows of a pattern spread over all 32 banks.
//       K-major (A not transposed, B transposed): row = m (or n), 128 rows x 128 B = 16 KiB; groups
//         of 8 rows 1024 B apart (the descriptor's stride offset); a k16 step moves the start
//         address by 32 B inside the pattern.
//       MN-major (A transposed, B not transposed): row = k, 64 m (n) values per row, so the tile
//         is 2 blocks of 64 m (n) x 64 k, 8 KiB apart (leading offset); groups of 8 k rows 1024 B
//         apart (stride offset); a k16 step moves the start by 2048 B. wgmma transposes on read
//         (imm-trans), which the ISA allows for bf16 from shared memory.
//   - Global -> shared with 16-byte cp.async (zero-fill at the edges, as the mma.sync kernel) in
//     a 3-stage ring, 32 KiB a stage, 96 KiB + 1 KiB to align the ring to the 1024-byte swizzle
//     period: two blocks per SM. Per slab: wait for its copies, fence.proxy.async (cp.async writes
//     through the generic proxy, wgmma reads through the async one), barrier, issue its 4 wgmma as
//     one group, wait until only that group is pending (the previous slab's are done), barrier
//     (every warpgroup is done with the previous slab's buffer), then refill that buffer with the
//     slab two ahead. So one slab's wgmma overlaps the copies of the next two.
//   - No TMA, no producer/consumer warp specialisation, no setmaxnreg: the simplest wgmma
//     pipeline, a step past mma.sync (gemm_wgmma_tma_sm90a.cu is the step after). Its tile and
//     stage counts are untuned: no GPU has run it yet (docs/kernels.md).
// Operands whose chunks are not 16-byte aligned never come here (gemm_mma.cu keeps them on the
// mma.sync kernel's element-load path).
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "kernels/cuda/gemm_tile_common.cuh"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/mma_sm90.cuh"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda::detail::tile {

namespace {

namespace rt = ::psvae::cuda;

constexpr int kBK = 64;  // one 128-byte swizzle row of bf16
constexpr int kStages = 3;
constexpr int kThreads = 256;                   // 2 warpgroups
constexpr int kOperandBytes = kBM * kBK * 2;    // 16384: one operand's slab
constexpr int kStageBytes = 2 * kOperandBytes;  // 32768
constexpr int kSwizzlePeriod = 1024;            // 8 rows x 128 B: where a swizzle pattern starts
constexpr int kSmemBytes = kStages * kStageBytes + kSwizzlePeriod;  // 99328
static_assert(kBM == 128 && kBN == 128, "the layouts below assume 128 x 128 tiles");

// Byte offset, inside an operand slab, of the 16-byte chunk that holds 8 consecutive elements.
// K-major: row r (m or n, 0..127), chunk kc (k / 8, 0..7).
__device__ __forceinline__ uint32_t kmajor_chunk(int r, int kc) {
  return static_cast<uint32_t>(r * 128 + ((kc ^ (r & 7)) << 4));
}
// MN-major: row k (0..63), chunk mc (m or n / 8, 0..15): block mc / 8 of 64 values.
__device__ __forceinline__ uint32_t mnmajor_chunk(int k, int mc) {
  return static_cast<uint32_t>((mc >> 3) * sm90::kSlabBlockBytes + k * 128 +
                               (((mc & 7) ^ (k & 7)) << 4));
}

// Copies one operand's 128 x 64 slab (1024 chunks of 16 bytes, 4 per thread; consecutive threads
// take consecutive chunks of a global row, so the reads coalesce). kKMajor: element (r, k) is
// g[r * ld + k]; else (k, r) is g[k * ld + r]. r_left: rows (M or N) left from the tile origin;
// k_left: K left from the slab's k0. Chunks outside are zero-filled (partially, at the edges),
// so they add nothing to the products. base: any valid address of the operand, the source of
// zero-byte copies.
template <bool kKMajor>
__device__ __forceinline__ void load_slab(unsigned char* s, const bf16_t* g, const bf16_t* base,
                                          int64_t ld, int64_t r_left, int64_t k_left, int tid) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int c = tid + i * kThreads;  // 0..1023
    int64_t valid, goff;
    uint32_t dst;
    if (kKMajor) {
      const int r = c >> 3, kc = c & 7;
      valid = r < r_left ? std::min<int64_t>(8, std::max<int64_t>(0, k_left - 8 * kc)) : 0;
      goff = static_cast<int64_t>(r) * ld + 8 * kc;
      dst = kmajor_chunk(r, kc);
    } else {
      const int k = c >> 4, mc = c & 15;
      valid = k < k_left ? std::min<int64_t>(8, std::max<int64_t>(0, r_left - 8 * mc)) : 0;
      goff = static_cast<int64_t>(k) * ld + 8 * mc;
      dst = mnmajor_chunk(k, mc);
    }
    sm80::cp_async16(s + dst, valid > 0 ? static_cast<const void*>(g + goff) : base,
                     static_cast<int>(valid) * 2);
  }
}

// One block computes the 128 x 128 tile (blockIdx.y, blockIdx.x) of batch entry blockIdx.z (or,
// with split-K, of K range blockIdx.z), exactly as gemm_bf16_mma_kernel.
template <bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kThreads, 2) gemm_bf16_wgmma_kernel(GemmParams<bf16_t> p) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // compiled for sm_90a only (CMakeLists.txt); this branch is never built
#else
  PSVAE_DYNAMIC_SMEM(smem_raw);
  // The ring starts on the swizzle period in the shared window (the descriptors' base offset is 0).
  const uint32_t raw = sm90::smem_addr(smem_raw);
  unsigned char* ring = smem_raw + (kSwizzlePeriod - raw % kSwizzlePeriod) % kSwizzlePeriod;
  const int tid = threadIdx.x, wg = tid >> 7;
  const BlockTile<kTransA, kTransB> t(p);  // origin, K range, panels, outputs
  const int ktiles = static_cast<int>((t.k_end - t.k_begin + kBK - 1) / kBK);

  auto load_stage = [&](int stage, int kt) {
    const int64_t k0 = t.k_begin + static_cast<int64_t>(kt) * kBK;
    unsigned char* sa = ring + stage * kStageBytes;
    load_slab<!kTransA>(sa, kTransA ? t.a_panel + k0 * p.lda : t.a_panel + k0, t.A, p.lda, t.m_left,
                        t.k_end - k0, tid);
    load_slab<kTransB>(sa + kOperandBytes, kTransB ? t.b_panel + k0 : t.b_panel + k0 * p.ldb, t.B,
                       p.ldb, t.n_left, t.k_end - k0, tid);
  };

  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.f;

    // Prologue: slabs 0 .. kStages-2 in flight, one cp.async group each (empty past the end).
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    sm80::cp_async_commit();
  }

  for (int kt = 0; kt < ktiles; ++kt) {
    // Groups committed so far: kStages - 1 + kt, slab kt is group kt.
    sm80::cp_async_wait<kStages - 2>();
    sm90::fence_proxy_async();
    __syncthreads();  // slab kt is in shared memory, visible to every warpgroup's wgmma

    const uint32_t sa = sm90::smem_addr(ring + (kt % kStages) * kStageBytes);
    const uint32_t sb = sa + kOperandBytes;
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      // A: this warpgroup's 64 rows (block wg); B: all 128 columns. MN-major: A when transposed
      // (stored (K, M)), B when not (stored (K, N)); wgmma's transpose flags name those.
      sm90::wgmma_m64n128k16_bf16<kTransA, !kTransB>(acc, sm90::slab_desc<kTransA>(sa, wg, kk),
                                                     sm90::slab_desc<!kTransB>(sb, 0, kk));
    }
    sm90::wgmma_commit();
    sm90::wgmma_wait<1>(acc);  // slab kt - 1's group is done (this warpgroup)
    __syncthreads();           // ... in every warpgroup: its buffer may be refilled
    if (kt + kStages - 1 < ktiles) load_stage((kt + kStages - 1) % kStages, kt + kStages - 1);
    sm80::cp_async_commit();
  }
  sm90::wgmma_wait<0>(acc);
  sm80::cp_async_wait<0>();  // only empty groups can be left; drain them before the block exits

  t.store_wgmma(p, acc, 64 * wg);  // this warpgroup's rows
#endif
}

// Launches one instantiation, first raising its dynamic shared-memory limit above the default
// 48 KiB (once per device: the static is per instantiation).
template <bool kTA, bool kTB>
void launch(const GemmParams<bf16_t>& p, dim3 grid, int device, cudaStream_t s) {
  auto kernel = gemm_bf16_wgmma_kernel<kTA, kTB>;
  static std::atomic<uint64_t> done{0};
  raise_smem_limit(kernel, kSmemBytes, device, done);
  PSVAE_LAUNCH(grid, kThreads, kSmemBytes, s, kernel)(p);
}

}  // namespace

bool wgmma_available(int device) {
  static std::atomic<int> known[64];  // per device index (mod 64): 0 not asked, 1 no, 2 yes
  std::atomic<int>& k = known[device & 63];
  if (k.load() == 0) {
    rt::DeviceGuard guard(device);
    int major = 0;
    PSVAE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    // Fails (no kernel image for the device) unless this binary's sm_90a code can load here.
    cudaFuncAttributes attr;
    const cudaError_t e = cudaFuncGetAttributes(
        &attr, reinterpret_cast<const void*>(&gemm_bf16_wgmma_kernel<false, true>));
    if (e != cudaSuccess) (void)cudaGetLastError();  // not an error of the caller's work
    k.store(major == 9 && e == cudaSuccess ? 2 : 1);
  }
  return k.load() == 2;
}

void launch_wgmma(const GemmParams<bf16_t>& p, bool ta, bool tb, dim3 grid, int device,
                  cudaStream_t s) {
  if (!ta && !tb) launch<false, false>(p, grid, device, s);
  if (!ta && tb) launch<false, true>(p, grid, device, s);
  if (ta && !tb) launch<true, false>(p, grid, device, s);
  if (ta && tb) launch<true, true>(p, grid, device, s);
}

}  // namespace psvae::kernels::cuda::detail::tile
