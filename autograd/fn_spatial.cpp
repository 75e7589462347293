// Differentiable spatial ops (NCHW): conv2d, nearest / bilinear upsampling, average and max
// pooling. Each backward calls the op's _bwd table entry.
#include "autograd/autocast.h"
#include "autograd/functions.h"
#include "autograd/node.h"
#include "kernels/ops.h"

namespace psvae::ag {

namespace {

struct Conv2dNode : Node {
  Tensor x, w;
  ops::Conv2dParams p;
  bool with_bias = false;
  const char* name() const override { return "conv2d"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    // One kernel gives gx, gw and gb together; the im2col it needs is shared by gx and gw.
    ops::Conv2dGrads d = ops::conv2d_bwd(g[0], x, w, p, with_bias && needs_grad(2));
    std::vector<Tensor> r(3);
    if (needs_grad(0)) r[0] = d.gx;
    if (needs_grad(1)) r[1] = d.gw;
    if (needs_grad(2)) r[2] = d.gb;
    return r;
  }
};

struct UpsampleNearestNode : Node {
  int64_t in_h = 0, in_w = 0;
  const char* name() const override { return "upsample_nearest"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::upsample_nearest_bwd(g[0], in_h, in_w)};
  }
};

struct UpsampleBilinearNode : Node {
  int64_t in_h = 0, in_w = 0;
  bool align_corners = false;
  const char* name() const override { return "upsample_bilinear"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::upsample_bilinear_bwd(g[0], in_h, in_w, align_corners)};
  }
};

struct AvgPool2dNode : Node {
  Shape x_shape;
  ops::Pool2dParams p;
  const char* name() const override { return "avg_pool2d"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::avg_pool2d_bwd(g[0], x_shape, p)};
  }
};

struct MaxPool2dNode : Node {
  Tensor argmax;  // i64 (N, C, Ho, Wo), flat index into each input plane
  Shape x_shape;
  const char* name() const override { return "max_pool2d"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::max_pool2d_bwd(g[0], argmax, x_shape)};
  }
};

}  // namespace

Var conv2d(const Var& x_in, const Var& w_in, const Var& b_in, const ops::Conv2dParams& p) {
  const auto [x, w, b] = autocast::gemm_inputs(x_in, w_in, b_in);
  Tensor out = ops::conv2d(x.data(), w.data(), b.defined() ? b.data() : Tensor(), p);
  if (!any_requires_grad({x, w, b})) return Var(out);
  auto n = std::make_shared<Conv2dNode>();
  n->x = x.data();
  n->w = w.data();
  n->p = p;
  n->with_bias = b.defined();
  return attach(n, {x, w, b}, out);
}

Var upsample_nearest(const Var& x, int64_t out_h, int64_t out_w) {
  Tensor out = ops::upsample_nearest(x.data(), out_h, out_w);
  if (!any_requires_grad({x})) return Var(out);
  auto n = std::make_shared<UpsampleNearestNode>();
  n->in_h = x.size(2);
  n->in_w = x.size(3);
  return attach(n, {x}, out);
}

Var upsample_bilinear(const Var& x, int64_t out_h, int64_t out_w, bool align_corners) {
  Tensor out = ops::upsample_bilinear(x.data(), out_h, out_w, align_corners);
  if (!any_requires_grad({x})) return Var(out);
  auto n = std::make_shared<UpsampleBilinearNode>();
  n->in_h = x.size(2);
  n->in_w = x.size(3);
  n->align_corners = align_corners;
  return attach(n, {x}, out);
}

Var avg_pool2d(const Var& x, const ops::Pool2dParams& p) {
  Tensor out = ops::avg_pool2d(x.data(), p);
  if (!any_requires_grad({x})) return Var(out);
  auto n = std::make_shared<AvgPool2dNode>();
  n->x_shape = x.shape();
  n->p = p;
  return attach(n, {x}, out);
}

Var max_pool2d(const Var& x, const ops::Pool2dParams& p) {
  auto [y, argmax] = ops::max_pool2d(x.data(), p);
  if (!any_requires_grad({x})) return Var(y);
  auto n = std::make_shared<MaxPool2dNode>();
  n->argmax = argmax;
  n->x_shape = x.shape();
  return attach(n, {x}, y);
}

}  // namespace psvae::ag
