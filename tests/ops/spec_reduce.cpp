// Specs of the reduce family against naive f64 loops: sum / mean (one dim and all), max with its
// argmax (first index wins ties), var with its mean, softmax and log-softmax (rows of +-50 to
// prove the max subtraction). Reductions over the first, a middle and the last dim, keepdim both
// ways, odd sizes.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "common/test_util.h"
#include "op_harness.h"

namespace psvae::test {

namespace {

using kernels::Op;

double* P(const Tensor& t) { return t.data<double>(); }

// Output shape of a reduction over `dim` and the output index of each input element, found by
// walking the input's multi-index (independent of the kernels' (outer, n, inner) view).
Shape out_shape(const Shape& s, int dim, bool keepdim) {
  std::vector<int64_t> d;
  for (int i = 0; i < s.rank(); ++i) {
    if (i != dim)
      d.push_back(s[i]);
    else if (keepdim)
      d.push_back(1);
  }
  return Shape(d);
}
int64_t out_index(const Shape& s, int dim, int64_t i, int64_t* pos) {
  int64_t flat = 0, mult = 1;
  for (int d = s.rank() - 1; d >= 0; --d) {
    int64_t k = i % s[d];
    i /= s[d];
    if (d == dim) {
      *pos = k;
      continue;
    }
    flat += k * mult;
    mult *= s[d];
  }
  return flat;
}

// One case per (shape, dim, keepdim): ints = {dim, keepdim}. Small cases are gradchecked.
std::vector<OpCase> dim_cases(Generator& g, bool with_big = true) {
  struct D {
    Shape s;
    int dim;
    bool keep;
  };
  std::vector<D> ds = {
      {Shape{4, 7, 5}, 0, false}, {Shape{4, 7, 5}, 1, true},  {Shape{4, 7, 5}, 2, false},
      {Shape{4, 7, 5}, -1, true}, {Shape{4, 7, 5}, 0, true},  {Shape{13}, 0, false},
      {Shape{13}, 0, true},       {Shape{3, 1, 6}, 1, false}, {Shape{2, 3, 2, 5}, 2, false},
      {Shape{1, 9}, 0, false},
  };
  if (with_big) {
    ds.push_back({Shape{50, 300, 3}, 1, false});  // > kParallelGrain, inner 3
    ds.push_back({Shape{7, 33, 600}, 2, true});   // inner 1
    ds.push_back({Shape{40, 700}, 0, false});     // outer 1, three inner tiles (last partial)
  }
  std::vector<OpCase> cs;
  for (const D& d : ds) {
    OpCase c;
    c.label = fmt::format("{} dim {}{}", d.s.str(), d.dim, d.keep ? " keepdim" : "");
    c.inputs = {uniform(g, d.s, -2, 2)};
    c.ints = {d.dim, d.keep};
    c.gradcheck = d.s.numel() <= 300;
    cs.push_back(c);
  }
  return cs;
}

std::vector<OpCase> all_cases(Generator& g) {
  std::vector<OpCase> cs;
  for (Shape s : {Shape{3, 5}, Shape{7}, Shape{}, Shape{2, 1, 13}, Shape{30, 700}}) {
    OpCase c;
    c.label = s.str();
    c.inputs = {uniform(g, s, -2, 2)};
    c.gradcheck = s.numel() <= 300;
    cs.push_back(c);
  }
  return cs;
}

int dim_of(const OpCase& c, const Shape& s) {
  return static_cast<int>(c.ints[0] < 0 ? c.ints[0] + s.rank() : c.ints[0]);
}

Tensor naive_sum(const Tensor& x, const OpCase& c, bool mean) {
  const Shape& s = x.shape();
  int dim = dim_of(c, s);
  Tensor y = Tensor::zeros(out_shape(s, dim, c.ints[1] != 0), DType::F64);
  int64_t pos = 0;
  for (int64_t i = 0; i < s.numel(); ++i) P(y)[out_index(s, dim, i, &pos)] += P(x)[i];
  if (mean)
    for (int64_t i = 0; i < y.numel(); ++i) P(y)[i] /= static_cast<double>(s[dim]);
  return y;
}

Tensor naive_sum_all(const Tensor& x, bool mean) {
  double acc = 0;
  for (int64_t i = 0; i < x.numel(); ++i) acc += P(x)[i];
  return Tensor::scalar(mean ? acc / static_cast<double>(x.numel()) : acc, DType::F64);
}

}  // namespace

PSVAE_OP_SPEC(sum) {
  OpSpec s;
  s.name = "sum";
  s.covers = {Op::sum_dim, Op::expand};
  s.cases = [](Generator& g) { return dim_cases(g); };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase& c) {
    return ag::sum(v[0], static_cast<int>(c.ints[0]), c.ints[1] != 0);
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    return std::vector<Tensor>{naive_sum(in[0], c, false)};
  };
  return s;
}

PSVAE_OP_SPEC(mean) {
  OpSpec s;
  s.name = "mean";
  s.covers = {Op::sum_dim, Op::mul_scalar, Op::expand};
  s.cases = [](Generator& g) { return dim_cases(g); };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase& c) {
    return ag::mean(v[0], static_cast<int>(c.ints[0]), c.ints[1] != 0);
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    return std::vector<Tensor>{naive_sum(in[0], c, true)};
  };
  return s;
}

PSVAE_OP_SPEC(sum_all) {
  OpSpec s;
  s.name = "sum_all";
  s.covers = {Op::sum_dim, Op::expand};
  s.cases = all_cases;
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase&) { return ag::sum_all(v[0]); });
  s.reference = [](const std::vector<Tensor>& in, const OpCase&) {
    return std::vector<Tensor>{naive_sum_all(in[0], false)};
  };
  return s;
}

PSVAE_OP_SPEC(mean_all) {
  OpSpec s;
  s.name = "mean_all";
  s.covers = {Op::sum_dim, Op::mul_scalar, Op::expand};
  s.cases = all_cases;
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase&) { return ag::mean_all(v[0]); });
  s.reference = [](const std::vector<Tensor>& in, const OpCase&) {
    return std::vector<Tensor>{naive_sum_all(in[0], true)};
  };
  return s;
}

// max: values through autograd (gradient routed by max_dim_bwd) and the argmax from the op.
// Uniform inputs have no ties, so the gradient is well defined; the "ties" cases (values rounded
// to halves, forward only) check that the first index wins.
PSVAE_OP_SPEC(max) {
  OpSpec s;
  s.name = "max";
  s.covers = {Op::max_dim, Op::max_dim_bwd};
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs = dim_cases(g);
    for (OpCase c : dim_cases(g, false)) {
      for (int64_t i = 0; i < c.inputs[0].numel(); ++i)
        P(c.inputs[0])[i] = std::round(P(c.inputs[0])[i]);  // {-2..2}: many ties
      c.label += " ties";
      c.gradcheck = false;
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = [](const std::vector<ag::Var>& v, const OpCase& c) {
    int dim = static_cast<int>(c.ints[0]);
    bool keep = c.ints[1] != 0;
    return std::vector<ag::Var>{ag::max(v[0], dim, keep),
                                ag::Var(ops::max(v[0].data(), dim, keep).second)};
  };
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const Shape& sh = in[0].shape();
    int dim = dim_of(c, sh);
    Shape o = out_shape(sh, dim, c.ints[1] != 0);
    Tensor y = Tensor::full(o, -std::numeric_limits<double>::infinity(), DType::F64);
    Tensor arg = Tensor::zeros(o, DType::I64);
    int64_t pos = 0;
    for (int64_t i = 0; i < sh.numel(); ++i) {
      int64_t k = out_index(sh, dim, i, &pos);
      if (P(in[0])[i] > P(y)[k]) {  // strictly greater, in increasing pos: first index wins
        P(y)[k] = P(in[0])[i];
        arg.data<int64_t>()[k] = pos;
      }
    }
    return std::vector<Tensor>{y, arg};
  };
  return s;
}

// var with correction 0 and 1 (ints = {dim, keepdim, correction}); the second output is the
// mean var_dim returns alongside (forward only). Inputs offset by 100 check that the two-pass
// form does not cancel (E[x^2] - E[x]^2 would lose ~8 digits in f32).
PSVAE_OP_SPEC(var) {
  OpSpec s;
  s.name = "var";
  s.covers = {Op::var_dim, Op::var_dim_bwd};
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs;
    for (OpCase c : dim_cases(g)) {
      // n = 1 with correction 1 divides 0 by 0 (NaN, as PyTorch): not a useful case.
      const Shape& sh = c.inputs[0].shape();
      if (sh[static_cast<int>(c.ints[0])] == 1) continue;
      c.ints.push_back(1);
      cs.push_back(c);
    }
    for (OpCase c : dim_cases(g, false)) {
      c.ints.push_back(0);
      c.label += " correction 0";
      cs.push_back(c);
    }
    OpCase off;
    off.label = "(6, 50) + 100 dim 1";
    off.inputs = {uniform(g, Shape{6, 50}, 99, 101)};
    off.ints = {1, 0, 1};
    cs.push_back(off);
    return cs;
  };
  s.apply = [](const std::vector<ag::Var>& v, const OpCase& c) {
    int dim = static_cast<int>(c.ints[0]), corr = static_cast<int>(c.ints[2]);
    bool keep = c.ints[1] != 0;
    return std::vector<ag::Var>{ag::var(v[0], dim, corr, keep),
                                ag::Var(ops::var_mean(v[0].data(), dim, corr, keep).second)};
  };
  s.grad_outputs = {true, false};
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const Shape& sh = in[0].shape();
    int dim = dim_of(c, sh);
    Tensor mu = naive_sum(in[0], c, true);
    Tensor var = Tensor::zeros(mu.shape(), DType::F64);
    int64_t pos = 0;
    for (int64_t i = 0; i < sh.numel(); ++i) {
      int64_t k = out_index(sh, dim, i, &pos);
      double e = P(in[0])[i] - P(mu)[k];
      P(var)[k] += e * e;
    }
    for (int64_t k = 0; k < var.numel(); ++k) P(var)[k] /= static_cast<double>(sh[dim] - c.ints[2]);
    return std::vector<Tensor>{var, mu};
  };
  return s;
}

// ---- softmax family over the last dim
// ------------------------------------------------------------

namespace {
std::vector<OpCase> row_cases(Generator& g) {
  std::vector<OpCase> cs;
  struct R {
    Shape s;
    double scale;
    bool grad;
  };
  // Rows of +-50: exp(50) overflows nothing in f64 but e^(50 + 50) / e^(-50) style sums do in
  // f32 (e^88 is f32's limit), so only the max subtraction keeps the f32 pass finite.
  for (R r : {R{Shape{3, 7}, 2, true}, R{Shape{2, 3, 13}, 2, true}, R{Shape{1, 5}, 2, true},
              R{Shape{6}, 2, true}, R{Shape{4, 9}, 50, true}, R{Shape{2, 5}, 100, true},
              R{Shape{40, 1000}, 3, false}, R{Shape{8, 1}, 1, true}}) {
    OpCase c;
    c.label = fmt::format("{} x{}", r.s.str(), r.scale);
    c.inputs = {uniform(g, r.s, -r.scale, r.scale)};
    c.gradcheck = r.grad;
    cs.push_back(c);
  }
  return cs;
}

// Naive log-softmax of each row, computed with a long-double log-sum-exp.
Tensor naive_log_softmax(const Tensor& x) {
  Tensor y = Tensor::zeros(x.shape(), DType::F64);
  const int64_t D = x.size(-1);
  for (int64_t r = 0; r < x.numel() / D; ++r) {
    long double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < D; ++j) m = std::max<long double>(m, P(x)[r * D + j]);
    for (int64_t j = 0; j < D; ++j) s += std::exp(static_cast<long double>(P(x)[r * D + j]) - m);
    for (int64_t j = 0; j < D; ++j)
      P(y)[r * D + j] = static_cast<double>(P(x)[r * D + j] - m - std::log(s));
  }
  return y;
}
}  // namespace

PSVAE_OP_SPEC(softmax) {
  OpSpec s;
  s.name = "softmax";
  s.covers = {Op::softmax, Op::softmax_bwd};
  s.cases = row_cases;
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase&) { return ag::softmax(v[0]); });
  s.reference = [](const std::vector<Tensor>& in, const OpCase&) {
    Tensor y = naive_log_softmax(in[0]);
    for (int64_t i = 0; i < y.numel(); ++i) P(y)[i] = std::exp(P(y)[i]);
    return std::vector<Tensor>{y};
  };
  return s;
}

PSVAE_OP_SPEC(log_softmax) {
  OpSpec s;
  s.name = "log_softmax";
  s.covers = {Op::log_softmax, Op::log_softmax_bwd};
  s.cases = row_cases;
  s.apply =
      single([](const std::vector<ag::Var>& v, const OpCase&) { return ag::log_softmax(v[0]); });
  s.reference = [](const std::vector<Tensor>& in, const OpCase&) {
    return std::vector<Tensor>{naive_log_softmax(in[0])};
  };
  return s;
}

// ---- behaviours the harness cannot see
// ------------------------------------------------------------

TEST_CASE("reductions: errors name the op and the shape") {
  Tensor x = Tensor::zeros(Shape{2, 3});
  CHECK_THROWS_WITH_AS(ops::sum(x, 2), doctest::Contains("(2, 3)"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::var_mean(x, 0, 2), doctest::Contains("correction"),
                       std::invalid_argument);
}

TEST_CASE("softmax: a row spanning 2000 stays exact") {
  Tensor x = Tensor::from_vector(std::vector<float>{1000.f, 0.f, -1000.f}, Shape{1, 3});
  std::vector<double> y = as_doubles(ops::softmax(x)), l = as_doubles(ops::log_softmax(x));
  CHECK(y[0] == 1.0);
  CHECK(y[2] == 0.0);
  CHECK(l[0] == 0.0);
  CHECK(l[2] == -2000.0);
}

// The threading rule: outputs split across threads, each reduction serial, so the bits do not
// depend on the thread count. Sizes pass kParallelGrain (16384) so the parallel loops run.
TEST_CASE("reductions: bit-identical for 1 and 4 threads") {
  Generator g(7);
  Tensor x = uniform(g, Shape{60, 50, 37});
  Tensor x32 = ops::cast(x, DType::F32);
  auto run_all = [&] {
    std::vector<Tensor> r;
    for (const Tensor& t : {x, x32}) {
      r.push_back(ops::sum(t, 0));
      r.push_back(ops::sum(t, 1, true));
      r.push_back(ops::sum_all(t));
      r.push_back(ops::var_mean(t, 1).first);
      r.push_back(ops::max(t, 0).first);
      r.push_back(ops::softmax(t));
      r.push_back(ops::log_softmax(t));
      r.push_back(ops::sum_to(t, Shape{37}));
      r.push_back(ops::sum_to(t, Shape{50, 1}));
      r.push_back(ops::sum_to(t, Shape{60, 1, 37}));
    }
    return r;
  };
  int prev = omp_get_max_threads();
  omp_set_num_threads(1);
  std::vector<Tensor> one = run_all();
  omp_set_num_threads(4);
  std::vector<Tensor> four = run_all();
  omp_set_num_threads(prev);
  for (size_t i = 0; i < one.size(); ++i) {
    INFO("result ", i);
    CHECK(std::memcmp(one[i].raw_data(), four[i].raw_data(), one[i].nbytes()) == 0);
  }
}

}  // namespace psvae::test
