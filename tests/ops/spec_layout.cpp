// Op specs of the layout family: permute, concat, split, slice, pad, embedding. References are
// plain index arithmetic on doubles, written independently of the kernels.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <omp.h>

#include <cstring>

#include "common/test_util.h"
#include "op_harness.h"

namespace psvae::test {

namespace {

using ag::Var;

// Flat row-major index -> per-dim index.
std::vector<int64_t> unravel(int64_t flat, const Shape& s) {
  std::vector<int64_t> idx(static_cast<size_t>(s.rank()));
  for (int d = s.rank() - 1; d >= 0; --d) {
    idx[static_cast<size_t>(d)] = flat % s[d];
    flat /= s[d];
  }
  return idx;
}
int64_t ravel(const std::vector<int64_t>& idx, const Shape& s) {
  int64_t f = 0;
  for (int d = 0; d < s.rank(); ++d) f = f * s[d] + idx[static_cast<size_t>(d)];
  return f;
}

Tensor f64_from(const std::vector<double>& v, const Shape& s) { return Tensor::from_vector(v, s); }

std::vector<int64_t> head(const std::vector<int64_t>& v, size_t n) {
  return {v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n)};
}
std::vector<int64_t> tail(const std::vector<int64_t>& v, size_t from) {
  return {v.begin() + static_cast<std::ptrdiff_t>(from), v.end()};
}

}  // namespace

// ---- permute: ints = perm
// ------------------------------------------------------------------------
PSVAE_OP_SPEC(permute) {
  OpSpec s;
  s.name = "permute";
  s.covers = {kernels::Op::permute};
  s.cases = [](Generator& g) {
    struct P {
      Shape shape;
      std::vector<int64_t> perm;
    };
    std::vector<P> ps = {
        {{3, 5}, {1, 0}},
        {{1, 7}, {1, 0}},
        {{2, 3, 4}, {0, 2, 1}},
        {{2, 3, 4}, {2, 0, 1}},
        {{2, 3, 4}, {1, 0, 2}},        // last dim kept: block copy path
        {{2, 3, 4}, {0, 1, 2}},        // identity
        {{2, 5, 3, 4}, {0, 2, 1, 3}},  // (B,T,H,d) -> (B,H,T,d)
        {{2, 3, 1, 5}, {3, 1, 0, 2}},
        {{2, 3, 2, 3, 2}, {4, 2, 0, 3, 1}},
        {{2, 1, 3, 2, 3}, {0, 1, 3, 2, 4}},
        {{9, 13, 17}, {2, 1, 0}},
    };
    std::vector<OpCase> cs;
    for (const P& p : ps) {
      OpCase c;
      c.label = fmt::format("{} perm ({})", p.shape.str(), fmt::join(p.perm, ", "));
      c.inputs = {uniform(g, p.shape)};
      c.ints = p.perm;
      c.gradcheck = p.shape.numel() <= 300;
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = single([](const std::vector<Var>& v, const OpCase& c) {
    return ag::permute(v[0], std::vector<int>(c.ints.begin(), c.ints.end()));
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const Tensor& x = in[0];
    std::vector<int64_t> od;
    for (int64_t p : c.ints) od.push_back(x.size(static_cast<int>(p)));
    Shape os(od);
    std::vector<double> xv = as_doubles(x), y(static_cast<size_t>(os.numel()));
    for (int64_t f = 0; f < os.numel(); ++f) {
      std::vector<int64_t> oi = unravel(f, os), xi(oi.size());
      for (size_t i = 0; i < oi.size(); ++i) xi[static_cast<size_t>(c.ints[i])] = oi[i];
      y[static_cast<size_t>(f)] = xv[static_cast<size_t>(ravel(xi, x.shape()))];
    }
    return std::vector<Tensor>{f64_from(y, os)};
  };
  return s;
}

// ---- transpose (a permute)
// -----------------------------------------------------------------------
PSVAE_OP_SPEC(transpose) {
  OpSpec s;
  s.name = "transpose";
  s.covers = {kernels::Op::permute};
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs;
    for (auto [shape, d0, d1] : std::vector<std::tuple<Shape, int, int>>{
             {{4, 6}, 0, 1}, {{2, 3, 5}, -1, -2}, {{2, 3, 2, 4}, 1, 2}, {{3, 1, 2}, 0, 2}}) {
      OpCase c;
      c.label = fmt::format("{} swap {} {}", shape.str(), d0, d1);
      c.inputs = {uniform(g, shape)};
      c.ints = {d0, d1};
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = single([](const std::vector<Var>& v, const OpCase& c) {
    return ag::transpose(v[0], static_cast<int>(c.ints[0]), static_cast<int>(c.ints[1]));
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const Tensor& x = in[0];
    int a = x.shape().norm(static_cast<int>(c.ints[0])),
        b = x.shape().norm(static_cast<int>(c.ints[1]));
    Shape os = x.shape();
    os[a] = x.size(b);
    os[b] = x.size(a);
    std::vector<double> xv = as_doubles(x), y(static_cast<size_t>(os.numel()));
    for (int64_t f = 0; f < os.numel(); ++f) {
      std::vector<int64_t> i = unravel(f, os);
      std::swap(i[static_cast<size_t>(a)], i[static_cast<size_t>(b)]);
      y[static_cast<size_t>(f)] = xv[static_cast<size_t>(ravel(i, x.shape()))];
    }
    return std::vector<Tensor>{f64_from(y, os)};
  };
  return s;
}

// ---- concat: ints = {dim}
// ------------------------------------------------------------------------
PSVAE_OP_SPEC(concat) {
  OpSpec s;
  s.name = "concat";
  s.covers = {kernels::Op::concat, kernels::Op::slice};  // backward: slices
  s.cases = [](Generator& g) {
    struct P {
      std::vector<Shape> shapes;
      int dim;
    };
    std::vector<P> ps = {
        {{{2, 3}, {5, 3}}, 0},
        {{{3, 2}, {3, 5}, {3, 1}}, 1},
        {{{3, 2}, {3, 5}, {3, 1}}, -1},
        {{{2, 3, 4}, {2, 1, 4}, {2, 5, 4}}, 1},
        {{{2, 3, 4}, {2, 3, 7}}, 2},
        {{{1, 3, 4}, {3, 3, 4}, {2, 3, 4}}, 0},
        {{{2, 2, 3, 2}, {2, 3, 3, 2}}, 1},
        {{{2, 0, 3}, {2, 4, 3}}, 1},  // an empty input
        {{{7}}, 0},                   // a single input
        {{{33, 64, 9}, {33, 17, 9}}, 1},
    };
    std::vector<OpCase> cs;
    for (const P& p : ps) {
      OpCase c;
      std::vector<std::string> names;
      int64_t n = 0;
      for (const Shape& sh : p.shapes) {
        c.inputs.push_back(uniform(g, sh));
        names.push_back(sh.str());
        n += sh.numel();
      }
      c.label = fmt::format("{} along {}", fmt::join(names, " ++ "), p.dim);
      c.ints = {p.dim};
      c.gradcheck = n <= 300;
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = single([](const std::vector<Var>& v, const OpCase& c) {
    return ag::concat(v, static_cast<int>(c.ints[0]));
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const int d = in[0].shape().norm(static_cast<int>(c.ints[0]));
    Shape os = in[0].shape();
    os[d] = 0;
    for (const Tensor& t : in) os[d] += t.size(d);
    std::vector<double> y(static_cast<size_t>(os.numel()));
    for (int64_t f = 0; f < os.numel(); ++f) {
      std::vector<int64_t> i = unravel(f, os);
      int64_t at = i[static_cast<size_t>(d)];
      for (const Tensor& t : in) {
        if (at < t.size(d)) {
          i[static_cast<size_t>(d)] = at;
          y[static_cast<size_t>(f)] = as_doubles(t)[static_cast<size_t>(ravel(i, t.shape()))];
          break;
        }
        at -= t.size(d);
      }
    }
    return std::vector<Tensor>{f64_from(y, os)};
  };
  return s;
}

// ---- split: ints = {dim, size0, size1, ...}; one output per piece ------------------------------
PSVAE_OP_SPEC(split) {
  OpSpec s;
  s.name = "split";
  s.covers = {kernels::Op::slice, kernels::Op::concat};  // backward: concat of piece gradients
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs;
    for (auto [shape, ints] :
         std::vector<std::pair<Shape, std::vector<int64_t>>>{{{7, 3}, {0, 2, 5}},
                                                             {{2, 9, 3}, {1, 3, 3, 3}},
                                                             {{2, 3, 10}, {-1, 1, 4, 5}},
                                                             {{4, 6}, {1, 6}}}) {
      OpCase c;
      c.label =
          fmt::format("{} dim {} sizes ({})", shape.str(), ints[0], fmt::join(tail(ints, 1), ", "));
      c.inputs = {uniform(g, shape)};
      c.ints = ints;
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = [](const std::vector<Var>& v, const OpCase& c) {
    return ag::split(v[0], tail(c.ints, 1), static_cast<int>(c.ints[0]));
  };
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const Tensor& x = in[0];
    const int d = x.shape().norm(static_cast<int>(c.ints[0]));
    std::vector<double> xv = as_doubles(x);
    std::vector<Tensor> out;
    int64_t at = 0;
    for (size_t p = 1; p < c.ints.size(); ++p) {
      Shape os = x.shape();
      os[d] = c.ints[p];
      std::vector<double> y(static_cast<size_t>(os.numel()));
      for (int64_t f = 0; f < os.numel(); ++f) {
        std::vector<int64_t> i = unravel(f, os);
        i[static_cast<size_t>(d)] += at;
        y[static_cast<size_t>(f)] = xv[static_cast<size_t>(ravel(i, x.shape()))];
      }
      out.push_back(f64_from(y, os));
      at += c.ints[p];
    }
    return out;
  };
  return s;
}

// ---- slice: ints = starts (rank), then sizes (rank) ---------------------------------------------
PSVAE_OP_SPEC(slice) {
  OpSpec s;
  s.name = "slice";
  s.covers = {kernels::Op::slice, kernels::Op::pad};  // backward: zero pad
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs;
    for (auto [shape, ints] : std::vector<std::pair<Shape, std::vector<int64_t>>>{
             {{9}, {2, 5}},
             {{5, 7}, {1, 2, 3, 4}},
             {{5, 7}, {0, 0, 5, 7}},  // everything
             {{4, 5, 6}, {1, 0, 3, 2, 5, 1}},
             {{2, 3, 4, 5}, {1, 1, 0, 2, 1, 2, 4, 3}},
             {{3, 1, 4}, {2, 0, 1, 1, 1, 3}},
             {{20, 33, 40}, {3, 5, 7, 11, 17, 33}}}) {
      OpCase c;
      const size_t r = static_cast<size_t>(shape.rank());
      c.label = fmt::format("{} starts ({}) sizes ({})", shape.str(),
                            fmt::join(head(ints, r), ", "), fmt::join(tail(ints, r), ", "));
      c.inputs = {uniform(g, shape)};
      c.ints = ints;
      c.gradcheck = shape.numel() <= 300;
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = single([](const std::vector<Var>& v, const OpCase& c) {
    const size_t r = static_cast<size_t>(v[0].rank());
    return ag::slice(v[0], head(c.ints, r), Shape(tail(c.ints, r)));
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const Tensor& x = in[0];
    const size_t r = static_cast<size_t>(x.rank());
    Shape os(tail(c.ints, r));
    std::vector<double> xv = as_doubles(x), y(static_cast<size_t>(os.numel()));
    for (int64_t f = 0; f < os.numel(); ++f) {
      std::vector<int64_t> i = unravel(f, os);
      for (size_t d = 0; d < r; ++d) i[d] += c.ints[d];
      y[static_cast<size_t>(f)] = xv[static_cast<size_t>(ravel(i, x.shape()))];
    }
    return std::vector<Tensor>{f64_from(y, os)};
  };
  return s;
}

// ---- narrow (a slice on one dim): ints = {dim, start, length} ----------------------------------
PSVAE_OP_SPEC(narrow) {
  OpSpec s;
  s.name = "narrow";
  s.covers = {kernels::Op::slice, kernels::Op::pad};
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs;
    for (auto [shape, ints] : std::vector<std::pair<Shape, std::vector<int64_t>>>{
             {{6, 4}, {0, 1, 3}}, {{3, 8, 2}, {1, 5, 3}}, {{3, 4, 5}, {-1, 0, 1}}}) {
      OpCase c;
      c.label = fmt::format("{} dim {} [{}, +{})", shape.str(), ints[0], ints[1], ints[2]);
      c.inputs = {uniform(g, shape)};
      c.ints = ints;
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = single([](const std::vector<Var>& v, const OpCase& c) {
    return ag::narrow(v[0], static_cast<int>(c.ints[0]), c.ints[1], c.ints[2]);
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const Tensor& x = in[0];
    const int d = x.shape().norm(static_cast<int>(c.ints[0]));
    Shape os = x.shape();
    os[d] = c.ints[2];
    std::vector<double> xv = as_doubles(x), y(static_cast<size_t>(os.numel()));
    for (int64_t f = 0; f < os.numel(); ++f) {
      std::vector<int64_t> i = unravel(f, os);
      i[static_cast<size_t>(d)] += c.ints[1];
      y[static_cast<size_t>(f)] = xv[static_cast<size_t>(ravel(i, x.shape()))];
    }
    return std::vector<Tensor>{f64_from(y, os)};
  };
  return s;
}

// ---- pad: ints = before (rank), then after (rank); reals = {value} ------------------------------
PSVAE_OP_SPEC(pad) {
  OpSpec s;
  s.name = "pad";
  s.covers = {kernels::Op::pad, kernels::Op::slice};  // backward: slice
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs;
    for (auto [shape, ints, value] : std::vector<std::tuple<Shape, std::vector<int64_t>, double>>{
             {{5}, {2, 3}, 0.0},
             {{3, 4}, {1, 0, 2, 3}, 0.0},
             {{3, 4}, {0, 0, 0, 0}, 1.5},
             {{2, 3, 5}, {1, 2, 0, 0, 1, 3}, -2.0},
             {{2, 1, 3, 3}, {0, 0, 1, 1, 0, 0, 1, 1}, 0.0},  // NCHW spatial pad
             {{2, 0, 3}, {1, 1, 1, 0, 2, 0}, 0.5},           // empty input: all fill
             {{17, 30, 33}, {2, 1, 3, 1, 4, 2}, 0.25}}) {
      OpCase c;
      const size_t r = static_cast<size_t>(shape.rank());
      c.label = fmt::format("{} before ({}) after ({}) value {}", shape.str(),
                            fmt::join(head(ints, r), ", "), fmt::join(tail(ints, r), ", "), value);
      c.inputs = {uniform(g, shape)};
      c.ints = ints;
      c.reals = {value};
      c.gradcheck = shape.numel() <= 300 && shape.numel() > 0;
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = single([](const std::vector<Var>& v, const OpCase& c) {
    const size_t r = static_cast<size_t>(v[0].rank());
    return ag::pad(v[0], head(c.ints, r), tail(c.ints, r), c.reals[0]);
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const Tensor& x = in[0];
    const size_t r = static_cast<size_t>(x.rank());
    Shape os = x.shape();
    for (size_t d = 0; d < r; ++d) os[static_cast<int>(d)] += c.ints[d] + c.ints[r + d];
    std::vector<double> xv = as_doubles(x), y(static_cast<size_t>(os.numel()));
    for (int64_t f = 0; f < os.numel(); ++f) {
      std::vector<int64_t> i = unravel(f, os);
      bool inside = true;
      for (size_t d = 0; d < r; ++d) {
        i[d] -= c.ints[d];
        inside = inside && i[d] >= 0 && i[d] < x.size(static_cast<int>(d));
      }
      y[static_cast<size_t>(f)] =
          inside ? xv[static_cast<size_t>(ravel(i, x.shape()))] : c.reals[0];
    }
    return std::vector<Tensor>{f64_from(y, os)};
  };
  return s;
}

// ---- embedding: inputs (table (V,D), ids i64/i32)
// ------------------------------------------------
PSVAE_OP_SPEC(embedding) {
  OpSpec s;
  s.name = "embedding";
  s.covers = {kernels::Op::embedding, kernels::Op::embedding_bwd};
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs;
    auto ids_of = [&](const Shape& shape, int64_t V, bool i32) {
      Tensor u = uniform(g, shape, 0.0, static_cast<double>(V));
      std::vector<double> uv = as_doubles(u);
      std::vector<int64_t> v64;
      for (double x : uv) v64.push_back(std::min<int64_t>(static_cast<int64_t>(x), V - 1));
      if (!i32) return Tensor::from_vector(v64, shape);
      std::vector<int32_t> v32(v64.begin(), v64.end());
      return Tensor::from_vector(v32, shape);
    };
    struct P {
      int64_t V, D;
      Shape ids;
      bool i32;
    };
    for (const P& p : std::vector<P>{{5, 3, {4}, false},
                                     {5, 3, {4}, true},
                                     {4, 7, {3, 5}, false},  // 15 ids over 4 rows: repeats
                                     {6, 5, {2, 3, 2}, true},
                                     {1, 4, {3}, false},  // every id 0
                                     {10, 1, {9}, true},
                                     {300, 64, {8, 77}, false}}) {
      OpCase c;
      c.label =
          fmt::format("table ({}, {}) ids {} {}", p.V, p.D, p.ids.str(), p.i32 ? "i32" : "i64");
      c.inputs = {uniform(g, {p.V, p.D}), ids_of(p.ids, p.V, p.i32)};
      c.gradcheck = p.V * p.D <= 300;
      cs.push_back(c);
    }
    {  // explicit repeats, in and out of order
      OpCase c;
      c.label = "table (4, 3) ids (3,1,3,0,3,1) i64";
      c.inputs = {uniform(g, {4, 3}), Tensor::from_vector<int64_t>({3, 1, 3, 0, 3, 1}, {6})};
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = single(
      [](const std::vector<Var>& v, const OpCase&) { return ag::embedding(v[0], v[1].data()); });
  s.reference = [](const std::vector<Tensor>& in, const OpCase&) {
    const Tensor &table = in[0], &ids = in[1];
    const int64_t D = table.size(1);
    std::vector<double> tv = as_doubles(table), idv = as_doubles(ids), y;
    for (double id : idv)
      for (int64_t d = 0; d < D; ++d)
        y.push_back(tv[static_cast<size_t>(static_cast<int64_t>(id) * D + d)]);
    Shape os = ids.shape();
    os.push_back(D);
    return std::vector<Tensor>{f64_from(y, os)};
  };
  return s;
}

// Rows of the table with repeated ids sum in id order inside one thread: same bits for any
// thread count.
TEST_CASE("embedding_bwd: bit-identical for 1 and 4 threads") {
  Generator g(3);
  const int64_t V = 300, D = 64, N = 4000;
  std::vector<int64_t> ids;
  for (double u : as_doubles(uniform(g, {N}, 0.0, 30.0)))
    ids.push_back(static_cast<int64_t>(u) * 10);
  Tensor idt = Tensor::from_vector(ids, {N});
  Tensor gy = Tensor::empty({N, D}, DType::F32);
  g.normal_(gy);
  auto run = [&](int threads) {
    int prev = omp_get_max_threads();
    omp_set_num_threads(threads);
    Tensor r = ops::embedding_bwd(gy, idt, V);
    omp_set_num_threads(prev);
    return r;
  };
  Tensor a = run(1), b = run(4);
  CHECK(std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0);
}

TEST_CASE("layout ops: range errors name the op, the dim and the shape") {
  Tensor x = Tensor::zeros({3, 4}, DType::F32);
  CHECK_THROWS_WITH_AS(ops::embedding(x, Tensor::from_vector<int64_t>({0, 3}, {2})),
                       doctest::Contains("embedding: id 3 at position 1 is outside [0, 3)"),
                       std::out_of_range);
  CHECK_THROWS_WITH_AS(ops::embedding(x, Tensor::from_vector<int32_t>({-1}, {1})),
                       doctest::Contains("id -1"), std::out_of_range);
  CHECK_THROWS_WITH_AS(
      ops::slice(x, {1, 2}, Shape{2, 3}),
      doctest::Contains("slice: dim 1 range [2, 5) is outside [0, 4) of shape (3, 4)"),
      std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::narrow(x, 0, 2, 2), doctest::Contains("narrow: dim 0"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::concat({x, Tensor::zeros({2, 5}, DType::F32)}, 0),
                       doctest::Contains("concat along dim 0: input 1 is f32 (2, 5)"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::permute(x, {0, 0}),
                       doctest::Contains("permute: (0, 0) is not a permutation"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::split(x, {1, 1}, 0), doctest::Contains("split: sizes (1, 1) sum to 2"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::pad(x, {0, -1}, {0, 0}), doctest::Contains("pad: negative padding"),
                       std::invalid_argument);
}

TEST_CASE("reshape: a free view whose gradient reshapes back; one -1 is inferred") {
  Generator g(5);
  ag::Var x(uniform(g, {2, 3, 4}), true);
  ag::Var y = ag::reshape(x, {4, -1});
  CHECK(y.shape() == Shape({4, 6}));
  bool shares_storage = y.data().storage() == x.data().storage();
  CHECK(shares_storage);
  ag::Var z = ag::reshape(y, Shape{24});
  Tensor seed = uniform(g, {24});
  z.backward(seed);
  REQUIRE(x.grad().defined());
  CHECK(x.grad().shape() == x.shape());
  CHECK(as_doubles(x.grad()) == as_doubles(seed));
  CHECK_THROWS(ag::reshape(x, {5, -1}));
}

}  // namespace psvae::test
