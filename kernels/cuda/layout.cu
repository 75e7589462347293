// CUDA kernels of the layout family, with the semantics of kernels/cpu/layout.cpp:
//   permute        any rank, any dtype (raw elements of 2, 4 or 8 bytes). The dims are first
//                  reduced (size-1 dims dropped, dims adjacent in both tensors merged). If the
//                  last dim stays last, each output row gathers contiguous runs (16-byte units when
//                  the run allows): (B,T,H,d) -> (B,H,T,d) is this case. If the last dim moves,
//                  a 32x33 shared-memory tile transposes the input's last dim with the output's,
//                  so both the reads and the writes are coalesced.
//   concat         one strided copy per input into its column range of the output.
//   slice          one strided copy (gather) of the window.
//   pad            one pass over the output: each element is a copy or the fill value.
//   embedding      row gather, 16-byte units when D allows.
//   embedding_bwd  gtable[v] = sum of gy rows with id v, in token order, in double: the (id, token)
//                  keys are sorted (bitonic network), each id's run is found, and one thread per
//                  (v, column) adds its run in order. No atomics on floats: bit-identical runs, and
//                  the same order and accumulator as the CPU kernel (so f32/f64 results equal the
//                  CPU's bit for bit).
// Out-of-range ids throw std::out_of_range as the CPU kernel does: the kernels record the first bad
// position in a device word (integer atomicMin, deterministic), which the host reads back (one
// blocking copy per embedding call) before returning.
// Element types: permute/concat/slice/pad move raw bytes, so every dtype works (pad fills f32, f64,
// bf16, i32, i64); embedding moves rows of any dtype; embedding_bwd sums f32, bf16, f64.
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/op_table.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda {

namespace {

namespace rt = ::psvae::cuda;
using namespace detail;  // the shared helpers of elementwise_common.cuh

constexpr int kR = kMaxRank;

// Index division: detail::Div, make_div and divide (elementwise_common.cuh), FastDiv32's multiply-
// high and shift when the launch's k32 says every dividend is below 2^31. A generic strided element
// decodes up to 5 coordinates, which in 64-bit divisions would cost more than its memory time.

// ---- raw units ----------------------------------------------------------------------------------
// Data movement copies bytes: a unit of 2, 4, 8 or 16 bytes is one load/store instruction.
template <int B>
struct UnitOf;
template <>
struct UnitOf<2> {
  using type = uint16_t;
};
template <>
struct UnitOf<4> {
  using type = uint32_t;
};
template <>
struct UnitOf<8> {
  using type = unsigned long long;
};
template <>
struct UnitOf<16> {
  using type = uint4;
};

template <class Fn>
void by_unit(size_t bytes, const char* op, Fn&& fn) {
  switch (bytes) {
    case 2: fn(UnitOf<2>::type{}); return;
    case 4: fn(UnitOf<4>::type{}); return;
    case 8: fn(UnitOf<8>::type{}); return;
    case 16: fn(UnitOf<16>::type{}); return;
    default: unsupported(op, "elements of " + std::to_string(bytes) + " bytes");
  }
}

bool aligned_to(const void* p, size_t u) { return reinterpret_cast<uintptr_t>(p) % u == 0; }

void copy_bytes(void* dst, const void* src, size_t n, cudaStream_t s) {
  if (n) PSVAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, s));
}

// ---- strided copy (permute with the last dim kept, slice, concat)
// ------------------------------ dst[i_0 * dstr_0 + ... ] = src[i_0 * sstr_0 + ...] over the index
// space dim[0..rank), innermost last, all in units. One thread per unit (grid-stride): a unit is
// read once and written once, so the kernel moves 2 x bytes, the floor for a copy.
struct CopyDesc {
  int rank = 1;
  int64_t n = 0;  // units in the index space
  Div dim[kR];
  int64_t sstr[kR] = {}, dstr[kR] = {};
};

template <class U>
__global__ void __launch_bounds__(rt::kBlockThreads)
    strided_copy_kernel(const U* __restrict__ src, U* __restrict__ dst, CopyDesc c, bool k32) {
  for (int64_t u = rt::grid_index(); u < c.n; u += rt::grid_stride()) {
    int64_t rest = u, so = 0, dof = 0;
    // Innermost coordinate first; the unrolled loop keeps the descriptor in parameter space
    // (a dynamically indexed parameter array would be copied to local memory).
#pragma unroll
    for (int d = kR - 1; d > 0; --d) {
      if (d < c.rank) {
        const int64_t q = divide(rest, c.dim[d], k32);
        const int64_t i = rest - q * c.dim[d].d;
        so += i * c.sstr[d];
        dof += i * c.dstr[d];
        rest = q;
      }
    }
    so += rest * c.sstr[0];  // rest < dim[0] because u < n
    dof += rest * c.dstr[0];
    dst[dof] = src[so];
  }
}

// A strided index space in elements, outermost dim first.
struct Strided {
  std::vector<int64_t> dim, sstr, dstr;
};

// Drops size-1 dims and merges a dim into the next inner one wherever both tensors step over it as
// one run of the inner dim: fewer coordinates to decode, longer contiguous runs to vectorise.
Strided coalesce(const Strided& s) {
  Strided r;
  for (size_t d = 0; d < s.dim.size(); ++d) {
    if (s.dim[d] == 1) continue;
    if (!r.dim.empty() && r.sstr.back() == s.dim[d] * s.sstr[d] &&
        r.dstr.back() == s.dim[d] * s.dstr[d]) {
      r.dim.back() *= s.dim[d];
      r.sstr.back() = s.sstr[d];
      r.dstr.back() = s.dstr[d];
    } else {
      r.dim.push_back(s.dim[d]);
      r.sstr.push_back(s.sstr[d]);
      r.dstr.push_back(s.dstr[d]);
    }
  }
  if (r.dim.empty()) r = Strided{{1}, {1}, {1}};
  return r;
}

// Copies the strided view s of es-byte elements from src to dst (device pointers) on stream st.
void strided_copy(const char* src, char* dst, const Strided& view, size_t es, const char* op,
                  cudaStream_t st, int dev) {
  Strided s = coalesce(view);
  int64_t n = 1;
  for (int64_t d : s.dim) n *= d;
  if (n == 0) return;
  const int R = static_cast<int>(s.dim.size());
  if (R > kR) unsupported(op, "more than " + std::to_string(kR) + " dims");
  // One contiguous run on both sides: the driver's device copy (the copy ceiling itself).
  if (R == 1 && s.sstr[0] == 1 && s.dstr[0] == 1) {
    copy_bytes(dst, src, static_cast<size_t>(n) * es, st);
    return;
  }
  // The widest unit that divides the innermost run, every outer stride and both addresses; only
  // when the innermost dim is contiguous on both sides.
  size_t U = es;
  if (s.sstr[R - 1] == 1 && s.dstr[R - 1] == 1) {
    for (size_t cand : {size_t{16}, size_t{8}, size_t{4}}) {
      if (cand <= es) break;
      bool ok = (static_cast<size_t>(s.dim[R - 1]) * es) % cand == 0 && aligned_to(src, cand) &&
                aligned_to(dst, cand);
      for (int d = 0; ok && d < R - 1; ++d)
        ok = (static_cast<size_t>(s.sstr[d]) * es) % cand == 0 &&
             (static_cast<size_t>(s.dstr[d]) * es) % cand == 0;
      if (ok) {
        U = cand;
        break;
      }
    }
  }
  CopyDesc c;
  c.rank = R;
  const int64_t k = static_cast<int64_t>(U / es);  // elements per unit
  c.n = n / k;
  for (int d = 0; d < R; ++d) {
    const bool inner = d == R - 1;
    c.dim[d] = make_div(inner ? s.dim[d] / k : s.dim[d]);
    // The innermost stride stays 1 (in units) when vectorised; outer strides divide exactly.
    c.sstr[d] = (inner && k > 1) ? 1 : s.sstr[d] / k;
    c.dstr[d] = (inner && k > 1) ? 1 : s.dstr[d] / k;
  }
  const bool k32 = c.n <= INT32_MAX;
  by_unit(U, op, [&](auto tag) {
    using Unit = decltype(tag);
    PSVAE_LAUNCH(rt::grid_for(c.n, dev), rt::kBlockThreads, 0, st, strided_copy_kernel<Unit>)
    (reinterpret_cast<const Unit*>(src), reinterpret_cast<Unit*>(dst), c, k32);
  });
}

// ---- permute, last dim moved: shared-memory tile transpose
// -------------------------------------- The input's last dim l (stride 1 in x) and the input dim a
// that becomes the output's last (stride 1 in y) span a 32x32 tile; every other dim is a batch dim
// decoded per tile. A block of 32x8 threads reads the tile with lanes along l (coalesced in x),
// and after a barrier writes it with lanes along a (coalesced in y). The row pitch of 33 puts the
// column read tile[tx][k] of a warp in 32 distinct banks (for 4-byte elements).
constexpr int kTile = 32;
constexpr int kTileRows = 8;  // blockDim.y: each thread moves kTile / kTileRows = 4 elements

struct TileDesc {
  int64_t size_a = 0, size_l = 0;
  int64_t in_stride_a = 0;   // x stride of a; x stride of l is 1
  int64_t out_stride_l = 0;  // y stride of l; y stride of a is 1
  int64_t tiles_a = 0, tiles_l = 0, n_tiles = 0;
  int nb = 0;  // batch dims
  int64_t bdim[kR] = {}, bin[kR] = {}, bout[kR] = {};
};

template <class E>
__global__ void __launch_bounds__(kTile* kTileRows)
    transpose_tile_kernel(const E* __restrict__ x, E* __restrict__ y, TileDesc t) {
  __shared__ E tile[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t b = blockIdx.x; b < t.n_tiles; b += gridDim.x) {
    // Tile index -> (batch, tile along a, tile along l); 64-bit math once per 1024 elements.
    int64_t r = b;
    const int64_t l0 = (r % t.tiles_l) * kTile;
    r /= t.tiles_l;
    const int64_t a0 = (r % t.tiles_a) * kTile;
    r /= t.tiles_a;
    int64_t xb = 0, yb = 0;
#pragma unroll
    for (int d = kR - 1; d >= 0; --d) {
      if (d < t.nb) {
        const int64_t i = r % t.bdim[d];
        r /= t.bdim[d];
        xb += i * t.bin[d];
        yb += i * t.bout[d];
      }
    }
    // Read: tile[k][tx] = x(a0 + k, l0 + tx).
    for (int k = ty; k < kTile; k += kTileRows) {
      const int64_t a = a0 + k, l = l0 + tx;
      if (a < t.size_a && l < t.size_l) tile[k][tx] = x[xb + a * t.in_stride_a + l];
    }
    __syncthreads();  // the tile is written by other warps than those that read it below
    // Write: y(l0 + k, a0 + tx) = tile[tx][k]. Slots outside the tensor were not loaded and are
    // not stored (same bounds).
    for (int k = ty; k < kTile; k += kTileRows) {
      const int64_t l = l0 + k, a = a0 + tx;
      if (a < t.size_a && l < t.size_l) y[yb + l * t.out_stride_l + a] = tile[tx][k];
    }
    __syncthreads();  // the next tile overwrites `tile`
  }
}

// ---- permute ------------------------------------------------------------------------------------
// Reduces (shape, perm): size-1 dims dropped, and output dims that are consecutive input dims
// merged into one. in_dim/perm of rank R describe the same movement with fewer, larger dims.
void reduce_permutation(const Tensor& x, const std::vector<int>& perm, std::vector<int64_t>& in_dim,
                        std::vector<int>& out_perm) {
  const int r = x.rank();
  std::vector<int> compact(static_cast<size_t>(r), -1);  // input dim -> index among kept dims
  int kept = 0;
  for (int d = 0; d < r; ++d)
    if (x.size(d) != 1) compact[static_cast<size_t>(d)] = kept++;
  // Groups of kept input dims [first, last] (compact indices), in output order.
  std::vector<std::pair<int, int>> groups;
  std::vector<int64_t> gsize;
  for (int i = 0; i < r; ++i) {
    const int d = perm[static_cast<size_t>(i)];
    const int q = compact[static_cast<size_t>(d)];
    if (q < 0) continue;
    if (!groups.empty() && groups.back().second == q - 1) {
      groups.back().second = q;
      gsize.back() *= x.size(d);
    } else {
      groups.push_back({q, q});
      gsize.push_back(x.size(d));
    }
  }
  // Groups in input order give the reduced input dims; out_perm maps output group -> input group.
  const size_t G = groups.size();
  std::vector<int> order(G);
  for (size_t g = 0; g < G; ++g) order[g] = static_cast<int>(g);
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    return groups[static_cast<size_t>(a)].first < groups[static_cast<size_t>(b)].first;
  });
  std::vector<int> rank_of(G);
  in_dim.assign(G, 0);
  for (size_t k = 0; k < G; ++k) {
    rank_of[static_cast<size_t>(order[k])] = static_cast<int>(k);
    in_dim[k] = gsize[static_cast<size_t>(order[k])];
  }
  out_perm.assign(G, 0);
  for (size_t g = 0; g < G; ++g) out_perm[g] = rank_of[g];
}

void permute_cuda(const OpCall& c) {
  const Tensor &x = c.in.at(0), &y = c.out.at(0);
  const int r = x.rank();
  std::vector<int> perm(static_cast<size_t>(r));
  std::vector<bool> seen(static_cast<size_t>(r), false);
  bool ok = y.rank() == r && y.dtype() == x.dtype();
  for (int i = 0; ok && i < r; ++i) {
    const int64_t p = c.ints[static_cast<size_t>(i)];
    ok = p >= 0 && p < r && !seen[static_cast<size_t>(p)] &&
         y.size(i) == x.size(static_cast<int>(p));
    if (ok) {
      seen[static_cast<size_t>(p)] = true;
      perm[static_cast<size_t>(i)] = static_cast<int>(p);
    }
  }
  if (!ok)
    throw std::invalid_argument("permute: output " + y.str() + " is not a permutation of " +
                                x.str() + " by ints");
  if (y.numel() == 0) return;
  const size_t es = dtype_size(x.dtype());
  const char* src = static_cast<const char*>(x.raw_data());
  char* dst = static_cast<char*>(y.raw_data());
  std::vector<int64_t> dim;
  std::vector<int> p;
  reduce_permutation(x, perm, dim, p);
  const int R = static_cast<int>(dim.size());
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    if (R <= 1) {  // nothing moves
      copy_bytes(dst, src, x.nbytes(), s);
      return;
    }
    std::vector<int64_t> xstr(static_cast<size_t>(R)), ystr(static_cast<size_t>(R)),
        y_of_x(static_cast<size_t>(R));  // y stride of each reduced input dim
    xstr[static_cast<size_t>(R - 1)] = ystr[static_cast<size_t>(R - 1)] = 1;
    for (int d = R - 2; d >= 0; --d) {
      xstr[static_cast<size_t>(d)] =
          xstr[static_cast<size_t>(d + 1)] * dim[static_cast<size_t>(d + 1)];
      ystr[static_cast<size_t>(d)] = ystr[static_cast<size_t>(d + 1)] *
                                     dim[static_cast<size_t>(p[static_cast<size_t>(d + 1)])];
    }
    for (int i = 0; i < R; ++i)
      y_of_x[static_cast<size_t>(p[static_cast<size_t>(i)])] = ystr[static_cast<size_t>(i)];
    if (p[static_cast<size_t>(R - 1)] == R - 1) {
      // Last dim kept: y is gathered in output order from runs of the last dim.
      Strided v;
      for (int i = 0; i < R; ++i) {
        const size_t q = static_cast<size_t>(p[static_cast<size_t>(i)]);
        v.dim.push_back(dim[q]);
        v.sstr.push_back(xstr[q]);
        v.dstr.push_back(ystr[static_cast<size_t>(i)]);
      }
      strided_copy(src, dst, v, es, "permute", s, dev);
      return;
    }
    TileDesc t;
    const int a = p[static_cast<size_t>(R - 1)], l = R - 1;
    t.size_a = dim[static_cast<size_t>(a)];
    t.size_l = dim[static_cast<size_t>(l)];
    t.in_stride_a = xstr[static_cast<size_t>(a)];
    t.out_stride_l = y_of_x[static_cast<size_t>(l)];
    for (int d = 0; d < R; ++d) {
      if (d == a || d == l) continue;
      t.bdim[t.nb] = dim[static_cast<size_t>(d)];
      t.bin[t.nb] = xstr[static_cast<size_t>(d)];
      t.bout[t.nb] = y_of_x[static_cast<size_t>(d)];
      ++t.nb;
    }
    t.tiles_a = (t.size_a + kTile - 1) / kTile;
    t.tiles_l = (t.size_l + kTile - 1) / kTile;
    t.n_tiles = t.tiles_a * t.tiles_l;
    for (int d = 0; d < t.nb; ++d) t.n_tiles *= t.bdim[d];
    const unsigned grid = static_cast<unsigned>(
        std::min<int64_t>(t.n_tiles, static_cast<int64_t>(rt::sm_count(dev)) * 8));
    const dim3 block(kTile, kTileRows);
    by_unit(es, "permute", [&](auto tag) {
      using E = decltype(tag);
      if constexpr (sizeof(E) <= 8) {
        PSVAE_LAUNCH(grid, block, 0, s, transpose_tile_kernel<E>)
        (reinterpret_cast<const E*>(src), reinterpret_cast<E*>(dst), t);
      }
    });
  });
}

// ---- concat -------------------------------------------------------------------------------------
// y is (outer, row) with row = sum of the inputs' chunks (x_i.size(dim) * inner): input i is a
// strided copy of (outer, chunk_i) into columns [off_i, off_i + chunk_i) of every row.
void concat_cuda(const OpCall& c) {
  const Tensor& y = c.out.at(0);
  const int r = y.rank();
  const int64_t dim = c.ints[0];
  if (r == 0 || dim < 0 || dim >= r || c.in.empty())
    throw std::invalid_argument("concat: dim " + std::to_string(dim) + " for output " + y.str());
  int64_t along = 0;
  for (const Tensor& x : c.in) {
    bool ok = x.rank() == r && x.dtype() == y.dtype();
    for (int d = 0; ok && d < r; ++d) ok = d == dim || x.size(d) == y.size(d);
    if (!ok)
      throw std::invalid_argument("concat: input " + x.str() + " does not fit output " + y.str() +
                                  " along dim " + std::to_string(dim));
    along += x.size(static_cast<int>(dim));
  }
  if (along != y.size(static_cast<int>(dim)))
    throw std::invalid_argument("concat: inputs sum to " + std::to_string(along) + " along dim " +
                                std::to_string(dim) + ", output " + y.str());
  if (y.numel() == 0) return;
  const size_t es = dtype_size(y.dtype());
  const int64_t outer = y.shape().prod(0, static_cast<int>(dim));
  const int64_t row = y.shape().prod(static_cast<int>(dim), r);
  char* dst = static_cast<char*>(y.raw_data());
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    int64_t off = 0;
    for (const Tensor& x : c.in) {
      const int64_t chunk = x.shape().prod(static_cast<int>(dim), r);
      if (chunk > 0)
        strided_copy(static_cast<const char*>(x.raw_data()), dst + static_cast<size_t>(off) * es,
                     Strided{{outer, chunk}, {chunk, 1}, {row, 1}}, es, "concat", s, dev);
      off += chunk;
    }
  });
}

// ---- slice --------------------------------------------------------------------------------------
void slice_cuda(const OpCall& c) {
  const Tensor &x = c.in.at(0), &y = c.out.at(0);
  const int r = x.rank();
  bool ok = y.rank() == r && y.dtype() == x.dtype();
  for (int d = 0; ok && d < r; ++d) {
    const int64_t s0 = c.ints[static_cast<size_t>(d)];
    ok = s0 >= 0 && s0 + y.size(d) <= x.size(d);
  }
  if (!ok)
    throw std::invalid_argument("slice: output " + y.str() +
                                " at the starts in ints is not inside " + x.str());
  if (y.numel() == 0) return;
  const size_t es = dtype_size(x.dtype());
  const auto xstr = x.shape().strides();
  const auto ystr = y.shape().strides();
  Strided v;
  int64_t base = 0;
  for (int d = 0; d < r; ++d) {
    base += c.ints[static_cast<size_t>(d)] * xstr[static_cast<size_t>(d)];
    v.dim.push_back(y.size(d));
    v.sstr.push_back(xstr[static_cast<size_t>(d)]);
    v.dstr.push_back(ystr[static_cast<size_t>(d)]);
  }
  const char* src = static_cast<const char*>(x.raw_data()) + static_cast<size_t>(base) * es;
  char* dst = static_cast<char*>(y.raw_data());
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    if (r == 0)
      copy_bytes(dst, src, es, s);
    else
      strided_copy(src, dst, v, es, "slice", s, dev);
  });
}

// ---- pad ----------------------------------------------------------------------------------------
// y[i] = x[i - before] where that is inside x, else the value. One thread per output unit: reads
// x once, writes y once. Dims are merged into the next inner dim when that one is unpadded (an
// outer index i_d splits into i_d * S + i_inner, and i_d - b_d in [0, x_d) <=> merged - b_d * S in
// [0, x_d * S)), so NCHW padding of H and W decodes two coordinates per element.
struct PadDesc {
  int rank = 1;
  int64_t n = 0;  // output units
  Div ydim[kR];
  int64_t xdim[kR] = {}, before[kR] = {}, xstr[kR] = {};
};

template <class U>
__global__ void __launch_bounds__(rt::kBlockThreads)
    pad_kernel(const U* __restrict__ x, U* __restrict__ y, PadDesc p, U value, bool k32) {
  for (int64_t u = rt::grid_index(); u < p.n; u += rt::grid_stride()) {
    int64_t rest = u, off = 0;
    bool inside = true;
#pragma unroll
    for (int d = kR - 1; d >= 0; --d) {
      if (d < p.rank) {
        int64_t i = rest;
        if (d > 0) {
          const int64_t q = divide(rest, p.ydim[d], k32);
          i = rest - q * p.ydim[d].d;
          rest = q;
        }
        const int64_t xi = i - p.before[d];
        inside = inside && xi >= 0 && xi < p.xdim[d];
        off += xi * p.xstr[d];
      }
    }
    y[u] = inside ? x[off] : value;  // x is read only inside (off is meaningless outside)
  }
}

// The fill value's bytes as a dtype element.
std::vector<unsigned char> pad_value_bytes(DType dt, double v) {
  std::vector<unsigned char> b(dtype_size(dt));
  switch (dt) {
    case DType::F32: {
      const float f = static_cast<float>(v);
      std::memcpy(b.data(), &f, 4);
      break;
    }
    case DType::F64: std::memcpy(b.data(), &v, 8); break;
    case DType::BF16: {
      const __nv_bfloat16 h = __float2bfloat16_rn(static_cast<float>(v));
      std::memcpy(b.data(), &h, 2);
      break;
    }
    case DType::I32: {
      const int32_t i = static_cast<int32_t>(v);
      std::memcpy(b.data(), &i, 4);
      break;
    }
    case DType::I64: {
      const int64_t i = static_cast<int64_t>(v);
      std::memcpy(b.data(), &i, 8);
      break;
    }
  }
  return b;
}

void pad_cuda(const OpCall& c) {
  const Tensor &x = c.in.at(0), &y = c.out.at(0);
  const int r = y.rank();
  bool ok = x.rank() == r && x.dtype() == y.dtype();
  for (int d = 0; ok && d < r; ++d) {
    const int64_t b = c.ints[static_cast<size_t>(d)];
    ok = b >= 0 && b + x.size(d) <= y.size(d);
  }
  if (!ok)
    throw std::invalid_argument("pad: input " + x.str() + " does not fit output " + y.str() +
                                " at the offsets in ints");
  if (y.numel() == 0) return;
  const size_t es = dtype_size(y.dtype());
  const std::vector<unsigned char> val = pad_value_bytes(y.dtype(), c.reals[0]);
  const char* src = static_cast<const char*>(x.raw_data());
  char* dst = static_cast<char*>(y.raw_data());
  if (r == 0) {
    launch_on(y.device(), [&](cudaStream_t s, int) { copy_bytes(dst, src, es, s); });
    return;
  }
  // Merge, innermost first: dims as (y extent, x extent, before), outermost first.
  struct D3 {
    int64_t y, x, b;
  };
  std::vector<D3> dims;  // built innermost first, reversed below
  for (int d = r - 1; d >= 0; --d) {
    const D3 cur{y.size(d), x.size(d), c.ints[static_cast<size_t>(d)]};
    if (!dims.empty() && dims.back().b == 0 && dims.back().x == dims.back().y) {
      const int64_t S = dims.back().y;
      dims.back() = D3{cur.y * S, cur.x * S, cur.b * S};
    } else {
      dims.push_back(cur);
    }
  }
  std::reverse(dims.begin(), dims.end());
  const int R = static_cast<int>(dims.size());
  if (R > kR) unsupported("pad", "more than " + std::to_string(kR) + " dims");
  // Units: the innermost extents and offset must split into whole units, addresses aligned.
  size_t U = es;
  {
    const D3& in = dims.back();
    for (size_t cand : {size_t{16}, size_t{8}, size_t{4}}) {
      if (cand <= es) break;
      const int64_t k = static_cast<int64_t>(cand / es);
      if (in.y % k == 0 && in.x % k == 0 && in.b % k == 0 && aligned_to(src, cand) &&
          aligned_to(dst, cand)) {
        U = cand;
        break;
      }
    }
  }
  const int64_t k = static_cast<int64_t>(U / es);
  dims.back().y /= k;
  dims.back().x /= k;
  dims.back().b /= k;
  PadDesc p;
  p.rank = R;
  p.n = y.numel() / k;
  int64_t stride = 1;
  for (int d = R - 1; d >= 0; --d) {
    const D3& e = dims[static_cast<size_t>(d)];
    p.ydim[d] = make_div(e.y);
    p.xdim[d] = e.x;
    p.before[d] = e.b;
    p.xstr[d] = stride;
    stride *= e.x;
  }
  // The fill pattern of one unit: k copies of the element's bytes.
  unsigned char pattern[16] = {};
  for (int64_t i = 0; i < k; ++i)
    std::memcpy(pattern + static_cast<size_t>(i) * es, val.data(), es);
  const bool k32 = p.n <= INT32_MAX;
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    by_unit(U, "pad", [&](auto tag) {
      using Unit = decltype(tag);
      Unit v;
      std::memcpy(&v, pattern, sizeof(Unit));
      PSVAE_LAUNCH(rt::grid_for(p.n, dev), rt::kBlockThreads, 0, s, pad_kernel<Unit>)
      (reinterpret_cast<const Unit*>(src), reinterpret_cast<Unit*>(dst), p, v, k32);
    });
  });
}

// ---- embedding ids ------------------------------------------------------------------------------
// Out-of-range ids: every kernel that reads ids records the smallest bad position with an integer
// atomicMin into a device word preset to ~0 (the result does not depend on thread order).
using Word = unsigned long long;
constexpr Word kNoBad = ~Word{0};

template <class Fn>
void by_id_type(DType dt, const char* op, Fn&& fn) {
  switch (dt) {
    case DType::I64: fn(int64_t{}); return;
    case DType::I32: fn(int32_t{}); return;
    default:
      throw std::invalid_argument(std::string(op) + ": ids must be i64 or i32, got " +
                                  dtype_name(dt));
  }
}

template <class Id>
__global__ void check_ids_kernel(const Id* __restrict__ ids, int64_t n, int64_t rows, Word* bad) {
  for (int64_t i = rt::grid_index(); i < n; i += rt::grid_stride()) {
    const int64_t id = static_cast<int64_t>(ids[i]);
    if (id < 0 || id >= rows) atomicMin(bad, static_cast<Word>(i));
  }
}

// A device word set to kNoBad, for the kernels' atomicMin.
Tensor bad_word(const Device& d, cudaStream_t s) {
  Tensor w = Tensor::empty({1}, DType::I64, d);
  PSVAE_CUDA_CHECK(cudaMemsetAsync(w.raw_data(), 0xFF, sizeof(Word), s));
  return w;
}

// Reads the bad-position word back (blocking: the op must throw before it returns, as the CPU
// kernel does) and throws std::out_of_range with the CPU kernel's message.
void throw_if_bad_id(const char* op, const Tensor& bad, const Tensor& ids, int64_t rows,
                     cudaStream_t s) {
  Word pos = 0;
  PSVAE_CUDA_CHECK(cudaMemcpyAsync(&pos, bad.raw_data(), sizeof pos, cudaMemcpyDeviceToHost, s));
  PSVAE_CUDA_CHECK(cudaStreamSynchronize(s));
  if (pos == kNoBad) return;
  int64_t id = 0;
  const size_t es = dtype_size(ids.dtype());
  const char* at = static_cast<const char*>(ids.raw_data()) + static_cast<size_t>(pos) * es;
  if (es == 8) {
    PSVAE_CUDA_CHECK(cudaMemcpyAsync(&id, at, 8, cudaMemcpyDeviceToHost, s));
    PSVAE_CUDA_CHECK(cudaStreamSynchronize(s));
  } else {
    int32_t i32 = 0;
    PSVAE_CUDA_CHECK(cudaMemcpyAsync(&i32, at, 4, cudaMemcpyDeviceToHost, s));
    PSVAE_CUDA_CHECK(cudaStreamSynchronize(s));
    id = i32;
  }
  throw std::out_of_range(std::string(op) + ": id " + std::to_string(id) + " at position " +
                          std::to_string(pos) + " is outside [0, " + std::to_string(rows) +
                          ") (table has " + std::to_string(rows) + " rows)");
}

// ---- embedding ----------------------------------------------------------------------------------
// y[i, :] = table[ids[i], :], one thread per unit of a row (16 bytes when the row allows): reads
// and writes are contiguous along each row; the id is a broadcast load shared by a row's threads.
template <class U, class Id>
__global__ void __launch_bounds__(rt::kBlockThreads)
    embedding_kernel(const U* __restrict__ table, const Id* __restrict__ ids, U* __restrict__ y,
                     int64_t n, Div row, int64_t rows, Word* bad, bool k32) {
  for (int64_t u = rt::grid_index(); u < n; u += rt::grid_stride()) {
    const int64_t i = divide(u, row, k32);
    const int64_t j = u - i * row.d;
    const int64_t id = static_cast<int64_t>(ids[i]);
    if (id < 0 || id >= rows) {  // recorded once per row; the row is left unwritten (we throw)
      if (j == 0) atomicMin(bad, static_cast<Word>(i));
      continue;
    }
    y[u] = table[id * row.d + j];
  }
}

void embedding_cuda(const OpCall& c) {
  const Tensor &table = c.in.at(0), &ids = c.in.at(1), &y = c.out.at(0);
  if (table.rank() != 2 || y.dtype() != table.dtype() || y.rank() != ids.rank() + 1 ||
      y.numel() != ids.numel() * table.size(1))
    throw std::invalid_argument("embedding: table " + table.str() + ", ids " + ids.str() +
                                " and output " + y.str() + " do not match");
  const int64_t rows = table.size(0), D = table.size(1), n = ids.numel();
  if (n == 0) return;
  const size_t es = dtype_size(table.dtype());
  const char* src = static_cast<const char*>(table.raw_data());
  char* dst = static_cast<char*>(y.raw_data());
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    Tensor bad = bad_word(y.device(), s);
    Word* badp = static_cast<Word*>(bad.raw_data());
    by_id_type(ids.dtype(), "embedding", [&](auto idtag) {
      using Id = decltype(idtag);
      const Id* idp = static_cast<const Id*>(ids.raw_data());
      if (D == 0) {  // nothing to copy; ids are still checked
        PSVAE_LAUNCH(rt::grid_for(n, dev), rt::kBlockThreads, 0, s, check_ids_kernel<Id>)
        (idp, n, rows, badp);
        return;
      }
      size_t U = es;
      for (size_t cand : {size_t{16}, size_t{8}, size_t{4}}) {
        if (cand <= es) break;
        if ((static_cast<size_t>(D) * es) % cand == 0 && aligned_to(src, cand) &&
            aligned_to(dst, cand)) {
          U = cand;
          break;
        }
      }
      const int64_t row_units = static_cast<int64_t>(static_cast<size_t>(D) * es / U);
      const int64_t units = n * row_units;
      by_unit(U, "embedding", [&](auto tag) {
        using Unit = decltype(tag);
        PSVAE_LAUNCH(rt::grid_for(units, dev), rt::kBlockThreads, 0, s, embedding_kernel<Unit, Id>)
        (reinterpret_cast<const Unit*>(src), idp, reinterpret_cast<Unit*>(dst), units,
         make_div(row_units), rows, badp, units <= INT32_MAX);
      });
    });
    PSVAE_CUDA_CHECK(cudaGetLastError());
    throw_if_bad_id("embedding", bad, ids, rows, s);
  });
}

// ---- embedding_bwd ------------------------------------------------------------------------------
// 1. keys[i] = id << 32 | i for the n tokens, ~0 (sorts last) for the padding up to a power of two
//    and for bad ids (recorded; the host throws before step 2).
// 2. Bitonic sort of the keys, ascending. A key holds its token index, so keys are distinct and
//    every id's tokens come out in token order whatever the network does: the CPU's stable
//    counting sort, deterministically. Stages with compare distance j < kSeg / 2 run in shared
//    memory, a block per kSeg keys; larger distances are one global pass each.
//    n = 65536: 21 launches, ~1 MB of keys, microseconds against gy's n * D reads.
// 3. run[v] = [first, last + 1) of id v among the sorted keys (0, 0 when v has no token), found at
//    the run boundaries: one writer per entry.
// 4. gtable[v, d] = sum over the run of gy[token, d] in token order, accumulated in double as the
//    CPU kernel does. One thread per (v, d): a warp reads 32 consecutive columns of a gy row.
constexpr int kSortThreads = 1024;
constexpr int kSeg = 2 * kSortThreads;  // keys per shared-memory block (16 KiB)
constexpr Word kSentinel = ~Word{0};

template <class Id>
__global__ void embedding_keys_kernel(const Id* __restrict__ ids, int64_t n, int64_t npad,
                                      int64_t rows, Word* __restrict__ keys, Word* bad) {
  for (int64_t i = rt::grid_index(); i < npad; i += rt::grid_stride()) {
    Word key = kSentinel;
    if (i < n) {
      const int64_t id = static_cast<int64_t>(ids[i]);
      if (id < 0 || id >= rows)
        atomicMin(bad, static_cast<Word>(i));
      else
        key = (static_cast<Word>(id) << 32) | static_cast<Word>(i);
    }
    keys[i] = key;
  }
}

// Compare-exchange of the pair (lo, lo + j) for stage (k, j): ascending where bit k of the
// (global) index is clear, as in the textbook network. Pair t of a stage: insert a 0 bit at j.
__device__ __forceinline__ uint64_t pair_lo(uint64_t t, uint64_t j) {
  return ((t & ~(j - 1)) << 1) | (t & (j - 1));
}

// Stages k in [k_first, k_last] (powers of two), j from min(k / 2, kSeg / 2) down to 1, on the kSeg
// keys of this block, in shared memory.
__global__ void __launch_bounds__(kSortThreads)
    bitonic_local_kernel(Word* __restrict__ keys, uint64_t k_first, uint64_t k_last) {
  __shared__ Word sh[kSeg];
  const uint64_t base = static_cast<uint64_t>(blockIdx.x) * kSeg;
  const unsigned t = threadIdx.x;
  sh[t] = keys[base + t];
  sh[t + kSortThreads] = keys[base + t + kSortThreads];
  __syncthreads();
  for (uint64_t k = k_first; k <= k_last; k <<= 1) {
    for (uint64_t j = min(k >> 1, static_cast<uint64_t>(kSeg >> 1)); j > 0; j >>= 1) {
      const uint64_t lo = pair_lo(t, j), hi = lo + j;
      const bool asc = ((base + lo) & k) == 0;
      const Word a = sh[lo], b = sh[hi];
      if ((a > b) == asc) {
        sh[lo] = b;
        sh[hi] = a;
      }
      __syncthreads();  // the next stage pairs other threads' slots
    }
  }
  keys[base + t] = sh[t];
  keys[base + t + kSortThreads] = sh[t + kSortThreads];
}

// One stage (k, j) with j >= kSeg over all npad keys.
__global__ void __launch_bounds__(rt::kBlockThreads)
    bitonic_global_kernel(Word* __restrict__ keys, uint64_t npad, uint64_t k, uint64_t j) {
  for (int64_t t = rt::grid_index(); t < static_cast<int64_t>(npad / 2); t += rt::grid_stride()) {
    const uint64_t lo = pair_lo(static_cast<uint64_t>(t), j), hi = lo + j;
    const bool asc = (lo & k) == 0;
    const Word a = keys[lo], b = keys[hi];
    if ((a > b) == asc) {
      keys[lo] = b;
      keys[hi] = a;
    }
  }
}

__global__ void __launch_bounds__(rt::kBlockThreads)
    embedding_runs_kernel(const Word* __restrict__ keys, int64_t n, int64_t* __restrict__ first,
                          int64_t* __restrict__ end) {
  for (int64_t s = rt::grid_index(); s < n; s += rt::grid_stride()) {
    const Word id = keys[s] >> 32;
    if (s == 0 || (keys[s - 1] >> 32) != id) first[id] = s;
    if (s == n - 1 || (keys[s + 1] >> 32) != id) end[id] = s + 1;
  }
}

constexpr int kSumThreads = 128;  // columns per block

template <class T>
__global__ void __launch_bounds__(kSumThreads)
    embedding_sum_kernel(const T* __restrict__ gy, const Word* __restrict__ keys,
                         const int64_t* __restrict__ first, const int64_t* __restrict__ end,
                         T* __restrict__ gt, int64_t rows, int64_t D) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kSumThreads + threadIdx.x;
  if (d >= D) return;  // no barrier below
  for (int64_t v = blockIdx.y; v < rows; v += gridDim.y) {
    double acc = 0;
    const int64_t s0 = first[v], s1 = end[v];
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t tok = static_cast<int64_t>(keys[s] & 0xFFFFFFFFull);
      acc += static_cast<double>(Math<T>::load(gy[tok * D + d]));
    }
    if constexpr (std::is_same_v<T, double>)
      gt[v * D + d] = acc;
    else
      gt[v * D + d] = Math<T>::store(static_cast<float>(acc));  // f32: the CPU's rounding
  }
}

uint64_t next_pow2(uint64_t v) {
  uint64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

void embedding_bwd_cuda(const OpCall& c) {
  const Tensor &gy = c.in.at(0), &ids = c.in.at(1), &gt = c.out.at(0);
  if (gt.rank() != 2 || gy.dtype() != gt.dtype() || gy.rank() != ids.rank() + 1 ||
      gy.numel() != ids.numel() * gt.size(1))
    throw std::invalid_argument("embedding_bwd: gy " + gy.str() + ", ids " + ids.str() +
                                " and gtable " + gt.str() + " do not match");
  const int64_t rows = gt.size(0), D = gt.size(1), n = ids.numel();
  if (n > INT32_MAX || rows > INT32_MAX)
    unsupported("embedding_bwd", "more than 2^31 - 1 ids or table rows");
  dispatch_float(gt.dtype(), "embedding_bwd", [&](auto tag) {
    using T = decltype(tag);
    by_id_type(ids.dtype(), "embedding_bwd", [&](auto idtag) {
      using Id = decltype(idtag);
      const Id* idp = static_cast<const Id*>(ids.raw_data());
      launch_on(gt.device(), [&](cudaStream_t s, int dev) {
        Tensor bad = bad_word(gt.device(), s);
        Word* badp = static_cast<Word*>(bad.raw_data());
        if (n == 0 || gt.numel() == 0) {
          if (n > 0)
            PSVAE_LAUNCH(rt::grid_for(n, dev), rt::kBlockThreads, 0, s, check_ids_kernel<Id>)
          (idp, n, rows, badp);
          PSVAE_CUDA_CHECK(cudaGetLastError());
          throw_if_bad_id("embedding_bwd", bad, ids, rows, s);
          if (gt.numel() > 0) PSVAE_CUDA_CHECK(cudaMemsetAsync(gt.raw_data(), 0, gt.nbytes(), s));
          return;
        }
        // 1. keys, checked before anything reads the table rows they name.
        const uint64_t npad = std::max<uint64_t>(kSeg, next_pow2(static_cast<uint64_t>(n)));
        Tensor keyt = Tensor::empty({static_cast<int64_t>(npad)}, DType::I64, gt.device());
        Word* keys = static_cast<Word*>(keyt.raw_data());
        PSVAE_LAUNCH(rt::grid_for(static_cast<int64_t>(npad), dev), rt::kBlockThreads, 0, s,
                     embedding_keys_kernel<Id>)
        (idp, n, static_cast<int64_t>(npad), rows, keys, badp);
        PSVAE_CUDA_CHECK(cudaGetLastError());
        throw_if_bad_id("embedding_bwd", bad, ids, rows, s);
        // 2. sort.
        const unsigned segs = static_cast<unsigned>(npad / kSeg);
        PSVAE_LAUNCH(segs, kSortThreads, 0, s, bitonic_local_kernel)(keys, 2, kSeg);
        for (uint64_t k = 2 * static_cast<uint64_t>(kSeg); k <= npad; k <<= 1) {
          for (uint64_t j = k >> 1; j >= static_cast<uint64_t>(kSeg); j >>= 1)
            PSVAE_LAUNCH(rt::grid_for(static_cast<int64_t>(npad / 2), dev), rt::kBlockThreads, 0, s,
                         bitonic_global_kernel)
          (keys, npad, k, j);
          PSVAE_LAUNCH(segs, kSortThreads, 0, s, bitonic_local_kernel)(keys, k, k);
        }
        // 3. runs.
        Tensor runs = Tensor::empty({2, rows}, DType::I64, gt.device());
        int64_t* first = static_cast<int64_t*>(runs.raw_data());
        int64_t* end = first + rows;
        PSVAE_CUDA_CHECK(cudaMemsetAsync(first, 0, runs.nbytes(), s));
        PSVAE_LAUNCH(rt::grid_for(n, dev), rt::kBlockThreads, 0, s, embedding_runs_kernel)
        (keys, n, first, end);
        // 4. sums.
        const dim3 grid(static_cast<unsigned>((D + kSumThreads - 1) / kSumThreads),
                        static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
        PSVAE_LAUNCH(grid, kSumThreads, 0, s, embedding_sum_kernel<T>)
        (static_cast<const T*>(gy.raw_data()), keys, first, end, static_cast<T*>(gt.raw_data()),
         rows, D);
      });
    });
  });
}

}  // namespace

void register_layout(OpTable& t) {
  t[Op::permute].cuda = &permute_cuda;
  t[Op::concat].cuda = &concat_cuda;
  t[Op::slice].cuda = &slice_cuda;
  t[Op::pad].cuda = &pad_cuda;
  t[Op::embedding].cuda = &embedding_cuda;
  t[Op::embedding_bwd].cuda = &embedding_bwd_cuda;
}

}  // namespace psvae::kernels::cuda
