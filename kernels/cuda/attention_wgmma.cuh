// Shared pieces of the attention kernels on Hopper's warpgroup MMA (attention_fwd_wgmma_sm90a.cu,
// attention_bwd_wgmma_sm90a.cu; sm_90a only): the shared-memory tile layout both use, its
// cp.async loader, and the descriptors of its two readings (mma_sm90.cuh).
//
// A tile of `rows` rows at head-dim capacity kD (64 or 128) is kD / 64 slabs of 64 head-dim
// columns, each slab rows x 128 bytes with the 128-byte swizzle: row r at r x 128 B, its 16-byte
// chunk c (columns 8 c .. 8 c + 7 of the slab) at chunk c ^ (r % 8). Every tile starts on a
// 1024-byte boundary (the swizzle period: the descriptors' base offset 0). One tile, two readings:
//   K-major  the rows are wgmma's M or N (query or key rows), the head dim is its K: Q, K in
//            S = Q K^T (and K, Q in the backward's S^T = K Q^T; V, dO in dP^T = V dO^T);
//   MN-major the rows are wgmma's K (keys or queries), the head dim its N: V in O += P V, dO and
//            Q in the backward's dV += P^T dO and dK += dS^T Q, K in dQ += dS K.
#pragma once
#include <cstdint>

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/mma_sm90.cuh"

namespace psvae::kernels::cuda::attn {

constexpr int kWgThreads = 128;       // a warpgroup
constexpr int kSlabRow = 128;         // bytes per slab row: 64 bf16
constexpr int kSwizzlePeriod = 1024;  // 8 slab rows: where a swizzle pattern starts

// Bytes of a tile of `rows` rows at capacity kD.
template <int kD>
constexpr int tile_bytes(int rows) {
  return kD / 64 * rows * kSlabRow;
}

// The block's dynamic shared memory from its first 1024-byte boundary (callers reserve
// kSwizzlePeriod bytes more than their tiles need).
__device__ __forceinline__ unsigned char* swizzle_aligned_smem() {
  unsigned char* raw = attn_smem();
  const uint32_t addr = sm90::smem_addr(raw);
  return raw + (kSwizzlePeriod - addr % kSwizzlePeriod) % kSwizzlePeriod;
}

// attention_common.cuh's load_tile_chunks into the tile at dst: chunk c (head-dim columns
// 8 c .. 8 c + 7) of row r goes to slab c / 8, row r, 16-byte chunk (c % 8) ^ (r % 8).
template <int kRows, int kD, int kThreads>
__device__ __forceinline__ void load_slabs(unsigned char* dst, const bf16_t* base, int64_t stride,
                                           int64_t row0, int64_t nrows, int64_t width) {
  load_tile_chunks<kRows, kD, kThreads>(
      [dst](int r, int c) {
        return dst + (c / 8) * kRows * kSlabRow + r * kSlabRow + (((c % 8) ^ (r % 8)) << 4);
      },
      base, stride, row0, nrows, width);
}

// K-major reading of a tile of kRows rows at window address `tile`, for k16 step kk (head-dim
// columns 16 kk ..: slab kk / 4, 32 B per step inside the 128-byte row), from row row0 (a
// multiple of 8); groups of 8 rows 1024 B apart (the stride offset).
template <int kRows>
__device__ __forceinline__ uint64_t kmajor_desc(uint32_t tile, int row0, int kk) {
  return sm90::desc_sw128(
      tile + static_cast<uint32_t>((kk / 4) * kRows * kSlabRow + row0 * kSlabRow + (kk % 4) * 32),
      16, kSwizzlePeriod);
}

// MN-major reading of a tile of kRows rows, for k16 step kk (tile rows 16 kk ..: two groups of 8
// rows, 1024 B apart, the stride offset), N (or M) from head-dim column col0 on: blocks of 64
// columns one slab apart (the leading offset). col0 % 64 != 0 starts the descriptor inside a
// 128-byte row, as a K-major k step does; the swizzle is a function of the address bits (PTX ISA,
// "Matrix Descriptor Format": the base offset field exists for starts that are not on a pattern
// boundary, which these are not: their 128-byte row bits are 0).
template <int kRows>
__device__ __forceinline__ uint64_t mnmajor_desc(uint32_t tile, int col0, int kk) {
  return sm90::desc_sw128(tile + static_cast<uint32_t>((col0 / 64) * kRows * kSlabRow +
                                                       (col0 % 64) * 2 + kk * 16 * kSlabRow),
                          kRows * kSlabRow, kSwizzlePeriod);
}

// attention_common.cuh's pack_a_frag for every k16 block of a kN-wide accumulator fragment.
template <int kN>
__device__ __forceinline__ void pack_a_frags(uint32_t (&a)[kN / 16][4],
                                             const float (&x)[kN / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < kN / 16; ++kk) pack_a_frag<kN>(a[kk], x, kk);
}

}  // namespace psvae::kernels::cuda::attn
