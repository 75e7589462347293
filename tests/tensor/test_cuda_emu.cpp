// The CUDA emulator itself (cuda_emu/, docs/kernels.md "The emulator"): the launch checks that
// stand in for a GPU's, the deferred cp.async, the schedule orders that expose races, spin-waits
// between blocks (tickets pass, a wait on a later block is a deadlock),
// ldmatrix + mma.sync against a plain matrix product, wgmma's checks and its two timings, and the
// mbarriers and bulk tensor copies (their phases, zero fill, swizzle, timings and checks). Only
// in an emulation build (cmake -DPSVAE_CUDA_EMU=ON); elsewhere this file is empty.
#ifdef PSVAE_CUDA_EMULATION
#include "cuda_emu/cuda_emu.h"
// (after cuda_emu.h, which the kernel sources get through -include)
#include <cuda.h>
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/block_order.cuh"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/mma_sm90.cuh"
#include "kernels/cuda/wg_turns.cuh"
#include "tensor/cuda/launch.cuh"

namespace {

namespace sm80 = psvae::kernels::cuda::sm80;
namespace sm90 = psvae::kernels::cuda::sm90;

__global__ void write_smem_kernel(float* out, int n) {
  PSVAE_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = static_cast<float>(i);
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = s[n - 1 - i];
}

__global__ void exit_then_shuffle_kernel(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

// Each of 32 threads copies 16 bytes by cp.async; before[i] reads the slot before the wait,
// after[i] once the group has retired.
__global__ void cp_async_kernel(const float* src, float* before, float* after) {
  PSVAE_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  const int t = threadIdx.x;
  sm80::cp_async16(s + 4 * t, src + 4 * t, t == 31 ? 8 : 16);  // the last one: 2 floats, 2 zeros
  sm80::cp_async_commit();
  before[t] = s[4 * t];
  sm80::cp_async_wait<0>();
  __syncthreads();
  for (int e = 0; e < 4; ++e) after[4 * t + e] = s[4 * t + e];
}

// One warp: D (16x8) = A (16x16, row-major in smem) * B (16x8, stored [n][k] in smem) through
// ldmatrix.x4 (A), ldmatrix.x4 of the [n][k] tile (b0, b1 of n-tile 0 are matrices 0, 1) and one
// mma; D written by the documented accumulator layout.
__global__ void mma_kernel(const __nv_bfloat16* a, const __nv_bfloat16* bt, float* d) {
  PSVAE_DYNAMIC_SMEM(smem);
  auto* sa = reinterpret_cast<__nv_bfloat16*>(smem);  // [16][16]
  auto* sb = sa + 256;                                // [16][16]: rows n 0..7 used, k 0..15
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) {
    sa[i] = a[i];
    sb[i] = i < 128 ? bt[i] : __float2bfloat16_rn(0.f);
  }
  __syncthreads();
  uint32_t af[4], bf[4];
  sm80::ldmatrix_x4(af, sa + (lane & 15) * 16 + (lane >> 4) * 8);
  sm80::ldmatrix_x4(bf, sb + (lane & 7) * 16 + ((lane >> 3) & 1) * 8 + (lane >> 4) * 8 * 16);
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  sm80::mma_bf16_16816(acc, af, bf[0], bf[1]);
  const int g = lane / 4, q = lane % 4;
  d[g * 8 + 2 * q] = acc[0];
  d[g * 8 + 2 * q + 1] = acc[1];
  d[(g + 8) * 8 + 2 * q] = acc[2];
  d[(g + 8) * 8 + 2 * q + 1] = acc[3];
}

// Thread t writes slot t, then reads slot t - 1. Without the barrier that is a race which running
// the threads in index order hides (t - 1 has always written first) and any other order shows.
__global__ void neighbour_kernel(float* out, bool sync) {
  PSVAE_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  const int t = threadIdx.x;
  s[t] = static_cast<float>(t);
  if (sync) __syncthreads();
  out[t] = t > 0 ? s[t - 1] : -1.f;
}

// Thread t stores t, passes a warp collective (__syncwarp) or, with sync, a barrier, and reads the
// slot of thread t + 32 (mod the block): another warp's store, which only the barrier orders.
__global__ void next_warp_kernel(float* out, bool sync) {
  PSVAE_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = static_cast<float>(t);
  if (sync)
    __syncthreads();
  else
    __syncwarp();
  out[t] = s[(t + 32) % n];
}

// A chain through every block of the grid (kernels/cuda/block_order.cuh): block n (numbered by
// its ticket, or by blockIdx) waits until counter[1] == n, logs its number at position n, and
// hands on n + 1. counter[0] is the ticket counter; both start at 0.
__global__ void chain_kernel(unsigned* counter, int* log, bool by_ticket) {
  namespace bo = psvae::kernels::cuda::block_order;
  const unsigned n = by_ticket ? bo::block_ticket(counter) : blockIdx.x;
  if (threadIdx.x == 0) {
    bo::wait_count(counter + 1, n);
    log[n] = static_cast<int>(n);
  }
  __syncthreads();
  if (threadIdx.x == 0) bo::release_count(counter + 1, n + 1);
}

// Thread 1 spins until thread 0 of its block sets a shared flag: a wait that another thread of
// the same block ends, which the emulator must let run (in reverse order thread 1 spins first).
__global__ void spin_on_neighbour_kernel(int* out) {
  __shared__ int flag;
  if (threadIdx.x == 0) flag = 0;
  __syncthreads();
  if (threadIdx.x == 0) *static_cast<volatile int*>(&flag) = 1;
  if (threadIdx.x == 1) {
    while (*static_cast<volatile int*>(&flag) == 0) __nanosleep(10);
    *out = 7;
  }
}

// One warpgroup: A (64 x 16) and B (16 x 128 as [n][k]), both K-major with the 128-byte swizzle,
// filled with `first` (so the swizzle does not matter), one wgmma, then both tiles refilled with
// `second` before the wait. The product reads first (16 first^2 per element) if the wgmma read
// shared memory when issued, second if at its wait. fence / wait: leave out the wgmma.fence or the
// final wait, which the emulator must refuse. d: thread t's 64 accumulators at d[64 t ..].
__global__ void wgmma_kernel(float* d, float first, float second, bool fence, bool wait) {
  PSVAE_DYNAMIC_SMEM(smem_raw);
  const uint32_t raw = sm90::smem_addr(smem_raw);
  unsigned char* tiles = smem_raw + (1024 - raw % 1024) % 1024;  // A: 8 KiB, then B: 16 KiB
  auto* e = reinterpret_cast<__nv_bfloat16*>(tiles);
  const int t = threadIdx.x;
  for (int i = t; i < 12288; i += 128) e[i] = __float2bfloat16_rn(first);
  sm90::fence_proxy_async();
  __syncthreads();
  float acc[64];
  for (float& a : acc) a = 0.f;
  const uint32_t sa = sm90::smem_addr(tiles);
  if (fence) sm90::wgmma_fence();
  sm90::wgmma_m64n128k16_bf16<false, false>(acc, sm90::desc_sw128(sa, 16, 1024),
                                            sm90::desc_sw128(sa + 8192, 16, 1024));
  sm90::wgmma_commit();
  __syncthreads();
  for (int i = t; i < 12288; i += 128) e[i] = __float2bfloat16_rn(second);
  __syncthreads();
  if (wait) sm90::wgmma_wait<0>(acc);
  for (int i = 0; i < 64; ++i) d[64 * t + i] = acc[i];
}

// One warpgroup issues a wgmma over tiles of 1s; warp 0 then (after its own wait when
// warp0_waits) overwrites the tiles with 2s and lets warps 1-3 on through a named barrier, and
// only then do they wait. d as wgmma_kernel's.
__global__ void wgmma_one_warp_first_kernel(float* d, bool warp0_waits) {
  PSVAE_DYNAMIC_SMEM(smem_raw);
  const uint32_t raw = sm90::smem_addr(smem_raw);
  unsigned char* tiles = smem_raw + (1024 - raw % 1024) % 1024;
  auto* e = reinterpret_cast<__nv_bfloat16*>(tiles);
  const int t = threadIdx.x;
  for (int i = t; i < 12288; i += 128) e[i] = __float2bfloat16_rn(1.f);
  sm90::fence_proxy_async();
  __syncthreads();
  float acc[64];
  for (float& a : acc) a = 0.f;
  const uint32_t sa = sm90::smem_addr(tiles);
  sm90::wgmma_fence();
  sm90::wgmma_m64n128k16_bf16<false, false>(acc, sm90::desc_sw128(sa, 16, 1024),
                                            sm90::desc_sw128(sa + 8192, 16, 1024));
  sm90::wgmma_commit();
  if (t < 32) {
    if (warp0_waits) sm90::wgmma_wait<0>(acc);
    for (int i = t; i < 12288; i += 32) e[i] = __float2bfloat16_rn(2.f);
    sm90::named_barrier_arrive<1, 128>();
  } else {
    sm90::named_barrier_sync<1, 128>();
  }
  sm90::wgmma_wait<0>(acc);
  for (int i = 0; i < 64; ++i) d[64 * t + i] = acc[i];
}

template <class T>
T* device_copy(const std::vector<T>& v) {
  void* p = nullptr;
  REQUIRE(cudaMalloc(&p, v.size() * sizeof(T)) == cudaSuccess);
  std::memcpy(p, v.data(), v.size() * sizeof(T));
  return static_cast<T*>(p);
}

// Runs cp_async_kernel under `mode` (restoring the previous one) and checks what it read: before
// the wait the poison (Deferred) or the data (Eager); after it, the data with the last copy's two
// zero-filled floats.
void check_cp_async(cuda_emu::AsyncMode mode) {
  const cuda_emu::AsyncMode saved = cuda_emu::async_mode();
  cuda_emu::set_async_mode(mode);
  std::vector<float> src(128);
  for (int i = 0; i < 128; ++i) src[i] = static_cast<float>(i + 1);
  float* s = device_copy(src);
  float* before = device_copy(std::vector<float>(32, 0.f));
  float* after = device_copy(std::vector<float>(128, -1.f));
  (void)cudaGetLastError();
  PSVAE_LAUNCH(1, 32, 512, nullptr, cp_async_kernel)(s, before, after);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  for (int t = 0; t < 32; ++t) {
    if (mode == cuda_emu::AsyncMode::Deferred)
      CHECK(std::isnan(before[t]));  // the poison, not the data
    else
      CHECK(before[t] == static_cast<float>(4 * t + 1));  // already landed
  }
  for (int i = 0; i < 126; ++i) CHECK(after[i] == static_cast<float>(i + 1));
  CHECK(after[126] == 0.f);
  CHECK(after[127] == 0.f);
  cuda_emu::set_async_mode(saved);
  cudaFree(s);
  cudaFree(before);
  cudaFree(after);
}

// ---- mbarriers and bulk tensor copies -----------------------------------------------------------
// The emulated driver's cuTensorMapEncodeTiled, as a kernel's host side fetches it.
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
EncodeTiled encoder() {
  void* f = nullptr;
  cudaDriverEntryPointQueryResult q{};
  REQUIRE(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                           &q) == cudaSuccess);
  REQUIRE(q == cudaDriverEntryPointSuccess);
  return reinterpret_cast<EncodeTiled>(f);
}

// A bf16 map of rows x inner elements (row stride ld), boxes of box_inner x box_rows, as a 3-D
// map with one entry in its outer dimension (what tma_load_3d reads: the instruction's
// dimensions must be the map's).
CUresult encode_2d(CUtensorMap* m, void* base, uint64_t inner, uint64_t rows, uint64_t ld_bytes,
                   uint32_t box_inner, uint32_t box_rows, CUtensorMapSwizzle swizzle) {
  const cuuint64_t dims[3] = {inner, rows, 1};
  const cuuint64_t strides[2] = {ld_bytes, ld_bytes * rows};
  const cuuint32_t box[3] = {box_inner, box_rows, 1};
  const cuuint32_t unit[3] = {1, 1, 1};
  return encoder()(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, base, dims, strides, box, unit,
                   CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                   CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
}

// Element e (row e / 64, column e % 64) of a 64 x 8 bf16 box that a copy with the 128-byte
// swizzle wrote at sbox: row r's 16-byte chunk c sits at chunk c ^ r.
__device__ float swizzled_box_elem(const unsigned char* sbox, int e) {
  const int r = e / 64, i = e % 64;
  __nv_bfloat16 v;
  std::memcpy(&v, sbox + r * 128 + (((i / 8) ^ r) << 4) + 2 * (i % 8), 2);
  return __bfloat162float(v);
}

// One 64 x 8 box of bf16 (128-byte swizzle) at (c0, c1) through an mbarrier: thread 0 initialises
// the barrier, announces the 1024 bytes, issues the copy and reads the box's last element before
// its wait (into *before: the only read ordered after the issue and before the wait); after the
// wait every thread reads the box back (swizzled_box_elem) into out[r * 64 + i]. With issuer_waits
// false thread 0 yields once, then only issues and exits, and threads 1.. read: the copy must land
// for threads that went to sleep on the mbarrier before it was issued.
__global__ void tma_kernel(const __grid_constant__ CUtensorMap map, float* before, float* out,
                           int c0, int c1, bool issuer_waits) {
  PSVAE_DYNAMIC_SMEM(smem);
  const uint32_t raw = sm90::smem_addr(smem);
  const uint32_t box = raw + (1024 - raw % 1024) % 1024, bar = box + 1024;
  unsigned char* sbox = smem + (box - raw);
  const int t = threadIdx.x;
  if (t == 0) {
    sm90::mbarrier_init(bar, 1);
    sm90::fence_mbarrier_init();
  }
  __syncthreads();
  __nv_bfloat16 v;
  if (t == 0) {
    if (!issuer_waits) __nanosleep(1);  // yield once: every reader is asleep on bar by the issue
    sm90::mbarrier_arrive(bar, 1024);
    sm90::tma_load_3d(box, &map, c0, c1, 0, bar);
    std::memcpy(&v, sbox + 1022, 2);
    *before = __bfloat162float(v);
    if (!issuer_waits) return;
  }
  sm90::mbarrier_wait(bar, 0);
  const int first = issuer_waits ? t : t - 1, step = blockDim.x - (issuer_waits ? 0 : 1);
  for (int e = first; e < 512; e += step) out[e] = swizzled_box_elem(sbox, e);
}

// One 64 x 8 box of a 4-D (B, T, H, d) bf16 map, the layout of attention's q, k, v, at
// (c0, h, t0, b): head h's rows t0 .. t0 + 7 of batch entry b, head-dim columns c0 .. c0 + 63.
// Thread 0 initialises the mbarrier and issues; every thread waits and reads the box back through
// the 128-byte swizzle into out[r * 64 + i].
__global__ void tma_4d_kernel(const __grid_constant__ CUtensorMap map, float* out, int c0, int h,
                              int t0, int b) {
  PSVAE_DYNAMIC_SMEM(smem);
  const uint32_t raw = sm90::smem_addr(smem);
  const uint32_t box = raw + (1024 - raw % 1024) % 1024, bar = box + 1024;
  const unsigned char* sbox = smem + (box - raw);
  if (threadIdx.x == 0) {
    sm90::mbarrier_init(bar, 1);
    sm90::fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    sm90::mbarrier_arrive(bar, 1024);
    sm90::tma_load_4d(box, &map, c0, h, t0, b, bar);
  }
  sm90::mbarrier_wait(bar, 0);
  for (int e = static_cast<int>(threadIdx.x); e < 512; e += static_cast<int>(blockDim.x))
    out[e] = swizzled_box_elem(sbox, e);
}

// Thread 0 arrives on an mbarrier and only then stores a flag (a store the arrival should have
// published); thread 1 waits on the barrier and reads the flag into *out.
__global__ void store_after_arrive_kernel(int* out) {
  PSVAE_DYNAMIC_SMEM(smem);
  const uint32_t raw = sm90::smem_addr(smem);
  const uint32_t bar = raw + 8;
  int* flag = reinterpret_cast<int*>(smem);
  if (threadIdx.x == 0) {
    *flag = 0;
    sm90::mbarrier_init(bar, 1);
    sm90::fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    sm90::mbarrier_arrive(bar);
    *flag = 1;
  } else {
    sm90::mbarrier_wait(bar, 0);
    *out = *flag;
  }
}

// Two warpgroups take `turns` turns each through WarpgroupTurns (with_turns) or freely; in each
// turn the warpgroup's first thread appends its index to log. With the turns the log alternates
// 0 1 0 1 ...
__global__ void turns_kernel(int* log, int turns, bool with_turns) {
  PSVAE_DYNAMIC_SMEM(smem);
  int* next = reinterpret_cast<int*>(smem);
  if (threadIdx.x == 0) *next = 0;
  __syncthreads();
  const psvae::kernels::cuda::WarpgroupTurns<3> pp{static_cast<int>(threadIdx.x) / 128};
  for (int i = 0; i < turns; ++i) {
    if (with_turns) pp.begin(i);
    if (threadIdx.x % 128 == 0) log[(*next)++] = pp.c;
    if (with_turns) pp.end(i, turns - 1);
  }
}

// The named-barrier misuses the emulator refuses, one per `what` (see the test); 64 threads. The
// first two call the emulator directly: the wrappers' static_asserts refuse them at compile time.
__global__ void named_barrier_misuse_kernel(int what) {
  const bool warp0 = threadIdx.x < 32;
  switch (what) {
    case 0: ::cuda_emu::named_barrier(0, 64, true); break;  // id 0 is __syncthreads'
    case 1: ::cuda_emu::named_barrier(1, 48, true); break;  // not whole warps
    case 2:
      warp0 ? sm90::named_barrier_sync<1, 64>() : sm90::named_barrier_sync<1, 32>();
      break;  // counts differ
    case 3:   // an arrival no one matches
      if (warp0) sm90::named_barrier_arrive<2, 64>();
      break;
    case 4:  // a sync that never completes
      if (warp0) sm90::named_barrier_sync<2, 64>();
      break;
    default: break;
  }
}

// The mbarrier misuses the emulator refuses, one per `what` (see the test).
__global__ void mbarrier_misuse_kernel(const __grid_constant__ CUtensorMap map, int what) {
  PSVAE_DYNAMIC_SMEM(smem);
  const uint32_t raw = sm90::smem_addr(smem);
  const uint32_t box = raw + (1024 - raw % 1024) % 1024, bar = box + 1024;
  if (threadIdx.x != 0) return;
  if (what != 1) sm90::mbarrier_init(bar, 1);
  switch (what) {
    case 0: sm90::mbarrier_wait(bar, 0); break;  // nobody arrives: deadlock
    case 1: sm90::mbarrier_arrive(bar); break;   // never initialised
    case 2:
      std::memset(smem + (bar - raw), 0, 8);  // a store over the barrier
      sm90::mbarrier_arrive(bar);
      break;
    case 3:  // the phase waits for bytes; a second arrival is one too many
      sm90::mbarrier_arrive(bar, 16);
      sm90::mbarrier_arrive(bar);
      break;
    case 4:  // a copy no thread waits for
      sm90::mbarrier_arrive(bar, 1024);
      sm90::tma_load_3d(box, &map, 0, 0, 0, bar);
      break;
    case 5:  // a 4-D copy through a 3-D map
      sm90::mbarrier_arrive(bar, 1024);
      sm90::tma_load_4d(box, &map, 0, 0, 0, 0, bar);
      sm90::mbarrier_wait(bar, 0);
      break;
    default: break;
  }
}

}  // namespace

TEST_CASE("cuda emulator: dynamic shared memory above 48 KiB needs the opt-in") {
  const int n = 16384;  // 64 KiB of floats
  std::vector<float> host(n, -1.f);
  float* out = device_copy(host);
  (void)cudaGetLastError();
  PSVAE_LAUNCH(1, 256, n * sizeof(float), nullptr, write_smem_kernel)(out, n);
  const cudaError_t refused = cudaGetLastError();
  CHECK(refused == cudaErrorInvalidConfiguration);
  CHECK(std::string(cudaGetErrorString(refused)).find("cudaFuncSetAttribute") != std::string::npos);
  CHECK(out[0] == -1.f);  // nothing ran
  REQUIRE(cudaFuncSetAttribute(write_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               n * sizeof(float)) == cudaSuccess);
  PSVAE_LAUNCH(1, 256, n * sizeof(float), nullptr, write_smem_kernel)(out, n);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(out[0] == static_cast<float>(n - 1));
  CHECK(out[n - 1] == 0.f);
  cudaFree(out);
}

TEST_CASE("cuda emulator: a warp collective waiting for an exited lane fails the launch") {
  int* out = device_copy(std::vector<int>(32, -1));
  (void)cudaGetLastError();
  PSVAE_LAUNCH(1, 32, 0, nullptr, exit_then_shuffle_kernel)(out);
  const cudaError_t e = cudaGetLastError();
  CHECK(e == cudaErrorLaunchFailure);
  CHECK(std::string(cudaGetErrorString(e)).find("exited") != std::string::npos);
  cudaFree(out);
}

TEST_CASE("cuda emulator: cp.async lands at its wait, zero-filling past src-size") {
  check_cp_async(cuda_emu::AsyncMode::Deferred);
}

TEST_CASE("cuda emulator: a missing __syncthreads that index order hides shows in another order") {
  const cuda_emu::Order saved = cuda_emu::schedule_order();
  float* out = device_copy(std::vector<float>(128, -2.f));
  // How many threads read their neighbour's value, under each order, with and without the barrier.
  auto correct = [&](cuda_emu::Order order, bool sync) {
    cuda_emu::set_schedule_order(order);
    PSVAE_LAUNCH(1, 128, 128 * sizeof(float), nullptr, neighbour_kernel)(out, sync);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    int n = 0;
    for (int t = 1; t < 128; ++t) n += out[t] == static_cast<float>(t - 1);
    return n;
  };
  for (cuda_emu::Order o :
       {cuda_emu::Order::Forward, cuda_emu::Order::Reverse, cuda_emu::Order::Shuffle}) {
    CAPTURE(static_cast<int>(o));
    CHECK(correct(o, true) == 127);
  }
  CHECK(correct(cuda_emu::Order::Forward, false) == 127);  // hidden
  CHECK(correct(cuda_emu::Order::Reverse, false) == 0);    // every read is of the poison
  CHECK(correct(cuda_emu::Order::Shuffle, false) < 127);
  cuda_emu::set_schedule_order(saved);
  cudaFree(out);
}

TEST_CASE("cuda emulator: a barrier missing between warp collectives shows in warps order only") {
  const cuda_emu::Order saved = cuda_emu::schedule_order();
  float* out = device_copy(std::vector<float>(128, -2.f));
  // How many threads read the value thread t + 32 stored, under each order, with and without the
  // barrier.
  auto correct = [&](cuda_emu::Order order, bool sync) {
    cuda_emu::set_schedule_order(order);
    PSVAE_LAUNCH(1, 128, 128 * sizeof(float), nullptr, next_warp_kernel)(out, sync);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    int n = 0;
    for (int t = 0; t < 128; ++t) n += out[t] == static_cast<float>((t + 32) % 128);
    return n;
  };
  for (cuda_emu::Order o : {cuda_emu::Order::Forward, cuda_emu::Order::Reverse,
                            cuda_emu::Order::Shuffle, cuda_emu::Order::Warps}) {
    CAPTURE(static_cast<int>(o));
    CHECK(correct(o, true) == 128);
  }
  // Forward: every thread stores before any reads, except lane 31 of warps 0-2, the last to reach
  // its warp's __syncwarp, which goes on at once and reads before the next warp has stored.
  CHECK(correct(cuda_emu::Order::Forward, false) == 125);
  // Warps: warps 0-2 read slots the next warp has not stored yet; warp 3 reads warp 0's.
  CHECK(correct(cuda_emu::Order::Warps, false) == 32);
  cuda_emu::set_schedule_order(saved);
  cudaFree(out);
}

TEST_CASE("cuda emulator: spin-waits between blocks pass by ticket and deadlock on a later block") {
  const cuda_emu::Order saved = cuda_emu::schedule_order();
  constexpr int kBlocks = 9;
  unsigned* counter = device_copy(std::vector<unsigned>(2, 0u));
  int* log = device_copy(std::vector<int>(kBlocks, -1));
  // Launches the chain in `order`; returns the launch's error.
  auto chain = [&](cuda_emu::Order order, bool by_ticket) {
    counter[0] = counter[1] = 0;
    for (int i = 0; i < kBlocks; ++i) log[i] = -1;
    cuda_emu::set_schedule_order(order);
    (void)cudaGetLastError();
    PSVAE_LAUNCH(kBlocks, 64, 0, nullptr, chain_kernel)(counter, log, by_ticket);
    return cudaGetLastError();
  };
  for (cuda_emu::Order o :
       {cuda_emu::Order::Forward, cuda_emu::Order::Reverse, cuda_emu::Order::Shuffle}) {
    CAPTURE(static_cast<int>(o));
    REQUIRE(chain(o, true) == cudaSuccess);
    CHECK(counter[1] == static_cast<unsigned>(kBlocks));
    for (int i = 0; i < kBlocks; ++i) CHECK(log[i] == i);
  }
  CHECK(chain(cuda_emu::Order::Forward, false) == cudaSuccess);  // blockIdx order happens to hold
  const cudaError_t e = chain(cuda_emu::Order::Reverse, false);  // block 8 waits on block 7
  CHECK(e == cudaErrorLaunchFailure);
  CHECK(std::string(cudaGetErrorString(e)).find("spinning in __nanosleep") != std::string::npos);
  CHECK(log[kBlocks - 1] == -1);

  int* out = device_copy(std::vector<int>(1, 0));
  cuda_emu::set_schedule_order(cuda_emu::Order::Reverse);
  PSVAE_LAUNCH(1, 32, 0, nullptr, spin_on_neighbour_kernel)(out);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(*out == 7);
  cuda_emu::set_schedule_order(saved);
  cudaFree(counter);
  cudaFree(log);
  cudaFree(out);
}

TEST_CASE("cuda emulator: ldmatrix + mma.sync m16n8k16 give A B") {
  std::vector<__nv_bfloat16> a(256), bt(128);
  std::vector<float> af(256), btf(128);
  for (int i = 0; i < 256; ++i) {
    a[i] = __float2bfloat16_rn(static_cast<float>((i * 37) % 11) - 5.f);
    af[i] = __bfloat162float(a[i]);
  }
  for (int i = 0; i < 128; ++i) {
    bt[i] = __float2bfloat16_rn(static_cast<float>((i * 53) % 7) - 3.f);
    btf[i] = __bfloat162float(bt[i]);
  }
  auto* da = device_copy(a);
  auto* db = device_copy(bt);
  float* d = device_copy(std::vector<float>(128, -1.f));
  (void)cudaGetLastError();
  PSVAE_LAUNCH(1, 32, 1024, nullptr, mma_kernel)(da, db, d);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) {
      float ref = 0.f;  // small integers: exact in any order
      for (int k = 0; k < 16; ++k) ref += af[r * 16 + k] * btf[n * 16 + k];
      CHECK(d[r * 8 + n] == ref);
    }
  cudaFree(da);
  cudaFree(db);
  cudaFree(d);
}

TEST_CASE("cuda emulator: wgmma reads when issued, or at its wait with PSVAE_EMU_ASYNC=eager") {
  const cuda_emu::AsyncMode saved = cuda_emu::async_mode();
  float* d = device_copy(std::vector<float>(128 * 64, -1.f));
  constexpr size_t kSmem = 24576 + 1024;
  REQUIRE(cudaFuncSetAttribute(reinterpret_cast<const void*>(&wgmma_kernel),
                               cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem) == cudaSuccess);
  auto run = [&](cuda_emu::AsyncMode mode, bool fence, bool wait) {
    cuda_emu::set_async_mode(mode);
    (void)cudaGetLastError();
    PSVAE_LAUNCH(1, 128, kSmem, nullptr, wgmma_kernel)(d, 1.f, 2.f, fence, wait);
    return cudaGetLastError();
  };
  auto all_equal = [&](float v) {
    int n = 0;
    for (int i = 0; i < 128 * 64; ++i) n += d[i] == v;
    return n;
  };
  REQUIRE(run(cuda_emu::AsyncMode::Deferred, true, true) == cudaSuccess);
  CHECK(all_equal(16.f) == 128 * 64);  // 16 products of 1 x 1: read at issue
  REQUIRE(run(cuda_emu::AsyncMode::Eager, true, true) == cudaSuccess);
  CHECK(all_equal(64.f) == 128 * 64);  // 16 products of 2 x 2: read at the wait
  for (cuda_emu::AsyncMode mode : {cuda_emu::AsyncMode::Deferred, cuda_emu::AsyncMode::Eager}) {
    CAPTURE(static_cast<int>(mode));
    cudaError_t e = run(mode, false, true);
    CHECK(e == cudaErrorLaunchFailure);
    CHECK(std::string(cudaGetErrorString(e)).find("wgmma.fence") != std::string::npos);
    e = run(mode, true, false);
    CHECK(e == cudaErrorLaunchFailure);
    CHECK(std::string(cudaGetErrorString(e)).find("not retired") != std::string::npos);
  }
  cuda_emu::set_async_mode(saved);
  cudaFree(d);
}

TEST_CASE("cuda emulator: an eager wgmma completes for its whole warpgroup, as late as it may") {
  // A wgmma is one operation of the warpgroup: once warp 0's wait has returned, every warp's part
  // has read its operands, so warp 0 may overwrite them (a copy pipeline's one signalling thread
  // frees the stage) and warps 1-3 still get the 1s. Without warp 0's wait nothing has completed
  // the operation before the overwrite, and the eager mode computes it as late as it may: 2s.
  const cuda_emu::AsyncMode saved = cuda_emu::async_mode();
  cuda_emu::set_async_mode(cuda_emu::AsyncMode::Eager);
  float* d = device_copy(std::vector<float>(128 * 64, -1.f));
  constexpr size_t kSmem = 24576 + 1024;
  REQUIRE(cudaFuncSetAttribute(reinterpret_cast<const void*>(&wgmma_one_warp_first_kernel),
                               cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem) == cudaSuccess);
  for (const bool warp0_waits : {true, false}) {
    CAPTURE(warp0_waits);
    PSVAE_LAUNCH(1, 128, kSmem, nullptr, wgmma_one_warp_first_kernel)(d, warp0_waits);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    int n = 0;
    for (int i = 0; i < 128 * 64; ++i) n += d[i] == (warp0_waits ? 16.f : 64.f);
    CHECK(n == 128 * 64);
  }
  cuda_emu::set_async_mode(saved);
  cudaFree(d);
}

TEST_CASE("cuda emulator: with PSVAE_EMU_ASYNC=eager cp.async lands when issued") {
  check_cp_async(cuda_emu::AsyncMode::Eager);
}
TEST_CASE(
    "cuda emulator: a bulk tensor copy lands the box swizzled, zeros outside, on its mbarrier") {
  const cuda_emu::AsyncMode saved = cuda_emu::async_mode();
  // A 10 x 70 bf16 tensor (row stride 72 elements = 144 B) holding r * 16 + i % 16 (below 256, so
  // exact in bf16).
  const int rows = 10, inner = 70, ld = 72;
  std::vector<__nv_bfloat16> host(static_cast<size_t>(rows * ld));
  auto value = [](int r, int i) { return static_cast<float>(r * 16 + i % 16); };
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < ld; ++i) host[r * ld + i] = __float2bfloat16(value(r, i));
  __nv_bfloat16* g = device_copy(host);
  alignas(64) CUtensorMap map;
  REQUIRE(encode_2d(&map, g, inner, rows, ld * 2, 64, 8, CU_TENSOR_MAP_SWIZZLE_128B) ==
          CUDA_SUCCESS);
  float* before = device_copy(std::vector<float>(1, -1.f));
  float* out = device_copy(std::vector<float>(512, -1.f));
  const int c0 = -3, c1 = 5;  // inner -3 .. 60 (3 outside), rows 5 .. 12 (3 outside)
  // The box read back; out reset to -1 first.
  auto run = [&](bool issuer_waits) {
    for (int e = 0; e < 512; ++e) out[e] = -1.f;
    PSVAE_LAUNCH(1, 64, 4096, nullptr, tma_kernel)(map, before, out, c0, c1, issuer_waits);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    int wrong = 0;
    for (int r = 0; r < 8; ++r)
      for (int i = 0; i < 64; ++i) {
        const int gr = c1 + r, gi = c0 + i;
        const bool inside = gr < rows && gi >= 0 && gi < inner;
        wrong += out[r * 64 + i] != (inside ? value(gr, gi) : 0.f);
      }
    return wrong;
  };
  const cuda_emu::Order saved_order = cuda_emu::schedule_order();
  for (cuda_emu::AsyncMode mode : {cuda_emu::AsyncMode::Deferred, cuda_emu::AsyncMode::Eager}) {
    CAPTURE(static_cast<int>(mode));
    cuda_emu::set_async_mode(mode);
    for (cuda_emu::Order o : {cuda_emu::Order::Forward, cuda_emu::Order::Reverse}) {
      CAPTURE(static_cast<int>(o));
      cuda_emu::set_schedule_order(o);
      CHECK(run(false) == 0);  // the readers may all be asleep before the copy is issued
    }
    cuda_emu::set_schedule_order(saved_order);
    CHECK(run(true) == 0);
    // Before the wait: the poison (deferred: the copy lands at the wait) or the element (eager:
    // row 7's chunk 7 holds its chunk 0, element 7: row 12 is outside, so 0).
    if (mode == cuda_emu::AsyncMode::Deferred)
      CHECK(std::isnan(*before));
    else
      CHECK(*before == 0.f);
  }
  cuda_emu::set_async_mode(saved);
  cudaFree(g);
  cudaFree(before);
  cudaFree(out);
}

TEST_CASE("cuda emulator: a 4-D bulk tensor copy gathers one head's rows, zeros outside") {
  // (B, T, H, d) = (2, 5, 3, 72), element (b, t, h, c) = b * 128 + t * 16 + h * 4 + c % 4 (exact
  // in bf16: below 256).
  const int B = 2, T = 5, H = 3, D = 72;
  std::vector<__nv_bfloat16> host(static_cast<size_t>(B * T * H * D));
  auto value = [](int b, int t, int h, int c) {
    return static_cast<float>(b * 128 + t * 16 + h * 4 + c % 4);
  };
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < H; ++h)
        for (int c = 0; c < D; ++c)
          host[((b * T + t) * H + h) * D + c] = __float2bfloat16(value(b, t, h, c));
  __nv_bfloat16* g = device_copy(host);
  alignas(64) CUtensorMap map;
  const cuuint64_t dims[4] = {D, H, T, B};
  const cuuint64_t strides[3] = {D * 2, H * D * 2, T * H * D * 2};
  const cuuint32_t box[4] = {64, 1, 8, 1};
  const cuuint32_t unit[4] = {1, 1, 1, 1};
  REQUIRE(encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, g, dims, strides, box, unit,
                    CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                    CU_TENSOR_MAP_L2_PROMOTION_NONE,
                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS);
  float* out = device_copy(std::vector<float>(512, -1.f));
  // Columns 64 .. 127 (8 inside: d = 72), rows -1 .. 6 of head 2, batch entry 1 (6 rows inside).
  for (const int c0 : {0, 64}) {
    CAPTURE(c0);
    PSVAE_LAUNCH(1, 64, 4096, nullptr, tma_4d_kernel)(map, out, c0, 2, -1, 1);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    int wrong = 0;
    for (int r = 0; r < 8; ++r)
      for (int i = 0; i < 64; ++i) {
        const int t = r - 1, c = c0 + i;
        const bool inside = t >= 0 && t < T && c < D;
        wrong += out[r * 64 + i] != (inside ? value(1, t, 2, c) : 0.f);
      }
    CHECK(wrong == 0);
  }
  cudaFree(g);
  cudaFree(out);
}

TEST_CASE("cuda emulator: an mbarrier arrival yields, so a store after it is overtaken") {
  // On a GPU the waiter may run on as soon as the phase completes, before the arriving thread's
  // next store; the emulator yields at the arrival, so in index order thread 1 reads the flag
  // before thread 0 sets it, and the missing order shows.
  const cuda_emu::Order saved = cuda_emu::schedule_order();
  cuda_emu::set_schedule_order(cuda_emu::Order::Forward);
  int* out = device_copy(std::vector<int>(1, -1));
  PSVAE_LAUNCH(1, 2, 64, nullptr, store_after_arrive_kernel)(out);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  CHECK(*out == 0);
  cuda_emu::set_schedule_order(saved);
  cudaFree(out);
}

TEST_CASE("cuda emulator: mbarrier misuse and copies no one waits for fail the launch") {
  const cuda_emu::AsyncMode saved = cuda_emu::async_mode();
  cuda_emu::set_async_mode(cuda_emu::AsyncMode::Deferred);  // case 4: the copy stays in flight
  std::vector<__nv_bfloat16> host(64 * 8);
  __nv_bfloat16* g = device_copy(host);
  alignas(64) CUtensorMap map;
  REQUIRE(encode_2d(&map, g, 64, 8, 128, 64, 8, CU_TENSOR_MAP_SWIZZLE_128B) == CUDA_SUCCESS);
  const char* expect[] = {
      "waiting on an mbarrier", "before mbarrier.init", "overwritten",
      "more arrivals",          "no thread waited",     "differ from the tensor map's rank"};
  for (int what = 0; what < 6; ++what) {
    CAPTURE(what);
    (void)cudaGetLastError();
    PSVAE_LAUNCH(1, 32, 4096, nullptr, mbarrier_misuse_kernel)(map, what);
    const cudaError_t e = cudaGetLastError();
    CHECK(e == cudaErrorLaunchFailure);
    CHECK(std::string(cudaGetErrorString(e)).find(expect[what]) != std::string::npos);
  }
  cuda_emu::set_async_mode(saved);
  cudaFree(g);
}

TEST_CASE("cuda emulator: named barriers make two warpgroups take turns in every order") {
  const cuda_emu::Order saved = cuda_emu::schedule_order();
  constexpr int kTurns = 5;
  int* log = device_copy(std::vector<int>(2 * kTurns, -1));
  // Runs the kernel in `order`; returns how many log entries are where alternation puts them.
  auto alternating = [&](cuda_emu::Order order, bool with_turns) {
    cuda_emu::set_schedule_order(order);
    PSVAE_LAUNCH(1, 256, 64, nullptr, turns_kernel)(log, kTurns, with_turns);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    int n = 0;
    for (int i = 0; i < 2 * kTurns; ++i) n += log[i] == i % 2;
    return n;
  };
  for (cuda_emu::Order o : {cuda_emu::Order::Forward, cuda_emu::Order::Reverse,
                            cuda_emu::Order::Shuffle, cuda_emu::Order::Warps}) {
    CAPTURE(static_cast<int>(o));
    CHECK(alternating(o, true) == 2 * kTurns);
    (void)alternating(o, false);  // runs (REQUIREd) in every order too
  }
  // Without the turns, index order runs thread 0's five turns before any of thread 128's (nothing
  // makes it yield): the log is not alternating, so the check above is one the turns could fail.
  CHECK(alternating(cuda_emu::Order::Forward, false) < 2 * kTurns);
  cuda_emu::set_schedule_order(saved);
  cudaFree(log);
}

TEST_CASE("cuda emulator: named barrier misuse fails the launch") {
  // Index order: in case 2 warp 0 opens the instance with 64, then warp 1 names 32.
  const cuda_emu::Order saved = cuda_emu::schedule_order();
  cuda_emu::set_schedule_order(cuda_emu::Order::Forward);
  const char* expect[] = {"barrier id outside 1..15", "not a multiple of 32", "different counts",
                          "holding 32 of its 64 arrivals", "at a named barrier"};
  for (int what = 0; what < 5; ++what) {
    CAPTURE(what);
    (void)cudaGetLastError();
    PSVAE_LAUNCH(1, 64, 0, nullptr, named_barrier_misuse_kernel)(what);
    const cudaError_t e = cudaGetLastError();
    CHECK(e == cudaErrorLaunchFailure);
    CHECK(std::string(cudaGetErrorString(e)).find(expect[what]) != std::string::npos);
  }
  cuda_emu::set_schedule_order(saved);
}

TEST_CASE("cuda emulator: cuTensorMapEncodeTiled refuses what the driver documents as invalid") {
  std::vector<__nv_bfloat16> host(64 * 64);
  __nv_bfloat16* g = device_copy(host);
  alignas(64) CUtensorMap map;
  CHECK(encode_2d(&map, g, 64, 64, 128, 64, 8, CU_TENSOR_MAP_SWIZZLE_128B) == CUDA_SUCCESS);
  // The global address not 16-byte aligned.
  CHECK(encode_2d(&map, g + 1, 63, 64, 128, 64, 8, CU_TENSOR_MAP_SWIZZLE_128B) ==
        CUDA_ERROR_INVALID_VALUE);
  // A row stride that is not a multiple of 16 bytes.
  CHECK(encode_2d(&map, g, 60, 64, 120, 56, 8, CU_TENSOR_MAP_SWIZZLE_NONE) ==
        CUDA_ERROR_INVALID_VALUE);
  // A box wider than the 128-byte swizzle span, and a box side above 256.
  CHECK(encode_2d(&map, g, 64, 64, 128, 128, 8, CU_TENSOR_MAP_SWIZZLE_128B) ==
        CUDA_ERROR_INVALID_VALUE);
  CHECK(encode_2d(&map, g, 64, 64, 128, 64, 257, CU_TENSOR_MAP_SWIZZLE_128B) ==
        CUDA_ERROR_INVALID_VALUE);
  cudaFree(g);
}
#endif
