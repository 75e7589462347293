// Typed wrappers of the linalg family: shape checks and output allocation for matmul and linear.
#include <fmt/format.h>

#include "kernels/ops.h"
#include "kernels/ops_common.h"

namespace psvae::ops {

namespace {
void check_float_pair(const char* op, const Tensor& a, const Tensor& b) {
  check(a.defined() && b.defined(), fmt::format("{}: inputs must be defined", op));
  detail::check_same_dtype(op, a, b);
}
}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_float_pair("matmul", a, b);
  auto shapes = [&] {
    return fmt::format("a {}{} and b {}{}", a.shape().str(), trans_a ? "^T" : "", b.shape().str(),
                       trans_b ? "^T" : "");
  };
  check(a.rank() >= 2 && b.rank() >= 2,
        fmt::format("matmul: both operands need rank >= 2, got {}", shapes()));
  check(b.rank() == 2 || b.rank() == a.rank(),
        fmt::format("matmul: b must be rank 2 (shared) or have a's rank, got {}", shapes()));
  int64_t M = trans_a ? a.size(-1) : a.size(-2);
  int64_t Ka = trans_a ? a.size(-2) : a.size(-1);
  int64_t Kb = trans_b ? b.size(-1) : b.size(-2);
  int64_t N = trans_b ? b.size(-2) : b.size(-1);
  check(Ka == Kb, fmt::format("matmul: inner dims differ ({} vs {}) for {}", Ka, Kb, shapes()));
  Shape out;
  for (int d = 0; d < a.rank() - 2; ++d) {
    check(b.rank() == 2 || b.size(d) == a.size(d),
          fmt::format("matmul: batch dim {} differs for {}", d, shapes()));
    out.push_back(a.size(d));
  }
  out.push_back(M);
  out.push_back(N);
  kernels::OpCall c;
  c.in = {a, b};
  c.out = {Tensor::empty(out, a.dtype(), a.device())};
  c.ints[0] = trans_a;
  c.ints[1] = trans_b;
  kernels::run(Op::matmul, c);
  return c.out[0];
}

namespace {

// x (..., K) and W (N, K) of one float dtype and device, for linear and linear_gelu; returns the
// output's shape (..., N).
Shape check_linear_operands(const char* op, const Tensor& x, const Tensor& w) {
  check_float_pair(op, x, w);
  check(w.rank() == 2 && x.rank() >= 1 && x.size(-1) == w.size(1),
        fmt::format("{}: x {} and W {} do not match (expected W (N, {}))", op, x.shape().str(),
                    w.shape().str(), x.rank() >= 1 ? x.size(-1) : 0));
  Shape out = x.shape();
  out[-1] = w.size(0);
  return out;
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  const Shape out = check_linear_operands("linear", x, w);
  kernels::OpCall c;
  c.in = {x, w};
  if (b.defined()) {
    check(b.rank() == 1 && b.size(0) == w.size(0) && b.dtype() == w.dtype(),
          fmt::format("linear: bias {} ({}) does not match W {}", b.shape().str(),
                      dtype_name(b.dtype()), w.shape().str()));
    c.in.push_back(b);
  }
  c.out = {Tensor::empty(out, x.dtype(), x.device())};
  kernels::run(Op::linear, c);
  return c.out[0];
}

LinearGeluOut linear_gelu(const Tensor& x, const Tensor& w, const Tensor& b) {
  const Shape out = check_linear_operands("linear_gelu", x, w);
  check(b.defined() && b.rank() == 1 && b.size(0) == w.size(0) && b.dtype() == w.dtype(),
        fmt::format("linear_gelu: bias {} does not match W {} (a bias of ({}) {} is needed)",
                    b.defined() ? b.str() : "undefined", w.shape().str(), w.size(0),
                    dtype_name(w.dtype())));
  kernels::OpCall c;
  c.in = {x, w, b};
  c.out = {Tensor::empty(out, x.dtype(), x.device()), Tensor::empty(out, x.dtype(), x.device())};
  kernels::run(Op::linear_gelu, c);
  return {c.out[0], c.out[1]};
}

LinearGeluGrads linear_gelu_bwd(const Tensor& g, const Tensor& w, const Tensor& pre) {
  check_float_pair("linear_gelu_bwd", g, w);
  check_float_pair("linear_gelu_bwd", g, pre);
  check(w.rank() == 2 && g.rank() >= 1 && g.size(-1) == w.size(0) && pre.rank() == g.rank() &&
            pre.size(-1) == w.size(1) &&
            pre.shape().prod(0, pre.rank() - 1) == g.shape().prod(0, g.rank() - 1),
        fmt::format("linear_gelu_bwd: g {}, W {} and pre {} do not match (expected W (N, H) for "
                    "g (..., N) and pre (..., H))",
                    g.shape().str(), w.shape().str(), pre.shape().str()));
  kernels::OpCall c;
  c.in = {g, w, pre};
  c.out = {Tensor::empty(pre.shape(), g.dtype(), g.device()),
           Tensor::empty(Shape{w.size(1)}, g.dtype(), g.device())};
  kernels::run(Op::linear_gelu_bwd, c);
  return {c.out[0], c.out[1]};
}

}  // namespace psvae::ops
