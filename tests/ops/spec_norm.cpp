// Op specs of the norm family (layernorm, modulate, groupnorm) against naive f64 references. The
// specs go through the autograd functions, which return y only; the saved statistics (mean, rstd)
// that the CUDA kernels must also reproduce are checked by the plain tests at the end.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <omp.h>

#include <cmath>
#include <cstring>

#include "common/test_util.h"
#include "op_harness.h"

namespace psvae::test {

namespace {

using kernels::Op;
constexpr double kEps = 1e-5;

std::vector<double> vals(const Tensor& t) { return t.to_vector<double>(); }

// Normalises `count` groups of `len` contiguous values; ch(i, j) gives the affine channel of
// element j of group i (or -1 without affine). Returns y, mean, rstd.
struct NaiveNorm {
  std::vector<double> y, mean, rstd;
};
template <class ChannelOf>
NaiveNorm naive_norm(const std::vector<double>& x, int64_t count, int64_t len,
                     const std::vector<double>* w, const std::vector<double>* b, ChannelOf ch) {
  NaiveNorm o;
  o.y.resize(x.size());
  for (int64_t i = 0; i < count; ++i) {
    double m = 0, v = 0;
    for (int64_t j = 0; j < len; ++j) m += x[i * len + j];
    m /= len;
    for (int64_t j = 0; j < len; ++j) v += (x[i * len + j] - m) * (x[i * len + j] - m);
    double rs = 1.0 / std::sqrt(v / len + kEps);
    for (int64_t j = 0; j < len; ++j) {
      auto c = static_cast<size_t>(ch(i, j));
      double yv = (x[i * len + j] - m) * rs;
      if (w) yv *= (*w)[c];
      if (b) yv += (*b)[c];
      o.y[i * len + j] = yv;
    }
    o.mean.push_back(m);
    o.rstd.push_back(rs);
  }
  return o;
}

// Inputs are x, then w when ints[0], then b when ints[1].
ag::Var opt_input(const std::vector<ag::Var>& v, const OpCase& c, int which) {
  if (!c.ints[which]) return ag::Var();
  return v[static_cast<size_t>(1 + (which == 1 && c.ints[0] ? 1 : 0))];
}
const std::vector<double>* opt_vals(const std::vector<Tensor>& in, const OpCase& c, int which,
                                    std::vector<double>& store) {
  if (!c.ints[which]) return nullptr;
  store = vals(in[static_cast<size_t>(1 + (which == 1 && c.ints[0] ? 1 : 0))]);
  return &store;
}
std::string affine_label(const OpCase& c) {
  return c.ints[0] && c.ints[1] ? "affine" : c.ints[0] ? "w only" : c.ints[1] ? "b only" : "plain";
}

NaiveNorm naive_layernorm(const std::vector<Tensor>& in, const OpCase& c) {
  std::vector<double> ws, bs;
  const std::vector<double>* w = opt_vals(in, c, 0, ws);
  const std::vector<double>* b = opt_vals(in, c, 1, bs);
  int64_t D = in[0].size(-1);
  return naive_norm(vals(in[0]), in[0].numel() / D, D, w, b, [&](int64_t, int64_t j) { return j; });
}

NaiveNorm naive_groupnorm(const std::vector<Tensor>& in, const OpCase& c) {
  std::vector<double> ws, bs;
  const std::vector<double>* w = opt_vals(in, c, 0, ws);
  const std::vector<double>* b = opt_vals(in, c, 1, bs);
  const Tensor& x = in[0];
  int64_t G = c.ints[2], C = x.size(1), S = x.numel() / (x.size(0) * C), L = C / G * S;
  return naive_norm(vals(x), x.size(0) * G, L, w, b,
                    [&](int64_t i, int64_t j) { return (i % G) * (C / G) + j / S; });
}

}  // namespace

PSVAE_OP_SPEC(layernorm) {
  OpSpec s;
  s.name = "layernorm";
  s.covers = {Op::layernorm, Op::layernorm_bwd};
  s.cases = [](Generator& g) {
    struct L {
      Shape x;
      bool w, b, grad;
    };
    // D >= 2 everywhere: with D = 1 the variance is 0 and y is identically 0.
    const std::vector<L> shapes = {
        {{4, 5}, true, true, true},     {{3, 33}, false, false, true},
        {{2, 3, 2}, true, true, true},  {{5}, true, true, true},
        {{1, 33}, true, true, true},    {{3, 5}, true, false, true},
        {{3, 5}, false, true, true},    {{2, 1, 7}, false, false, true},
        {{64, 257}, true, true, false}, {{3, 40, 65}, false, false, false},
    };
    std::vector<OpCase> cases;
    for (const L& l : shapes) {
      OpCase c;
      c.ints = {l.w, l.b};
      c.label = fmt::format("x {} {}", l.x.str(), affine_label(c));
      // An offset mean (+3) checks that the variance does not cancel catastrophically.
      c.inputs = {uniform(g, l.x, 2.0, 4.0)};
      if (l.w) c.inputs.push_back(uniform(g, Shape{l.x[-1]}, 0.5, 1.5));
      if (l.b) c.inputs.push_back(uniform(g, Shape{l.x[-1]}));
      c.gradcheck = l.grad;
      cases.push_back(c);
    }
    return cases;
  };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase& c) {
    return ag::layer_norm(v[0], opt_input(v, c, 0), opt_input(v, c, 1), kEps);
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    return std::vector<Tensor>{Tensor::from_vector(naive_layernorm(in, c).y, in[0].shape())};
  };
  return s;
}

PSVAE_OP_SPEC(modulate) {
  OpSpec s;
  s.name = "modulate";
  s.covers = {Op::modulate, Op::modulate_bwd};
  s.cases = [](Generator& g) {
    const std::vector<std::pair<Shape, bool>> shapes = {{{2, 3, 5}, true},
                                                        {{1, 1, 1}, true},
                                                        {{3, 4, 7}, true},
                                                        {{1, 9, 33}, true},
                                                        {{2, 65, 70}, false}};
    std::vector<OpCase> cases;
    for (const auto& [x, grad] : shapes) {
      OpCase c;
      c.label = fmt::format("x {}", x.str());
      c.inputs = {uniform(g, x), uniform(g, Shape{x[0], x[2]}), uniform(g, Shape{x[0], x[2]})};
      c.gradcheck = grad;
      cases.push_back(c);
    }
    return cases;
  };
  s.apply = single(
      [](const std::vector<ag::Var>& v, const OpCase&) { return ag::modulate(v[0], v[1], v[2]); });
  s.reference = [](const std::vector<Tensor>& in, const OpCase&) {
    int64_t N = in[0].size(0), T = in[0].size(1), D = in[0].size(2);
    std::vector<double> x = vals(in[0]), sh = vals(in[1]), sc = vals(in[2]), y(x.size());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t d = 0; d < D; ++d) {
          size_t i = static_cast<size_t>((n * T + t) * D + d);
          y[i] = x[i] * (1.0 + sc[n * D + d]) + sh[n * D + d];
        }
    return std::vector<Tensor>{Tensor::from_vector(y, in[0].shape())};
  };
  return s;
}

PSVAE_OP_SPEC(groupnorm) {
  OpSpec s;
  s.name = "groupnorm";
  s.covers = {Op::groupnorm, Op::groupnorm_bwd};
  s.cases = [](Generator& g) {
    struct G {
      Shape x;
      int64_t groups;
      bool w, b, grad;
    };
    const std::vector<G> shapes = {
        {{2, 4, 3, 3}, 1, true, true, true},
        {{2, 4, 3, 3}, 2, true, true, true},
        {{2, 4, 3, 3}, 4, true, true, true},
        {{2, 4, 3, 3}, 2, false, false, true},
        {{2, 6, 5}, 3, true, true, true},
        {{1, 6, 5}, 6, false, false, true},
        {{3, 4}, 2, true, true, true},
        {{2, 4, 1, 5}, 2, true, false, true},
        {{2, 4, 3}, 2, false, true, true},
        {{2, 32, 9, 9}, 8, true, true, false},
        {{3, 12, 7, 5}, 12, false, false, false},
    };
    std::vector<OpCase> cases;
    for (const G& l : shapes) {
      OpCase c;
      c.ints = {l.w, l.b, l.groups};
      c.label = fmt::format("x {} G={} {}", l.x.str(), l.groups, affine_label(c));
      c.inputs = {uniform(g, l.x, 2.0, 4.0)};
      if (l.w) c.inputs.push_back(uniform(g, Shape{l.x[1]}, 0.5, 1.5));
      if (l.b) c.inputs.push_back(uniform(g, Shape{l.x[1]}));
      c.gradcheck = l.grad;
      cases.push_back(c);
    }
    return cases;
  };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase& c) {
    return ag::group_norm(v[0], static_cast<int>(c.ints[2]), opt_input(v, c, 0), opt_input(v, c, 1),
                          kEps);
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    return std::vector<Tensor>{Tensor::from_vector(naive_groupnorm(in, c).y, in[0].shape())};
  };
  return s;
}

// The statistics the backward reuses (and the CUDA kernels must match): mean and rstd.
TEST_CASE("layernorm and groupnorm: saved mean and rstd match the reference") {
  Generator g(11);
  OpCase c;
  c.ints = {0, 0, 3};
  Tensor x = uniform(g, Shape{2, 3, 7}, -2.0, 5.0);
  NaiveNorm ln = naive_layernorm({x}, c);
  ops::NormOut o = ops::layernorm(x, Tensor(), Tensor(), kEps);
  CHECK(compare(o.mean, Tensor::from_vector(ln.mean, Shape{2, 3}), 1e-14).ok);
  CHECK(compare(o.rstd, Tensor::from_vector(ln.rstd, Shape{2, 3}), 1e-14).ok);

  Tensor xg = uniform(g, Shape{2, 6, 2, 3}, -2.0, 5.0);
  NaiveNorm gn = naive_groupnorm({xg}, c);
  ops::NormOut og = ops::groupnorm(xg, 3, Tensor(), Tensor(), kEps);
  CHECK(compare(og.mean, Tensor::from_vector(gn.mean, Shape{2, 3}), 1e-14).ok);
  CHECK(compare(og.rstd, Tensor::from_vector(gn.rstd, Shape{2, 3}), 1e-14).ok);
}

TEST_CASE("norm ops: shape errors name the op and the shapes") {
  Tensor x = Tensor::zeros(Shape{2, 6, 4}, DType::F64);
  CHECK_THROWS_WITH_AS(ops::groupnorm(x, 4, Tensor(), Tensor(), kEps),
                       doctest::Contains("groupnorm: 4 groups do not divide the 6 channels"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::layernorm(x, Tensor::zeros(Shape{3}, DType::F64), Tensor(), kEps),
                       doctest::Contains("layernorm: affine parameter (3)"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::modulate(x, Tensor::zeros(Shape{2, 6}, DType::F64), x),
                       doctest::Contains("modulate: shift must be (2, 4)"), std::invalid_argument);
}

// Parameter gradients reduce over rows; the kernels give each gw/gb element to one thread, so the
// bits must not change with the thread count. Sizes are above kParallelGrain (2^14 elements) so
// the parallel loops really run.
TEST_CASE("norm backward kernels: bit-identical with 1 and 2 OpenMP threads") {
  Generator g(13);
  auto same = [](const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
  };
  auto f32 = [&](const Shape& s) {
    Tensor t = Tensor::empty(s, DType::F32);
    g.uniform_(t, -1, 1);
    return t;
  };
  auto twice = [&](auto fn) {
    int prev = omp_get_max_threads();
    omp_set_num_threads(1);
    auto r1 = fn();
    omp_set_num_threads(2);
    auto r2 = fn();
    omp_set_num_threads(prev);
    return std::make_pair(r1, r2);
  };
  Tensor x = f32(Shape{300, 97}), gy = f32(Shape{300, 97}), w = f32(Shape{97});
  ops::NormOut ln = ops::layernorm(x, w, f32(Shape{97}), kEps);
  auto [l1, l2] = twice([&] { return ops::layernorm_bwd(gy, x, ln.mean, ln.rstd, w); });
  CHECK(same(l1.gx, l2.gx));
  CHECK(same(l1.gw, l2.gw));
  CHECK(same(l1.gb, l2.gb));

  Tensor xg = f32(Shape{4, 12, 19, 23}), gyg = f32(Shape{4, 12, 19, 23}), wg = f32(Shape{12});
  ops::NormOut gn = ops::groupnorm(xg, 3, wg, f32(Shape{12}), kEps);
  auto [g1, g2] = twice([&] { return ops::groupnorm_bwd(gyg, xg, gn.mean, gn.rstd, 3, wg); });
  CHECK(same(g1.gx, g2.gx));
  CHECK(same(g1.gw, g2.gw));
  CHECK(same(g1.gb, g2.gb));

  Tensor xm = f32(Shape{2, 150, 70}), gym = f32(Shape{2, 150, 70}), sc = f32(Shape{2, 70});
  auto [m1, m2] = twice([&] { return ops::modulate_bwd(gym, xm, sc); });
  CHECK(same(m1.gx, m2.gx));
  CHECK(same(m1.gshift, m2.gshift));
  CHECK(same(m1.gscale, m2.gscale));
}

}  // namespace psvae::test
