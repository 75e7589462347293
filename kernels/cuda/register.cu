// The CUDA column of the op table: register_all sets OpDef::cuda for every op with a CUDA kernel.
//
// The CUDA op kernels come family by family (kernels/cuda/<family>.cu, each with a
// register_<family> called from here: unary.cu has the unary functions with their backwards and
// add_scalar, mul_scalar; softmax.cu softmax and log-softmax; the other files are named after
// their op family in kernels/op_list.h).
// This file holds the first elementwise kernels:
//   add, sub, mul, div  when each input has the output's shape or is a single element (other
//                       broadcasts throw "not yet supported on CUDA");
//   cast                between f32, bf16 and f64.
// Types: f32 and bf16 (computed in f32, stored with round-to-nearest-even), and f64 (in f64).
// Single IEEE operations round the same on GPU and CPU, so f32 results equal the CPU kernels' bit
// for bit (no fma can form: each kernel does one operation per element).
#include <cuda_bf16.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/op_table.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda {

namespace {

namespace rt = ::psvae::cuda;

using detail::aligned16;
using detail::dispatch_float;
using detail::kVec;
using detail::launch_on;
using detail::Math;
using detail::Pack;
using detail::unsupported;

// ---- the operations
// ------------------------------------------------------------------------------
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

// ---- kernels
// ------------------------------------------------------------------------------------- y = f(a, b)
// over n_packs packs of V elements. An operand flagged `bcast` is one element, read once per thread
// and applied to every output.
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

// Conversions follow psvae::bf16 on the host: f64 -> bf16 goes through f32 (a direct rounding
// would differ from the CPU in the rare double-rounding cases).
template <class D>
__device__ __forceinline__ D convert_to(double v);
template <>
__device__ __forceinline__ double convert_to<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ float convert_to<float>(double v) {
  return __double2float_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 convert_to<__nv_bfloat16>(double v) {
  return __float2bfloat16_rn(__double2float_rn(v));
}
__device__ __forceinline__ double widen(float x) { return x; }
__device__ __forceinline__ double widen(double x) { return x; }
__device__ __forceinline__ double widen(__nv_bfloat16 x) { return __bfloat162float(x); }

// Every source value is exact in double, so widening first loses nothing.
template <class S, class D>
__global__ void cast_kernel(const S* x, D* y, int64_t n) {
  for (int64_t i = rt::grid_index(); i < n; i += rt::grid_stride())
    y[i] = convert_to<D>(widen(x[i]));
}

// ---- host side
// -----------------------------------------------------------------------------------
template <class F>
void binary(const OpCall& c, const char* op, F f) {
  const Tensor &a = c.in.at(0), &b = c.in.at(1), &y = c.out.at(0);
  if (a.dtype() != y.dtype() || b.dtype() != y.dtype())
    unsupported(op, std::string("mixed dtypes ") + dtype_name(a.dtype()) + ", " +
                        dtype_name(b.dtype()) + " -> " + dtype_name(y.dtype()) + " are");
  const int64_t n = y.numel();
  const bool a_bcast = a.shape() != y.shape(), b_bcast = b.shape() != y.shape();
  if ((a_bcast && a.numel() != 1) || (b_bcast && b.numel() != 1))
    unsupported(op, "broadcasting " + a.shape().str() + " and " + b.shape().str() + " to " +
                        y.shape().str() + " (only equal shapes or a one-element operand) is");
  if (n == 0) return;
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(y.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      constexpr int V = kVec<T>;
      const T* pa = static_cast<const T*>(a.raw_data());
      const T* pb = static_cast<const T*>(b.raw_data());
      T* py = static_cast<T*>(y.raw_data());
      const bool vec =
          n % V == 0 && aligned16(py) && (a_bcast || aligned16(pa)) && (b_bcast || aligned16(pb));
      if (vec) {
        binary_kernel<T, V><<<rt::grid_for(n / V, dev), rt::kBlockThreads, 0, s>>>(
            pa, pb, py, n / V, a_bcast, b_bcast, f);
      } else {
        binary_kernel<T, 1>
            <<<rt::grid_for(n, dev), rt::kBlockThreads, 0, s>>>(pa, pb, py, n, a_bcast, b_bcast, f);
      }
    });
  });
}

void add_cuda(const OpCall& c) { binary(c, "add", AddOp{}); }
void sub_cuda(const OpCall& c) { binary(c, "sub", SubOp{}); }
void mul_cuda(const OpCall& c) { binary(c, "mul", MulOp{}); }
void div_cuda(const OpCall& c) { binary(c, "div", DivOp{}); }

void cast_cuda(const OpCall& c) {
  const Tensor &x = c.in.at(0), &y = c.out.at(0);
  if (x.numel() != y.numel())
    throw std::invalid_argument("cast: output " + y.str() + " does not match input " + x.str());
  const int64_t n = y.numel();
  if (n == 0) return;
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    if (x.dtype() == y.dtype()) {  // ops::cast never asks for this, but a direct caller may
      PSVAE_CUDA_CHECK(
          cudaMemcpyAsync(y.raw_data(), x.raw_data(), y.nbytes(), cudaMemcpyDeviceToDevice, s));
      return;
    }
    dispatch_float(x.dtype(), "cast", [&](auto stag) {
      using S = decltype(stag);
      dispatch_float(y.dtype(), "cast", [&](auto dtag) {
        using D = decltype(dtag);
        cast_kernel<S, D><<<rt::grid_for(n, dev), rt::kBlockThreads, 0, s>>>(
            static_cast<const S*>(x.raw_data()), static_cast<D*>(y.raw_data()), n);
      });
    });
  });
}

}  // namespace

void register_unary(OpTable& t);      // unary.cu
void register_softmax(OpTable& t);    // softmax.cu
void register_broadcast(OpTable& t);  // broadcast.cu
void register_reduce(OpTable& t);     // reduce.cu
void register_layout(OpTable& t);     // layout.cu
void register_spatial(OpTable& t);    // spatial.cu
void register_gemm(OpTable& t);       // gemm.cu
void register_attention(OpTable& t);  // attention.cu
void register_norm(OpTable& t);       // norm.cu
void register_loss(OpTable& t);       // loss.cu
void register_optim(OpTable& t);      // optim.cu
void register_conv(OpTable& t);       // conv.cu
void register_lpips(OpTable& t);      // lpips.cu

void register_all(OpTable& t) {
  register_unary(t);
  register_softmax(t);
  register_broadcast(t);
  register_reduce(t);
  register_layout(t);
  register_spatial(t);
  register_gemm(t);
  register_attention(t);
  register_norm(t);
  register_loss(t);
  register_optim(t);
  register_conv(t);
  register_lpips(t);
  t[Op::add].cuda = &add_cuda;
  t[Op::sub].cuda = &sub_cuda;
  t[Op::mul].cuda = &mul_cuda;
  t[Op::div].cuda = &div_cuda;
  t[Op::cast].cuda = &cast_cuda;
}

}  // namespace psvae::kernels::cuda
