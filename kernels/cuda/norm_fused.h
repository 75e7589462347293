// Fused CUDA kernels of the DiT block's adaLN-Zero path: LayerNorm without affine weights fused
// with the modulation x*(1+scale)+shift, and the gated residual add x + gate*h, each with its
// backward. Defined in kernels/cuda/norm.cu, where they share the layernorm and modulate kernels,
// and registered there as the op-table entries layernorm_modulate, gated_residual and their
// backwards; declared here so that tests and benches can call them directly.
//
// Conventions (as kernels/op_list.h): all tensors contiguous and on one CUDA device, of one
// floating dtype (f32, bf16 or f64; f32 statistics and accumulation for bf16), except the GEMM
// side noted below, which may be bf16 beside f32; outputs are allocated by the caller with their
// final shape and dtype and are overwritten; the work is queued on the project's stream of that
// device (psvae::cuda::stream). Parameter gradients are reduced in a fixed order (no atomics): a
// call repeated on the same inputs gives the same bits. Bad shapes, dtypes or devices throw
// std::invalid_argument naming the function.
#pragma once
#include "tensor/tensor.h"

namespace psvae::kernels::cuda {

// x (N, T, D), shift and scale (N, D) -> y (N, T, D), mean and rstd (N, T):
//   y = (x - mean) * rstd * (1 + scale[n]) + shift[n],  rstd = 1 / sqrt(var + eps)
// with mean and the biased variance over the last dim. mean and rstd are stored in x's dtype,
// as the layernorm op does, for layernorm_modulate_bwd.
void layernorm_modulate_fwd(const Tensor& x, const Tensor& shift, const Tensor& scale, double eps,
                            const Tensor& y, const Tensor& mean, const Tensor& rstd);

// The backward of layernorm_modulate_fwd: gy, x (N, T, D), mean, rstd (N, T), scale (N, D) ->
// gx (N, T, D), gshift and gscale (N, D). With xhat = (x - mean) rstd and g = gy (1 + scale[n]):
//   gx = rstd (g - mean_d(g) - xhat mean_d(g xhat)),  gshift = sum_t gy,  gscale = sum_t gy xhat.
// gy may be bf16 beside an f32 x (bf16 autocast: the dX of the GEMM that read y), as may y in the
// forward. gres, when defined (like x; f32 or f64), is added into gx: the gradient already waiting
// for x from its other consumer (the DiT block's residual path), with the bits of a separate add.
void layernorm_modulate_bwd(const Tensor& gy, const Tensor& x, const Tensor& mean,
                            const Tensor& rstd, const Tensor& scale, const Tensor& gx,
                            const Tensor& gshift, const Tensor& gscale,
                            const Tensor& gres = Tensor());

// x, h (N, T, D), gate (N, D) -> out = x + gate[n] * h (the DiT's gated residual add). h may be
// bf16 beside an f32 x (bf16 autocast: the output of the branch's last GEMM); gh then is bf16.
void gated_residual_fwd(const Tensor& x, const Tensor& gate, const Tensor& h, const Tensor& out);

// The backward of gated_residual_fwd: gout (N, T, D), gate (N, D), h (N, T, D) -> gh = gout *
// gate[n] (N, T, D) and ggate = sum_t gout * h (N, D). The gradient of x is gout itself: use that
// tensor. Argument order as the op-table entry gated_residual_bwd (gout, gate, h).
void gated_residual_bwd(const Tensor& gout, const Tensor& gate, const Tensor& h, const Tensor& gh,
                        const Tensor& ggate);

}  // namespace psvae::kernels::cuda
