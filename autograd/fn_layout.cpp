// Differentiable data movement. Every backward is another layout op: reshape <-> reshape,
// permute <-> inverse permute, slice <-> zero pad, concat <-> slices, embedding -> embedding_bwd.
#include "autograd/autocast.h"
#include "autograd/functions.h"

namespace psvae::ag {

namespace {

struct ReshapeNode : Node {
  Shape in_shape;
  const char* name() const override { return "reshape"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {g[0].reshape(in_shape)};
  }
};

struct PermuteNode : Node {
  std::vector<int> inverse;  // inverse[perm[i]] = i
  const char* name() const override { return "permute"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::permute(g[0], inverse)};
  }
};

struct ConcatNode : Node {
  int dim = 0;
  std::vector<int64_t> sizes;  // each input's extent along dim
  const char* name() const override { return "concat"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    std::vector<Tensor> r(sizes.size());
    int64_t at = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (needs_grad(i)) r[i] = ops::narrow(g[0], dim, at, sizes[i]);
      at += sizes[i];
    }
    return r;
  }
};

// One node with one output per piece: the backward concatenates the pieces' gradients (the
// engine passes zeros for pieces that got none), so no pad-and-add per piece.
struct SplitNode : Node {
  int dim = 0;
  const char* name() const override { return "split"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::concat(g, dim)};
  }
};

struct SliceNode : Node {
  Shape in_shape;
  std::vector<int64_t> starts;
  const char* name() const override { return "slice"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    std::vector<int64_t> after;
    for (int d = 0; d < in_shape.rank(); ++d)
      after.push_back(in_shape[d] - starts[static_cast<size_t>(d)] - g[0].size(d));
    return {ops::pad(g[0], starts, after, 0.0)};
  }
};

struct PadNode : Node {
  Shape in_shape;
  std::vector<int64_t> before;
  const char* name() const override { return "pad"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::slice(g[0], before, in_shape)};
  }
};

struct EmbeddingNode : Node {
  Tensor ids;
  int64_t rows = 0;
  const char* name() const override { return "embedding"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::embedding_bwd(g[0], ids, rows)};
  }
};

}  // namespace

Var reshape(const Var& x, const Shape& shape) {
  Tensor out = x.data().reshape(shape);  // checks the element count
  if (!any_requires_grad({x})) return Var(out);
  auto n = std::make_shared<ReshapeNode>();
  n->in_shape = x.shape();
  return attach(n, {x}, out);
}

Var reshape(const Var& x, std::initializer_list<int64_t> dims) {
  Tensor out = x.data().reshape(dims);
  return reshape(x, out.shape());
}

Var permute(const Var& x, const std::vector<int>& perm) {
  Tensor out = ops::permute(x.data(), perm);  // validates perm
  if (!any_requires_grad({x})) return Var(out);
  auto n = std::make_shared<PermuteNode>();
  n->inverse.resize(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) {
    int p = perm[i] < 0 ? perm[i] + x.rank() : perm[i];
    n->inverse[static_cast<size_t>(p)] = static_cast<int>(i);
  }
  return attach(n, {x}, out);
}

Var transpose(const Var& x, int d0, int d1) {
  int a = x.shape().norm(d0), b = x.shape().norm(d1);
  std::vector<int> perm(static_cast<size_t>(x.rank()));
  for (int i = 0; i < x.rank(); ++i) perm[static_cast<size_t>(i)] = i;
  std::swap(perm[static_cast<size_t>(a)], perm[static_cast<size_t>(b)]);
  return permute(x, perm);
}

Var concat(const std::vector<Var>& xs_in, int dim) {
  const std::vector<Var> xs = autocast::promote(xs_in);
  std::vector<Tensor> ts;
  for (const Var& x : xs) ts.push_back(x.data());
  Tensor out = ops::concat(ts, dim);  // validates shapes
  if (!any_requires_grad(xs)) return Var(out);
  auto n = std::make_shared<ConcatNode>();
  n->dim = out.shape().norm(dim);
  for (const Tensor& t : ts) n->sizes.push_back(t.size(n->dim));
  return attach(n, xs, out);
}

std::vector<Var> split(const Var& x, const std::vector<int64_t>& sizes, int dim) {
  std::vector<Tensor> pieces = ops::split(x.data(), sizes, dim);
  if (!any_requires_grad({x})) {
    std::vector<Var> out;
    for (const Tensor& p : pieces) out.emplace_back(p);
    return out;
  }
  auto n = std::make_shared<SplitNode>();
  n->dim = x.shape().norm(dim);
  return attach(n, {x}, pieces);
}

Var slice(const Var& x, const std::vector<int64_t>& starts, const Shape& sizes) {
  Tensor out = ops::slice(x.data(), starts, sizes);
  if (!any_requires_grad({x})) return Var(out);
  auto n = std::make_shared<SliceNode>();
  n->in_shape = x.shape();
  n->starts = starts;
  return attach(n, {x}, out);
}

Var narrow(const Var& x, int dim, int64_t start, int64_t length) {
  const int d = x.shape().norm(dim);
  std::vector<int64_t> starts(static_cast<size_t>(x.rank()), 0);
  starts[static_cast<size_t>(d)] = start;
  Shape sizes = x.shape();
  sizes[d] = length;
  return slice(x, starts, sizes);
}

Var pad(const Var& x, const std::vector<int64_t>& before, const std::vector<int64_t>& after,
        double value) {
  Tensor out = ops::pad(x.data(), before, after, value);
  if (!any_requires_grad({x})) return Var(out);
  auto n = std::make_shared<PadNode>();
  n->in_shape = x.shape();
  n->before = before;
  return attach(n, {x}, out);
}

Var embedding(const Var& table, const Tensor& ids) {
  Tensor out = ops::embedding(table.data(), ids);
  if (!any_requires_grad({table})) return Var(out);
  auto n = std::make_shared<EmbeddingNode>();
  n->ids = ids;
  n->rows = table.size(0);
  return attach(n, {table}, out);
}

}  // namespace psvae::ag
