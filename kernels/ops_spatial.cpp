// Typed wrappers of the spatial family (NCHW): conv2d, nearest / bilinear upsampling, average and
// max pooling. Shape checks and output allocation; the math is in kernels/cpu/spatial.cpp.
#include <fmt/format.h>

#include "kernels/ops.h"
#include "kernels/ops_common.h"

namespace psvae::ops {

using detail::call_of;
using detail::check_same_dtype;

namespace {

void check_nchw(const char* op, const char* what, const Tensor& t) {
  check(t.defined(), fmt::format("{}: {} must be defined", op, what));
  check(t.rank() == 4,
        fmt::format("{}: {} must be (N, C, H, W), got {}", op, what, t.shape().str()));
  check(is_floating(t.dtype()),
        fmt::format("{}: {} must be floating, got {}", op, what, dtype_name(t.dtype())));
}

// Output extent of a strided window: (in + 2 pad - k) / stride + 1 (floor, ceil_mode off).
int64_t window_out(const char* op, const char* dim, int64_t in, int64_t k, int64_t stride,
                   int64_t pad) {
  check(k >= 1 && stride >= 1 && pad >= 0,
        fmt::format("{}: {} needs kernel >= 1, stride >= 1, pad >= 0, got k {} stride {} pad {}",
                    op, dim, k, stride, pad));
  check(in + 2 * pad >= k, fmt::format("{}: {} of {} (padded by {} each side) is smaller than the "
                                       "kernel {}",
                                       op, dim, in, pad, k));
  return (in + 2 * pad - k) / stride + 1;
}

void fill_conv_ints(kernels::OpCall& c, const Conv2dParams& p) {
  c.ints[0] = p.stride_h;
  c.ints[1] = p.stride_w;
  c.ints[2] = p.pad_h;
  c.ints[3] = p.pad_w;
}

void fill_pool_ints(kernels::OpCall& c, const Pool2dParams& p) {
  c.ints[0] = p.kh;
  c.ints[1] = p.kw;
  c.ints[2] = p.stride_h;
  c.ints[3] = p.stride_w;
  c.ints[4] = p.pad_h;
  c.ints[5] = p.pad_w;
}

// Pooled (N, C, Ho, Wo) for x. PyTorch's limit pad <= k/2 keeps every window partly inside the
// input, so a max window never sees only padding and avg's divisor is always kh * kw.
Shape pool_out_shape(const char* op, const Shape& x, const Pool2dParams& p) {
  check(2 * p.pad_h <= p.kh && 2 * p.pad_w <= p.kw,
        fmt::format("{}: padding ({}, {}) must be at most half the kernel ({}, {})", op, p.pad_h,
                    p.pad_w, p.kh, p.kw));
  return Shape{x[0], x[1], window_out(op, "height", x[2], p.kh, p.stride_h, p.pad_h),
               window_out(op, "width", x[3], p.kw, p.stride_w, p.pad_w)};
}

Shape resized(const char* op, const Shape& x, int64_t h, int64_t w) {
  check(h >= 1 && w >= 1, fmt::format("{}: output size ({}, {}) must be positive", op, h, w));
  return Shape{x[0], x[1], h, w};
}

// The four upsampling wrappers: one NCHW tensor t (x, or gy for a backward) becomes (N, C, h, w).
// ints[0] is align_corners, which the nearest kernels ignore (false leaves the default 0).
Tensor resize(Op op, const char* what, const Tensor& t, int64_t h, int64_t w, bool align_corners) {
  const char* name = kernels::op_name(op);
  check_nchw(name, what, t);
  kernels::OpCall c =
      call_of({t}, {Tensor::empty(resized(name, t.shape(), h, w), t.dtype(), t.device())});
  c.ints[0] = align_corners;
  kernels::run(op, c);
  return c.out[0];
}

}  // namespace

// ---- conv2d -------------------------------------------------------------------------------------

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p) {
  check_nchw("conv2d", "x", x);
  check_nchw("conv2d", "w", w);
  check_same_dtype("conv2d", x, w);
  check(w.size(1) == x.size(1),
        fmt::format("conv2d: x {} has {} channels but w {} expects {}", x.shape().str(), x.size(1),
                    w.shape().str(), w.size(1)));
  kernels::OpCall c;
  c.in = {x, w};
  if (b.defined()) {
    check(b.rank() == 1 && b.size(0) == w.size(0) && b.dtype() == w.dtype(),
          fmt::format("conv2d: bias {} ({}) does not match w {}", b.shape().str(),
                      dtype_name(b.dtype()), w.shape().str()));
    c.in.push_back(b);
  }
  Shape out{x.size(0), w.size(0),
            window_out("conv2d", "height", x.size(2), w.size(2), p.stride_h, p.pad_h),
            window_out("conv2d", "width", x.size(3), w.size(3), p.stride_w, p.pad_w)};
  c.out = {Tensor::empty(out, x.dtype(), x.device())};
  fill_conv_ints(c, p);
  kernels::run(Op::conv2d, c);
  return c.out[0];
}

Conv2dGrads conv2d_bwd(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dParams& p,
                       bool with_bias) {
  check_nchw("conv2d_bwd", "gy", gy);
  check_nchw("conv2d_bwd", "x", x);
  check_nchw("conv2d_bwd", "w", w);
  check_same_dtype("conv2d_bwd", x, w);
  check_same_dtype("conv2d_bwd", gy, x);
  Shape expect{x.size(0), w.size(0),
               window_out("conv2d_bwd", "height", x.size(2), w.size(2), p.stride_h, p.pad_h),
               window_out("conv2d_bwd", "width", x.size(3), w.size(3), p.stride_w, p.pad_w)};
  check(w.size(1) == x.size(1) && gy.shape() == expect,
        fmt::format("conv2d_bwd: gy {} does not match x {} and w {} (expected gy {})",
                    gy.shape().str(), x.shape().str(), w.shape().str(), expect.str()));
  kernels::OpCall c;
  c.in = {gy, x, w};
  c.out = {Tensor::empty(x.shape(), x.dtype(), x.device()),
           Tensor::empty(w.shape(), w.dtype(), w.device())};
  if (with_bias) c.out.push_back(Tensor::empty(Shape{w.size(0)}, w.dtype(), w.device()));
  fill_conv_ints(c, p);
  kernels::run(Op::conv2d_bwd, c);
  Conv2dGrads g;
  g.gx = c.out[0];
  g.gw = c.out[1];
  if (with_bias) g.gb = c.out[2];
  return g;
}

// ---- upsampling ---------------------------------------------------------------------------------

Tensor upsample_nearest(const Tensor& x, int64_t out_h, int64_t out_w) {
  return resize(Op::upsample_nearest, "x", x, out_h, out_w, false);
}

Tensor upsample_nearest_bwd(const Tensor& gy, int64_t in_h, int64_t in_w) {
  return resize(Op::upsample_nearest_bwd, "gy", gy, in_h, in_w, false);
}

Tensor upsample_bilinear(const Tensor& x, int64_t out_h, int64_t out_w, bool align_corners) {
  return resize(Op::upsample_bilinear, "x", x, out_h, out_w, align_corners);
}

Tensor upsample_bilinear_bwd(const Tensor& gy, int64_t in_h, int64_t in_w, bool align_corners) {
  return resize(Op::upsample_bilinear_bwd, "gy", gy, in_h, in_w, align_corners);
}

// ---- pooling ------------------------------------------------------------------------------------

Tensor avg_pool2d(const Tensor& x, const Pool2dParams& p) {
  check_nchw("avg_pool2d", "x", x);
  kernels::OpCall c;
  c.in = {x};
  c.out = {Tensor::empty(pool_out_shape("avg_pool2d", x.shape(), p), x.dtype(), x.device())};
  fill_pool_ints(c, p);
  kernels::run(Op::avg_pool2d, c);
  return c.out[0];
}

Tensor avg_pool2d_bwd(const Tensor& gy, const Shape& x_shape, const Pool2dParams& p) {
  check_nchw("avg_pool2d_bwd", "gy", gy);
  check(x_shape.rank() == 4 && gy.shape() == pool_out_shape("avg_pool2d_bwd", x_shape, p),
        fmt::format("avg_pool2d_bwd: gy {} does not match x {} pooled", gy.shape().str(),
                    x_shape.str()));
  kernels::OpCall c;
  c.in = {gy};
  c.out = {Tensor::empty(x_shape, gy.dtype(), gy.device())};
  fill_pool_ints(c, p);
  kernels::run(Op::avg_pool2d_bwd, c);
  return c.out[0];
}

std::pair<Tensor, Tensor> max_pool2d(const Tensor& x, const Pool2dParams& p) {
  check_nchw("max_pool2d", "x", x);
  Shape out = pool_out_shape("max_pool2d", x.shape(), p);
  kernels::OpCall c;
  c.in = {x};
  c.out = {Tensor::empty(out, x.dtype(), x.device()), Tensor::empty(out, DType::I64, x.device())};
  fill_pool_ints(c, p);
  kernels::run(Op::max_pool2d, c);
  return {c.out[0], c.out[1]};
}

Tensor max_pool2d_bwd(const Tensor& gy, const Tensor& argmax, const Shape& x_shape) {
  check_nchw("max_pool2d_bwd", "gy", gy);
  check(argmax.defined() && argmax.dtype() == DType::I64 && argmax.shape() == gy.shape(),
        fmt::format("max_pool2d_bwd: argmax must be i64 of gy's shape {}", gy.shape().str()));
  check(x_shape.rank() == 4 && x_shape[0] == gy.size(0) && x_shape[1] == gy.size(1),
        fmt::format("max_pool2d_bwd: x {} does not match gy {}", x_shape.str(), gy.shape().str()));
  kernels::OpCall c;
  c.in = {gy, argmax};
  c.out = {Tensor::empty(x_shape, gy.dtype(), gy.device())};
  kernels::run(Op::max_pool2d_bwd, c);
  return c.out[0];
}

}  // namespace psvae::ops
