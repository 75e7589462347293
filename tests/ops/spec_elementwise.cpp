// Specs of the elementwise family against naive f64 loops: broadcasting binary ops and where,
// scalar ops, expand / sum_to, cast (with bf16 rounding of known values), and the 13 unary
// functions with their backward entries. Plus the behaviours the harness cannot see: the
// broadcast error message and bf16 round-to-nearest-even on exact halfway values.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>

#include "common/test_util.h"
#include "op_harness.h"

namespace psvae::test {

namespace {

using kernels::Op;

// ---- naive broadcasting reference ---------------------------------------------------------------

Shape naive_broadcast(const Shape& a, const Shape& b) {
  int r = std::max(a.rank(), b.rank());
  std::vector<int64_t> d(static_cast<size_t>(r));
  for (int i = 0; i < r; ++i) {
    int ia = i - (r - a.rank()), ib = i - (r - b.rank());
    int64_t x = ia >= 0 ? a[ia] : 1, y = ib >= 0 ? b[ib] : 1;
    d[static_cast<size_t>(i)] = std::max(x, y);
  }
  return Shape(d);
}

// Element of t (values v, any dtype as doubles) that broadcasting puts at flat index i of out.
double at_broadcast(const std::vector<double>& v, const Tensor& t, const Shape& out, int64_t i) {
  std::vector<int64_t> idx(static_cast<size_t>(out.rank()));
  for (int d = out.rank() - 1; d >= 0; --d) {
    idx[static_cast<size_t>(d)] = i % out[d];
    i /= out[d];
  }
  int64_t flat = 0;
  int lead = out.rank() - t.rank();
  for (int d = 0; d < t.rank(); ++d) {
    int64_t k = t.size(d) == 1 ? 0 : idx[static_cast<size_t>(d + lead)];
    flat = flat * t.size(d) + k;
  }
  return v[static_cast<size_t>(flat)];
}

Tensor zeros64(const Shape& s) { return Tensor::zeros(s, DType::F64); }
double* P(const Tensor& t) { return t.data<double>(); }

Shape shape_of(const std::vector<int64_t>& v) { return Shape(v); }

// ---- binary -------------------------------------------------------------------------------------

struct ShapePair {
  Shape a, b;
  bool gradcheck;
};

std::vector<OpCase> binary_cases(Generator& g, double blo, double bhi) {
  std::vector<ShapePair> ps = {
      {Shape{3, 5}, Shape{5}, true},           // bias over rows (trailing suffix)
      {Shape{4, 1, 3}, Shape{1, 5, 3}, true},  // both sides broadcast
      {Shape{2, 3}, Shape{}, true},            // scalar operand
      {Shape{}, Shape{2, 3}, true},            // scalar on the left
      {Shape{7}, Shape{7}, true},              // equal shapes
      {Shape{5, 1}, Shape{1, 7}, true},        // outer product
      {Shape{2, 1, 13}, Shape{13}, true},
      {Shape{6, 1}, Shape{1}, true},
      {Shape{1}, Shape{1}, true},
      {Shape{2, 1, 3, 1, 2, 1}, Shape{1, 4, 2, 5}, true},  // rank 6
      {Shape{150, 131}, Shape{150, 131}, false},           // > kParallelGrain, equal shapes
      {Shape{200, 97}, Shape{97}, false},                  // > kParallelGrain, bias rows
      {Shape{3, 40, 1}, Shape{2, 1, 40, 50}, false},       // strided, parallel rows
      {Shape{20000}, Shape{}, false},                      // one long row, chunked
  };
  std::vector<OpCase> cs;
  for (const ShapePair& p : ps) {
    OpCase c;
    c.label = p.a.str() + " . " + p.b.str();
    Tensor b = uniform(g, p.b, blo, bhi);
    c.inputs = {uniform(g, p.a, -2, 2), b};
    c.gradcheck = p.gradcheck;
    cs.push_back(c);
  }
  return cs;
}

OpSpec binary_spec(const char* name, Op op, std::function<double(double, double)> f,
                   std::function<ag::Var(const ag::Var&, const ag::Var&)> fn, double blo = -2,
                   double bhi = 2) {
  OpSpec s;
  s.name = name;
  s.covers = {op, Op::sum_to};
  s.cases = [blo, bhi](Generator& g) { return binary_cases(g, blo, bhi); };
  s.apply = single([fn](const std::vector<ag::Var>& v, const OpCase&) { return fn(v[0], v[1]); });
  s.reference = [f](const std::vector<Tensor>& in, const OpCase&) {
    Shape o = naive_broadcast(in[0].shape(), in[1].shape());
    Tensor y = zeros64(o);
    std::vector<double> a = as_doubles(in[0]), b = as_doubles(in[1]);
    for (int64_t i = 0; i < o.numel(); ++i)
      P(y)[i] = f(at_broadcast(a, in[0], o, i), at_broadcast(b, in[1], o, i));
    return std::vector<Tensor>{y};
  };
  return s;
}

}  // namespace

PSVAE_OP_SPEC(add) {
  return binary_spec(
      "add", Op::add, [](double a, double b) { return a + b; },
      [](const ag::Var& a, const ag::Var& b) { return a + b; });
}
PSVAE_OP_SPEC(sub) {
  return binary_spec(
      "sub", Op::sub, [](double a, double b) { return a - b; },
      [](const ag::Var& a, const ag::Var& b) { return a - b; });
}
PSVAE_OP_SPEC(mul) {
  return binary_spec(
      "mul", Op::mul, [](double a, double b) { return a * b; },
      [](const ag::Var& a, const ag::Var& b) { return a * b; });
}
// The divisor stays in [0.5, 2]: away from 0, where 1/b and its gradient blow up.
PSVAE_OP_SPEC(div) {
  OpSpec s = binary_spec(
      "div", Op::div, [](double a, double b) { return a / b; },
      [](const ag::Var& a, const ag::Var& b) { return a / b; }, 0.5, 2.0);
  s.covers.push_back(Op::mul);
  return s;
}

// where: cond of every dtype (nonzero = true), broadcast with both branches.
PSVAE_OP_SPEC(where) {
  OpSpec s;
  s.name = "where";
  s.covers = {Op::where, Op::sum_to};
  s.cases = [](Generator& g) {
    struct W {
      Shape c, a, b;
      DType dt;
      bool grad;
    };
    std::vector<W> ws = {
        {Shape{3, 5}, Shape{3, 5}, Shape{3, 5}, DType::I64, true},
        {Shape{3, 5}, Shape{5}, Shape{3, 1}, DType::I32, true},
        {Shape{4, 1, 1}, Shape{1, 5, 3}, Shape{}, DType::F64, true},
        {Shape{7}, Shape{2, 7}, Shape{7}, DType::I64, true},
        {Shape{}, Shape{2, 3}, Shape{2, 3}, DType::I32, true},
        {Shape{130, 131}, Shape{131}, Shape{130, 1}, DType::I64, false},
    };
    std::vector<OpCase> cs;
    for (const W& w : ws) {
      OpCase c;
      c.label = w.c.str() + " " + dtype_name(w.dt) + " ? " + w.a.str() + " : " + w.b.str();
      // Truth values 0, 1 and (for floats) -0.0 and 2.5: only the zeros select b.
      Tensor u = uniform(g, w.c, 0, 4);
      Tensor cond = Tensor::empty(w.c, w.dt);
      for (int64_t i = 0; i < cond.numel(); ++i) {
        int k = static_cast<int>(P(u)[i]);
        switch (w.dt) {
          case DType::I64: cond.data<int64_t>()[i] = k % 2; break;
          case DType::I32: cond.data<int32_t>()[i] = k % 2 ? -3 : 0; break;
          default: cond.data<double>()[i] = k == 0 ? 0.0 : k == 1 ? -0.0 : k == 2 ? 1.0 : 2.5;
        }
      }
      c.inputs = {cond, uniform(g, w.a), uniform(g, w.b)};
      c.wrt = {false, true, true};
      c.gradcheck = w.grad;
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase&) {
    return ag::where(v[0].data(), v[1], v[2]);
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase&) {
    Shape o = naive_broadcast(naive_broadcast(in[0].shape(), in[1].shape()), in[2].shape());
    Tensor y = zeros64(o);
    std::vector<double> c = as_doubles(in[0]), a = as_doubles(in[1]), b = as_doubles(in[2]);
    for (int64_t i = 0; i < o.numel(); ++i) P(y)
    [i] = at_broadcast(c, in[0], o, i) != 0 ? at_broadcast(a, in[1], o, i)
                                            : at_broadcast(b, in[2], o, i);
    return std::vector<Tensor>{y};
  };
  return s;
}

// ---- scalar ops ---------------------------------------------------------------------------------

namespace {
std::vector<OpCase> plain_cases(Generator& g, double lo, double hi,
                                std::vector<double> reals = {}) {
  std::vector<OpCase> cs;
  for (Shape sh : {Shape{7}, Shape{3, 5}, Shape{2, 1, 13}, Shape{1}, Shape{}, Shape{130, 131}}) {
    OpCase c;
    c.label = sh.str();
    c.inputs = {uniform(g, sh, lo, hi)};
    c.reals = reals;
    c.gradcheck = sh.numel() < 300;
    cs.push_back(c);
  }
  return cs;
}

OpSpec map_spec(const char* name, std::vector<Op> covers, std::function<double(double)> f,
                std::function<ag::Var(const ag::Var&)> fn) {
  OpSpec s;
  s.name = name;
  s.covers = covers;
  s.cases = [](Generator& g) { return plain_cases(g, -2, 2); };
  s.apply = single([fn](const std::vector<ag::Var>& v, const OpCase&) { return fn(v[0]); });
  s.reference = [f](const std::vector<Tensor>& in, const OpCase&) {
    Tensor y = zeros64(in[0].shape());
    for (int64_t i = 0; i < y.numel(); ++i) P(y)[i] = f(P(in[0])[i]);
    return std::vector<Tensor>{y};
  };
  return s;
}
}  // namespace

PSVAE_OP_SPEC(add_scalar) {
  return map_spec(
      "add_scalar", {Op::add_scalar}, [](double x) { return x + 0.75; },
      [](const ag::Var& x) { return x + 0.75; });
}
PSVAE_OP_SPEC(mul_scalar) {
  return map_spec(
      "mul_scalar", {Op::mul_scalar}, [](double x) { return x * -1.5; },
      [](const ag::Var& x) { return -1.5 * x; });
}
PSVAE_OP_SPEC(neg) {
  return map_spec(
      "neg", {Op::mul_scalar}, [](double x) { return -x; }, [](const ag::Var& x) { return -x; });
}

// ---- expand and sum_to ------------------------------------------------------------------------

namespace {
struct ShapeTo {
  Shape from, to;
  bool gradcheck;
};
}  // namespace

PSVAE_OP_SPEC(expand) {
  OpSpec s;
  s.name = "expand";
  s.covers = {Op::expand, Op::sum_to};
  s.cases = [](Generator& g) {
    std::vector<ShapeTo> ps = {
        {Shape{3, 1}, Shape{3, 4}, true},       {Shape{5}, Shape{2, 3, 5}, true},
        {Shape{}, Shape{4, 3}, true},           {Shape{1, 4, 1}, Shape{2, 4, 3}, true},
        {Shape{2, 3}, Shape{2, 3}, true},       {Shape{1, 13}, Shape{7, 1, 13}, true},
        {Shape{131}, Shape{3, 50, 131}, false}, {Shape{40, 1}, Shape{3, 40, 170}, false},
    };
    std::vector<OpCase> cs;
    for (const ShapeTo& p : ps) {
      OpCase c;
      c.label = p.from.str() + " -> " + p.to.str();
      c.inputs = {uniform(g, p.from)};
      c.ints = p.to.vec();
      c.gradcheck = p.gradcheck;
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase& c) {
    return ag::expand(v[0], shape_of(c.ints));
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    Shape o = shape_of(c.ints);
    Tensor y = zeros64(o);
    std::vector<double> x = as_doubles(in[0]);
    for (int64_t i = 0; i < o.numel(); ++i) P(y)[i] = at_broadcast(x, in[0], o, i);
    return std::vector<Tensor>{y};
  };
  return s;
}

// sum_to has no autograd function of its own (it is the backward of broadcasting), so this spec
// calls the op directly and checks the forward only; its gradient is expand's forward.
PSVAE_OP_SPEC(sum_to) {
  OpSpec s;
  s.name = "sum_to";
  s.covers = {Op::sum_to};
  s.gradcheck = false;
  s.cases = [](Generator& g) {
    std::vector<ShapeTo> ps = {
        {Shape{2, 3, 4}, Shape{4}, false},
        {Shape{2, 3, 4}, Shape{3, 1}, false},
        {Shape{5, 7}, Shape{1, 7}, false},
        {Shape{6, 1, 5}, Shape{1, 1, 5}, false},
        {Shape{4, 3}, Shape{}, false},
        {Shape{4, 3}, Shape{4, 3}, false},
        {Shape{2, 3, 4, 5}, Shape{3, 1, 5}, false},
        {Shape{300, 70}, Shape{70}, false},
        {Shape{7, 30, 13, 11}, Shape{30, 1, 1}, false},
    };
    std::vector<OpCase> cs;
    for (const ShapeTo& p : ps) {
      OpCase c;
      c.label = p.from.str() + " -> " + p.to.str();
      c.inputs = {uniform(g, p.from)};
      c.ints = p.to.vec();
      c.gradcheck = false;
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase& c) {
    return ag::Var(ops::sum_to(v[0].data(), shape_of(c.ints)));
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    Shape o = shape_of(c.ints);
    Tensor y = zeros64(o);
    const Shape& xs = in[0].shape();
    // Scatter-add every input element into the output element it broadcasts from.
    int lead = xs.rank() - o.rank();
    for (int64_t i = 0; i < xs.numel(); ++i) {
      int64_t rem = i, flat = 0, mult = 1;
      for (int d = xs.rank() - 1; d >= 0; --d) {
        int64_t k = rem % xs[d];
        rem /= xs[d];
        int od = d - lead;
        if (od < 0) continue;
        flat += (o[od] == 1 ? 0 : k) * mult;
        mult *= o[od];
      }
      P(y)[flat] += P(in[0])[i];
    }
    return std::vector<Tensor>{y};
  };
  return s;
}

// ---- cast ------------------------------------------------------------------------------------

namespace {
// Naive bf16 rounding of a float-representable value: keep 8 significant bits, ties to even
// (nearbyint under the default rounding mode).
double bf16_round(double x) {
  if (x == 0 || !std::isfinite(x)) return x;
  int e;
  double m = std::frexp(x, &e);  // x = m 2^e, 0.5 <= |m| < 1
  return std::ldexp(std::nearbyint(std::ldexp(m, 8)), e - 8);
}
}  // namespace

// The f64 and f32 walks both return the input's dtype, so the op is a round trip through the
// target dtype (ints[0]); ints[1] = 1 returns the target dtype itself (integers, compared exactly).
// Inputs are multiples of 1/8 (exact in f32 and bf16 up to |x| < 32) or, for the rounding case,
// float values chosen to exercise bf16's ties-to-even.
PSVAE_OP_SPEC(cast) {
  OpSpec s;
  s.name = "cast";
  s.covers = {Op::cast};
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs;
    auto eighths = [&](const Shape& sh) {
      Tensor t = uniform(g, sh, -20, 20);
      for (int64_t i = 0; i < t.numel(); ++i) P(t)[i] = std::round(P(t)[i] * 8) / 8;
      return t;
    };
    struct C {
      DType to;
      int direct;
    };
    for (C k : {C{DType::F64, 0}, C{DType::F32, 0}, C{DType::BF16, 0}, C{DType::I32, 0},
                C{DType::I64, 0}, C{DType::I32, 1}, C{DType::I64, 1}}) {
      OpCase c;
      c.label = std::string("via ") + dtype_name(k.to) + (k.direct ? " (direct)" : "");
      c.inputs = {eighths(Shape{3, 7})};
      c.ints = {static_cast<int64_t>(k.to), k.direct};
      c.gradcheck = k.to == DType::F64;  // the identity: its gradient passes straight through
      cs.push_back(c);
    }
    OpCase r;
    r.label = "bf16 rounding";
    // 1 + 2^-8 and 1 + 3 * 2^-8 are exact halfway cases (to 1 and 1 + 2^-6: even mantissas);
    // pi, 1/3, -1e-3, 1e30, 300.5 round normally.
    std::vector<double> v = {1.00390625, 1.01171875, -1.00390625, 3.14159265358979,
                             1.0 / 3,    -1e-3,      1e30,        300.5,
                             0.0,        -2.0};
    for (double& x : v) x = static_cast<float>(x);
    r.inputs = {Tensor::from_vector(v, Shape{10})};
    r.ints = {static_cast<int64_t>(DType::BF16), 0};
    r.gradcheck = false;
    cs.push_back(r);
    OpCase big;
    big.label = "(140, 130) via bf16";
    big.inputs = {eighths(Shape{140, 130})};
    big.ints = {static_cast<int64_t>(DType::BF16), 0};
    big.gradcheck = false;
    cs.push_back(big);
    return cs;
  };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase& c) {
    ag::Var y = ag::cast(v[0], static_cast<DType>(c.ints[0]));
    return c.ints[1] ? y : ag::cast(y, v[0].dtype());
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    DType to = static_cast<DType>(c.ints[0]);
    Tensor y = zeros64(in[0].shape());
    for (int64_t i = 0; i < y.numel(); ++i) {
      double x = P(in[0])[i];
      switch (to) {
        case DType::F32: P(y)[i] = static_cast<float>(x); break;
        case DType::BF16: P(y)[i] = bf16_round(static_cast<float>(x)); break;
        case DType::I32:
        case DType::I64: P(y)[i] = std::trunc(x); break;
        default: P(y)[i] = x;
      }
    }
    if (c.ints[1]) {
      Tensor yi = Tensor::empty(y.shape(), to);
      for (int64_t i = 0; i < y.numel(); ++i) {
        if (to == DType::I32)
          yi.data<int32_t>()[i] = static_cast<int32_t>(P(y)[i]);
        else
          yi.data<int64_t>()[i] = static_cast<int64_t>(P(y)[i]);
      }
      return std::vector<Tensor>{yi};
    }
    return std::vector<Tensor>{y};
  };
  return s;
}

// ---- unary functions
// ------------------------------------------------------------------------------

namespace {
// Inputs in [lo, hi]; `avoid` lists points (kinks, clamp edges) pushed at least 0.05 away so
// the gradcheck's 1e-6 steps never straddle them.
std::vector<OpCase> unary_cases(Generator& g, double lo, double hi, std::vector<double> reals,
                                std::vector<double> avoid) {
  std::vector<OpCase> cs = plain_cases(g, lo, hi, reals);
  for (OpCase& c : cs)
    for (int64_t i = 0; i < c.inputs[0].numel(); ++i) {
      double& x = P(c.inputs[0])[i];
      for (double a : avoid)
        if (std::abs(x - a) < 0.05) x = x < a ? a - 0.05 : a + 0.05;
    }
  return cs;
}

OpSpec unary_spec(const char* name, Op fwd, Op bwd, std::function<double(double, const OpCase&)> f,
                  std::function<ag::Var(const ag::Var&, const OpCase&)> fn, double lo, double hi,
                  std::vector<double> avoid = {}, std::vector<std::vector<double>> reals = {{}}) {
  OpSpec s;
  s.name = name;
  s.covers = {fwd, bwd};
  s.cases = [lo, hi, avoid, reals](Generator& g) {
    std::vector<OpCase> cs;
    for (const auto& r : reals) {
      std::vector<double> av = avoid;
      for (double p : r) av.push_back(p);  // clamp's edges
      for (OpCase& c : unary_cases(g, lo, hi, r, av)) {
        if (!r.empty()) c.label += fmt::format(" p={}", r[0]);
        cs.push_back(c);
      }
    }
    return cs;
  };
  s.apply = single([fn](const std::vector<ag::Var>& v, const OpCase& c) { return fn(v[0], c); });
  s.reference = [f](const std::vector<Tensor>& in, const OpCase& c) {
    Tensor y = zeros64(in[0].shape());
    for (int64_t i = 0; i < y.numel(); ++i) P(y)[i] = f(P(in[0])[i], c);
    return std::vector<Tensor>{y};
  };
  return s;
}

#define PSVAE_UNARY_SPEC_FN(op) [](const ag::Var& x, const OpCase&) { return ag::op(x); }
}  // namespace

PSVAE_OP_SPEC(exp) {
  return unary_spec(
      "exp", Op::exp, Op::exp_bwd, [](double x, const OpCase&) { return std::exp(x); },
      PSVAE_UNARY_SPEC_FN(exp), -3, 3);
}
PSVAE_OP_SPEC(log) {
  return unary_spec(
      "log", Op::log, Op::log_bwd, [](double x, const OpCase&) { return std::log(x); },
      PSVAE_UNARY_SPEC_FN(log), 0.2, 4);
}
PSVAE_OP_SPEC(sqrt) {
  return unary_spec(
      "sqrt", Op::sqrt, Op::sqrt_bwd, [](double x, const OpCase&) { return std::sqrt(x); },
      PSVAE_UNARY_SPEC_FN(sqrt), 0.2, 4);
}
PSVAE_OP_SPEC(rsqrt) {
  return unary_spec(
      "rsqrt", Op::rsqrt, Op::rsqrt_bwd, [](double x, const OpCase&) { return 1.0 / std::sqrt(x); },
      PSVAE_UNARY_SPEC_FN(rsqrt), 0.2, 4);
}
PSVAE_OP_SPEC(tanh) {
  return unary_spec(
      "tanh", Op::tanh, Op::tanh_bwd,
      [](double x, const OpCase&) { return (std::exp(2 * x) - 1) / (std::exp(2 * x) + 1); },
      PSVAE_UNARY_SPEC_FN(tanh), -3, 3);
}
// Large |x| (exp(-x) overflowing f32 below -88) is checked by a test case at the end.
PSVAE_OP_SPEC(sigmoid) {
  return unary_spec(
      "sigmoid", Op::sigmoid, Op::sigmoid_bwd,
      [](double x, const OpCase&) { return 1 / (1 + std::exp(-x)); }, PSVAE_UNARY_SPEC_FN(sigmoid),
      -12, 12);
}
PSVAE_OP_SPEC(relu) {
  return unary_spec("relu", Op::relu, Op::relu_bwd,
                    [](double x, const OpCase&) { return x > 0 ? x : 0.0; },
                    PSVAE_UNARY_SPEC_FN(relu), -2, 2, {0.0});
}
PSVAE_OP_SPEC(silu) {
  return unary_spec(
      "silu", Op::silu, Op::silu_bwd,
      [](double x, const OpCase&) { return x * 0.5 * (1 + std::tanh(0.5 * x)); },
      PSVAE_UNARY_SPEC_FN(silu), -6, 6);
}
// PyTorch gelu(approximate='tanh'): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
PSVAE_OP_SPEC(gelu_tanh) {
  return unary_spec(
      "gelu_tanh", Op::gelu_tanh, Op::gelu_tanh_bwd,
      [](double x, const OpCase&) {
        const double pi = std::acos(-1.0);
        return 0.5 * x * (1 + std::tanh(std::sqrt(2 / pi) * (x + 0.044715 * x * x * x)));
      },
      PSVAE_UNARY_SPEC_FN(gelu_tanh), -5, 5);
}
PSVAE_OP_SPEC(gelu_erf) {
  return unary_spec(
      "gelu_erf", Op::gelu_erf, Op::gelu_erf_bwd,
      [](double x, const OpCase&) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); },
      PSVAE_UNARY_SPEC_FN(gelu_erf), -5, 5);
}
PSVAE_OP_SPEC(abs) {
  return unary_spec("abs", Op::abs, Op::abs_bwd,
                    [](double x, const OpCase&) { return x < 0 ? -x : x; },
                    PSVAE_UNARY_SPEC_FN(abs), -2, 2, {0.0});
}
// Integer exponents on signed inputs; fractional and negative ones on positive inputs.
PSVAE_OP_SPEC(pow_scalar) {
  OpSpec s = unary_spec(
      "pow_scalar", Op::pow_scalar, Op::pow_scalar_bwd,
      [](double x, const OpCase& c) { return std::exp(c.reals[0] * std::log(x)); },
      [](const ag::Var& x, const OpCase& c) { return ag::pow_scalar(x, c.reals[0]); }, 0.3, 2.5, {},
      {{2.5}, {-1.5}, {0.5}, {1.0}});
  OpSpec ints = unary_spec(
      "", Op::pow_scalar, Op::pow_scalar_bwd,
      [](double x, const OpCase& c) {
        double y = 1;
        for (int k = 0; k < static_cast<int>(c.reals[0]); ++k) y *= x;
        return y;
      },
      [](const ag::Var& x, const OpCase& c) { return ag::pow_scalar(x, c.reals[0]); }, -2, 2, {},
      {{2.0}, {3.0}, {0.0}});
  // One spec: fractional powers use exp(p ln x), integer ones repeated products.
  auto frac_cases = s.cases, int_cases = ints.cases;
  auto frac_ref = s.reference, int_ref = ints.reference;
  s.cases = [frac_cases, int_cases](Generator& g) {
    std::vector<OpCase> a = frac_cases(g), b = int_cases(g);
    for (OpCase& c : b) c.ints = {1};  // marks the integer-power cases for the reference
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  s.reference = [frac_ref, int_ref](const std::vector<Tensor>& in, const OpCase& c) {
    return c.ints.empty() ? frac_ref(in, c) : int_ref(in, c);
  };
  return s;
}
PSVAE_OP_SPEC(square) {
  OpSpec s = unary_spec(
      "square", Op::pow_scalar, Op::pow_scalar_bwd, [](double x, const OpCase&) { return x * x; },
      PSVAE_UNARY_SPEC_FN(square), -2, 2);
  return s;
}
// Gradient passes where lo <= x <= hi (PyTorch); inputs keep 0.05 away from both edges.
PSVAE_OP_SPEC(clamp) {
  return unary_spec(
      "clamp", Op::clamp, Op::clamp_bwd,
      [](double x, const OpCase& c) {
        return x < c.reals[0] ? c.reals[0] : (x > c.reals[1] ? c.reals[1] : x);
      },
      [](const ag::Var& x, const OpCase& c) { return ag::clamp(x, c.reals[0], c.reals[1]); }, -2, 2,
      {}, {{-0.5, 0.7}, {-3.0, 3.0}, {0.25, 0.25}});
}

// ---- behaviours the harness cannot see
// ------------------------------------------------------------

TEST_CASE("broadcast_shapes: result and an error naming both shapes") {
  CHECK((ops::broadcast_shapes(Shape{4, 1, 3}, Shape{1, 5, 3}) == Shape{4, 5, 3}));
  CHECK((ops::broadcast_shapes(Shape{}, Shape{2, 3}) == Shape{2, 3}));
  CHECK_THROWS_WITH_AS(ops::broadcast_shapes(Shape{3, 5}, Shape{4}),
                       doctest::Contains("(3, 5) and (4)"), std::invalid_argument);
  CHECK_THROWS_AS(ops::sum_to(Tensor::zeros(Shape{3, 5}), Shape{2, 5}), std::invalid_argument);
}

TEST_CASE("cast: known bf16 values, round to nearest even, and int truncation") {
  std::vector<float> in = {1.00390625f, 1.01171875f, 1.0f + 3.0f / 1024, -2.5f, 65536.5f, 1e-40f};
  Tensor t = ops::cast(Tensor::from_vector(in, Shape{6}), DType::BF16);
  std::vector<double> got = as_doubles(t);
  // 1 + 2^-8 ties down to 1 (even); 1 + 3*2^-8 ties up to 1 + 2^-6 (even); 1 + 3*2^-10 is below
  // the halfway point 1 + 4*2^-10 and rounds to 1; 65536.5 needs 17 bits and rounds to 65536.
  CHECK(got[0] == 1.0);
  CHECK(got[1] == 1.015625);
  CHECK(got[2] == 1.0);
  CHECK(got[3] == -2.5);
  CHECK(got[4] == 65536.0);
  CHECK(got[5] == std::ldexp(1.0, -133));  // float subnormal 71362 * 2^-149 -> bf16 1 * 2^-133
  Tensor x = Tensor::from_vector(std::vector<double>{-2.7, 2.7, -0.5, 7.0}, Shape{4});
  CHECK((ops::cast(x, DType::I32).to_vector<int32_t>() == std::vector<int32_t>{-2, 2, 0, 7}));
  CHECK((ops::cast(x, DType::I64).to_vector<int64_t>() == std::vector<int64_t>{-2, 2, 0, 7}));
  Tensor i = Tensor::from_vector(std::vector<int64_t>{-3, 5}, Shape{2});
  CHECK((as_doubles(ops::cast(i, DType::BF16)) == std::vector<double>{-3.0, 5.0}));
  CHECK((ops::cast(i, DType::I32).to_vector<int32_t>() == std::vector<int32_t>{-3, 5}));
  CHECK((ops::cast(x, DType::F64).storage().get() == x.storage().get()));  // same dtype: x itself
}

// Every ordered pair of the five dtypes, on values every dtype holds exactly.
TEST_CASE("cast: all 25 dtype pairs preserve exactly representable values") {
  const std::vector<double> v = {-3, 0, 5, 100, -128, 7};
  const DType all[] = {DType::F32, DType::F64, DType::BF16, DType::I32, DType::I64};
  for (DType from : all)
    for (DType to : all) {
      INFO(dtype_name(from), " -> ", dtype_name(to));
      Tensor x = ops::cast(Tensor::from_vector(v, Shape{2, 3}), from);
      Tensor y = ops::cast(x, to);
      CHECK(y.dtype() == to);
      CHECK((y.shape() == Shape{2, 3}));
      CHECK(as_doubles(y) == v);
    }
}

TEST_CASE("where: a bf16 condition, -0 counts as false") {
  std::vector<float> cf = {1.f, -0.f, 0.f, 0.5f};
  Tensor cond = ops::cast(Tensor::from_vector(cf, Shape{4}), DType::BF16);
  Tensor a = Tensor::full(Shape{4}, 1.0), b = Tensor::full(Shape{}, 2.0);
  CHECK((as_doubles(ops::where(cond, a, b)) == std::vector<double>{1, 2, 2, 1}));
}

TEST_CASE("sigmoid and silu stay finite for |x| = 1000") {
  Tensor x = Tensor::from_vector(std::vector<float>{-1000.f, 1000.f}, Shape{2});
  std::vector<double> s = as_doubles(ops::sigmoid(x)), u = as_doubles(ops::silu(x));
  CHECK(s[0] == 0.0);
  CHECK(s[1] == 1.0);
  CHECK(u[0] == 0.0);  // -1000 * 0, not -1000 * NaN
  CHECK(u[1] == 1000.0);
}

}  // namespace psvae::test
