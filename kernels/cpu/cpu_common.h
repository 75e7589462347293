// Shared helpers for the CPU kernels: dtype dispatch and the threading rule.
//
// Threading rule (determinism): OpenMP splits only independent outputs (rows, channels, pixels);
// every reduction runs serially inside one thread in a fixed order. Results are therefore
// bit-identical whatever the thread count, which exact resume and the CPU/multi-rank tests rely on.
#pragma once
#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>

#include "kernels/op_table.h"
#include "tensor/tensor.h"

namespace psvae::kernels::cpu {

// Calls fn.template operator()<T>() with T = float or double per the dtype; any other dtype is an
// error naming the op.
template <class Fn>
void dispatch_float(DType dt, const char* op, Fn&& fn) {
  switch (dt) {
    case DType::F32: fn(float{}); return;
    case DType::F64: fn(double{}); return;
    default:
      throw std::invalid_argument(
          fmt::format("{}: CPU kernel supports f32 and f64, got {}", op, dtype_name(dt)));
  }
}

// Minimum work (elements) before a loop goes parallel: below it the fork/join costs more.
constexpr int64_t kParallelGrain = 1 << 14;

// Integer id tensors (embedding, cross-entropy targets) may be i32 or i64.
inline int64_t id_at(const Tensor& ids, int64_t i) {
  return ids.dtype() == DType::I64 ? ids.data<int64_t>()[i] : ids.data<int32_t>()[i];
}

// mean and 1/sqrt(biased var + eps) of n contiguous values, in double, two passes (mean, then the
// sum of squared deviations): the one-pass E[x^2] - E[x]^2 loses all digits when |mean| >> std.
// Shared by layernorm, groupnorm and the fused adaLN kernels.
template <class T>
void row_moments(const T* x, int64_t n, double eps, double& mean, double& rstd) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  mean = s / static_cast<double>(n);
  double v = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = x[i] - mean;
    v += d * d;
  }
  rstd = 1.0 / std::sqrt(v / static_cast<double>(n) + eps);
}

// GELU (tanh form) over every element of x, and its backward gx = gy * gelu_tanh'(x): the
// gelu_tanh kernels of elementwise.cpp (f32 vectorised, f64 scalar), for the fused linear_gelu
// ops of linalg.cpp. Same shapes and dtype; gx must not alias gy.
void gelu_tanh_into(const Tensor& x, const Tensor& y);
void gelu_tanh_grad_into(const Tensor& x, const Tensor& gy, const Tensor& gx);

// out (H) = the column sums of x (R, H), each column added in row order in double: sum_to's
// kernel (elementwise.cpp), so a bias gradient has the bits of sum_to over the rows.
void sum_rows_into(const Tensor& x, const Tensor& out);

}  // namespace psvae::kernels::cpu
