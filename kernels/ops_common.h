// Helpers shared by the typed wrappers kernels/ops_<family>.cpp: building an OpCall and the input
// checks that several families word the same way. Internal to kernels/ (ops.h is the interface);
// checks one family alone uses stay in that family's file.
#pragma once
#include <fmt/format.h>

#include <utility>
#include <vector>

#include "kernels/op_table.h"
#include "tensor/tensor.h"

namespace psvae::ops::detail {

// A call with its inputs and outputs set; the caller fills ints/reals.
inline kernels::OpCall call_of(std::vector<Tensor> in, std::vector<Tensor> out) {
  kernels::OpCall c;
  c.in = std::move(in);
  c.out = std::move(out);
  return c;
}

// "<op>: undefined input" unless every tensor given is defined.
template <class... Ts>
void check_defined(const char* op, const Ts&... ts) {
  check((ts.defined() && ...), fmt::format("{}: undefined input", op));
}

// One floating input (x already checked to be defined).
inline void check_floating(const char* op, const Tensor& x) {
  check(is_floating(x.dtype()),
        fmt::format("{}: needs a floating input, got {}", op, dtype_name(x.dtype())));
}

inline void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  check(a.dtype() == b.dtype(), fmt::format("{}: dtype mismatch {} vs {}", op,
                                            dtype_name(a.dtype()), dtype_name(b.dtype())));
}

}  // namespace psvae::ops::detail
