// Mixed precision in the manner of torch.autocast(dtype=torch.bfloat16): a thread-local compute
// dtype that the differentiable functions read.
//
// Under AutocastGuard(DType::BF16):
//   - the GEMM-class functions (linear, matmul, conv2d, attention) cast their floating inputs to
//     bf16 and return bf16: the tensor cores' type, half the bytes of every activation they read;
//   - norms, softmaxes and losses (layer_norm, group_norm, layernorm_modulate, softmax,
//     log_softmax, mse, l1, KL, cross-entropy, the LPIPS tap) run in f32 at least: bf16 inputs are
//     cast up, as torch.autocast's fp32 list does, because their reductions lose too much in bf16;
//     layernorm_modulate, whose output always feeds a GEMM, writes that output in bf16 (the f32
//     result rounded once, what the GEMM's cast would give) and reads its gradient in bf16;
//   - any other function whose floating inputs differ in dtype promotes them all to the widest
//     (bf16 < f32 < f64) first: a residual add of an f32 stream and a bf16 branch runs in f32.
//     Every kernel still receives one dtype, except the DiT block's gated_residual, which takes
//     the bf16 branch beside the f32 stream and gate as they are (widening bf16 is exact: the
//     same sums, without a cast's pass) and hands the branch a bf16 gradient.
// Parameters stay f32 (the master weights the optimiser, the EMA and the checkpoints use); each
// use casts them through ag::cast, whose backward hands the parameter an f32 gradient.
// Outside a guard, or under AutocastGuard(DType::F32), nothing is cast and inputs of different
// dtypes are an error, as before. The guard only affects the forward; backward nodes remember the
// dtypes they saw.
#pragma once
#include <array>
#include <vector>

#include "autograd/var.h"

namespace psvae::ag {

// The GEMM compute dtype: F32 (the default) means autocast is off.
DType autocast_dtype();
inline bool autocast_enabled() { return autocast_dtype() != DType::F32; }

class AutocastGuard {
 public:
  // compute: BF16 (mixed precision), F32 (off; also switches it off inside an outer guard), or F64
  // (casts everything up: the tests use it to run the mixed-precision paths at f64 accuracy).
  explicit AutocastGuard(DType compute);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  DType prev_;
};

namespace autocast {

// v cast to dtype when v is defined, floating and of another dtype; otherwise v itself.
Var to(const Var& v, DType dtype);
// The widest floating dtype among the defined floating Vars (F32 when there are none).
DType widest(std::initializer_list<const Var*> vs);

// The inputs of a GEMM-class function: cast to the compute dtype under autocast.
template <class... V>
std::array<Var, sizeof...(V)> gemm_inputs(const V&... v) {
  if (!autocast_enabled()) return {v...};
  const DType d = autocast_dtype();
  return {to(v, d)...};
}

// The inputs of any other multi-input function: promoted to one dtype under autocast.
template <class... V>
std::array<Var, sizeof...(V)> promote(const V&... v) {
  if (!autocast_enabled()) return {v...};
  const DType d = widest({&v...});
  return {to(v, d)...};
}
std::vector<Var> promote(const std::vector<Var>& vs);

// The inputs of a norm, softmax or loss: promoted, and never below f32, under autocast.
template <class... V>
std::array<Var, sizeof...(V)> f32_inputs(const V&... v) {
  if (!autocast_enabled()) return {v...};
  const DType w = widest({&v...});
  const DType d = w == DType::BF16 ? DType::F32 : w;
  return {to(v, d)...};
}

}  // namespace autocast
}  // namespace psvae::ag
