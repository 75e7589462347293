// What the two bf16 tile kernels of our GEMM share (the mma.sync kernel in gemm_mma.cu, the wgmma
// kernel in gemm_wgmma_sm90a.cu): the launch parameters, the 128 x 128 output tile that the host
// side's grid and split-K logic (gemm_mma.cu, run_tiles) is built on, and the epilogue that
// stores fp32 accumulators into C. Device code and declarations only; included by .cu files.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "kernels/cuda/elementwise_common.cuh"
#include "tensor/cuda/cuda_check.cuh"

namespace psvae::kernels::cuda::detail::tile {

using bf16_t = __nv_bfloat16;

// Every tile kernel computes a 128 x 128 block of C (one block per tile, grid x over N tiles, y
// over M tiles, z over batch entries or K splits).
constexpr int kBM = 128, kBN = 128;

// ---- epilogue --------------------------------------------------------------------------------
// Elementwise part of the epilogue as the kernels see it (the bias gradients run afterwards).
enum EpiKind : int { kEpiNone = 0, kEpiBias = 1, kEpiBiasGelu = 2, kEpiDGelu = 3 };

template <class T>
struct GemmParams {
  const T* A;
  const T* B;
  T* C;
  const T* bias;  // kEpiBias, kEpiBiasGelu: N elements
  T* aux;         // kEpiBiasGelu: pre-activation out (may be null); kEpiDGelu: in. C's layout.
  int64_t M, N, K;
  int64_t lda, ldb, ldc;
  int64_t stride_a, stride_b, stride_c;  // per blockIdx.z
  float alpha, beta;
  int epi;
  bool pair_store;  // C (and aux) rows allow 2-element vector stores: see gemm_own
  // Split-K (bf16 kernel, batch 1 only): blockIdx.z is the split; split z covers k in
  // [z k_split, min(K, (z + 1) k_split)) and writes its raw fp32 tile to partial + z M N (row
  // stride N); splitk_reduce_kernel then adds the splits in order and applies the epilogue.
  float* partial;  // null: no split, blockIdx.z is the batch entry
  int64_t k_split;
};

// tanh GELU and its slope in f32, the formulas of kernels/cuda/unary.cu (GeluTanh).
__device__ __forceinline__ float gelu_f(float x) {
  const float t = tanhf(0.79788456080286535588f * (x + 0.044715f * x * x * x));
  return 0.5f * x * (1.f + t);
}
__device__ __forceinline__ float dgelu_f(float x) {
  const float k = 0.79788456080286535588f;
  const float t = tanhf(k * (x + 0.044715f * x * x * x));
  const float du = k * (1.f + 3.f * 0.044715f * x * x);
  return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * du;
}

// The value stored at C[off] (row-major offset of (row, col) in this batch entry's C) from the
// fp32 accumulator; writes aux[off] for BiasGelu. C is read only when beta != 0.
template <class T>
__device__ __forceinline__ float epilogue_value(const GemmParams<T>& p, const T* c, T* aux,
                                                int64_t off, int64_t col, float acc) {
  using Mt = Math<T>;
  float t = p.alpha * acc;
  if (p.beta != 0.f) t += p.beta * Mt::load(c[off]);
  switch (p.epi) {
    case kEpiBias: t += Mt::load(p.bias[col]); break;
    case kEpiBiasGelu:
      t += Mt::load(p.bias[col]);
      if (aux) aux[off] = Mt::store(t);
      t = gelu_f(t);
      break;
    case kEpiDGelu: t *= dgelu_f(Mt::load(aux[off])); break;
    default: break;
  }
  return t;
}

// Stores the two adjacent outputs (row, col) and (row, col + 1), each only when inside C. acc0,
// acc1 are the fp32 accumulators. One 4-byte store for a bf16 pair when allowed (pair_store: ldc
// and stride_c even, C 4-byte aligned; col is even here, so the pair is aligned).
__device__ __forceinline__ void store_pair(const GemmParams<bf16_t>& p, bf16_t* c, bf16_t* aux,
                                           int64_t row, int64_t col, float acc0, float acc1) {
  if (row >= p.M || col >= p.N) return;
  const int64_t off = row * p.ldc + col;
  const float v0 = epilogue_value(p, c, aux, off, col, acc0);
  if (col + 1 < p.N) {
    const float v1 = epilogue_value(p, c, aux, off + 1, col + 1, acc1);
    if (p.pair_store) {
      *reinterpret_cast<__nv_bfloat162*>(c + off) = __floats2bfloat162_rn(v0, v1);
    } else {
      c[off] = __float2bfloat16_rn(v0);
      c[off + 1] = __float2bfloat16_rn(v1);
    }
  } else {
    c[off] = __float2bfloat16_rn(v0);
  }
}

// The raw fp32 accumulators of (row, col) and (row, col + 1) into a split's partial tile (row
// stride N), each only when inside.
__device__ __forceinline__ void store_partial(float* w, int64_t M, int64_t N, int64_t row,
                                              int64_t col, float v0, float v1) {
  if (row >= M || col >= N) return;
  w[row * N + col] = v0;
  if (col + 1 < N) w[row * N + col + 1] = v1;
}

// ---- one block's tile --------------------------------------------------------------------------
// Where the block's 128 x kTileN tile (blockIdx.y, blockIdx.x) lies in batch entry blockIdx.z,
// or, with split-K (batch 1), in K range blockIdx.z; and where its results go. A persistent
// kernel, whose blocks each take several tiles, names the tile `b` instead of blockIdx. kTransA: A
// stored (K, M), else (M, K); kTransB: B stored (N, K), else (K, N).
template <bool kTransA, bool kTransB, int kTileN = kBN>
struct BlockTile {
  int64_t m0, n0;                   // the tile's origin in C
  int64_t z;                        // the batch entry (0 with split-K)
  int64_t k_begin, k_end;           // the K range this block sums
  int64_t m_left, n_left;           // rows and columns of C from the origin on
  const bf16_t *A, *B;              // this entry's operands (sources of zero-byte copies)
  const bf16_t *a_panel, *b_panel;  // row m0 of op(A), column n0 of op(B), k = 0, as stored
  bf16_t *C, *aux;                  // this entry's C and aux
  float* part;                      // split-K: this split's fp32 tile (row stride N); else null

  __device__ __forceinline__ explicit BlockTile(const GemmParams<bf16_t>& p)
      : BlockTile(p, blockIdx) {}
  __device__ __forceinline__ BlockTile(const GemmParams<bf16_t>& p, uint3 b) {
    m0 = static_cast<int64_t>(b.y) * kBM;
    n0 = static_cast<int64_t>(b.x) * kTileN;
    const bool split = p.partial != nullptr;
    z = split ? 0 : b.z;
    k_begin = split ? static_cast<int64_t>(b.z) * p.k_split : 0;
    k_end = split ? std::min(p.K, k_begin + p.k_split) : p.K;
    m_left = p.M - m0;
    n_left = p.N - n0;
    A = p.A + z * p.stride_a;
    B = p.B + z * p.stride_b;
    a_panel = kTransA ? A + m0 : A + m0 * p.lda;
    b_panel = kTransB ? B + n0 * p.ldb : B + n0;
    C = p.C + z * p.stride_c;
    aux = p.aux ? p.aux + z * p.stride_c : nullptr;
    part = split ? p.partial + static_cast<int64_t>(b.z) * p.M * p.N : nullptr;
  }

  // The adjacent outputs (row, col) and (row, col + 1), absolute in C: raw into the split's
  // partial tile, else through the epilogue into C.
  __device__ __forceinline__ void store(const GemmParams<bf16_t>& p, int64_t row, int64_t col,
                                        float v0, float v1) const {
    if (part)
      store_partial(part, p.M, p.N, row, col, v0, v1);
    else
      store_pair(p, C, aux, row, col, v0, v1);
  }

  // Stores a warpgroup's m64nN wgmma accumulators (R = N / 2 per thread) as rows row0 .. row0 + 63
  // of the tile: acc[4 i + 2 h + j] is (16 w + g + 8 h, 8 i + 2 q + j) of the warpgroup's 64 x N
  // (w: warp in the warpgroup, g = lane / 4, q = lane % 4; mma_sm90.cuh).
  template <int R>
  __device__ __forceinline__ void store_wgmma(const GemmParams<bf16_t>& p, const float (&acc)[R],
                                              int row0) const {
    const int t = threadIdx.x % 128, w = t >> 5, g = (t & 31) >> 2, q = t & 3;
#pragma unroll
    for (int i = 0; i < R / 4; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h)
        store(p, m0 + row0 + 16 * w + g + 8 * h, n0 + 8 * i + 2 * q, acc[4 * i + 2 * h],
              acc[4 * i + 2 * h + 1]);
    }
  }
  // The same for a warpgroup that owns all 128 rows as two m64nN accumulators, rows 0..63 in lo
  // and 64..127 in hi, stored column by column from both: as two store_wgmma calls, the columns'
  // bounds were held over from the first call to the second, and with hi's registers still live
  // that spilled (ping-pong TMA GEMM, ptxas at the 168-register entry cap).
  template <int R>
  __device__ __forceinline__ void store_wgmma_rows128(const GemmParams<bf16_t>& p,
                                                      const float (&lo)[R],
                                                      const float (&hi)[R]) const {
    const int t = threadIdx.x % 128, w = t >> 5, g = (t & 31) >> 2, q = t & 3;
#pragma unroll
    for (int i = 0; i < R / 4; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = m0 + 16 * w + g + 8 * h, col = n0 + 8 * i + 2 * q;
        store(p, row, col, lo[4 * i + 2 * h], lo[4 * i + 2 * h + 1]);
        store(p, row + 64, col, hi[4 * i + 2 * h], hi[4 * i + 2 * h + 1]);
      }
    }
  }
};

// ---- launching ---------------------------------------------------------------------------------
// Raises `kernel`'s dynamic shared-memory limit from the default 48 KiB to `bytes`, once per
// device index (mod 64); `done` is the calling launcher's static, one per kernel instantiation.
template <class Kernel>
void raise_smem_limit(Kernel kernel, int bytes, int device, std::atomic<uint64_t>& done) {
  const uint64_t bit = uint64_t(1) << (device & 63);
  if (done.load() & bit) return;
  PSVAE_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.fetch_or(bit);
}

// ---- the wgmma kernels (gemm_wgmma_sm90a.cu, gemm_wgmma_tma_sm90a.cu) ---------------------------
// Whether the wgmma kernel can run on `device`: this binary holds its sm_90a image and the device
// can load it (compute capability 9.0). Asked once per device.
bool wgmma_available(int device);
// Launches it over `grid` (the same grid and parameters as the mma.sync kernel) with operands
// stored (M, K) / (K, M) for A (ta) and (K, N) / (N, K) for B (tb). Every 16-byte chunk of A and
// B must be aligned (the host checks lda, ldb, strides and pointers, as for cp.async).
void launch_wgmma(const GemmParams<bf16_t>& p, bool ta, bool tb, dim3 grid, int device,
                  cudaStream_t s);

// The TMA kernel's consumer schedules (env PSVAE_GEMM_TMA_SCHEDULE, gemm_wgmma_tma_sm90a.cu):
//   Cooperative  both consumer warpgroups on one 128 x 256 tile (64 rows each), the default;
//   PingPong     each consumer on its own 128 x 128 tile, their mainloops taking turns, so one's
//                epilogue runs under the other's MMAs (CUTLASS's ping-pong kernel).
// Both run one block per SM; the tile width sets the grid and the split-K wave.
enum class TmaSchedule : int { Cooperative, PingPong };
constexpr int kTmaBN = 256, kTmaPingPongBN = 128;
constexpr int tma_tile_n(TmaSchedule s) {
  return s == TmaSchedule::PingPong ? kTmaPingPongBN : kTmaBN;
}
// PSVAE_GEMM_TMA_SCHEDULE: "cooperative" (also unset or empty) or "pingpong"; anything else
// throws std::invalid_argument naming the variable and the value. Read at every call.
TmaSchedule tma_schedule();
// Whether the TMA kernel can run on `device`: wgmma_available, and the driver has
// cuTensorMapEncodeTiled.
bool wgmma_tma_available(int device);
// Whether it can run this problem: its tensor maps need what cp.async needs (16-byte aligned
// pointers, leading dims and batch strides) and, for batch > 1, non-zero batch strides of A and B.
// (Checked by encoding them: host only.) p.M is the rows of one launch.
bool wgmma_tma_fits(const GemmParams<bf16_t>& p, bool ta, bool tb, int64_t batch,
                    TmaSchedule sched);
// Launches it over `grid` (x: N tiles of tma_tile_n(sched), y: M tiles of kBM, z: batch entries or
// splits).
void launch_wgmma_tma(const GemmParams<bf16_t>& p, bool ta, bool tb, TmaSchedule sched, dim3 grid,
                      int device, cudaStream_t s);

}  // namespace psvae::kernels::cuda::detail::tile
