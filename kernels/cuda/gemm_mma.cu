// Our own GEMM kernels, the "Own" path of the GEMM dispatch (kernels/cuda/gemm.h has the
// convention: row-major, C (M, N) = alpha op(A) op(B) + beta C, then the epilogue).
//
// bf16: tensor cores through mma.sync.m16n8k16 (bf16 inputs, fp32 accumulators), an sm_80 design
// that also runs on sm_90. Its two sm_90a siblings with wgmma (gemm_wgmma_sm90a.cu,
// gemm_wgmma_tma_sm90a.cu) share the parameters and the epilogue (gemm_tile_common.cuh);
// choose_tile_kernel picks one per call.
//   - Block tile 128 x 128 x 32, 256 threads = 8 warps as 2 (M) x 4 (N), each warp 64 x 32: per
//     k16 step a warp loads 4 A fragments (ldmatrix.x4) and 4 B fragments (2 ldmatrix.x4) and
//     issues 4 x 4 = 16 mma; 64 fp32 accumulators per thread.
//   - 3-stage cp.async pipeline (16-byte cp.async.cg, zero-fill through src-size at the edges):
//     while the warps compute slab k, slabs k+1 and k+2 are in flight.
//   - Shared memory per operand and stage, padded (no swizzle) so that the 8 row addresses of an
//     ldmatrix phase fall into 8 different 16-byte bank groups:
//       K-contiguous slab (A not transposed, B transposed): 128 rows x (32 + 8) bf16, 80 B pitch
//         (80 / 16 = 5 is odd, so 8 consecutive rows cover the 8 bank groups);
//       MN-contiguous slab (A transposed, B not transposed): 32 rows x (128 + 8) bf16, 272 B
//         pitch (272 / 16 = 17, odd again).
//     The layouts follow the operands' memory order, so global -> shared copies stay 16-byte
//     chunks; the fragments come out with ldmatrix (K-contiguous) or ldmatrix.trans
//     (MN-contiguous). Each stage reserves 2 x 128 x 40 bf16 = 20480 B; 3 stages = 60 KiB of
//     dynamic shared memory (opt-in above 48 KiB), 2 blocks per SM.
//   - Operands whose rows are not 16-byte aligned (leading dim not a multiple of 8, odd base
//     pointer) take the same pipeline with plain element loads instead of cp.async (kAligned =
//     false): correct for any shape, meant for the odd shapes of tests, not for speed.
//   - Epilogue straight from the accumulators: each thread owns pairs of adjacent columns, written
//     as one bf16x2 store when C's layout allows it.
// f32: a register-blocked SIMT kernel (no TF32: the f32 path must match the CPU to 1e-5): block
//   tile 128 x 128 x 8, 256 threads each computing 8 x 8 outputs from float4 shared-memory reads,
//   double-buffered shared memory fed by a register prefetch of the next slab (one barrier per
//   slab).
// Bias gradients (BGradA, BGradB, DGeluBGrad): a deterministic two-pass column sum after the GEMM
//   (fixed chunking that depends on the shape only, no atomics).
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/gemm_tile_common.cuh"
#include "kernels/cuda/mma_sm80.cuh"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"
#include "tensor/tensor.h"

namespace psvae::kernels::cuda::detail {

namespace {

namespace rt = ::psvae::cuda;
using namespace tile;  // GemmParams, the epilogue, the 128 x 128 tile (gemm_tile_common.cuh)

// ---- PTX (kernels/cuda/mma_sm80.cuh) ----------------------------------------------------------
using sm80::cp_async16;
using sm80::cp_async_commit;
using sm80::cp_async_wait;
using sm80::ldmatrix_x4;
using sm80::ldmatrix_x4_trans;
using sm80::mma_bf16_16816;

// ---- bf16 tensor-core kernel -------------------------------------------------------------------
constexpr int kBK = 32;
constexpr int kStages = 3;
constexpr int kThreads = 256;
constexpr int kPitchK = kBK + 8;           // K-contiguous slab: 128 rows of 40 bf16 (80 B)
constexpr int kPitchMN = kBM + 8;          // MN-contiguous slab: 32 rows of 136 bf16 (272 B)
constexpr int kSlabElems = kBM * kPitchK;  // 5120 >= 32 * 136 = 4352: room for either layout
constexpr int kStageElems = 2 * kSlabElems;
constexpr int kSmemBytes = kStages * kStageElems * 2;  // 61440
static_assert(kBM == kBN, "the slab layouts assume square block tiles");
static_assert(kBK * kPitchMN <= kSlabElems, "MN-contiguous slab must fit");
static_assert((kPitchK * 2) % 16 == 0 && (kPitchMN * 2) % 16 == 0, "16-byte aligned rows");

// Copies the 32-deep slab of one operand into shared memory (128 x 32 elements, as 512 chunks of
// 8 bf16 = 16 bytes, 2 per thread).
//   kKContig: the operand is stored with K contiguous (A not transposed, B transposed): element
//     (r, k) of the slab, r the M (or N) index from the tile origin, is g[r * ld + k]; shared
//     layout [r][k], pitch kPitchK. Chunk c: r = c / 4, k = 8 (c % 4).
//   else: M (or N) contiguous (A transposed, B not transposed): element (k, r) is g[k * ld + r];
//     shared layout [k][r], pitch kPitchMN. Chunk c: k = c / 16, r = 8 (c % 16).
// g points at the slab origin (tile row/col 0, k0); r_left = rows (M or N) left from the tile
// origin, k_left = K - k0. Elements outside (r >= r_left or k >= k_left) are written as zeros,
// so the mma of a partial tile adds nothing for them. base: any valid address of the operand
// (used as the source of zero-byte copies).
// kAligned: g, ld and the tile origin make every chunk 16-byte aligned (checked on the host), so
// cp.async applies; else plain 2-byte loads and a 16-byte shared store.
template <bool kKContig, bool kAligned>
__device__ __forceinline__ void load_slab(bf16_t* s, const bf16_t* g, const bf16_t* base,
                                          int64_t ld, int64_t r_left, int64_t k_left, int tid) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int c = tid + i * kThreads;  // 0..511
    int row, col;                      // shared coordinates: [row][col], col in elements
    int64_t valid;                     // elements of the 8 inside the operand
    int64_t goff;                      // offset of the chunk's first element from g
    int pitch;
    if (kKContig) {
      row = c >> 2;       // r: 0..127
      col = (c & 3) * 8;  // k: 0, 8, 16, 24
      valid = row < r_left ? std::min<int64_t>(8, std::max<int64_t>(0, k_left - col)) : 0;
      goff = static_cast<int64_t>(row) * ld + col;
      pitch = kPitchK;
    } else {
      row = c >> 4;        // k: 0..31
      col = (c & 15) * 8;  // r: 0..120
      valid = row < k_left ? std::min<int64_t>(8, std::max<int64_t>(0, r_left - col)) : 0;
      goff = static_cast<int64_t>(row) * ld + col;
      pitch = kPitchMN;
    }
    bf16_t* dst = s + row * pitch + col;
    if (kAligned) {
      cp_async16(dst, valid > 0 ? static_cast<const void*>(g + goff) : base,
                 static_cast<int>(valid) * 2);
    } else {
      const unsigned short* src = reinterpret_cast<const unsigned short*>(g + goff);
      unsigned short v[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = e < valid ? src[e] : static_cast<unsigned short>(0);
      uint4 pack;
      pack.x = v[0] | (static_cast<uint32_t>(v[1]) << 16);
      pack.y = v[2] | (static_cast<uint32_t>(v[3]) << 16);
      pack.z = v[4] | (static_cast<uint32_t>(v[5]) << 16);
      pack.w = v[6] | (static_cast<uint32_t>(v[7]) << 16);
      *reinterpret_cast<uint4*>(dst) = pack;  // dst is 16-byte aligned (pitches, col % 8 == 0)
    }
  }
}

// One block computes the 128 x 128 tile (blockIdx.y, blockIdx.x) of batch entry blockIdx.z.
template <bool kTransA, bool kTransB, bool kAligned>
__global__ void __launch_bounds__(kThreads, 2) gemm_bf16_mma_kernel(GemmParams<bf16_t> p) {
  PSVAE_DYNAMIC_SMEM(smem_raw);
  bf16_t* smem = reinterpret_cast<bf16_t*>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp >> 2;            // 0..1: rows 64 warp_m .. +63 of the tile
  const int warp_n = warp & 3;             // 0..3: cols 32 warp_n .. +31
  const BlockTile<kTransA, kTransB> t(p);  // origin, K range, panels, outputs
  const int ktiles = static_cast<int>((t.k_end - t.k_begin + kBK - 1) / kBK);

  auto load_stage = [&](int stage, int kt) {
    const int64_t k0 = t.k_begin + static_cast<int64_t>(kt) * kBK;
    bf16_t* sa = smem + stage * kStageElems;
    bf16_t* sb = sa + kSlabElems;
    // A is K-contiguous unless transposed; B is K-contiguous when transposed. Elements at
    // k >= k_end are zero-filled (k_split is a multiple of kBK, so only the last split has a
    // partial slab, at K itself).
    load_slab<!kTransA, kAligned>(sa, kTransA ? t.a_panel + k0 * p.lda : t.a_panel + k0, t.A, p.lda,
                                  t.m_left, t.k_end - k0, tid);
    load_slab<kTransB, kAligned>(sb, kTransB ? t.b_panel + k0 : t.b_panel + k0 * p.ldb, t.B, p.ldb,
                                 t.n_left, t.k_end - k0, tid);
  };

  float acc[4][4][4];  // [m16 tile][n8 tile][c0..c3]
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

        // Prologue: slabs 0 .. kStages-2 in flight, one commit group each (empty past the end, so
        // the group count below stays exact).
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < ktiles; ++kt) {
    // Groups committed so far: kStages - 1 + kt; slab kt is group kt, so at most kStages - 2 may
    // still be pending. The barrier then makes every thread's copies of slab kt visible, and
    // tells that every warp has finished computing slab kt - 1, whose buffer
    // ((kt - 1) % kStages == (kt + kStages - 1) % kStages) is refilled just below.
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (kt + kStages - 1 < ktiles) load_stage((kt + kStages - 1) % kStages, kt + kStages - 1);
    cp_async_commit();

    const bf16_t* sa = smem + (kt % kStages) * kStageElems;
    const bf16_t* sb = sa + kSlabElems;
    const int li = lane >> 3;  // which of the 4 matrices this lane addresses
    const int lr = lane & 7;   // which row of it
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t af[4][4];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        const int m = warp_m * 64 + mt * 16;
        // Matrices 0..3 = (rows m..m+7, k kk..), (m+8.., kk..), (m.., kk+8..), (m+8.., kk+8..),
        // the order of a0..a3.
        if (!kTransA) {  // shared [m][k]: rows are m
          ldmatrix_x4(af[mt], sa + (m + lr + (li & 1) * 8) * kPitchK + kk + (li >> 1) * 8);
        } else {  // shared [k][m]: rows are k; .trans turns each 8x8 (k, m) block into (m, k)
          ldmatrix_x4_trans(af[mt], sa + (kk + lr + (li >> 1) * 8) * kPitchMN + m + (li & 1) * 8);
        }
      }
      uint32_t bfr[4][2];
#pragma unroll
      for (int pq = 0; pq < 2; ++pq) {
        const int n = warp_n * 32 + pq * 16;
        // Matrices 0..3 = (n.., k kk..), (n.., kk+8..), (n+8.., kk..), (n+8.., kk+8..): b0, b1 of
        // n8 tile 2pq, then b0, b1 of tile 2pq + 1.
        uint32_t r[4];
        if (kTransB) {  // shared [n][k]: the "col" operand as mma wants it
          ldmatrix_x4(r, sb + (n + lr + (li >> 1) * 8) * kPitchK + kk + (li & 1) * 8);
        } else {  // shared [k][n]: rows are k
          ldmatrix_x4_trans(r, sb + (kk + lr + (li & 1) * 8) * kPitchMN + n + (li >> 1) * 8);
        }
        bfr[2 * pq][0] = r[0];
        bfr[2 * pq][1] = r[1];
        bfr[2 * pq + 1][0] = r[2];
        bfr[2 * pq + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) mma_bf16_16816(acc[mt][nt], af[mt], bfr[nt][0], bfr[nt][1]);
    }
  }
  cp_async_wait<0>();  // only empty groups can be left; drain them before the block exits

  // Epilogue: accumulator (mt, nt, e) is C[row][col] with row = m0 + 64 warp_m + 16 mt + g
  // (+ 8 for e = 2, 3), col = n0 + 32 warp_n + 8 nt + 2q (+ 1 for odd e).
  const int g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int64_t row = t.m0 + warp_m * 64 + mt * 16 + g;
      const int64_t col = t.n0 + warp_n * 32 + nt * 8 + q * 2;
      t.store(p, row, col, acc[mt][nt][0], acc[mt][nt][1]);
      t.store(p, row + 8, col, acc[mt][nt][2], acc[mt][nt][3]);
    }
  }
}

// Split-K second pass: C[row, col] = epilogue(sum over the splits, in order, of the partial
// tiles); one thread per output element, grid-stride. Reads splits x 4 bytes and writes one
// element per output (plus aux for bias+GELU).
__global__ void splitk_reduce_kernel(GemmParams<bf16_t> p, int splits) {
  const int64_t total = p.M * p.N;
  for (int64_t i = rt::grid_index(); i < total; i += rt::grid_stride()) {
    float acc = 0.f;
    for (int s = 0; s < splits; ++s) acc += p.partial[s * total + i];
    const int64_t row = i / p.N, col = i - row * p.N;
    const int64_t off = row * p.ldc + col;
    p.C[off] = __float2bfloat16_rn(epilogue_value(p, p.C, p.aux, off, col, acc));
  }
}

// ---- f32 SIMT kernel ---------------------------------------------------------------------------
constexpr int kFBK = 8;
constexpr int kFPitch = kBM + 4;  // 132 floats: stores [k][m] from k-fastest threads hit 32 banks

// One block computes a 128 x 128 tile; thread (ty, tx) = (tid / 16, tid % 16) owns rows
// {4 ty + i, 64 + 4 ty + i} and cols {4 tx + j, 64 + 4 tx + j}, i, j < 4.
template <bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kThreads, 2) gemm_f32_simt_kernel(GemmParams<float> p) {
  __shared__ __align__(16) float As[2][kFBK][kFPitch];  // [k][m]
  __shared__ __align__(16) float Bs[2][kFBK][kFPitch];  // [k][n]
  const int tid = threadIdx.x;
  const int ty = tid >> 4, tx = tid & 15;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBN;
  const int64_t z = blockIdx.z;
  const float* A = p.A + z * p.stride_a;
  const float* B = p.B + z * p.stride_b;
  float* C = p.C + z * p.stride_c;
  float* aux = p.aux ? p.aux + z * p.stride_c : nullptr;
  const int ktiles = static_cast<int>((p.K + kFBK - 1) / kFBK);

  // Each slab of A and of B is 128 x 8 = 1024 elements, 4 per thread. Element e = tid + 256 i:
  // K-contiguous storage reads (k = e % 8, r = e / 8), 8 threads per 32-byte row segment;
  // MN-contiguous storage reads (r = e % 128, k = e / 128), fully coalesced.
  float ra[4], rb[4];
  auto fetch = [&](int kt) {
    const int64_t k0 = static_cast<int64_t>(kt) * kFBK;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int e = tid + i * kThreads;
      int k, r;
      if (!kTransA) {
        k = e & 7, r = e >> 3;
        ra[i] = (m0 + r < p.M && k0 + k < p.K) ? A[(m0 + r) * p.lda + k0 + k] : 0.f;
      } else {
        r = e & 127, k = e >> 7;
        ra[i] = (m0 + r < p.M && k0 + k < p.K) ? A[(k0 + k) * p.lda + m0 + r] : 0.f;
      }
      if (kTransB) {
        k = e & 7, r = e >> 3;
        rb[i] = (n0 + r < p.N && k0 + k < p.K) ? B[(n0 + r) * p.ldb + k0 + k] : 0.f;
      } else {
        r = e & 127, k = e >> 7;
        rb[i] = (n0 + r < p.N && k0 + k < p.K) ? B[(k0 + k) * p.ldb + n0 + r] : 0.f;
      }
    }
  };
  auto stash = [&](int buf) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int e = tid + i * kThreads;
      if (!kTransA)
        As[buf][e & 7][e >> 3] = ra[i];
      else
        As[buf][e >> 7][e & 127] = ra[i];
      if (kTransB)
        Bs[buf][e & 7][e >> 3] = rb[i];
      else
        Bs[buf][e >> 7][e & 127] = rb[i];
    }
  };

  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

  if (ktiles > 0) {
    fetch(0);
    stash(0);
  }
  __syncthreads();
  for (int kt = 0; kt < ktiles; ++kt) {
    const int buf = kt & 1;
    if (kt + 1 < ktiles) fetch(kt + 1);  // global loads in flight during the FMAs below
#pragma unroll
    for (int k = 0; k < kFBK; ++k) {
      const float4 a0 = *reinterpret_cast<const float4*>(&As[buf][k][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4*>(&As[buf][k][64 + ty * 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&Bs[buf][k][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&Bs[buf][k][64 + tx * 4]);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    // The other buffer was last read in iteration kt - 1, which every thread finished before the
    // barrier that ended it; the barrier below publishes slab kt + 1 before iteration kt + 1.
    if (kt + 1 < ktiles) stash(buf ^ 1);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int64_t row = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
    if (row >= p.M) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t col = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + (j - 4));
      if (col >= p.N) continue;
      const int64_t off = row * p.ldc + col;
      C[off] = epilogue_value(p, C, aux, off, col, acc[i][j]);
    }
  }
}

// ---- deterministic column sums (bias gradients) ------------------------------------------------
// out[j] = sum_{i < L} x[i * si + j * sj], j < J, in two passes with a fixed order: pass 1 gives
// partial[p][j] over rows [p R, (p + 1) R) (block 32 x 8: thread (tx, ty) sums rows ty, ty + 8,
// ... of the chunk for column j = 32 blockIdx.x + tx, then thread ty = 0 adds the 8 sums in
// order); pass 2 adds the P partials of each column in order. R and P depend on L only.
constexpr int kSumRowsMax = 512;  // P <= 512 chunks

template <class T>
__global__ void colsum_partial_kernel(const T* x, int64_t L, int64_t J, int64_t si, int64_t sj,
                                      int64_t rows_per_chunk, float* partial) {
  __shared__ float s[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * 32 + tx;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t i1 = std::min(L, i0 + rows_per_chunk);
  float sum = 0.f;
  if (j < J)
    for (int64_t i = i0 + ty; i < i1; i += 8) sum += Math<T>::load(x[i * si + j * sj]);
  s[ty][tx] = sum;
  __syncthreads();
  if (ty == 0 && j < J) {
    float t = 0.f;
#pragma unroll
    for (int r = 0; r < 8; ++r) t += s[r][tx];
    partial[blockIdx.y * J + j] = t;
  }
}

template <class T>
__global__ void colsum_final_kernel(const float* partial, int64_t P, int64_t J, T* out) {
  const int64_t j = rt::grid_index();
  if (j >= J) return;
  float t = 0.f;
  for (int64_t p = 0; p < P; ++p) t += partial[p * J + j];
  out[j] = Math<T>::store(t);
}

template <class T>
void column_sums(const T* x, int64_t L, int64_t J, int64_t si, int64_t sj, T* out, int device,
                 cudaStream_t s) {
  if (J == 0) return;
  const int64_t P = std::max<int64_t>(1, std::min<int64_t>(kSumRowsMax, (L + 63) / 64));
  const int64_t R = std::max<int64_t>(1, (L + P - 1) / P);
  // Temporary partials from the caching allocator (stream-ordered on the project's stream).
  Tensor partial = Tensor::empty({P, J}, DType::F32, Device::cuda(device));
  float* pp = partial.data<float>();
  const dim3 grid(static_cast<unsigned>((J + 31) / 32), static_cast<unsigned>(P));
  PSVAE_LAUNCH(grid, dim3(32, 8), 0, s, colsum_partial_kernel<T>)(x, L, J, si, sj, R, pp);
  const unsigned blocks = static_cast<unsigned>((J + rt::kBlockThreads - 1) / rt::kBlockThreads);
  PSVAE_LAUNCH(blocks, rt::kBlockThreads, 0, s, colsum_final_kernel<T>)(pp, P, J, out);
}

// ---- host side ---------------------------------------------------------------------------------
int kernel_epi(Epilogue e) {
  switch (e) {
    case Epilogue::Bias: return kEpiBias;
    case Epilogue::BiasGelu: return kEpiBiasGelu;
    case Epilogue::DGelu:
    case Epilogue::DGeluBGrad: return kEpiDGelu;
    default: return kEpiNone;
  }
}

bool aligned_to(const void* ptr, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

// Launches one instantiation of the tensor-core kernel, first raising its dynamic shared memory
// limit above the default 48 KiB (once per device: the static is per instantiation).
template <bool kTA, bool kTB, bool kAligned>
void launch_mma(const GemmParams<bf16_t>& p, dim3 grid, int device, cudaStream_t s) {
  auto kernel = gemm_bf16_mma_kernel<kTA, kTB, kAligned>;
  static std::atomic<uint64_t> done{0};
  raise_smem_limit(kernel, kSmemBytes, device, done);
  PSVAE_LAUNCH(grid, kThreads, kSmemBytes, s, kernel)(p);
}

template <bool kTA, bool kTB>
void launch_bf16_t(const GemmParams<bf16_t>& p, bool aligned, dim3 grid, int device,
                   cudaStream_t s) {
  if (aligned)
    launch_mma<kTA, kTB, true>(p, grid, device, s);
  else
    launch_mma<kTA, kTB, false>(p, grid, device, s);
}

// The tile kernel a problem runs on (choose_tile_kernel, below): its output tile width and how
// many blocks an SM holds (what a split-K wave counts).
struct TileKernel {
  GemmBackend kernel;  // Own (mma.sync, or the f32 SIMT kernel), Wgmma or WgmmaTma
  int64_t tile_n;
  int blocks_per_sm;
  TmaSchedule schedule = TmaSchedule::Cooperative;  // WgmmaTma's consumers
};

// bf16: the kernel chosen (the caller has checked that it can run and that the operands are
// aligned for it).
void launch_tile_kernel(const GemmParams<bf16_t>& p, bool ta, bool tb, bool aligned,
                        const TileKernel& tk, dim3 grid, int device, cudaStream_t s) {
  if (tk.kernel == GemmBackend::WgmmaTma)
    return launch_wgmma_tma(p, ta, tb, tk.schedule, grid, device, s);
  if (tk.kernel == GemmBackend::Wgmma) return launch_wgmma(p, ta, tb, grid, device, s);
  if (!ta && !tb) launch_bf16_t<false, false>(p, aligned, grid, device, s);
  if (!ta && tb) launch_bf16_t<false, true>(p, aligned, grid, device, s);
  if (ta && !tb) launch_bf16_t<true, false>(p, aligned, grid, device, s);
  if (ta && tb) launch_bf16_t<true, true>(p, aligned, grid, device, s);
}
void launch_tile_kernel(const GemmParams<float>& p, bool ta, bool tb, bool, const TileKernel&,
                        dim3 grid, int, cudaStream_t s) {
  if (!ta && !tb) PSVAE_LAUNCH(grid, kThreads, 0, s, gemm_f32_simt_kernel<false, false>)(p);
  if (!ta && tb) PSVAE_LAUNCH(grid, kThreads, 0, s, gemm_f32_simt_kernel<false, true>)(p);
  if (ta && !tb) PSVAE_LAUNCH(grid, kThreads, 0, s, gemm_f32_simt_kernel<true, false>)(p);
  if (ta && tb) PSVAE_LAUNCH(grid, kThreads, 0, s, gemm_f32_simt_kernel<true, true>)(p);
}

// Launches the tile kernel over the whole problem: grid x over N tiles (so consecutive blocks
// share an A row panel and the B panels stay in L2), y over M tiles, z over batch entries; M and
// batch beyond the grid limits (65535) go in chunks with offset pointers.
// Split-K for problems with too few output tiles to fill the GPU (the weight gradients dW = dY^T X
// of narrow layers: M, N <= a few hundred, K = every token of the batch). When the tiles are
// fewer than one wave (the kernel's blocks per SM x the SMs) and K holds at least 2 x kSplitMinK,
// K is cut into `splits` ranges of a multiple of kSplitAlign so that tiles x splits fills about
// one wave; each split writes fp32 partials (splits x M x N x 4 bytes, at most ~2 waves of
// 128 x 128 tiles = 35 MB on an H200), and splitk_reduce_kernel adds them in split order. The
// split count depends on the shape, the kernel and the SM count only, so a run is bitwise
// repeatable on a given GPU. Returns false (and launches nothing) when the problem does not
// qualify.
constexpr int64_t kSplitMinK = 256;
// A multiple of every bf16 tile kernel's slab depth (32 for mma.sync, 64 for wgmma): no slab
// straddles two splits, which the TMA kernel needs (its copies zero-fill only past K itself).
constexpr int64_t kSplitAlign = 64;

template <class T>
bool run_split_k(const GemmParams<T>&, const GemmDesc&, const TileKernel&, bool, int,
                 cudaStream_t) {
  return false;  // f32: the SIMT kernel has no split-K
}
template <>
bool run_split_k<bf16_t>(const GemmParams<bf16_t>& p, const GemmDesc& d, const TileKernel& tk,
                         bool aligned, int device, cudaStream_t s) {
  if (d.batch != 1) return false;
  const int64_t m_tiles = (d.M + kBM - 1) / kBM, n_tiles = (d.N + tk.tile_n - 1) / tk.tile_n;
  const int64_t tiles = m_tiles * n_tiles;
  const int64_t wave = tk.blocks_per_sm * static_cast<int64_t>(rt::sm_count(device));
  if (tiles >= wave || d.K < 2 * kSplitMinK || m_tiles > 65535) return false;
  int64_t splits = std::min((wave + tiles - 1) / tiles, d.K / kSplitMinK);
  if (splits < 2) return false;
  const int64_t k_split =
      ((d.K + splits - 1) / splits + kSplitAlign - 1) / kSplitAlign * kSplitAlign;
  splits = (d.K + k_split - 1) / k_split;  // every split non-empty
  if (splits < 2 || splits > 65535) return false;
  Tensor partial = Tensor::empty({splits, d.M, d.N}, DType::F32, Device::cuda(device));
  GemmParams<bf16_t> q = p;
  q.M = d.M;
  q.partial = partial.data<float>();
  q.k_split = k_split;
  const dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>(m_tiles),
                  static_cast<unsigned>(splits));
  launch_tile_kernel(q, d.trans_a, d.trans_b, aligned, tk, grid, device, s);
  PSVAE_LAUNCH(rt::grid_for(d.M * d.N, device), rt::kBlockThreads, 0, s, splitk_reduce_kernel)
  (q, static_cast<int>(splits));
  return true;
}

// The tile kernel for a problem, given the one asked for (`want`: Own, Wgmma or WgmmaTma). The
// sm_90a kernels take bf16 with every 16-byte chunk aligned (they have no element-load path) on a
// device that can run them; WgmmaTma also needs tensor maps the driver accepts (else it runs as
// Wgmma). Anything else runs on Own. WgmmaTma's schedule (PSVAE_GEMM_TMA_SCHEDULE) is read here,
// once per call, and sets its tile width.
template <class T>
TileKernel choose_tile_kernel(const GemmParams<T>& p, const GemmDesc& d, bool aligned,
                              GemmBackend want, int device) {
  const TileKernel own{GemmBackend::Own, kBN, 2};
  if constexpr (!std::is_same<T, bf16_t>::value) {
    return own;
  } else {
    if (!aligned || want == GemmBackend::Own || !wgmma_available(device)) return own;
    if (want == GemmBackend::WgmmaTma && wgmma_tma_available(device)) {
      GemmParams<bf16_t> q = p;
      q.M = d.M;
      const TmaSchedule sched = tma_schedule();
      if (wgmma_tma_fits(q, d.trans_a, d.trans_b, d.batch, sched))
        return TileKernel{GemmBackend::WgmmaTma, tma_tile_n(sched), 1, sched};
    }
    return TileKernel{GemmBackend::Wgmma, kBN, 2};
  }
}

// Runs the problem on our tile kernels; returns the one that ran (choose_tile_kernel).
template <class T>
GemmBackend run_tiles(const GemmDesc& d, int device, cudaStream_t s, GemmBackend want) {
  GemmParams<T> p{};
  p.A = static_cast<const T*>(d.A);
  p.B = static_cast<const T*>(d.B);
  p.C = static_cast<T*>(d.C);
  p.bias = static_cast<const T*>(d.bias);
  p.aux = static_cast<T*>(d.aux);
  p.N = d.N;
  p.K = d.K;
  p.lda = d.lda;
  p.ldb = d.ldb;
  p.ldc = d.ldc;
  p.stride_a = d.stride_a;
  p.stride_b = d.stride_b;
  p.stride_c = d.stride_c;
  p.alpha = d.alpha;
  p.beta = d.beta;
  p.epi = kernel_epi(d.epilogue);
  p.partial = nullptr;
  p.k_split = 0;
  if (p.epi != kEpiBiasGelu && p.epi != kEpiDGelu) p.aux = nullptr;
  // bf16 pairs: col is even, so C + row * ldc + col is 4-byte aligned when C is, ldc is even and
  // (for batch entries) stride_c is even.
  p.pair_store =
      aligned_to(d.C, 2 * sizeof(T)) && d.ldc % 2 == 0 && (d.batch <= 1 || d.stride_c % 2 == 0);
  // cp.async needs every 16-byte chunk aligned: base pointers, leading dims and batch strides in
  // multiples of 8 elements.
  const bool aligned = aligned_to(d.A, 16) && aligned_to(d.B, 16) && d.lda % 8 == 0 &&
                       d.ldb % 8 == 0 &&
                       (d.batch <= 1 || (d.stride_a % 8 == 0 && d.stride_b % 8 == 0));
  const int64_t kMaxGrid = 65535;
  const TileKernel tk = choose_tile_kernel(p, d, aligned, want, device);
  const int64_t n_tiles = (d.N + tk.tile_n - 1) / tk.tile_n;
  if (n_tiles > kMaxGrid) throw std::invalid_argument("gemm: N too large for the own kernel");
  if (std::is_same<T, bf16_t>::value && run_split_k(p, d, tk, aligned, device, s)) return tk.kernel;
  const int64_t rows_per_launch = kMaxGrid * kBM;
  for (int64_t b0 = 0; b0 < d.batch; b0 += kMaxGrid) {
    const int64_t nb = std::min(kMaxGrid, d.batch - b0);
    for (int64_t r0 = 0; r0 < d.M; r0 += rows_per_launch) {
      GemmParams<T> q = p;
      q.M = std::min(rows_per_launch, d.M - r0);
      q.A = p.A + b0 * d.stride_a + (d.trans_a ? r0 : r0 * d.lda);
      q.B = p.B + b0 * d.stride_b;
      q.C = p.C + b0 * d.stride_c + r0 * d.ldc;
      if (q.aux) q.aux = p.aux + b0 * d.stride_c + r0 * d.ldc;
      const dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>((q.M + kBM - 1) / kBM),
                      static_cast<unsigned>(nb));
      launch_tile_kernel(q, d.trans_a, d.trans_b, aligned, tk, grid, device, s);
    }
  }
  return tk.kernel;
}

template <class T>
void bias_grad(const GemmDesc& d, int device, cudaStream_t s) {
  T* out = static_cast<T*>(d.bias_grad);
  switch (d.epilogue) {
    case Epilogue::DGeluBGrad:  // sum over the rows of C (already written by the GEMM)
      column_sums<T>(static_cast<const T*>(d.C), d.M, d.N, d.ldc, 1, out, device, s);
      break;
    case Epilogue::BGradA:  // sum over k of op(A)[m, k]: A stored (M, K) or, transposed, (K, M)
      column_sums<T>(static_cast<const T*>(d.A), d.K, d.M, d.trans_a ? d.lda : 1,
                     d.trans_a ? 1 : d.lda, out, device, s);
      break;
    case Epilogue::BGradB:  // sum over k of op(B)[k, n]: B stored (K, N) or, transposed, (N, K)
      column_sums<T>(static_cast<const T*>(d.B), d.K, d.N, d.trans_b ? 1 : d.ldb,
                     d.trans_b ? d.ldb : 1, out, device, s);
      break;
    default: break;
  }
}

template <class T>
GemmBackend own(const GemmDesc& d, int device, cudaStream_t s, GemmBackend want) {
  const GemmBackend ran =
      d.M > 0 && d.N > 0 && d.batch > 0 ? run_tiles<T>(d, device, s, want) : GemmBackend::Own;
  bias_grad<T>(d, device, s);
  return ran;
}

}  // namespace

bool gemm_wgmma_available(int device) { return tile::wgmma_available(device); }
bool gemm_wgmma_tma_available(int device) { return tile::wgmma_tma_available(device); }

GemmBackend gemm_own(const GemmDesc& d, int device, void* stream, GemmBackend want) {
  rt::DeviceGuard guard(device);
  cudaStream_t s = stream ? static_cast<cudaStream_t>(stream) : rt::stream(device);
  const GemmBackend ran =
      d.dtype == DType::BF16 ? own<bf16_t>(d, device, s, want) : own<float>(d, device, s, want);
  PSVAE_CUDA_CHECK(cudaGetLastError());
  return ran;
}

}  // namespace psvae::kernels::cuda::detail
