// Typed wrappers of the elementwise family: shape and dtype checks, output allocation, dispatch.
#include <fmt/format.h>

#include <algorithm>

#include "kernels/broadcast_layout.h"
#include "kernels/ops.h"
#include "kernels/ops_common.h"

namespace psvae::ops {

using detail::call_of;
using detail::check_defined;
using detail::check_floating;
using kernels::broadcasts_to;

namespace {

void check_same_float(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, a, b);
  check(a.dtype() == b.dtype(),
        fmt::format("{}: dtypes differ, {} {} and {} {}", op, dtype_name(a.dtype()),
                    a.shape().str(), dtype_name(b.dtype()), b.shape().str()));
  check(is_floating(a.dtype()),
        fmt::format("{}: needs floating inputs, got {}", op, dtype_name(a.dtype())));
}

Tensor binary(Op op, const char* name, const Tensor& a, const Tensor& b) {
  check_same_float(name, a, b);
  Shape s = broadcast_shapes(a.shape(), b.shape());
  Tensor y = Tensor::empty(s, a.dtype(), a.device());
  kernels::run(op, call_of({a, b}, {y}));
  return y;
}

Tensor unary(Op op, const Tensor& x, double p0 = 0, double p1 = 0) {
  check_defined(kernels::op_name(op), x);
  check_floating(kernels::op_name(op), x);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  kernels::OpCall c = call_of({x}, {y});
  c.reals[0] = p0;
  c.reals[1] = p1;
  kernels::run(op, c);
  return y;
}

}  // namespace

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  const int r = std::max(a.rank(), b.rank());
  Shape s;
  for (int d = 0; d < r; ++d) {
    int da = d - (r - a.rank()), db = d - (r - b.rank());
    int64_t x = da >= 0 ? a[da] : 1, y = db >= 0 ? b[db] : 1;
    check(x == y || x == 1 || y == 1,
          fmt::format("broadcast: shapes {} and {} do not broadcast (dim {}: {} vs {})", a.str(),
                      b.str(), d, x, y));
    s.push_back(x == 1 ? y : x);
  }
  return s;
}

Tensor add(const Tensor& a, const Tensor& b) { return binary(Op::add, "add", a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(Op::sub, "sub", a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(Op::mul, "mul", a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary(Op::div, "div", a, b); }

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check(cond.defined(), "where: undefined condition");
  check_same_float("where", a, b);
  Shape s = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape()), b.shape());
  Tensor y = Tensor::empty(s, a.dtype(), a.device());
  kernels::run(Op::where, call_of({cond, a, b}, {y}));
  return y;
}

Tensor add_scalar(const Tensor& x, double s) { return unary(Op::add_scalar, x, s); }
Tensor mul_scalar(const Tensor& x, double s) { return unary(Op::mul_scalar, x, s); }

Tensor expand(const Tensor& x, const Shape& shape) {
  check_defined("expand", x);
  check(broadcasts_to(x.shape(), shape),
        fmt::format("expand: {} cannot be broadcast to {}", x.shape().str(), shape.str()));
  if (x.shape() == shape) return x;
  Tensor y = Tensor::empty(shape, x.dtype(), x.device());
  kernels::run(Op::expand, call_of({x}, {y}));
  return y;
}

// Returns x itself when the shape already matches: gradients are never modified in place.
Tensor sum_to(const Tensor& x, const Shape& shape) {
  check_defined("sum_to", x);
  check(broadcasts_to(shape, x.shape()),
        fmt::format("sum_to: {} cannot be summed to {} (not a broadcast of it)", x.shape().str(),
                    shape.str()));
  if (x.shape() == shape) return x;
  Tensor y = Tensor::empty(shape, x.dtype(), x.device());
  kernels::run(Op::sum_to, call_of({x}, {y}));
  return y;
}

Tensor cast(const Tensor& x, DType dtype) {
  check_defined("cast", x);
  if (x.dtype() == dtype) return x;
  Tensor y = Tensor::empty(x.shape(), dtype, x.device());
  kernels::run(Op::cast, call_of({x}, {y}));
  return y;
}

Tensor exp(const Tensor& x) { return unary(Op::exp, x); }
Tensor log(const Tensor& x) { return unary(Op::log, x); }
Tensor sqrt(const Tensor& x) { return unary(Op::sqrt, x); }
Tensor rsqrt(const Tensor& x) { return unary(Op::rsqrt, x); }
Tensor tanh(const Tensor& x) { return unary(Op::tanh, x); }
Tensor sigmoid(const Tensor& x) { return unary(Op::sigmoid, x); }
Tensor relu(const Tensor& x) { return unary(Op::relu, x); }
Tensor silu(const Tensor& x) { return unary(Op::silu, x); }
Tensor gelu_tanh(const Tensor& x) { return unary(Op::gelu_tanh, x); }
Tensor gelu_erf(const Tensor& x) { return unary(Op::gelu_erf, x); }
Tensor abs(const Tensor& x) { return unary(Op::abs, x); }
Tensor pow_scalar(const Tensor& x, double p) { return unary(Op::pow_scalar, x, p); }
Tensor clamp(const Tensor& x, double lo, double hi) {
  check(lo <= hi, fmt::format("clamp: lo {} > hi {}", lo, hi));
  return unary(Op::clamp, x, lo, hi);
}

Tensor unary_bwd(Op op_bwd, const Tensor& x, const Tensor& y, const Tensor& gy, double p0,
                 double p1) {
  const char* name = kernels::op_name(op_bwd);
  check_defined(name, x, y, gy);
  check(x.shape() == y.shape() && x.shape() == gy.shape(),
        fmt::format("{}: shapes differ, x {} y {} gy {}", name, x.shape().str(), y.shape().str(),
                    gy.shape().str()));
  check(x.dtype() == y.dtype() && x.dtype() == gy.dtype() && is_floating(x.dtype()),
        fmt::format("{}: needs one floating dtype, got {} {} {}", name, dtype_name(x.dtype()),
                    dtype_name(y.dtype()), dtype_name(gy.dtype())));
  Tensor gx = Tensor::empty(x.shape(), x.dtype(), x.device());
  kernels::OpCall c = call_of({x, y, gy}, {gx});
  c.reals[0] = p0;
  c.reals[1] = p1;
  kernels::run(op_bwd, c);
  return gx;
}

}  // namespace psvae::ops
