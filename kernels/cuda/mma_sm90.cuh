// The PTX of the sm_90a tensor-core paths (kernels/cuda/gemm_wgmma_sm90a.cu,
// gemm_wgmma_tma_sm90a.cu, attention_{fwd,bwd}_wgmma_sm90a.cu): warpgroup MMA (wgmma.mma_async)
// with both operands in shared memory or A in registers, its shared-memory matrix descriptors, the
// fences and waits around it; and the sm_90 pieces the TMA kernels feed it with: mbarriers, the
// bulk tensor copy (cp.async.bulk.tensor), setmaxnreg and named barriers.
// wgmma and setmaxnreg exist only on the sm_90a target (compute_90a): files that use this header
// are named *_sm90a.cu and compiled for that target alone (CMakeLists.txt).
//
// In an emulation build (cuda_emu/cuda_emu.h) each wrapper calls the emulator's twin, which follows
// the PTX ISA's definitions ("Asynchronous Warpgroup Level Matrix Multiply-Accumulate": the matrix
// descriptor format, the canonical shared-memory layouts, the accumulator fragment of m64nNk16;
// "mbarrier": phases, arrivals and transaction counts) and the driver API's tensor-map rules.
// That twin is my reading of the ISA, as this kernel is: it checks the kernel against that reading
// (indexing, swizzle, pipelining, waits), not the reading against the hardware; only a GPU run
// does.
#pragma once
#include <cstdint>

#include "kernels/cuda/spin_guard.cuh"

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

// The operand slabs of both wgmma GEMM kernels: 64 k deep, 128-byte swizzle, on a 1024-byte
// boundary. K-major (K contiguous): row r (m or n) at r x 128 B, so rows 64 b .. 64 b + 63 start
// at b x 8 KiB, groups of 8 rows 1024 B apart (the stride offset), a k16 step 32 B along the row.
// MN-major (M or N contiguous): rows of k holding 64 m (n) each, blocks of 64 m (n) 8 KiB apart
// (the leading offset), groups of 8 k rows 1024 B apart (the stride offset), a k16 step 2 groups.
constexpr uint32_t kSlabBlockBytes = 64 * 64 * 2;  // 8192: 64 rows (K-major) or 64 k (MN-major)
constexpr uint32_t kSlabGroupBytes = 1024;         // 8 rows of 128 B: one swizzle pattern
// The descriptor of rows (or columns) 64 b onwards for k16 step kk of the slab at `base`:
template <bool kMNMajor>
__device__ __forceinline__ uint64_t slab_desc(uint32_t base, int b, int kk) {
  const uint32_t start = base + static_cast<uint32_t>(b) * kSlabBlockBytes;
  return kMNMajor ? desc_sw128(start + static_cast<uint32_t>(kk) * 2 * kSlabGroupBytes,
                               kSlabBlockBytes, kSlabGroupBytes)
                  : desc_sw128(start + static_cast<uint32_t>(kk) * 32, 16, kSlabGroupBytes);
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

// Keeps the compiler from moving accesses of the accumulators across the asm statements around it
// (an empty asm that "reads and writes" each register): wgmma writes them asynchronously, behind
// the compiler's back, so reads must stay after the wait and writes before the issue.
// Before the issue it also keeps the instructions that set them from sinking past wgmma.fence:
// the zeroing of an accumulator, sunk there, made ptxas insert its own warpgroup.arrive and
// serialise every wgmma of the attention backward (C7520, attention_bwd_wgmma_sm90a.cu).
template <int R>
__device__ __forceinline__ void fence_operands(float (&d)[R]) {
#ifndef PSVAE_CUDA_EMULATION
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
#else
  (void)d;
#endif
}
// The same for register A fragments (bf16 pairs).
template <int R>
__device__ __forceinline__ void fence_operands(uint32_t (&a)[R]) {
#ifndef PSVAE_CUDA_EMULATION
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+r"(a[i])::"memory");
#else
  (void)a;
#endif
}

// Waits until at most N of the committed groups are pending; then the accumulators d may be read.
template <int N, int R>
__device__ __forceinline__ void wgmma_wait(float (&d)[R]) {
#ifdef PSVAE_CUDA_EMULATION
  (void)d;
  ::cuda_emu::wgmma_wait(N);
#else
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
  fence_operands(d);
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

// As wgmma_m64n128k16_bf16 with N = 64: d (64 x 64 f32) += A (64 x 16) * B (16 x 64); 32
// accumulators per thread, d[4i + 2h + j] = D(16 w + g + 8 h, 8 i + 2 q + j), i = 0..7.
template <bool kTransA, bool kTransB>
__device__ __forceinline__ void wgmma_m64n64k16_bf16(float (&d)[32], uint64_t desc_a,
                                                     uint64_t desc_b) {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::wgmma_bf16(d, 64, desc_a, desc_b, kTransA, kTransB);
#else
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, 1, 1, 1, %34, %35;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "n"(kTransA ? 1 : 0), "n"(kTransB ? 1 : 0)
      : "memory");
#endif
}

// As wgmma_m64n128k16_bf16 with N = 32: d (64 x 32 f32) += A (64 x 16) * B (16 x 32); 16
// accumulators per thread, d[4i + 2h + j] = D(16 w + g + 8 h, 8 i + 2 q + j), i = 0..3.
template <bool kTransA, bool kTransB>
__device__ __forceinline__ void wgmma_m64n32k16_bf16(float (&d)[16], uint64_t desc_a,
                                                     uint64_t desc_b) {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::wgmma_bf16(d, 32, desc_a, desc_b, kTransA, kTransB);
#else
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, 1, 1, 1, "
      "%18, %19;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15])
      : "l"(desc_a), "l"(desc_b), "n"(kTransA ? 1 : 0), "n"(kTransB ? 1 : 0)
      : "memory");
#endif
}

// As wgmma_m64n128k16_bf16 with N = 256: d (64 x 256 f32) += A (64 x 16) * B (16 x 256); 128
// accumulators per thread, d[4i + 2h + j] = D(16 w + g + 8 h, 8 i + 2 q + j), i = 0..31.
template <bool kTransA, bool kTransB>
__device__ __forceinline__ void wgmma_m64n256k16_bf16(float (&d)[128], uint64_t desc_a,
                                                      uint64_t desc_b) {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::wgmma_bf16(d, 256, desc_a, desc_b, kTransA, kTransB);
#else
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "
      "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, "
      "%74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, "
      "%92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, "
      "%108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, "
      "%123, %124, %125, %126, %127}, %128, %129, 1, 1, 1, %130, %131;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]),
        "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]),
        "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),
        "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]),
        "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]),
        "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),
        "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]),
        "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]),
        "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(desc_a), "l"(desc_b), "n"(kTransA ? 1 : 0), "n"(kTransB ? 1 : 0)
      : "memory");
#endif
}

// d (64 x N f32) += A (64 x 16 bf16, in registers) * B (16 x N bf16, shared memory through its
// descriptor; kTransB: MN-major, the only transpose the register form has). Asynchronous like the
// shared-memory form, and the A registers too must not change until wgmma_wait retires the group.
// A fragment (PTX ISA, "Register Fragments" of wgmma .bf16; the A layout of mma.m16n8k16 per
// warp): warp w holds rows 16 w .. 16 w + 15; a[0] = (16 w + g, k = 2 q, 2 q + 1), a[1] = (row + 8,
// same k), a[2] = (16 w + g, k + 8), a[3] = (row + 8, k + 8), the lower k in the low half. So the
// accumulator fragment of an m64nN product, rounded to bf16 pairs, is the A fragment of its k16
// blocks: columns 16 kk .. 16 kk + 15 are d[8 kk .. 8 kk + 7] (FlashAttention-3's P, which never
// leaves registers).
template <bool kTransB>
__device__ __forceinline__ void wgmma_m64n64k16_bf16_rs(float (&d)[32], const uint32_t (&a)[4],
                                                        uint64_t desc_b) {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::wgmma_bf16_rs(d, 64, a, desc_b, kTransB);
#else
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, "
      "%18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, "
      "%35}, %36, 1, 1, 1, %37;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(kTransB ? 1 : 0)
      : "memory");
#endif
}

// As wgmma_m64n64k16_bf16_rs with N = 128.
template <bool kTransB>
__device__ __forceinline__ void wgmma_m64n128k16_bf16_rs(float (&d)[64], const uint32_t (&a)[4],
                                                         uint64_t desc_b) {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::wgmma_bf16_rs(d, 128, a, desc_b, kTransB);
#else
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, "
      "%18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, "
      "%34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, "
      "%50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, "
      "%67}, %68, 1, 1, 1, %69;\n"
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
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(kTransB ? 1 : 0)
      : "memory");
#endif
}

// The two forms above by width N, for kernels whose tile width is a template parameter (the
// attention kernels: key tiles, head-dim capacities). Shared-memory A: N = 32, 64, 128 or 256;
// register A: N = 64 or 128.
template <int N, bool kTransA, bool kTransB>
__device__ __forceinline__ void wgmma_m64nNk16_bf16(float (&d)[N / 2], uint64_t desc_a,
                                                    uint64_t desc_b) {
  static_assert(N == 32 || N == 64 || N == 128 || N == 256, "wgmma widths wrapped here");
  if constexpr (N == 32)
    wgmma_m64n32k16_bf16<kTransA, kTransB>(d, desc_a, desc_b);
  else if constexpr (N == 64)
    wgmma_m64n64k16_bf16<kTransA, kTransB>(d, desc_a, desc_b);
  else if constexpr (N == 128)
    wgmma_m64n128k16_bf16<kTransA, kTransB>(d, desc_a, desc_b);
  else
    wgmma_m64n256k16_bf16<kTransA, kTransB>(d, desc_a, desc_b);
}
template <int N, bool kTransB>
__device__ __forceinline__ void wgmma_m64nNk16_bf16_rs(float (&d)[N / 2], const uint32_t (&a)[4],
                                                       uint64_t desc_b) {
  static_assert(N == 64 || N == 128, "wgmma widths wrapped here");
  if constexpr (N == 64)
    wgmma_m64n64k16_bf16_rs<kTransB>(d, a, desc_b);
  else
    wgmma_m64n128k16_bf16_rs<kTransB>(d, a, desc_b);
}

// ---- mbarriers, the bulk tensor copy engine (TMA), setmaxnreg ----------------------------------
// An mbarrier is 8 bytes of shared memory, named here by its shared-window address. Each phase
// completes when `count` arrivals have come (mbarrier_init) and the transaction bytes announced by
// arrive_expect_tx have all been delivered by the copies that complete on it.
__device__ __forceinline__ void mbarrier_init(uint32_t bar, int count) {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::mbarrier_init(bar, count);
#else
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}

// Makes the initialised mbarriers visible to the async proxy (the copy engine) before the barrier
// that publishes them to the block's other threads.
__device__ __forceinline__ void fence_mbarrier_init() {
#ifndef PSVAE_CUDA_EMULATION
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// One arrival; with bytes > 0 (mbarrier.arrive.expect_tx) the phase also expects that many
// transaction bytes first.
__device__ __forceinline__ void mbarrier_arrive(uint32_t bar, uint32_t expect_tx_bytes = 0) {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::mbarrier_arrive(bar, expect_tx_bytes);
#else
  if (expect_tx_bytes)
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar),
                 "r"(expect_tx_bytes)
                 : "memory");
  else
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}

// Blocks until the phase of the given parity has completed: try_wait (which itself suspends the
// thread for a while before it answers false) in a loop, trapping after spin_guard.cuh's limit.
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, int parity) {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::mbarrier_wait(bar, parity);
#else
  SpinGuard guard;
  for (;;) {
    uint32_t done;
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    if (done) return;
    guard.poll_failed();
  }
#endif
}

// A 3-D tiled bulk tensor copy: the box of the tensor map at coordinates (c0, c1, c2), innermost
// first, into shared memory at `dst` (128-byte aligned), elements outside the tensor as zeros,
// swizzled as the map says; its bytes complete on `bar`. `tensor_map` is the address of a
// __grid_constant__ kernel parameter.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const void* tensor_map, int c0, int c1,
                                            int c2, uint32_t bar) {
#ifdef PSVAE_CUDA_EMULATION
  const int c[3] = {c0, c1, c2};
  ::cuda_emu::tma_load(dst, tensor_map, c, 3, bar);
#else
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
#endif
}

// The same for a 4-D map, coordinates (c0, c1, c2, c3) innermost first.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const void* tensor_map, int c0, int c1,
                                            int c2, int c3, uint32_t bar) {
#ifdef PSVAE_CUDA_EMULATION
  const int c[4] = {c0, c1, c2, c3};
  ::cuda_emu::tma_load(dst, tensor_map, c, 4, bar);
#else
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
#endif
}

// Named barriers (bar.sync / bar.arrive with an id and a thread count; sm_70 on, used here by the
// sm_90a kernels): ids 1..15 (0 is __syncthreads'), the count a multiple of 32, every lane of a
// warp executing the same one. sync arrives and waits for the instance to complete; arrive only
// counts, so a warpgroup can tell another "go on" without waiting itself. Id and count are
// immediates: with an id in a register ptxas must assume that every one of the 16 is used.
template <int kId, int kCount>
__device__ __forceinline__ void named_barrier_sync() {
  static_assert(kId >= 1 && kId <= 15 && kCount % 32 == 0, "ids 1..15, whole warps");
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::named_barrier(kId, kCount, true);
#else
  asm volatile("bar.sync %0, %1;\n" ::"n"(kId), "n"(kCount) : "memory");
#endif
}
template <int kId, int kCount>
__device__ __forceinline__ void named_barrier_arrive() {
  static_assert(kId >= 1 && kId <= 15 && kCount % 32 == 0, "ids 1..15, whole warps");
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::named_barrier(kId, kCount, false);
#else
  asm volatile("bar.arrive %0, %1;\n" ::"n"(kId), "n"(kCount) : "memory");
#endif
}

// Moves this warpgroup's register allotment to kRegs per thread (setmaxnreg, sm_90a): a copy
// producer gives registers back, the MMA warpgroups take them. Every warp of the warpgroup runs it.
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::setmaxnreg(kRegs);
#else
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
#ifdef PSVAE_CUDA_EMULATION
  ::cuda_emu::setmaxnreg(kRegs);
#else
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}

}  // namespace psvae::kernels::cuda::sm90
