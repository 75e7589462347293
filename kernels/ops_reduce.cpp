// Typed wrappers of the reduce family. The kernels see (outer, n, inner) and write (outer, inner);
// keepdim only changes the output shape chosen here.
#include <fmt/format.h>

#include "kernels/ops.h"
#include "kernels/ops_common.h"

namespace psvae::ops {

using detail::check_defined;
using detail::check_floating;

namespace {

Shape reduced_shape(const Shape& s, int dim, bool keepdim) {
  Shape r;
  for (int d = 0; d < s.rank(); ++d) {
    if (d != dim)
      r.push_back(s[d]);
    else if (keepdim)
      r.push_back(1);
  }
  return r;
}

int checked_dim(const char* op, const Tensor& x, int dim) {
  check_defined(op, x);
  check_floating(op, x);
  check(x.rank() > 0 && dim >= -x.rank() && dim < x.rank(),
        fmt::format("{}: dim {} out of range for shape {}", op, dim, x.shape().str()));
  return x.shape().norm(dim);
}

// The (outer, inner) count a reduction over `dim` of x_shape produces, for checking gradients.
int64_t kept_numel(const Shape& s, int dim) { return s.prod(0, dim) * s.prod(dim + 1, s.rank()); }

}  // namespace

Tensor sum(const Tensor& x, int dim, bool keepdim) {
  int d = checked_dim("sum", x, dim);
  Tensor y = Tensor::empty(reduced_shape(x.shape(), d, keepdim), x.dtype(), x.device());
  kernels::OpCall c;
  c.in = {x};
  c.out = {y};
  c.ints[0] = d;
  kernels::run(Op::sum_dim, c);
  return y;
}

Tensor sum_all(const Tensor& x) {
  check_defined("sum_all", x);
  Tensor flat = x.reshape(Shape{x.numel()});
  return sum(flat, 0, false);  // rank 1 -> rank 0
}

Tensor mean(const Tensor& x, int dim, bool keepdim) {
  int d = checked_dim("mean", x, dim);
  return mul_scalar(sum(x, d, keepdim), 1.0 / static_cast<double>(x.size(d)));
}

Tensor mean_all(const Tensor& x) {
  check_defined("mean_all", x);
  return mul_scalar(sum_all(x), 1.0 / static_cast<double>(x.numel()));
}

std::pair<Tensor, Tensor> max(const Tensor& x, int dim, bool keepdim) {
  int d = checked_dim("max", x, dim);
  check(x.size(d) > 0, fmt::format("max: empty dim {} of {}", d, x.shape().str()));
  Shape s = reduced_shape(x.shape(), d, keepdim);
  Tensor y = Tensor::empty(s, x.dtype(), x.device());
  Tensor arg = Tensor::empty(s, DType::I64, x.device());
  kernels::OpCall c;
  c.in = {x};
  c.out = {y, arg};
  c.ints[0] = d;
  kernels::run(Op::max_dim, c);
  return {y, arg};
}

Tensor max_bwd(const Tensor& gy, const Tensor& argmax, const Shape& x_shape, int dim) {
  int d = x_shape.norm(dim);
  check(gy.defined() && argmax.defined() && argmax.dtype() == DType::I64,
        "max_bwd: needs gy and an i64 argmax");
  check(gy.numel() == kept_numel(x_shape, d) && argmax.numel() == gy.numel(),
        fmt::format("max_bwd: gy {} / argmax {} do not match x {} reduced over dim {}",
                    gy.shape().str(), argmax.shape().str(), x_shape.str(), d));
  Tensor gx = Tensor::empty(x_shape, gy.dtype(), gy.device());
  kernels::OpCall c;
  c.in = {gy, argmax};
  c.out = {gx};
  c.ints[0] = d;
  kernels::run(Op::max_dim_bwd, c);
  return gx;
}

std::pair<Tensor, Tensor> var_mean(const Tensor& x, int dim, int correction, bool keepdim) {
  int d = checked_dim("var_mean", x, dim);
  check(correction == 0 || correction == 1,
        fmt::format("var_mean: correction must be 0 or 1, got {}", correction));
  Shape s = reduced_shape(x.shape(), d, keepdim);
  Tensor var = Tensor::empty(s, x.dtype(), x.device());
  Tensor mu = Tensor::empty(s, x.dtype(), x.device());
  kernels::OpCall c;
  c.in = {x};
  c.out = {var, mu};
  c.ints[0] = d;
  c.ints[1] = correction;
  kernels::run(Op::var_dim, c);
  return {var, mu};
}

Tensor var_bwd(const Tensor& gy, const Tensor& x, const Tensor& mean, int dim, int correction) {
  int d = checked_dim("var_bwd", x, dim);
  check(gy.defined() && mean.defined() && gy.dtype() == x.dtype() && mean.dtype() == x.dtype(),
        "var_bwd: gy, x and mean must be defined and share a dtype");
  check(gy.numel() == kept_numel(x.shape(), d) && mean.numel() == gy.numel(),
        fmt::format("var_bwd: gy {} / mean {} do not match x {} reduced over dim {}",
                    gy.shape().str(), mean.shape().str(), x.shape().str(), d));
  Tensor gx = Tensor::empty(x.shape(), x.dtype(), x.device());
  kernels::OpCall c;
  c.in = {gy, x, mean};
  c.out = {gx};
  c.ints[0] = d;
  c.ints[1] = correction;
  kernels::run(Op::var_dim_bwd, c);
  return gx;
}

namespace {
Tensor row_op(Op op, const char* name, const Tensor& x) {
  check(x.defined() && is_floating(x.dtype()), fmt::format("{}: needs a floating input", name));
  check(x.rank() > 0, fmt::format("{}: needs rank >= 1, got a scalar", name));
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  kernels::OpCall c;
  c.in = {x};
  c.out = {y};
  kernels::run(op, c);
  return y;
}
Tensor row_bwd(Op op, const char* name, const Tensor& y, const Tensor& gy) {
  check(y.defined() && gy.defined() && y.shape() == gy.shape() && y.dtype() == gy.dtype(),
        fmt::format("{}: y {} and gy {} must match", name, y.shape().str(),
                    gy.defined() ? gy.shape().str() : "undefined"));
  Tensor gx = Tensor::empty(y.shape(), y.dtype(), y.device());
  kernels::OpCall c;
  c.in = {y, gy};
  c.out = {gx};
  kernels::run(op, c);
  return gx;
}
}  // namespace

Tensor softmax(const Tensor& x) { return row_op(Op::softmax, "softmax", x); }
Tensor softmax_bwd(const Tensor& y, const Tensor& gy) {
  return row_bwd(Op::softmax_bwd, "softmax_bwd", y, gy);
}
Tensor log_softmax(const Tensor& x) { return row_op(Op::log_softmax, "log_softmax", x); }
Tensor log_softmax_bwd(const Tensor& y, const Tensor& gy) {
  return row_bwd(Op::log_softmax_bwd, "log_softmax_bwd", y, gy);
}

}  // namespace psvae::ops
