// The CUDA column of the op table: register_all sets OpDef::cuda for every op with a CUDA kernel.
//
// The CUDA op kernels come family by family (kernels/cuda/<family>.cu, each with a
// register_<family> called from here: unary.cu has the unary functions with their backwards and
// add_scalar, mul_scalar; softmax.cu softmax and log-softmax; the other files are named after
// their op family in kernels/op_list.h).
// This file holds cast between f32, bf16 and f64 (add, sub, mul, div with NumPy broadcasting are in
// broadcast.cu). Conversions round the same on GPU and CPU, so results equal the CPU's bit for
// bit.
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

using detail::dispatch_float;
using detail::launch_on;

// ---- cast ------------------------------------------------------------------------------------
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

// ---- host side ---------------------------------------------------------------------------------
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
        PSVAE_LAUNCH(rt::grid_for(n, dev), rt::kBlockThreads, 0, s, cast_kernel<S, D>)
        (static_cast<const S*>(x.raw_data()), static_cast<D*>(y.raw_data()), n);
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
  t[Op::cast].cuda = &cast_cuda;
}

}  // namespace psvae::kernels::cuda
