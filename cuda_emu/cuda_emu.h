// The CUDA emulator's device-side view: force-included (g++ -include) into every .cu file of an
// emulation build (cmake -DPSVAE_CUDA_EMU=ON, docs/kernels.md "The emulator"), which compiles the
// project's CUDA sources as plain C++ and runs every kernel on the host.
//
// Why: a GPU is lent to only some sessions, and CI has none. Compiled-only kernels carry their
// index arithmetic, fragment layouts, tail handling and barrier structure unverified. Run here,
// they meet the same CUDA-against-CPU tests as on a GPU. What the emulator is and is not:
//   - Each block runs on its own, one after the other; each of its threads is a fiber (its own
//     stack, switched by cuda_emu/fiber.cpp). A fiber runs until it reaches a barrier
//     (__syncthreads), a warp collective (__shfl_*_sync, ldmatrix, mma.sync, ...) or its end.
//   - Barriers are checked: threads of a block that wait at different barriers, or a warp
//     collective whose mask names a lane that has exited, fail the launch with a message (on a GPU
//     both are undefined behaviour that often "works").
//   - Warp collectives follow the PTX ISA's definitions: shuffles, votes and reductions lane by
//     lane; ldmatrix .x4 (and .trans) from the 32 row addresses; mma.sync.m16n8k16 bf16 from the
//     fragment layout of "Matrix fragments for mma.m16n8k16". The mma sums its 16 exact products
//     in f32 in k order; a tensor core's internal order and precision differ, so bf16 results
//     agree with a GPU to rounding, not bit for bit.
//   - cp.async copies are deferred to the cp.async.wait_group that retires their commit group, so
//     a read of shared memory before its wait sees the poison, not the data. With
//     PSVAE_EMU_ASYNC=eager they land when issued instead, so a buffer refilled while a read of
//     it is still due (a pending wgmma, a thread past no barrier) is caught. Dynamic shared memory
//     is filled with 0xff bytes (NaN in f32 and bf16) before every block.
//   - Launch limits are a GPU's: at most 1024 threads a block, grid y and z below 65536, dynamic
//     shared memory above 48 KiB only after cudaFuncSetAttribute(MaxDynamicSharedMemorySize), and
//     at most 227 KiB (sm_90).
//   - wgmma (sm_90a) reads shared memory through its descriptors when issued, the earliest a GPU
//     may, so a tile whose copies have not landed shows. With PSVAE_EMU_ASYNC=eager the two swap
//     ends: copies land when issued and each wgmma is computed at a wgmma.wait_group that
//     retires it, as late as the schedule allows (once for the whole warpgroup, when no thread
//     can run on without it), so a tile refilled before that wait, or an accumulator read before
//     it, shows. A thread that exits with wgmma operations not waited for fails the launch.
//   - mbarriers (sm_90: arrival counts, transaction bytes, phases) and bulk tensor copies (TMA:
//     cp.async.bulk.tensor, tiled, 128-byte swizzle, zero fill out of bounds) that complete on
//     them. A thread waiting on a phase yields until the phase completes. The copies follow
//     PSVAE_EMU_ASYNC as cp.async does: deferred, they land (and complete their bytes) only when
//     some thread waits on their mbarrier; eager, when issued. An mbarrier whose 8 bytes were
//     overwritten, used before its init, or over-arrived fails the launch, and so does a block
//     that ends with copies no one waited for.
//   - Named barriers (bar.sync / bar.arrive with an id and a count, sm_90 warpgroups' way of
//     ordering each other): counted per thread, checked for one count per instance, and a block
//     that ends with an instance half arrived fails.
//   - It is not a timing model, not a memory-model checker (one fiber runs at a time, every store
//     is seen at once) and not a PTX interpreter: inline asm does not exist here, so every PTX
//     wrapper of the project (kernels/cuda/mma_sm80.cuh, mma_sm90.cuh) has an emulated twin.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#ifndef PSVAE_CUDA_EMULATION
#define PSVAE_CUDA_EMULATION 1
#endif

// ---- keywords --------------------------------------------------------------------------------
// host_defines.h already makes __device__, __global__ and __host__ empty for a host compiler.
// A block's __shared__ variables are function-local statics: blocks run one at a time, so one
// copy serves every block.
#undef __shared__
#define __shared__ static
// A kernel parameter that lives in constant memory on a GPU (tensor maps): a plain copy here.
#undef __grid_constant__
#define __grid_constant__
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace cuda_emu {

// ---- the running thread ----------------------------------------------------------------------
struct ThreadIds {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
};
const ThreadIds& ids();  // of the fiber that is running
int lane_id();           // linear thread index % 32

// ---- barriers and warp collectives (fiber.cpp) -------------------------------------------------
void syncthreads();
// bar.sync id, count (wait) or bar.arrive id, count: one arrival at named barrier `id` (1..15; 0
// is __syncthreads'), whose instance completes when `count` threads (a multiple of 32) have
// arrived; bar.sync then waits for that. Arrivals are counted per thread where a GPU counts whole
// warps, so a warp must arrive with all its lanes (as the .aligned forms require). Every arrival
// at one instance must name the same count; a block that ends with arrivals at an instance that
// never completed fails (an unmatched bar.arrive: the next use of that id would be off by one).
void named_barrier(int id, int count, bool wait);
// Every lane in `mask` deposits `bytes` of `in` into its slot; once all have, `out` receives lane
// src_of(lane)'s deposit (out may be null: a bare __syncwarp). src_of(lane) outside the warp or
// the mask returns the caller's own value, as __shfl_*_sync does.
void exchange(unsigned mask, const void* in, size_t bytes, const std::function<int(int)>& src_of,
              void* out);
// As exchange, but hands every lane the 32 deposits (slot i at all + i * bytes; lanes outside the
// mask are zero-filled) to reduce as it likes (votes, __reduce_*_sync, ldmatrix, mma).
void gather(unsigned mask, const void* in, size_t bytes, void* all);

// Fails the running launch: the message reaches cudaGetLastError / cudaGetErrorString and stderr,
// and no fiber of the block runs again.
[[noreturn]] void fail(const char* what);

// ---- dynamic shared memory, cp.async, ldmatrix, mma (fiber.cpp) --------------------------------
unsigned char* dynamic_smem();  // the block's extern __shared__ array (16-byte aligned)
// cp.async.cg 16 bytes: queued in this thread's open group; src_bytes (0..16) are read when the
// group retires, the rest of the 16 are zeros.
void cp_async16(void* dst, const void* src, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending_groups);  // retire every committed group but the newest n
void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr, bool trans);
void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

// ---- sm_90a: shared-window addresses and wgmma (fiber.cpp) -------------------------------------
// The shared-window address of p, which must point into the dynamic shared memory. The window puts
// that array at address 16, deliberately off the 1024-byte boundary where a 128-byte swizzle
// pattern starts (a GPU promises only 16-byte alignment too): a kernel that forgets to align its
// swizzled tiles reads the wrong elements here.
uint32_t smem_window_address(const void* p);
void fence_proxy_async();  // nothing to do: one fiber runs at a time and every store is seen
// wgmma.fence: recorded, and required since the thread's last wgmma.wait_group (or its start)
// before its next wgmma. That is stricter than the ISA (which needs it only after other accesses
// to the accumulators), so a kernel that passes here fences at least where the ISA asks.
void wgmma_fence();
// wgmma.mma_async.m64nNk16.f32.bf16.bf16 with A and B in shared memory: d (n / 2 floats, this
// thread's accumulator fragment) += A (64 x 16) B (16 x n) for the thread's warpgroup (128
// consecutive threads). Every lane of the warp must issue it with the same descriptors. Computed
// when issued, or with PSVAE_EMU_ASYNC=eager for the whole warpgroup at a wgmma.wait_group that
// retires its group, as late as possible (fiber.cpp, retire_warpgroup_group),
// adding the 16 exact products in f32 in k order; either way it joins the open group.
// Only the 128-byte swizzle with base offset 0 is modelled; anything else fails the launch.
void wgmma_bf16(float* d, int n, uint64_t desc_a, uint64_t desc_b, bool trans_a, bool trans_b);
// The same with A in registers: a holds this thread's A fragment (the A layout of mma.m16n8k16
// for the warp's 16 rows of the 64), read from every lane of the warp when issued, as the
// hardware reads the registers (changing them before the wait is undefined there; here it has
// no effect). Only B may be MN-major.
void wgmma_bf16_rs(float* d, int n, const uint32_t (&a)[4], uint64_t desc_b, bool trans_b);
void wgmma_commit();
void wgmma_wait(int pending_groups);  // retire every committed group but the newest n

// ---- sm_90: mbarriers, bulk tensor copies, setmaxnreg (fiber.cpp) ------------------------------
// Each mbarrier is 8 bytes of dynamic shared memory, named by its shared-window address. The
// emulator keeps its state (expected arrivals, pending arrivals, transaction bytes, phase) aside
// and a signature in the 8 bytes, checked at every use.
void mbarrier_init(uint32_t bar, int count);
// mbarrier.arrive (expect_tx_bytes == 0) or mbarrier.arrive.expect_tx: adds the bytes to the
// phase's transaction count, then arrives. The phase completes when every expected arrival has
// come and the transaction count is back to zero; an arrival that completes it yields, so the
// waiters may run before the arriving thread goes on.
void mbarrier_arrive(uint32_t bar, uint32_t expect_tx_bytes);
// Loops on mbarrier.try_wait.parity until the phase of that parity has completed (the current
// phase's parity differs), yielding to the other threads meanwhile.
void mbarrier_wait(uint32_t bar, int parity);
// cp.async.bulk.tensor.<rank>d.shared::cluster.global.tile.mbarrier::complete_tx::bytes: the box
// of `tensor_map` (a CUtensorMap the emulated cuTensorMapEncodeTiled wrote) at coordinates
// coords[0 .. rank) (innermost first) into shared memory at window address `dst` (128-byte
// aligned), out-of-bounds elements as zeros, 16-byte chunks swizzled as the map says; completes
// the box's bytes on `bar`. rank must be the map's (as the instruction's .<rank>d must).
void tma_load(uint32_t dst, const void* tensor_map, const int* coords, int rank, uint32_t bar);
// setmaxnreg.{inc,dec}.sync.aligned.u32: registers are not modelled; the count is checked (a
// multiple of 8 in 24..256, as the ISA requires).
void setmaxnreg(int regs);

// ---- launches (fiber.cpp) --------------------------------------------------------------------
// Runs body() as every thread of every block of the grid, blocks and threads in the schedule's
// order (below). kernel identifies the function for its cudaFuncSetAttribute limits. On a failure
// (bad configuration or a failed check) sets the runtime's last error and returns.
void run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem,
              const std::function<void()>& body);

// The order blocks run in, and ready threads within each round of a block: Forward (index order,
// the default), Reverse, Shuffle (seeded permutations), or Warps (blocks and warps in index order,
// each warp running on through its warp collectives until every lane waits at a block-level
// point: a warp ahead of the others, as a GPU's scheduler may leave it). A result that depends on
// it is a race. The env PSVAE_EMU_ORDER (forward, reverse, shuffle, warps) and PSVAE_EMU_SEED set
// the initial value.
enum class Order { Forward, Reverse, Shuffle, Warps };
Order schedule_order();
void set_schedule_order(Order order);

// When cp.async lands and wgmma reads (fiber.cpp): Deferred (copies at their wait, wgmma at issue;
// the default) or Eager (copies at issue, wgmma at its wait). The env PSVAE_EMU_ASYNC (deferred,
// eager) sets the initial value.
enum class AsyncMode { Deferred, Eager };
AsyncMode async_mode();
void set_async_mode(AsyncMode mode);

template <class... P>
struct Launch {
  void (*fn)(P...);
  dim3 grid, block;
  size_t smem;
  template <class... Args>
  void operator()(Args&&... args) const {
    // Kernel parameters are copied once at the launch, as on a GPU; each thread then gets its own
    // by-value copy from the call.
    std::tuple<std::decay_t<P>...> params(std::forward<Args>(args)...);
    auto f = fn;
    run_grid(reinterpret_cast<const void*>(fn), grid, block, smem,
             [&params, f] { std::apply(f, params); });
  }
};
template <class... P>
Launch<P...> launch(void (*fn)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t) {
  return Launch<P...>{fn, grid, block, smem};
}

}  // namespace cuda_emu

// kernel<<<grid, block, smem, stream>>>(args) is written PSVAE_LAUNCH(grid, block, smem, stream,
// kernel)(args) in the project (tensor/cuda/launch.cuh); here it runs the grid at once.
#define PSVAE_LAUNCH(grid, block, smem, stream, ...) \
  ::cuda_emu::launch(__VA_ARGS__, grid, block, smem, stream)

// cuda_runtime.h has the typed form only for nvcc.
template <class T>
cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// ---- built-in variables ----------------------------------------------------------------------
#define threadIdx (::cuda_emu::ids().thread)
#define blockIdx (::cuda_emu::ids().block)
#define blockDim (::cuda_emu::ids().block_dim)
#define gridDim (::cuda_emu::ids().grid_dim)
constexpr int warpSize = 32;

inline void __syncthreads() { ::cuda_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::cuda_emu::exchange(
      mask, nullptr, 0, [](int l) { return l; }, nullptr);
}

// ---- shuffles, votes, warp reductions ----------------------------------------------------------
namespace cuda_emu {
// The lane a shuffle of width w reads: CUDA's sub-warp rule (lanes in groups of w; an index
// outside the group reads the caller's own value for the relative forms).
template <class T>
T shfl(unsigned mask, T v, const std::function<int(int)>& src_of) {
  static_assert(std::is_trivially_copyable<T>::value, "shuffled values are copied bytewise");
  T out;
  exchange(mask, &v, sizeof(T), src_of, &out);
  return out;
}
}  // namespace cuda_emu

template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return ::cuda_emu::shfl(mask, v, [=](int l) { return (l / width) * width + (src % width); });
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::cuda_emu::shfl(mask, v, [=](int l) {
    const int s = l ^ lane_mask;
    return s / width == l / width ? s : l;
  });
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::cuda_emu::shfl(mask, v, [=](int l) {
    const int s = l + static_cast<int>(delta);
    return s / width == l / width ? s : l;
  });
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::cuda_emu::shfl(mask, v, [=](int l) {
    const int s = l - static_cast<int>(delta);
    return s >= 0 && s / width == l / width ? s : l;
  });
}

namespace cuda_emu {
// Op over the values of the lanes in mask (every one of them present).
template <class T, class Op>
T warp_reduce(unsigned mask, T v, Op op) {
  T all[32];
  gather(mask, &v, sizeof(T), all);
  bool first = true;
  T r{};
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    r = first ? all[l] : op(r, all[l]);
    first = false;
  }
  return r;
}
}  // namespace cuda_emu

inline unsigned __ballot_sync(unsigned mask, int pred) {
  return ::cuda_emu::warp_reduce(mask, pred ? 1u << ::cuda_emu::lane_id() : 0u,
                                 [](unsigned a, unsigned b) { return a | b; });
}
inline int __all_sync(unsigned mask, int pred) {
  return ::cuda_emu::warp_reduce(mask, pred ? 1 : 0, [](int a, int b) { return a & b; });
}
inline int __any_sync(unsigned mask, int pred) {
  return ::cuda_emu::warp_reduce(mask, pred ? 1 : 0, [](int a, int b) { return a | b; });
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) {
  return ::cuda_emu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a < b ? a : b; });
}
inline int __reduce_min_sync(unsigned mask, int v) {
  return ::cuda_emu::warp_reduce(mask, v, [](int a, int b) { return a < b ? a : b; });
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) {
  return ::cuda_emu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a > b ? a : b; });
}
inline int __reduce_max_sync(unsigned mask, int v) {
  return ::cuda_emu::warp_reduce(mask, v, [](int a, int b) { return a > b ? a : b; });
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) {
  return ::cuda_emu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a + b; });
}

// ---- atomics: one fiber runs at a time and none switches inside these, so a plain
// read-modify-write is atomic ----------------------------------------------------------------
template <class T>
T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <class T>
T atomicMin(T* p, T v) {
  const T old = *p;
  if (v < old) *p = v;
  return old;
}
template <class T>
T atomicMax(T* p, T v) {
  const T old = *p;
  if (v > old) *p = v;
  return old;
}
template <class T>
T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}
template <class T>
T atomicCAS(T* p, T cmp, T v) {
  const T old = *p;
  if (old == cmp) *p = v;
  return old;
}

// ---- fences, cache-hinted loads and stores, sleeping in a spin-wait --------------------------
// One fiber runs at a time and every store is seen at once: fences have nothing to order, and the
// L2-only (.cg) hints change no value.
inline void __threadfence() {}
inline void __threadfence_block() {}
template <class T>
T __ldcg(const T* p) {
  return *p;
}
template <class T>
void __stcg(T* p, T v) {
  *p = v;
}
namespace cuda_emu {
// The thread yields to the block's other threads (fiber.cpp). A round of the block in which every
// thread that ran only went back to sleep changes nothing any of them waits for: blocks run one
// at a time, so a value to come from another block never comes. The block then fails as
// deadlocked (a wait on a block that starts later, or on a signal never sent).
void nanosleep_yield();
}  // namespace cuda_emu
inline void __nanosleep(unsigned) { ::cuda_emu::nanosleep_yield(); }

// ---- arithmetic intrinsics: IEEE round-to-nearest in C++ -----------------------------------
// nvcc never fuses an _rn intrinsic into an fma. The emulation build contracts plain a * b + c
// into fmas, as nvcc's default --fmad=true does (cmake PSVAE_EMU_FP_CONTRACT, ON by default), so
// each result passes through an empty asm that the compiler cannot see through: the rounded value
// is materialised and never fused with its neighbours. Without it, the layernorm backward at
// D = 1 (whose exact gradient 0 rests on g - mean(g) cancelling) and the bit-exact EMA test fail.
namespace cuda_emu {
template <class T>
inline T rounded(T v) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("" : "+x"(v));
#else
  asm volatile("" : "+m"(v));
#endif
  return v;
}
}  // namespace cuda_emu
inline float __fadd_rn(float a, float b) { return ::cuda_emu::rounded(a + b); }
inline float __fsub_rn(float a, float b) { return ::cuda_emu::rounded(a - b); }
inline float __fmul_rn(float a, float b) { return ::cuda_emu::rounded(a * b); }
inline float __fdiv_rn(float a, float b) { return ::cuda_emu::rounded(a / b); }
inline float __fsqrt_rn(float a) { return ::cuda_emu::rounded(std::sqrt(a)); }
inline float __frcp_rn(float a) { return ::cuda_emu::rounded(1.0f / a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return ::cuda_emu::rounded(a + b); }
inline double __dsub_rn(double a, double b) { return ::cuda_emu::rounded(a - b); }
inline double __dmul_rn(double a, double b) { return ::cuda_emu::rounded(a * b); }
inline double __ddiv_rn(double a, double b) { return ::cuda_emu::rounded(a / b); }
inline double __dsqrt_rn(double a) { return ::cuda_emu::rounded(std::sqrt(a)); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __double2float_rn(double a) { return static_cast<float>(a); }
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float __saturatef(float a) { return a < 0.f ? 0.f : (a > 1.f ? 1.f : a); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
namespace cuda_emu {
template <class To, class From>
To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "a bit cast keeps the size");
  To r;
  std::memcpy(&r, &v, sizeof r);
  return r;
}
}  // namespace cuda_emu
inline double __longlong_as_double(long long v) { return ::cuda_emu::bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return ::cuda_emu::bit_cast<long long>(v); }
inline float __int_as_float(int v) { return ::cuda_emu::bit_cast<float>(v); }
inline int __float_as_int(float v) { return ::cuda_emu::bit_cast<int>(v); }
inline unsigned __float_as_uint(float v) { return ::cuda_emu::bit_cast<unsigned>(v); }
inline float __uint_as_float(unsigned v) { return ::cuda_emu::bit_cast<float>(v); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline double rsqrt(double a) { return 1.0 / std::sqrt(a); }
// Device code calls min, max, isnan, exp, ... unqualified: CUDA's global overloads, whose float
// forms stay in float (the C library's ::exp would widen to double).
using std::abs;
using std::ceil;
using std::cos;
using std::erf;
using std::exp;
using std::exp2;
using std::expm1;
using std::fabs;
using std::floor;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::isinf;
using std::isnan;
using std::log;
using std::log1p;
using std::log2;
using std::max;
using std::min;
using std::pow;
using std::round;
using std::sin;
using std::sqrt;
using std::tanh;

template <class T>
T __ldg(const T* p) {
  return *p;
}
