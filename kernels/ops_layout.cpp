// Typed wrappers of the layout family: permute, concat, slice, pad, embedding. Shapes are
// validated here (messages name the op, the dim and the shapes); the kernels trust them.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kernels/ops.h"
#include "kernels/ops_common.h"

namespace psvae::ops {

using detail::call_of;

Tensor permute(const Tensor& x, const std::vector<int>& perm) {
  const int r = x.rank();
  check(static_cast<int>(perm.size()) == r,
        fmt::format("permute: {} dims in perm ({}) for shape {}", perm.size(),
                    fmt::join(perm, ", "), x.shape().str()));
  std::vector<bool> seen(static_cast<size_t>(r), false);
  std::vector<int64_t> dims;
  kernels::OpCall c = call_of({x}, {});
  for (int i = 0; i < r; ++i) {
    int p = perm[static_cast<size_t>(i)];
    int d = p < 0 ? p + r : p;
    check(d >= 0 && d < r && !seen[static_cast<size_t>(d)],
          fmt::format("permute: ({}) is not a permutation of the dims of shape {}",
                      fmt::join(perm, ", "), x.shape().str()));
    seen[static_cast<size_t>(d)] = true;
    dims.push_back(x.size(d));
    c.ints[static_cast<size_t>(i)] = d;
  }
  c.out.push_back(Tensor::empty(Shape(dims), x.dtype(), x.device()));
  kernels::run(Op::permute, c);
  return c.out[0];
}

Tensor transpose(const Tensor& x, int d0, int d1) {
  int a = x.shape().norm(d0), b = x.shape().norm(d1);
  std::vector<int> perm(static_cast<size_t>(x.rank()));
  for (int i = 0; i < x.rank(); ++i) perm[static_cast<size_t>(i)] = i;
  std::swap(perm[static_cast<size_t>(a)], perm[static_cast<size_t>(b)]);
  return permute(x, perm);
}

Tensor concat(const std::vector<Tensor>& xs, int dim) {
  check(!xs.empty(), "concat: no inputs");
  const Tensor& x0 = xs[0];
  check(x0.rank() > 0, "concat: rank-0 inputs have no dim to concatenate along");
  const int d = x0.shape().norm(dim);
  Shape out = x0.shape();
  out[d] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    bool ok = x.rank() == x0.rank() && x.dtype() == x0.dtype();
    for (int k = 0; ok && k < x.rank(); ++k) ok = k == d || x.size(k) == x0.size(k);
    check(ok, fmt::format("concat along dim {}: input {} is {} {}, input 0 is {} {} (all dims but "
                          "{} must match)",
                          d, i, dtype_name(x.dtype()), x.shape().str(), dtype_name(x0.dtype()),
                          x0.shape().str(), d));
    out[d] += x.size(d);
  }
  kernels::OpCall c = call_of(xs, {Tensor::empty(out, x0.dtype(), x0.device())});
  c.ints[0] = d;
  kernels::run(Op::concat, c);
  return c.out[0];
}

Tensor slice(const Tensor& x, const std::vector<int64_t>& starts, const Shape& sizes) {
  const int r = x.rank();
  check(static_cast<int>(starts.size()) == r && sizes.rank() == r,
        fmt::format("slice: {} starts and sizes {} for shape {} (need one per dim)", starts.size(),
                    sizes.str(), x.shape().str()));
  kernels::OpCall c = call_of({x}, {});
  for (int d = 0; d < r; ++d) {
    int64_t s = starts[static_cast<size_t>(d)];
    check(s >= 0 && s + sizes[d] <= x.size(d),
          fmt::format("slice: dim {} range [{}, {}) is outside [0, {}) of shape {}", d, s,
                      s + sizes[d], x.size(d), x.shape().str()));
    c.ints[static_cast<size_t>(d)] = s;
  }
  c.out.push_back(Tensor::empty(sizes, x.dtype(), x.device()));
  kernels::run(Op::slice, c);
  return c.out[0];
}

Tensor narrow(const Tensor& x, int dim, int64_t start, int64_t length) {
  const int d = x.shape().norm(dim);
  check(start >= 0 && length >= 0 && start + length <= x.size(d),
        fmt::format("narrow: dim {} range [{}, {}) is outside [0, {}) of shape {}", d, start,
                    start + length, x.size(d), x.shape().str()));
  std::vector<int64_t> starts(static_cast<size_t>(x.rank()), 0);
  starts[static_cast<size_t>(d)] = start;
  Shape sizes = x.shape();
  sizes[d] = length;
  return slice(x, starts, sizes);
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int dim) {
  const int d = x.shape().norm(dim);
  int64_t total = 0;
  for (int64_t s : sizes) {
    check(s >= 0, fmt::format("split: negative size in ({})", fmt::join(sizes, ", ")));
    total += s;
  }
  check(total == x.size(d),
        fmt::format("split: sizes ({}) sum to {}, dim {} of {} has {}", fmt::join(sizes, ", "),
                    total, d, x.shape().str(), x.size(d)));
  std::vector<Tensor> out;
  int64_t at = 0;
  for (int64_t s : sizes) {
    out.push_back(narrow(x, d, at, s));
    at += s;
  }
  return out;
}

Tensor pad(const Tensor& x, const std::vector<int64_t>& before, const std::vector<int64_t>& after,
           double value) {
  const int r = x.rank();
  check(static_cast<int>(before.size()) == r && static_cast<int>(after.size()) == r,
        fmt::format("pad: before ({}) and after ({}) need one entry per dim of shape {}",
                    fmt::join(before, ", "), fmt::join(after, ", "), x.shape().str()));
  Shape out = x.shape();
  kernels::OpCall c = call_of({x}, {});
  for (int d = 0; d < r; ++d) {
    int64_t b = before[static_cast<size_t>(d)], a = after[static_cast<size_t>(d)];
    check(b >= 0 && a >= 0, fmt::format("pad: negative padding ({}, {}) on dim {} of shape {}", b,
                                        a, d, x.shape().str()));
    out[d] = x.size(d) + b + a;
    c.ints[static_cast<size_t>(d)] = b;
  }
  c.reals[0] = value;
  c.out.push_back(Tensor::empty(out, x.dtype(), x.device()));
  kernels::run(Op::pad, c);
  return c.out[0];
}

Tensor embedding(const Tensor& table, const Tensor& ids) {
  check(table.rank() == 2,
        fmt::format("embedding: table must be (V, D), got {}", table.shape().str()));
  check(ids.dtype() == DType::I64 || ids.dtype() == DType::I32,
        fmt::format("embedding: ids must be i64 or i32, got {}", dtype_name(ids.dtype())));
  check(ids.rank() < kMaxRank,
        fmt::format("embedding: ids {} leave no room for the D dim", ids.shape().str()));
  Shape out = ids.shape();
  out.push_back(table.size(1));
  kernels::OpCall c = call_of({table, ids}, {Tensor::empty(out, table.dtype(), table.device())});
  kernels::run(Op::embedding, c);
  return c.out[0];
}

Tensor embedding_bwd(const Tensor& gy, const Tensor& ids, int64_t num_rows) {
  check(ids.dtype() == DType::I64 || ids.dtype() == DType::I32,
        fmt::format("embedding_bwd: ids must be i64 or i32, got {}", dtype_name(ids.dtype())));
  bool ok = gy.rank() == ids.rank() + 1;
  for (int d = 0; ok && d < ids.rank(); ++d) ok = gy.size(d) == ids.size(d);
  check(ok, fmt::format("embedding_bwd: gy {} must be ids {} plus a D dim", gy.shape().str(),
                        ids.shape().str()));
  check(num_rows >= 0, fmt::format("embedding_bwd: negative row count {}", num_rows));
  Shape out{num_rows, gy.size(-1)};
  kernels::OpCall c = call_of({gy, ids}, {Tensor::empty(out, gy.dtype(), gy.device())});
  kernels::run(Op::embedding_bwd, c);
  return c.out[0];
}

}  // namespace psvae::ops
