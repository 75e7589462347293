// Fused loss entry points of the CUDA backend that have no row of their own in the op table
// (kernels/op_list.h). Plain C++ (no CUDA types), so tests and the training code include it from
// g++-compiled files; defined in kernels/cuda/loss.cu, present only in a build with CUDA
// (PSVAE_WITH_CUDA).
#pragma once
#include "tensor/tensor.h"

namespace psvae::kernels::cuda {

// KL(N(mu, e^logvar) || N(0, 1)) and both its gradients in one pass over (mu, logvar):
//   loss_out = 0.5 * sum(mu^2 + e^logvar - 1 - logvar) / normaliser        (as op kl_gauss)
//   gmu      = gscale * mu / normaliser                                     (as op kl_gauss_bwd
//   glogvar  = gscale * 0.5 * (e^logvar - 1) / normaliser                    with gy = gscale)
// gscale is the upstream gradient of the loss (1 when the KL term is the loss itself, its weight
// in a weighted sum otherwise). Reads 2 tensors and writes 2, where the op pair reads mu and
// logvar twice: 4 tensor passes instead of 6.
// mu, logvar, gmu, glogvar: one shape and one dtype (f32, bf16 or f64) on one CUDA device;
// loss_out: a one-element f32, bf16 or f64 tensor on that device. The loss is the same bits as
// op kl_gauss's (same reduction order), and the gradients the same bits as op kl_gauss_bwd's when
// gscale is exact in the dtype. Throws std::invalid_argument naming "kl_gauss_fused" on bad input.
void kl_gauss_fused(const Tensor& mu, const Tensor& logvar, double normaliser, double gscale,
                    const Tensor& loss_out, const Tensor& gmu, const Tensor& glogvar);

}  // namespace psvae::kernels::cuda
