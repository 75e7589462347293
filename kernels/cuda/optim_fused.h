// Multi-tensor optimiser entry points of the CUDA backend: the global gradient norm, AdamW over a
// whole parameter list in one launch (fp32 master weights, f32 or bf16 gradients, an optional bf16
// model copy written in the same pass, the clip factor folded in), and the EMA of a parameter
// list. Plain C++ (no CUDA types), so g++-compiled code includes it; defined in
// kernels/cuda/optim.cu, present only in a build with CUDA (PSVAE_WITH_CUDA).
//
// One launch covers every tensor: a device-side table lists each tensor (its pointers and size)
// and each (tensor, chunk of 65536 elements) pair; block b takes chunk b. The tables of a given
// tensor list are built and uploaded once and then found again by content (a small cache per
// process), so a training loop that steps the same tensors every iteration uploads nothing after
// its first step.
//
// Arithmetic: each element's AdamW and EMA update is the one of the CPU kernels
// (kernels/cpu/optim.cpp: PyTorch's single-tensor order, the step's scalars in double rounded to
// f32 once, each operation rounded in f32, no fused multiply-add), and the same code as the CUDA
// ops adamw_step / ema_update: with grad_scale 1 the result is bit-identical to those ops on each
// tensor, and equal to the CPU kernels to rounding.
#pragma once
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace psvae::kernels::cuda {

// L2 norm over all elements of all grads: sqrt(sum of squares), accumulated in double. grads: any
// mix of f32, bf16 and f64 tensors on one CUDA device (undefined or empty ones contribute 0).
// Deterministic: per-chunk partial sums in a grid fixed by the tensors' sizes, then one block adds
// them in chunk order, so the same grads give the same bits every time.
// This form returns the norm to the host, which synchronises the stream.
double global_grad_norm(const std::vector<Tensor>& grads);

// Device form, no synchronisation: writes the norm into norm_out (one f32 or f64 element on the
// grads' device) and, when clip_scale_out is defined (one f32 element), the clipping factor of
// torch.nn.utils.clip_grad_norm_, min(1, max_norm / (norm + 1e-6)) (computed in double, rounded
// to f32; max_norm must then be > 0). clip_scale_out can feed adamw_multi_tensor's grad_scale_dev.
void global_grad_norm(const std::vector<Tensor>& grads, const Tensor& norm_out,
                      double max_norm = 0.0, const Tensor& clip_scale_out = Tensor());

struct AdamWHyper {
  double lr = 1e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

// One AdamW step (torch.optim.AdamW, decoupled weight decay, bias correction by `step`, 1-based)
// on every tensor i, in place:
//   g = grads[i] * scale;  params[i], m[i], v[i] updated as ops::adamw_step with grad g;
//   model_copies[i] = bf16(params[i]) (new value) when model_copies is non-empty and entry i is
//   defined.
// params, m, v: f32; grads: all f32 or all bf16; model_copies: bf16 (empty vector: none). Every
// list has one entry per param, each of the param's shape, all on one CUDA device.
// scale: the f32 value in grad_scale_dev (one f32 element on the device, e.g. the clip factor from
// global_grad_norm; read by the kernel, no sync) when it is defined, else grad_scale rounded to f32
// (then grad_scale_dev must be undefined; passing both with grad_scale != 1 is an error).
// weight_decay: one value per tensor (e.g. 0 for biases and norms), or empty for hp.weight_decay
// everywhere.
// Throws std::invalid_argument naming "adamw_multi_tensor" on bad input. Aliasing between the
// tensors of one entry (param, grad, m, v, copy) is refused; across entries it is not checked.
void adamw_multi_tensor(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                        const std::vector<Tensor>& m, const std::vector<Tensor>& v,
                        const std::vector<Tensor>& model_copies, const AdamWHyper& hp, int64_t step,
                        double grad_scale = 1.0, const Tensor& grad_scale_dev = Tensor(),
                        const std::vector<double>& weight_decay = {});

// ema[i] = decay * ema[i] + (1 - decay) * params[i] for every i, in place, as ops::ema_update
// (the same bits as that op on CUDA). ema and params: all f32 or all f64, pairwise of one shape, on
// one CUDA device; decay in [0, 1]. Throws std::invalid_argument naming "ema_multi_tensor" on bad
// input.
void ema_multi_tensor(const std::vector<Tensor>& ema, const std::vector<Tensor>& params,
                      double decay);

}  // namespace psvae::kernels::cuda
