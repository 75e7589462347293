// Shared pieces of the CUDA attention kernels (attention.cu: checks, path choice, registration;
// attention_fwd.cu: forward kernels; attention_bwd.cu: backward kernels).
//
// Layout (as kernels/cpu/attention.cpp): q (B,Tq,H,d), k (B,Tk,H,d), v (B,Tk,H,dv), o (B,Tq,H,dv),
// lse (B,H,Tq), key_mask i32 (B,Tk) with 0 = masked. Row t of the (b, h) pair of q starts at
// (b*Tq + t)*sq + h*d: the (T, d) matrix of one pair is a strided view with row stride sq, which
// is H*d for a q of its own and 3*H*d when q, k and v are read in place from the packed rows of a
// qkv projection (B,T,3,H,d) (op attention_qkv). k and v have their own row strides sk, sv; the
// gradients gq, gk, gv are written with the strides of q, k, v; o, go, lse and D are always dense.
//
// Two implementations of each op:
//   SIMT  any float dtype (f32, bf16 computed in f32, f64 in f64), head dims up to 128: tiles in
//         shared memory in the math type, 16x16 threads, each thread a 4x2 (f64: 2x2) score tile.
//   MMA   bf16 only, head dims multiples of 8 up to 128 (padded to 32/64/80/96/128 in shared
//         memory): mma.sync m16n8k16 (fp32 accumulation) fed by ldmatrix, K/V (or Q/dO) tiles
//         double-buffered with cp.async. One warp owns 16 rows.
// Both keep the softmax statistics in fp32 (f64 for f64) and never hold a (Tq, Tk) matrix.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/block_order.cuh"
#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/cuda/mma_sm80.cuh"
#include "tensor/cuda/launch.cuh"
#include "tensor/tensor.h"

namespace psvae::kernels::cuda::attn {

// ---- arguments ---------------------------------------------------------------------------------
struct Dims {
  int64_t B, Tq, Tk, H, d, dv;
  int64_t sq, sk, sv;  // row strides (elements) of q/gq, k/gk, v/gv: H*d, H*d, H*dv when dense
};

// (q, k, v, [mask]) -> (o, lse). Pointers are to the storage type of the dtype.
struct FwdArgs {
  const void *q, *k, *v;
  const int32_t* mask;  // (B, Tk) or nullptr
  void *o, *lse;
  Dims n;
  double scale;
};

// (go, q, k, v, o, lse, [mask]) -> (gq, gk, gv). D = rowsum(go * o) per query row, (B, H, Tq) in
// the math type (f32 for f32/bf16, f64 for f64), computed by launch_rowdot first.
// The fused MMA backward's scratch and ticket grouping, set by its launcher (attention_bwd.cu;
// null otherwise): `order` holds the block ticket, then one counter per query tile of each pair;
// dq_acc the (B H, Tq, d) f32 running sums of gq.
struct BwdArgs {
  const void *go, *q, *k, *v, *o, *lse;
  const int32_t* mask;
  void *gq, *gk, *gv;
  void* D;
  Dims n;
  double scale;
  unsigned* order;
  float* dq_acc;
  int64_t group;  // pairs per ticket group
};

// The MMA backward's forms (PSVAE_ATTN_BWD, attention.cu):
//   Fused  one kernel per key tile computes gk, gv and adds its part of gq (dS K) into a running
//          sum, key tiles in a fixed order (block_order.cuh): FlashAttention-2's 5 GEMMs;
//   Split  a dkdv kernel and a separate dq kernel that rebuilds S and dP: 7 GEMMs, no hand-offs;
//   Wgmma  the fused form on Hopper's warpgroup MMA (attention_bwd_wgmma_sm90a.cu, sm_90a).
enum class BwdVariant { kFused, kSplit, kWgmma };

// Where the pair bh = b * H + h starts in each tensor, for every kernel of both directions:
// q, gq and k, gk hold d values per (row, head), o, go and v, gv hold dv; rows are T = Tq (query
// side) or Tk (key side) per batch entry, sq, sk, sv (Dims) or so = H * dv elements apart; lse
// and D are (B, H, Tq).
struct HeadAt {
  int64_t b, h;             // batch index (the key mask's row), head
  int64_t q, o, k, v, row;  // element offsets of q/gq, o/go, k/gk, v/gv and of lse/D
  int64_t sq, sk, sv, so;   // row strides of q/gq, k/gk, v/gv and o/go
};

__device__ __forceinline__ HeadAt head_at(const Dims& n, int64_t bh) {
  const int64_t b = bh / n.H, h = bh % n.H;
  HeadAt at;
  at.b = b;
  at.h = h;
  at.q = b * n.Tq * n.sq + h * n.d;
  at.o = (b * n.Tq * n.H + h) * n.dv;
  at.k = b * n.Tk * n.sk + h * n.d;
  at.v = b * n.Tk * n.sv + h * n.dv;
  at.row = bh * n.Tq;
  at.sq = n.sq;
  at.sk = n.sk;
  at.sv = n.sv;
  at.so = n.H * n.dv;
  return at;
}

// A type-erased argument pointer as T*, moved on by `offset` elements.
template <class T>
__device__ __forceinline__ const T* elem(const void* p, int64_t offset) {
  return static_cast<const T*>(p) + offset;
}
template <class T>
__device__ __forceinline__ T* elem(void* p, int64_t offset) {
  return static_cast<T*>(p) + offset;
}

constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.69314718055994530942;

// Largest head dim (d and dv) either path takes; larger ones throw "not yet supported".
constexpr int64_t kMaxHeadDim = 128;

// ---- host launchers (attention_fwd.cu, attention_bwd.cu) ---------------------------------------
void launch_fwd_simt(const FwdArgs& a, DType dt, cudaStream_t s);
void launch_fwd_mma(const FwdArgs& a, cudaStream_t s);    // bf16
void launch_fwd_wgmma(const FwdArgs& a, cudaStream_t s);  // bf16, sm_90a
// bf16, sm_90a, TMA; pingpong: the consumers take turns (PSVAE_ATTN_FWD=wgmma_pingpong)
void launch_fwd_wgmma_tma(const FwdArgs& a, bool pingpong, cudaStream_t s);
void launch_rowdot(const BwdArgs& a, DType dt, cudaStream_t s, int dev);
void launch_bwd_simt(const BwdArgs& a, DType dt, cudaStream_t s);
void launch_bwd_mma(const BwdArgs& a, BwdVariant variant, cudaStream_t s, int dev);  // bf16
void launch_bwd_wgmma(const BwdArgs& a, cudaStream_t s, int dev);                    // bf16, sm_90a

// The fused backwards' scratch (attention_bwd.cu), set up in `a` for a launch of pairs x nkt
// blocks of which `resident` fit on the GPU at once: the ticket and one counter per (pair, query
// tile of nqt), zeroed; the f32 running sums of gq when more than one key tile adds to them; the
// ticket group size. The tensors must live until the launch is queued (the allocator reuses
// them only for work queued after it). With nkt = 0 no key adds to gq: it is zeroed and
// `launch` is false.
struct FusedScratch {
  Tensor order, dq_acc;
  bool launch;
};
FusedScratch fused_scratch(BwdArgs& a, int64_t nkt, int64_t nqt, int64_t resident, cudaStream_t s,
                           int dev);
// Head-dim capacity (compile-time tile width) of each path for a runtime max(d, dv).
inline int simt_capacity(int64_t dmax) { return dmax <= 32 ? 32 : dmax <= 64 ? 64 : 128; }
inline int mma_capacity(int64_t dmax) {
  return dmax <= 32 ? 32 : dmax <= 64 ? 64 : dmax <= 80 ? 80 : dmax <= 96 ? 96 : 128;
}

// Opts a kernel into more than the default 48 KB of dynamic shared memory (up to 227 KB on
// sm_90), then launches it.
template <class Kernel, class... Args>
void launch_big_smem(Kernel kernel, unsigned blocks, int threads, size_t smem, cudaStream_t s,
                     const Args&... a) {
  if (smem > 48 * 1024)
    PSVAE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
  PSVAE_LAUNCH(blocks, threads, smem, s, kernel)(a...);
  PSVAE_CUDA_CHECK(cudaGetLastError());
}

// Launches a fused backward `Kernel` (a block per (pair, key tile): pairs x nkt blocks of
// `threads`, `smem` bytes of dynamic shared memory; nqt query tiles) after setting up its scratch
// in a copy of `args` (fused_scratch; the ticket groups sized by the blocks resident at once,
// whose per-SM count is queried once per kernel); with no key tile it only zeroes gq.
template <auto Kernel>
void launch_fused(const BwdArgs& args, int threads, size_t smem, int64_t nkt, int64_t nqt,
                  cudaStream_t s, int dev) {
  static const int per_sm = ::psvae::cuda::blocks_per_sm(Kernel, threads, smem);
  BwdArgs a = args;
  const FusedScratch scratch = fused_scratch(
      a, nkt, nqt, static_cast<int64_t>(per_sm) * ::psvae::cuda::sm_count(dev), s, dev);
  if (scratch.launch)
    launch_big_smem(Kernel, static_cast<unsigned>(a.n.B * a.n.H * nkt), threads, smem, s, a);
}

// ---- device helpers shared by both paths -------------------------------------------------------
// The block's dynamic shared memory (one declaration for every attention kernel).
__device__ __forceinline__ unsigned char* attn_smem() {
  PSVAE_DYNAMIC_SMEM(smem);
  return smem;
}

template <class A>
__device__ __forceinline__ A ex2(A x);
template <>
__device__ __forceinline__ float ex2<float>(float x) {
  return exp2f(x);
}
template <>
__device__ __forceinline__ double ex2<double>(double x) {
  return exp2(x);
}
template <class A>
__device__ __forceinline__ A lg2(A x);
template <>
__device__ __forceinline__ float lg2<float>(float x) {
  return log2f(x);
}
template <>
__device__ __forceinline__ double lg2<double>(double x) {
  return log2(x);
}
template <class A>
__device__ __forceinline__ A inf() {
  return static_cast<A>(INFINITY);
}

// Additive score bias of key j of batch b: 0 when it takes part, -inf when masked (mask 0) or past
// the end (j >= Tk; those rows of a tile are zero-filled), so exp2 of the biased score is 0.
template <class A>
__device__ __forceinline__ A key_bias(const int32_t* mask, int64_t b, int64_t Tk, int64_t j) {
  if (j >= Tk) return -inf<A>();
  if (mask != nullptr && mask[b * Tk + j] == 0) return -inf<A>();
  return A(0);
}

// The log2-domain lse of query row i as the backward uses it: P = exp2(s*scale*log2e - lse2).
// Rows past the end and rows whose lse is -inf (every key masked: the CPU gives them no gradient)
// get +inf, so their P is exp2(-inf) = 0 and they add nothing anywhere. A biased score (finite,
// or -inf for a masked key) minus a finite or +inf lse2 is never NaN: -inf - (+inf) = -inf.
template <class A>
__device__ __forceinline__ A lse2_of(A lse, bool valid) {
  return (!valid || lse == -inf<A>()) ? inf<A>() : lse * static_cast<A>(kLog2e);
}

// Butterfly reductions over xor offsets first, first/2, ..., 1: first = 16 spans the warp, 8 a
// half-warp (the 16 tx lanes of a SIMT row), 2 a quad (the 4 lanes of an MMA fragment row).
// Every lane must take part (full mask).
template <class A>
__device__ __forceinline__ A shfl_max(A v, int first) {
  for (int o = first; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <class A>
__device__ __forceinline__ A shfl_sum(A v, int first) {
  for (int o = first; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- SIMT path ---------------------------------------------------------------------------------
// 256 threads as a 16 x 16 grid: ty = threadIdx.x / 16 picks kRpt stationary rows, tx the columns
// tx and tx + 16 of a 32-wide streamed tile (and tx + 16 j of a head-dim row). 16 consecutive
// lanes share ty, so row reductions are xor-shuffles over offsets 8, 4, 2, 1.
constexpr int kSimtThreads = 256;
constexpr int kSimtC = 32;  // rows of a streamed tile
// Stationary rows per thread: 4 (64 rows per block) in f32, 2 (32 rows) in f64 so that the f64
// tiles fit in shared memory at head dim 128.
template <class A>
constexpr int kSimtRpt = sizeof(A) == 4 ? 4 : 2;

// Rows [row0, row0 + rows) of the (nrows, width) matrix whose row r starts at base + r * stride,
// converted to the math type A, into dst (row stride kD + 1: the odd stride puts the 16 rows that
// the 16 tx threads read at once into 16 different banks). Rows >= nrows and columns in
// [width, kD) are written as 0, so dot products over the width rounded up to 4 add nothing.
template <int kD, class T, class A>
__device__ __forceinline__ void simt_load_rows(A* dst, const T* base, int64_t stride, int64_t row0,
                                               int64_t nrows, int64_t width, int rows) {
  for (int idx = threadIdx.x; idx < rows * kD; idx += blockDim.x) {
    const int r = idx / kD, c = idx % kD;
    const int64_t gr = row0 + r;
    A v = A(0);
    if (gr < nrows && c < width) v = detail::Math<T>::load(base[gr * stride + c]);
    dst[r * (kD + 1) + c] = v;
  }
}

// ---- MMA path (bf16 tensor cores, sm_80+) ------------------------------------------------------
using bf16_t = __nv_bfloat16;

// The PTX wrappers (kernels/cuda/mma_sm80.cuh) under the short names these kernels use.
using sm80::cp_async_commit;
using sm80::pack_bf16;
// Waits for all of this thread's cp.async groups; a __syncthreads after it makes every thread's
// copies visible to the block.
__device__ __forceinline__ void cp_async_wait_all() { sm80::cp_async_wait<0>(); }
// A 16-byte copy, or with valid == false 16 zero bytes (nothing read): pads tile tails and
// head-dim columns past d.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  sm80::cp_async16(dst, src, valid ? 16 : 0);
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16_t* p) {
  sm80::ldmatrix_x4(r, p);
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const bf16_t* p) {
  sm80::ldmatrix_x4_trans(r, p);
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  sm80::mma_bf16_16816(c, a, b0, b1);
}

// Shared-memory row stride of a bf16 tile of head-dim capacity kD: kD + 8 elements. The extra 16
// bytes shift consecutive rows by 4 banks, so the 8 row addresses of one ldmatrix matrix (16
// bytes each) fall in 8 disjoint bank groups for kD = 32, 64, 80, 96, 128 (row strides of 20, 36,
// 44, 52, 68 words). Row starts stay 16-byte aligned for cp.async and ldmatrix.
template <int kD>
constexpr int kLds = kD + 8;

// Rows [row0, row0 + kRows) x columns [0, kD) of the (nrows, width) bf16 matrix whose row r
// starts at base + r * stride, into shared memory by 16-byte cp.async: 8-column chunk c of row r
// goes to dst_of(r, c). Rows >= nrows and chunks >= width are zero-filled; width is a multiple
// of 8 (the MMA path's precondition), so a chunk is either wholly inside or wholly outside. base
// (a valid address of the tensor) stands in as the unread source of zero-filled chunks.
// Consecutive threads take consecutive chunks of a row, so the global reads coalesce.
template <int kRows, int kD, int kThreads, class DstOf>
__device__ __forceinline__ void load_tile_chunks(DstOf dst_of, const bf16_t* base, int64_t stride,
                                                 int64_t row0, int64_t nrows, int64_t width) {
  constexpr int kChunks = kD / 8;
  for (int idx = threadIdx.x; idx < kRows * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const int64_t gr = row0 + r;
    const bool valid = gr < nrows && c * 8 < width;
    cp_async16(dst_of(r, c), valid ? base + gr * stride + c * 8 : base, valid);
  }
}

// load_tile_chunks into a row-major tile at dst with row stride kLds<kD>.
template <int kRows, int kD, int kThreads>
__device__ __forceinline__ void mma_load_tile(bf16_t* dst, const bf16_t* base, int64_t stride,
                                              int64_t row0, int64_t nrows, int64_t width) {
  load_tile_chunks<kRows, kD, kThreads>([dst](int r, int c) { return dst + r * kLds<kD> + c * 8; },
                                        base, stride, row0, nrows, width);
}

// A-operand fragment of the 16x16 block (rows 0..15, columns k0..k0+15) of a row-major smem tile
// whose row 0 is at `rows`: matrices (rows 0-7, k0), (rows 8-15, k0), (rows 0-7, k0+8),
// (rows 8-15, k0+8) give a[0], a[1], a[2], a[3]; lane l addresses row l % 16, column k0 + 8 (l/16).
template <int kD>
__device__ __forceinline__ void load_a_frag(uint32_t (&a)[4], const bf16_t* rows, int k0,
                                            int lane) {
  ldsm_x4(a, rows + (lane & 15) * kLds<kD> + k0 + (lane >> 4) * 8);
}

// Warp GEMM "NT": acc (16 x kN) += A (16 x kK) * Bt^T, Bt a row-major smem tile [kN][kLds<kD>]
// (B(k, n) = Bt[n][k], as K for S = Q K^T). A comes from a(kk, frag). For each 16-column pair of
// n8 tiles one ldmatrix.x4 (no trans) loads matrices (n0, k0), (n0, k0+8), (n0+8, k0),
// (n0+8, k0+8): b0, b1 of tile n0 and b0, b1 of tile n0+8 (lane l addresses row n0 + l%8 +
// 8 (l/16), column k0 + 8 ((l/8)%2)).
template <int kK, int kN, int kD, class AFrag>
__device__ __forceinline__ void warp_gemm_nt(float (&acc)[kN / 8][4], AFrag a_frag,
                                             const bf16_t* bt, int lane) {
  static_assert(kK % 16 == 0 && kN % 16 == 0, "MMA tiles are 16 wide");
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    uint32_t a[4];
    a_frag(kk, a);
#pragma unroll
    for (int np = 0; np < kN / 16; ++np) {
      uint32_t b[4];
      ldsm_x4(b, bt + (np * 16 + (lane & 7) + (lane >> 4) * 8) * kLds<kD> + kk * 16 +
                     ((lane >> 3) & 1) * 8);
      mma_bf16(acc[2 * np], a, b[0], b[1]);
      mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// The A fragment of k16 block kk of a 16 x kK product held as accumulator fragments x (n8 tiles
// 2 kk and 2 kk + 1), rounded to bf16 pairs: the accumulator layout of those two tiles is exactly
// the A layout of the block (FlashAttention-2's register reuse; wgmma's register A fragment is
// the same per warp, mma_sm90.cuh).
template <int kK>
__device__ __forceinline__ void pack_a_frag(uint32_t (&a)[4], const float (&x)[kK / 8][4], int kk) {
  a[0] = pack_bf16(x[2 * kk][0], x[2 * kk][1]);
  a[1] = pack_bf16(x[2 * kk][2], x[2 * kk][3]);
  a[2] = pack_bf16(x[2 * kk + 1][0], x[2 * kk + 1][1]);
  a[3] = pack_bf16(x[2 * kk + 1][2], x[2 * kk + 1][3]);
}

// Warp GEMM "NN" with A in registers: acc (16 x kN) += A (16 x kK) * Bm, A the fp32 accumulator
// fragments p of a 16 x kK product rounded to bf16 (the accumulator layout of n8 tiles 2kk and
// 2kk+1 is exactly the A layout of k-block kk: FlashAttention-2's register reuse), Bm a
// row-major smem tile [kK][kLds<kD>] (B(k, n) = Bm[k][n], as V for O = P V). ldmatrix.x4.trans
// loads matrices (k0, n0), (k0+8, n0), (k0, n0+8), (k0+8, n0+8): b0, b1 of tile n0, b0, b1 of
// tile n0+8 (lane l addresses row k0 + l%16, column n0 + 8 (l/16)).
template <int kK, int kN, int kD>
__device__ __forceinline__ void warp_gemm_nn_regs(float (&acc)[kN / 8][4],
                                                  const float (&p)[kK / 8][4], const bf16_t* bm,
                                                  int lane) {
  static_assert(kK % 16 == 0 && kN % 16 == 0, "MMA tiles are 16 wide");
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    uint32_t a[4];
    pack_a_frag<kK>(a, p, kk);
#pragma unroll
    for (int np = 0; np < kN / 16; ++np) {
      uint32_t b[4];
      ldsm_x4_trans(b, bm + (kk * 16 + (lane & 15)) * kLds<kD> + np * 16 + (lane >> 4) * 8);
      mma_bf16(acc[2 * np], a, b[0], b[1]);
      mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// The query rows and (batch, head) pair a block of an MMA forward owns: blocks of kBQ query rows,
// the blocks of one pair adjacent (so the pair's K and V stay in L2 between them).
struct FwdBlock {
  int64_t q0;  // first query row
  HeadAt at;
  const bf16_t *q, *k, *v;  // the pair's matrices
};
template <int kBQ>
__device__ __forceinline__ FwdBlock fwd_block(const FwdArgs& a) {
  const int64_t ntiles = (a.n.Tq + kBQ - 1) / kBQ;
  FwdBlock f;
  f.q0 = (blockIdx.x % ntiles) * kBQ;
  f.at = head_at(a.n, blockIdx.x / ntiles);
  f.q = elem<bf16_t>(a.q, f.at.q);
  f.k = elem<bf16_t>(a.k, f.at.k);
  f.v = elem<bf16_t>(a.v, f.at.v);
  return f;
}

// ---- the online softmax of the two MMA forwards (attention_fwd.cu, *_wgmma_sm90a.cu) ----------
// A warp's 16 query rows x kN keys of scores in the accumulator layout that mma.sync's n8 tiles
// and wgmma's m64nN fragment share: s[c][2 h + j] = S(row g + 8 h, key 8 c + 2 t + j), g = lane /
// 4, t = lane % 4, so a row's keys are spread over the 4 lanes of a quad. One key tile's step: s =
// s sl2 + bias (the log2 domain; bias -inf for masked keys and tile tails), the row max m over the
// quad, alpha = exp2(m_old - m_new) for the caller to rescale its O, s = p = exp2(s - m_new), and l
// = l alpha + the lane's part of the row sum (summed across the quad in softmax_finish).
template <int kN>
__device__ __forceinline__ void softmax_tile(float (&s)[kN / 8][4], const float* bias, float sl2,
                                             int t, float (&m)[2], float (&l)[2],
                                             float (&alpha)[2]) {
  float mx[2] = {-inf<float>(), -inf<float>()};
#pragma unroll
  for (int c = 0; c < kN / 8; ++c) {
    const float b0 = bias[c * 8 + 2 * t], b1 = bias[c * 8 + 2 * t + 1];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      s[c][2 * h] = fmaf(s[c][2 * h], sl2, b0);
      s[c][2 * h + 1] = fmaf(s[c][2 * h + 1], sl2, b1);
      mx[h] = fmaxf(mx[h], fmaxf(s[c][2 * h], s[c][2 * h + 1]));
    }
  }
  float mu[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float m_new = fmaxf(m[h], shfl_max(mx[h], 2));  // the quad holds the row's keys
    // With no key seen yet m_new = -inf: subtract 0 instead so that no -inf - -inf = NaN arises;
    // every p and alpha is then exp2(-inf) = 0 and the state stays zero.
    mu[h] = m_new == -inf<float>() ? 0.f : m_new;
    alpha[h] = exp2f(m[h] - mu[h]);  // 0 when m was -inf
    m[h] = m_new;
  }
  float rs[2] = {0.f, 0.f};
#pragma unroll
  for (int c = 0; c < kN / 8; ++c) {
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      s[c][x] = exp2f(s[c][x] - mu[x / 2]);
      rs[x / 2] += s[c][x];
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + rs[h];
}

// acc[c][2 h + j] *= f[h]: rescales the rows g (h = 0) and g + 8 (h = 1) of an accumulator
// fragment in the layout above (the running O by alpha).
template <int kN>
__device__ __forceinline__ void scale_rows(float (&acc)[kN / 8][4], const float (&f)[2]) {
#pragma unroll
  for (int c = 0; c < kN / 8; ++c) {
    acc[c][0] *= f[0];
    acc[c][1] *= f[0];
    acc[c][2] *= f[1];
    acc[c][3] *= f[1];
  }
}

// After the last key tile: l summed across the quad, inv = 1 / l per row half (0 for a row with
// no key: every key masked, or Tk = 0), and lse = ln2 (m + log2 l) (-inf for such a row) stored
// for rows row0 + g and row0 + g + 8 below Tq by the quad's lane 0.
__device__ __forceinline__ void softmax_finish(float (&l)[2], const float (&m)[2], float (&inv)[2],
                                               bf16_t* lse, int64_t row0, int64_t Tq, int lane) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] = shfl_sum(l[h], 2);
    const bool any = l[h] > 0.f;
    inv[h] = any ? 1.f / l[h] : 0.f;
    const int64_t row = row0 + (lane >> 2) + 8 * h;
    if ((lane & 3) == 0 && row < Tq)
      lse[row] = __float2bfloat16_rn(any ? (m[h] + log2f(l[h])) * static_cast<float>(kLn2)
                                         : -inf<float>());
  }
}

// Stores the fp32 accumulator fragments of a warp's 16 x kD tile (rows row0 + g and row0 + g + 8)
// as bf16 pairs into rows < nrows, columns < width (a multiple of 8, so a pair never straddles
// it) of the matrix whose row r starts at base + r * stride, times mul[0] / mul[1] per row half.
template <int kD>
__device__ __forceinline__ void mma_store_rows(bf16_t* base, int64_t stride, int64_t row0,
                                               int64_t nrows, int64_t width,
                                               const float (&acc)[kD / 8][4], const float (&mul)[2],
                                               int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = row0 + g + 8 * r;
    if (row >= nrows) continue;
    bf16_t* out = base + row * stride;
#pragma unroll
    for (int c = 0; c < kD / 8; ++c) {
      const int col = c * 8 + 2 * t;
      if (col < width)
        *reinterpret_cast<__nv_bfloat162*>(out + col) =
            __floats2bfloat162_rn(acc[c][2 * r] * mul[r], acc[c][2 * r + 1] * mul[r]);
    }
  }
}

// The inputs of pair `at` that the bf16 MMA backwards read: its q, go, k, v rows and its lse, D.
struct BwdInputs {
  const bf16_t *q, *go, *k, *v, *lse;
  const float* D;
};
__device__ __forceinline__ BwdInputs bwd_inputs(const BwdArgs& a, const HeadAt& at) {
  return {elem<bf16_t>(a.q, at.q), elem<bf16_t>(a.go, at.o),    elem<bf16_t>(a.k, at.k),
          elem<bf16_t>(a.v, at.v), elem<bf16_t>(a.lse, at.row), elem<float>(a.D, at.row)};
}

// The log2-domain lse and D of query rows row0 .. row0 + kRows - 1 into shared memory (rows past
// Tq: lse2_of's +inf and 0), kThreads threads striding over the rows.
template <int kRows, int kThreads>
__device__ __forceinline__ void load_row_stats(float* lse2s, float* Ds, const BwdInputs& in,
                                               int64_t row0, int64_t Tq) {
  for (int c = threadIdx.x; c < kRows; c += kThreads) {
    const int64_t row = row0 + c;
    const bool valid = row < Tq;
    lse2s[c] = lse2_of<float>(valid ? __bfloat162float(in.lse[row]) : 0.f, valid);
    Ds[c] = valid ? in.D[row] : 0.f;
  }
}

// The backward's P^T and dS^T in place (the dkdv kernels' transposed scores): s and dp hold a
// warp's 16 keys x kN queries of S^T and dP^T in the accumulator layout, key row g + 8 (x / 2),
// query column 8 c + 2 t + x % 2. P^T = exp2(S^T sl2 + key bias - lse2 of the query) replaces s,
// dS^T = scale P^T (dP^T - D of the query) replaces dp; kbias holds the lane's two key rows',
// lse2 and D the tile's queries'.
template <int kN>
__device__ __forceinline__ void p_ds_transposed(float (&s)[kN / 8][4], float (&dp)[kN / 8][4],
                                                const float (&kbias)[2], const float* lse2,
                                                const float* D, float sl2, float scale, int t) {
#pragma unroll
  for (int c = 0; c < kN / 8; ++c)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      const int col = c * 8 + 2 * t + (x & 1);
      const float p = exp2f(fmaf(s[c][x], sl2, kbias[x >> 1]) - lse2[col]);
      s[c][x] = p;
      dp[c][x] = p * (dp[c][x] - D[col]) * scale;
    }
}

// ---- the fused backwards' ordered gq sums (attention_bwd.cu, attention_bwd_wgmma_sm90a.cu) ----
// A block per (pair, key tile) adds its part of gq (dS K) for each query tile in key-tile order:
// key tile kt waits until tiles 0 .. kt - 1 have added theirs (block_order.cuh), so gq =
// ((p_0 + p_1) + p_2) + ... in the same order every run.

// The (pair, key tile) of a fused backward's block, from its ticket: tickets come in groups of
// a.group pairs, key-tile major within a group, so the block that key tile kt waits for (kt - 1
// of the same pair) drew its ticket a.group tickets earlier and, with a.group large enough, is
// long past the query tile it waits on (attention_bwd.cu, fused_group). Contains a barrier.
struct FusedTile {
  int64_t bh, kt;
};
__device__ __forceinline__ FusedTile fused_tile(const BwdArgs& a, int64_t nkt) {
  const int64_t L = block_order::block_ticket(a.order);
  const int64_t pairs = a.n.B * a.n.H, grp = L / (a.group * nkt), rem = L % (a.group * nkt);
  const int64_t left = pairs - grp * a.group;  // the last group may be short
  const int64_t gsize = left < a.group ? left : a.group;
  return {grp * a.group + rem % gsize, rem / gsize};
}

// Adds v, this key tile's part of gq at (row, col .. col + 1), to the running sum acc (row
// stride d, f32), or starts it (first: key tile 0), or writes the total as gq in bf16 (last: the
// pair's last key tile; row stride sq). acc goes through L2 (.cg), where another SM's block
// left it.
__device__ __forceinline__ void dq_sum_pair(float* acc, bf16_t* gq, int64_t sq, int64_t d,
                                            int64_t row, int col, float2 v, bool first, bool last) {
  if (!first) {
    const float2 prev = __ldcg(reinterpret_cast<const float2*>(acc + row * d + col));
    v = make_float2(prev.x + v.x, prev.y + v.y);
  }
  if (last)
    *reinterpret_cast<__nv_bfloat162*>(gq + row * sq + col) = __floats2bfloat162_rn(v.x, v.y);
  else
    __stcg(reinterpret_cast<float2*>(acc + row * d + col), v);
}

}  // namespace psvae::kernels::cuda::attn
