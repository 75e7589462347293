// CUDA kernels of the elementwise family that broadcast, as kernels/cpu/elementwise.cpp:
//   add, sub, mul, div  (a, b) -> y, NumPy broadcasting of both inputs to y's shape
//   where               (cond, a, b) -> cond != 0 ? a : b; cond of any dtype (bf16 by its bits,
//                       so -0 is false, as the CPU), a, b and y one float dtype
//   expand              x -> x broadcast to y's shape; any dtype (raw 2-, 4- or 8-byte words)
// (sum_to, the adjoint of expand, is a reduction and lives in reduce.cu.)
// Types: f32 and bf16 (computed in f32, stored round-to-nearest-even) and f64. Each output element
// is one IEEE operation of its inputs, so f32 and f64 results equal the CPU's bit for bit.
//
// Indexing. As on the CPU, every input is addressed through its own strides over y's index space
// (0 on broadcast dims), size-1 dims are dropped and adjacent dims merged where every input stays
// contiguous across them, so the DiT cases collapse:
//   (N, T, D) op (D)       -> 2 dims (N*T, D), strides a (D, 1), b (0, 1)
//   (N, T, D) op (N, 1, D) -> 3 dims (N, T, D), strides a (T*D, D, 1), b (D, 0, 1)
// The merged layout travels to the kernel by value (Index, ~230 bytes of kernel parameters).
// Each thread handles packs of V elements along the last merged dim (16-byte loads and stores
// when the last dim is a multiple of V and the pointers are aligned; V = 1 otherwise) and splits
// the pack index into coordinates with FastDiv32 (multiply-high and shift, no division), one per
// merged dim but the first: 1 for the (D) bias case, 2 for (N, 1, D). An input whose stride along
// the last dim is 0 is read once per pack and repeated.
// Equal shapes and one-element operands keep the plain vectorised kernel (no index arithmetic).
#include <cuda_bf16.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/broadcast_layout.h"
#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/op_table.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda {

namespace {

namespace rt = ::psvae::cuda;

using namespace detail;  // the shared helpers of elementwise_common.cuh

// ---- the operations --------------------------------------------------------------------------
struct AddOp {
  template <class A>
  __device__ A operator()(A a, A b) const {
    return a + b;
  }
};
struct SubOp {
  template <class A>
  __device__ A operator()(A a, A b) const {
    return a - b;
  }
};
struct MulOp {
  template <class A>
  __device__ A operator()(A a, A b) const {
    return a * b;
  }
};
struct DivOp {  // IEEE division: nvcc's default -prec-div=true, as long as no fast-math flag
  template <class A>
  __device__ A operator()(A a, A b) const {
    return a / b;
  }
};

// where's truth value, per condition storage type; bf16 arrives as its raw bits (uint16_t) so
// that -0 (0x8000) counts as zero, as psvae::bf16 on the CPU. NaN is nonzero everywhere.
__device__ __forceinline__ bool nonzero(float v) { return v != 0.0f; }
__device__ __forceinline__ bool nonzero(double v) { return v != 0.0; }
__device__ __forceinline__ bool nonzero(uint16_t bf16_bits) { return (bf16_bits & 0x7fffu) != 0; }
__device__ __forceinline__ bool nonzero(int32_t v) { return v != 0; }
__device__ __forceinline__ bool nonzero(int64_t v) { return v != 0; }

// ---- the merged index space --------------------------------------------------------------------
// The host side is kernels::make_broadcast (kernels/broadcast_layout.h, shared with the CPU):
// operand 0 the output, input k at operand k + 1. Device side: the same in reverse order (entry 0
// is the innermost dim), inputs only, with the dims as dividers and the innermost counted in
// packs of V. Reversed so that the kernel's unrolled loop indexes the arrays with compile-time
// constants: a runtime index into a kernel parameter array makes nvcc copy the whole struct to
// local memory.
template <int N, class Div>
struct Index {
  using DivT = Div;
  int rank;
  Div div[kMaxRank];
  int64_t stride[N][kMaxRank];
};

void check_broadcast(const char* op, const Tensor& in, const Tensor& y) {
  if (!broadcasts_to(in.shape(), y.shape()))
    throw std::invalid_argument(std::string(op) + ": input " + in.shape().str() +
                                " does not broadcast to the output " + y.shape().str());
}

// Element offsets into each input of the first element of pack p. Coordinates come from the
// innermost dim outwards; the outermost needs no division (p < the product of the sizes).
template <int V, int N, class Div>
__device__ __forceinline__ void offsets(const Index<N, Div>& ix, typename Div::Index p,
                                        int64_t (&off)[N]) {
  using I = typename Div::Index;
#pragma unroll
  for (int k = 0; k < N; ++k) off[k] = 0;
  I q = p;
#pragma unroll
  for (int i = 0; i < kMaxRank; ++i) {
    if (i >= ix.rank) break;
    I r = q;
    if (i + 1 < ix.rank) {
      I qq;
      ix.div[i].divmod(q, qq, r);
      q = qq;
    }
    const int64_t pos = static_cast<int64_t>(r) * (i == 0 ? V : 1);  // element coordinate
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] += pos * ix.stride[k][i];
  }
}

// The V elements of one input that pack p needs, starting at element `off`: one element repeated
// when the input's stride along the last dim is 0; else V consecutive elements (the host enables
// V > 1 only when that stride is 1), by one 16-byte load when kPack (aligned: the host checked
// the pointer and that every stride is a multiple of V).
template <class T, int V, bool kPack>
__device__ __forceinline__ Pack<T, V> load_run(const T* p, int64_t off, int64_t last_stride) {
  Pack<T, V> r;
  if (V == 1 || last_stride == 0) {
    const T v = p[off];
#pragma unroll
    for (int k = 0; k < V; ++k) r.v[k] = v;
  } else if (kPack) {
    r = *reinterpret_cast<const Pack<T, V>*>(p + off);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) r.v[k] = p[off + k];
  }
  return r;
}

// ---- kernels -----------------------------------------------------------------------------------
// y = f(a, b) over n_packs packs of V elements, each input equal in shape to y or one element
// (flagged `bcast`: read once per thread and applied to every output). No index arithmetic.
template <class T, int V, class F>
__global__ void binary_kernel(const T* a, const T* b, T* y, int64_t n_packs, bool a_bcast,
                              bool b_bcast, F f) {
  using M = Math<T>;
  using A = typename M::Acc;
  using P = Pack<T, V>;
  const A a0 = a_bcast ? M::load(a[0]) : A(0);
  const A b0 = b_bcast ? M::load(b[0]) : A(0);
  for (int64_t p = rt::grid_index(); p < n_packs; p += rt::grid_stride()) {
    P pa{}, pb{}, py;
    if (!a_bcast) pa = reinterpret_cast<const P*>(a)[p];
    if (!b_bcast) pb = reinterpret_cast<const P*>(b)[p];
#pragma unroll
    for (int k = 0; k < V; ++k)
      py.v[k] = M::store(f(a_bcast ? a0 : M::load(pa.v[k]), b_bcast ? b0 : M::load(pb.v[k])));
    reinterpret_cast<P*>(y)[p] = py;
  }
}

// y = f(a, b), general broadcasting: y is written contiguously pack by pack.
template <class T, int V, class Div, class F>
__global__ void binary_bcast_kernel(const T* a, const T* b, T* y, Index<2, Div> ix,
                                    typename Div::Index n_packs, F f) {
  using I = typename Div::Index;
  using M = Math<T>;
  using P = Pack<T, V>;
  // p < n_packs < 2^31 for FastDiv32, and p + stride cannot wrap a uint32 (stride < 2^21).
  for (I p = static_cast<I>(rt::grid_index()); p < n_packs;
       p += static_cast<I>(rt::grid_stride())) {
    int64_t off[2];
    offsets<V>(ix, p, off);
    const P pa = load_run<T, V, true>(a, off[0], ix.stride[0][0]);
    const P pb = load_run<T, V, true>(b, off[1], ix.stride[1][0]);
    P py;
#pragma unroll
    for (int k = 0; k < V; ++k) py.v[k] = M::store(f(M::load(pa.v[k]), M::load(pb.v[k])));
    reinterpret_cast<P*>(y)[p] = py;
  }
}

// y = nonzero(cond) ? a : b, a copy of one branch (no rounding). cond is read element by element
// (its element size differs from y's, so its packs would not be 16 bytes).
template <class C, class T, int V, class Div>
__global__ void where_kernel(const C* cond, const T* a, const T* b, T* y, Index<3, Div> ix,
                             typename Div::Index n_packs) {
  using I = typename Div::Index;
  using P = Pack<T, V>;
  for (I p = static_cast<I>(rt::grid_index()); p < n_packs;
       p += static_cast<I>(rt::grid_stride())) {
    int64_t off[3];
    offsets<V>(ix, p, off);
    const Pack<C, V> pc = load_run<C, V, false>(cond, off[0], ix.stride[0][0]);
    const P pa = load_run<T, V, true>(a, off[1], ix.stride[1][0]);
    const P pb = load_run<T, V, true>(b, off[2], ix.stride[2][0]);
    P py;
#pragma unroll
    for (int k = 0; k < V; ++k) py.v[k] = nonzero(pc.v[k]) ? pa.v[k] : pb.v[k];
    reinterpret_cast<P*>(y)[p] = py;
  }
}

// y = x broadcast, moving raw words W of the element size.
template <class W, int V, class Div>
__global__ void expand_kernel(const W* x, W* y, Index<1, Div> ix, typename Div::Index n_packs) {
  using I = typename Div::Index;
  using P = Pack<W, V>;
  for (I p = static_cast<I>(rt::grid_index()); p < n_packs;
       p += static_cast<I>(rt::grid_stride())) {
    int64_t off[1];
    offsets<V>(ix, p, off);
    reinterpret_cast<P*>(y)[p] = load_run<W, V, true>(x, off[0], ix.stride[0][0]);
  }
}

// ---- host side ---------------------------------------------------------------------------------
// Chooses the pack width (V when the layout and pointers allow 16-byte packs, else 1) and the
// index type (32-bit with FastDiv32 below 2^31 packs), builds the Index and calls
// launch(ix, n_packs, std::integral_constant<int, width>). packed[k]: input k is read by 16-byte
// packs (so its pointer and strides must suit them); cond is not.
template <int V, int N, class Launch>
void launch_broadcast(const Broadcast& L, int64_t numel, const std::array<const void*, N>& in,
                      const std::array<bool, N>& packed, const void* out, Launch&& launch) {
  const int last = L.rank - 1;
  bool vec = V > 1 && aligned16(out) && L.size[last] % V == 0;
  for (int k = 0; k < N && vec; ++k) {
    const int64_t s = L.stride[k + 1][last];
    if (s != 0 && s != 1) vec = false;  // never so for contiguous inputs; checked all the same
    if (s == 1 && packed[static_cast<size_t>(k)]) {
      if (!aligned16(in[static_cast<size_t>(k)])) vec = false;
      for (int d = 0; d < L.rank; ++d)
        if (L.stride[k + 1][d] % V != 0) vec = false;
    }
  }
  auto go = [&](auto width) {
    constexpr int kW = decltype(width)::value;
    const int64_t n_packs = numel / kW;
    auto build = [&](auto div_tag) {
      using Div = decltype(div_tag);
      Index<N, Div> ix{};
      ix.rank = L.rank;
      for (int i = 0; i < L.rank; ++i) {  // reversed: i = 0 is the innermost dim
        const int d = last - i;
        ix.div[i] = Div::make(i == 0 ? L.size[d] / kW : L.size[d]);
        for (int k = 0; k < N; ++k) ix.stride[k][i] = L.stride[k + 1][d];
      }
      launch(ix, static_cast<typename Div::Index>(n_packs), width);
    };
    if (n_packs <= INT32_MAX)
      build(FastDiv32{});
    else
      build(Div64{});
  };
  if (vec)
    go(std::integral_constant<int, V>{});
  else
    go(std::integral_constant<int, 1>{});
}

template <class F>
void binary(const OpCall& c, const char* op, F f) {
  const Tensor &a = c.in.at(0), &b = c.in.at(1), &y = c.out.at(0);
  if (a.dtype() != y.dtype() || b.dtype() != y.dtype())
    unsupported(op, std::string("mixed dtypes ") + dtype_name(a.dtype()) + ", " +
                        dtype_name(b.dtype()) + " -> " + dtype_name(y.dtype()) + " are");
  check_broadcast(op, a, y);
  check_broadcast(op, b, y);
  const int64_t n = y.numel();
  if (n == 0) return;
  const bool a_same = a.shape() == y.shape(), b_same = b.shape() == y.shape();
  const bool simple = (a_same || a.numel() == 1) && (b_same || b.numel() == 1);
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(y.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      constexpr int V = kVec<T>;
      const T* pa = static_cast<const T*>(a.raw_data());
      const T* pb = static_cast<const T*>(b.raw_data());
      T* py = static_cast<T*>(y.raw_data());
      if (simple) {
        const bool a_bcast = !a_same, b_bcast = !b_same;
        const bool vec =
            n % V == 0 && aligned16(py) && (a_bcast || aligned16(pa)) && (b_bcast || aligned16(pb));
        if (vec) {
          PSVAE_LAUNCH(rt::grid_for(n / V, dev), rt::kBlockThreads, 0, s, binary_kernel<T, V, F>)
          (pa, pb, py, n / V, a_bcast, b_bcast, f);
        } else {
          PSVAE_LAUNCH(rt::grid_for(n, dev), rt::kBlockThreads, 0, s, binary_kernel<T, 1, F>)
          (pa, pb, py, n, a_bcast, b_bcast, f);
        }
        return;
      }
      const Broadcast L = make_broadcast(y.shape(), {a.shape(), b.shape()});
      launch_broadcast<V, 2>(L, n, {pa, pb}, {true, true}, py,
                             [&](auto ix, auto n_packs, auto width) {
                               constexpr int kW = decltype(width)::value;
                               using Div = typename decltype(ix)::DivT;
                               PSVAE_LAUNCH(rt::grid_for(n_packs, dev), rt::kBlockThreads, 0, s,
                                            binary_bcast_kernel<T, kW, Div, F>)
                               (pa, pb, py, ix, n_packs, f);
                             });
    });
  });
}

void add_cuda(const OpCall& c) { binary(c, "add", AddOp{}); }
void sub_cuda(const OpCall& c) { binary(c, "sub", SubOp{}); }
void mul_cuda(const OpCall& c) { binary(c, "mul", MulOp{}); }
void div_cuda(const OpCall& c) { binary(c, "div", DivOp{}); }

// Calls fn(C{}) with C the type the condition is read as (bf16 as its raw bits).
template <class Fn>
void dispatch_cond(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::F32: fn(float{}); return;
    case DType::F64: fn(double{}); return;
    case DType::BF16: fn(uint16_t{}); return;
    case DType::I32: fn(int32_t{}); return;
    case DType::I64: fn(int64_t{}); return;
  }
  unsupported("where", std::string("condition dtype ") + dtype_name(dt));
}

void where_cuda(const OpCall& c) {
  const Tensor &cond = c.in.at(0), &a = c.in.at(1), &b = c.in.at(2), &y = c.out.at(0);
  if (a.dtype() != y.dtype() || b.dtype() != y.dtype())
    throw std::invalid_argument(std::string("where: branches ") + dtype_name(a.dtype()) + ", " +
                                dtype_name(b.dtype()) + " and output " + dtype_name(y.dtype()) +
                                " must share a dtype");
  check_broadcast("where", cond, y);
  check_broadcast("where", a, y);
  check_broadcast("where", b, y);
  const int64_t n = y.numel();
  if (n == 0) return;
  const Broadcast L = make_broadcast(y.shape(), {cond.shape(), a.shape(), b.shape()});
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    dispatch_cond(cond.dtype(), [&](auto ctag) {
      using C = decltype(ctag);
      dispatch_float(y.dtype(), "where", [&](auto tag) {
        using T = decltype(tag);
        const C* pc = static_cast<const C*>(cond.raw_data());
        const T* pa = static_cast<const T*>(a.raw_data());
        const T* pb = static_cast<const T*>(b.raw_data());
        T* py = static_cast<T*>(y.raw_data());
        launch_broadcast<kVec<T>, 3>(L, n, {pc, pa, pb}, {false, true, true}, py,
                                     [&](auto ix, auto n_packs, auto width) {
                                       constexpr int kW = decltype(width)::value;
                                       using Div = typename decltype(ix)::DivT;
                                       PSVAE_LAUNCH(rt::grid_for(n_packs, dev), rt::kBlockThreads,
                                                    0, s, where_kernel<C, T, kW, Div>)
                                       (pc, pa, pb, py, ix, n_packs);
                                     });
      });
    });
  });
}

void expand_cuda(const OpCall& c) {
  const Tensor &x = c.in.at(0), &y = c.out.at(0);
  if (x.dtype() != y.dtype())
    throw std::invalid_argument(std::string("expand: input ") + dtype_name(x.dtype()) +
                                " and output " + dtype_name(y.dtype()) + " dtypes differ");
  check_broadcast("expand", x, y);
  const int64_t n = y.numel();
  if (n == 0) return;
  const Broadcast L = make_broadcast(y.shape(), {x.shape()});
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    auto run = [&](auto word) {
      using W = decltype(word);
      const W* px = static_cast<const W*>(x.raw_data());
      W* py = static_cast<W*>(y.raw_data());
      launch_broadcast<kVec<W>, 1>(L, n, {px}, {true}, py, [&](auto ix, auto n_packs, auto width) {
        constexpr int kW = decltype(width)::value;
        using Div = typename decltype(ix)::DivT;
        PSVAE_LAUNCH(rt::grid_for(n_packs, dev), rt::kBlockThreads, 0, s, expand_kernel<W, kW, Div>)
        (px, py, ix, n_packs);
      });
    };
    switch (dtype_size(x.dtype())) {
      case 2: run(uint16_t{}); break;
      case 4: run(uint32_t{}); break;
      default: run(uint64_t{}); break;
    }
  });
}

}  // namespace

void register_broadcast(OpTable& t) {
  t[Op::add].cuda = &add_cuda;
  t[Op::sub].cuda = &sub_cuda;
  t[Op::mul].cuda = &mul_cuda;
  t[Op::div].cuda = &div_cuda;
  t[Op::where].cuda = &where_cuda;
  t[Op::expand].cuda = &expand_cuda;
}

}  // namespace psvae::kernels::cuda
