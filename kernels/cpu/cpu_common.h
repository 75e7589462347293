// Shared helpers for the CPU kernels: dtype dispatch and the threading rule.
//
// Threading rule (determinism): OpenMP splits only independent outputs (rows, channels, pixels);
// every reduction runs serially inside one thread in a fixed order. Results are therefore
// bit-identical whatever the thread count, which exact resume and the CPU/multi-rank tests rely on.
#pragma once
#include <fmt/format.h>

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

}  // namespace psvae::kernels::cpu
