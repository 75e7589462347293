// The PTX of the sm_80 tensor-core path, shared by our GEMM (gemm_mma.cu), the implicit-GEMM conv
// (conv_implicit_gemm.cu) and the MMA attention kernels (attention_common.cuh): async copies
// global -> shared, ldmatrix and mma.sync.m16n8k16 with bf16 inputs and fp32 accumulators. All of
// it runs on sm_90 too (the sm_90a wgmma/TMA path is the stretch goal).
//
// In an emulation build (cuda_emu/cuda_emu.h) inline PTX does not exist: each wrapper calls the
// emulator's twin, which follows the PTX ISA's definition of the instruction.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

namespace psvae::kernels::cuda::sm80 {

#ifndef PSVAE_CUDA_EMULATION
// The 32-bit shared-window address that ldmatrix and cp.async take.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// 16-byte copy global -> shared that bypasses L1 (cp.async.cg). The first src_bytes (0..16) are
// read, the rest of the 16 are zero-filled; src_bytes = 0 reads nothing, so `src` may then be any
// valid address (callers pass the tensor's base). dst and src are 16-byte aligned.
// The "memory" clobbers here and below keep the compiler from moving ordinary shared-memory
// accesses across these statements.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::cp_async16(dst, src, src_bytes);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(src_bytes)
               : "memory");
#endif
}

// Closes this thread's current group of cp.async copies.
__device__ __forceinline__ void cp_async_commit() {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are still pending. A __syncthreads
// after it makes every thread's copies visible to the block.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Four 8x8 b16 matrices from shared memory; lanes 8i..8i+7 give the 8 row addresses (16 bytes
// each, 16-byte aligned) of matrix i. Lane l receives in r[i] the elements (row l/4, columns
// 2(l%4) and 2(l%4)+1) of matrix i, the lower column in the low 16 bits.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::ldmatrix_x4(r, row, false);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(row))
               : "memory");
#endif
}
// As ldmatrix_x4 with .trans: lane l receives the elements (rows 2(l%4) and 2(l%4)+1, column
// l/4) of each matrix, i.e. the fragment of its transpose.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::ldmatrix_x4(r, row, true);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(row))
               : "memory");
#endif
}

// d (16x8 f32) += a (16x16 bf16, row-major) * b (16x8 bf16, "col": k-major per column).
// Fragments (PTX ISA, "Matrix fragments for mma.m16n8k16"), with g = lane / 4 and q = lane % 4,
// each register two bf16 with the lower column (or row) index in its low half:
// - a[0] = A(g, 2q..2q+1), a[1] = A(g+8, 2q..2q+1), a[2] = A(g, 2q+8..+9), a[3] = A(g+8, 2q+8..+9)
// - b0 = B(2q..2q+1, g), b1 = B(2q+8..2q+9, g)
// - d[0], d[1] = D(g, 2q), D(g, 2q+1); d[2], d[3] = D(g+8, 2q), D(g+8, 2q+1)
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::mma_bf16_16816(d, a, b0, b1);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Two floats rounded to bf16 in one register, lo in the low half (an A or B fragment register).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  uint32_t u;
  memcpy(&u, &v, sizeof u);
  return u;
}

}  // namespace psvae::kernels::cuda::sm80
