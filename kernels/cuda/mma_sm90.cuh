// The PTX of the sm_90a tensor-core path (kernels/cuda/gemm_wgmma_sm90a.cu): warpgroup MMA
// (wgmma.mma_async) with both operands in shared memory, its shared-memory matrix descriptors, and
// the fences and waits around it. wgmma exists only on the sm_90a target (compute_90a): files that
// use this header are named *_sm90a.cu and compiled for that target alone (CMakeLists.txt).
//
// In an emulation build (cuda_emu/cuda_emu.h) each wrapper calls the emulator's twin, which follows
// the PTX ISA's definitions ("Asynchronous Warpgroup Level Matrix Multiply-Accumulate": the matrix
// descriptor format, the canonical shared-memory layouts, the accumulator fragment of m64nNk16).
// That twin is my reading of the ISA, as this kernel is: it checks the kernel against that reading
// (indexing, swizzle, pipelining, waits), not the reading against the hardware; only a GPU run
// does.
#pragma once
#include <cstdint>

namespace psvae::kernels::cuda::sm90 {

// The 32-bit shared-window address of a pointer into shared memory (what descriptors hold).
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
#ifdef PSVAE_CUDA_EMULATION
  return ::cuda_emu::smem_window_address(p);
#else
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

// A shared-memory matrix descriptor with the 128-byte swizzle (PTX ISA, "Matrix Descriptor
// Format"): bits 0-13 start address >> 4, 16-29 leading-dimension byte offset >> 4, 32-45
// stride-dimension byte offset >> 4, 49-51 base offset (0: every 1024-byte swizzle pattern starts
// on a 1024-byte boundary, which the kernels guarantee), 62-63 swizzle mode (1 = 128 bytes).
// For bf16 with this swizzle a "swizzle atom" is 8 rows of 128 bytes (64 elements), and the
// 16-byte chunk c of row r is stored at chunk c ^ (r % 8) (address bits 4-6 XOR bits 7-9):
//   K-major operand (K contiguous): atom rows are M (or N) indices; `sbo` = bytes between groups
//     of 8 rows; `lbo` is unused (the ISA says: assumed 1).
//   MN-major operand (M or N contiguous): atom rows are K indices, each holding 64 M (N) values;
//     `lbo` = bytes between blocks of 64 M (N) values, `sbo` = bytes between groups of 8 K rows.
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  auto enc = [](uint32_t x) { return static_cast<uint64_t>((x & 0x3FFFF) >> 4); };
  return enc(addr) | (enc(lbo) << 16) | (enc(sbo) << 32) | (uint64_t(1) << 62);
}

// Makes this thread's earlier generic-proxy writes to shared memory (st.shared, cp.async) visible
// to the async proxy that wgmma reads through. Each writing thread, before the barrier.
__device__ __forceinline__ void fence_proxy_async() {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::fence_proxy_async();
#else
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Orders this warpgroup's register accesses before the wgmma instructions that follow (required
// before the first wgmma and after the accumulators were touched by other instructions).
__device__ __forceinline__ void wgmma_fence() {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::wgmma_fence();
#else
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

// Closes this warpgroup's current group of wgmma operations.
__device__ __forceinline__ void wgmma_commit() {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::wgmma_commit();
#else
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Waits until at most N of the committed groups are pending. The accumulators are operands of the
// wait so that the compiler cannot move a read of them above it.
template <int N>
__device__ __forceinline__ void wgmma_wait(float (&d)[64]) {
#ifdef PSVAE_CUDA_EMULATION
  (void)d;
  ::cuda_emu::wgmma_wait(N);
#else
  asm volatile("wgmma.wait_group.sync.aligned %64;\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                 "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),
                 "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),
                 "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
                 "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),
                 "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),
                 "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),
                 "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
                 "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),
                 "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]),
                 "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
               : "n"(N)
               : "memory");
#endif
}

// d (64 x 128 f32, this warpgroup's tile) += A (64 x 16 bf16) * B (16 x 128 bf16), both read from
// shared memory through their descriptors; kTransA / kTransB: the operand is MN-major (the ISA's
// imm-trans-a / imm-trans-b), else K-major. Asynchronous: d must not be touched until a
// wgmma_wait retires the group. Accumulator fragment (PTX ISA, "Matrix Fragments for
// wgmma.mma_async.m64nNk16"), warp w = (thread % 128) / 32 of the warpgroup, g = lane / 4,
// q = lane % 4: d[4i + 2h + j] = D(16 w + g + 8 h, 8 i + 2 q + j), i = 0..15, h, j = 0..1.
template <bool kTransA, bool kTransB>
__device__ __forceinline__ void wgmma_m64n128k16_bf16(float (&d)[64], uint64_t desc_a,
                                                      uint64_t desc_b) {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::wgmma_bf16(d, 128, desc_a, desc_b, kTransA, kTransB);
#else
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "
      "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, 1, 1, 1, %66, %67;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "n"(kTransA ? 1 : 0), "n"(kTransB ? 1 : 0)
      : "memory");
#endif
}

}  // namespace psvae::kernels::cuda::sm90
