// Op specs of the linalg family (matmul, linear) against naive triple-loop f64 references, plus
// the thread-count determinism check of the row-blocked Eigen GEMM.
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

std::vector<double> vals(const Tensor& t) { return t.to_vector<double>(); }

// x W^T + b over the rows of x (..., K) with W (N, K) and b (N) or undefined, in plain loops.
Tensor naive_linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  const int64_t N = w.size(0), K = w.size(1), R = x.shape().prod(0, x.rank() - 1);
  std::vector<double> X = vals(x), W = vals(w), Y(static_cast<size_t>(R * N));
  std::vector<double> B = b.defined() ? vals(b) : std::vector<double>(N, 0.0);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t n = 0; n < N; ++n) {
      double acc = B[static_cast<size_t>(n)];
      for (int64_t k = 0; k < K; ++k) acc += X[r * K + k] * W[n * K + k];
      Y[static_cast<size_t>(r * N + n)] = acc;
    }
  Shape out = x.shape();
  out[-1] = N;
  return Tensor::from_vector(Y, out);
}

// C = op(A) op(B) per batch entry; b shared when rank 2. Plain loops, sum in k order.
Tensor naive_matmul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  int64_t M = ta ? a.size(-1) : a.size(-2), K = ta ? a.size(-2) : a.size(-1);
  int64_t N = tb ? b.size(-2) : b.size(-1);
  int64_t batch = a.numel() / (M * K);
  bool shared = b.rank() == 2;
  std::vector<double> A = vals(a), B = vals(b), C(static_cast<size_t>(batch * M * N));
  for (int64_t p = 0; p < batch; ++p) {
    const double* ap = A.data() + p * M * K;
    const double* bp = B.data() + (shared ? 0 : p * K * N);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k)
          s += (ta ? ap[k * M + i] : ap[i * K + k]) * (tb ? bp[j * K + k] : bp[k * N + j]);
        C[static_cast<size_t>((p * M + i) * N + j)] = s;
      }
  }
  Shape out;
  for (int d = 0; d < a.rank() - 2; ++d) out.push_back(a.size(d));
  out.push_back(M);
  out.push_back(N);
  return Tensor::from_vector(C, out);
}

// batch dims (empty for 2-D), M, K, N, shared B, gradcheck
struct MatmulShape {
  std::vector<int64_t> batch;
  int64_t M, K, N;
  bool shared;
  bool grad;
};

}  // namespace

PSVAE_OP_SPEC(matmul) {
  OpSpec s;
  s.name = "matmul";
  s.covers = {Op::matmul};
  s.cases = [](Generator& g) {
    // Sizes 1, 5, 7, 13, 33: none a multiple of 8 (the SIMD width), plus size-1 dims. Gradcheck
    // cases stay under ~300 elements per input.
    const std::vector<MatmulShape> shapes = {
        {{}, 1, 1, 1, false, true},     {{}, 7, 13, 5, false, true},
        {{}, 13, 7, 33, false, true},   {{}, 1, 33, 7, false, true},
        {{2, 3}, 5, 4, 6, false, true}, {{3}, 7, 5, 6, true, true},
        {{2, 2}, 1, 7, 13, true, true}, {{2}, 33, 33, 33, false, false},
        {{3}, 70, 33, 65, true, false}, {{}, 130, 40, 67, false, false},
    };
    std::vector<OpCase> cases;
    for (const MatmulShape& m : shapes)
      for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb) {
          Shape sa(m.batch), sb(m.shared ? std::vector<int64_t>{} : m.batch);
          sa.push_back(ta ? m.K : m.M);
          sa.push_back(ta ? m.M : m.K);
          sb.push_back(tb ? m.N : m.K);
          sb.push_back(tb ? m.K : m.N);
          OpCase c;
          c.label =
              fmt::format("a {}{} b {}{}", sa.str(), ta ? "^T" : "", sb.str(), tb ? "^T" : "");
          c.inputs = {uniform(g, sa), uniform(g, sb)};
          c.ints = {ta, tb};
          c.gradcheck = m.grad;
          cases.push_back(c);
        }
    return cases;
  };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase& c) {
    return ag::matmul(v[0], v[1], c.ints[0] != 0, c.ints[1] != 0);
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    return std::vector<Tensor>{naive_matmul(in[0], in[1], c.ints[0] != 0, c.ints[1] != 0)};
  };
  return s;
}

PSVAE_OP_SPEC(linear) {
  OpSpec s;
  s.name = "linear";
  s.covers = {Op::linear};
  s.cases = [](Generator& g) {
    // x shape, N, bias, gradcheck
    struct L {
      Shape x;
      int64_t N;
      bool bias, grad;
    };
    const std::vector<L> shapes = {
        {{5, 7}, 3, true, true},     {{5, 7}, 3, false, true},       {{2, 3, 7}, 4, true, true},
        {{2, 3, 7}, 4, false, true}, {{6}, 5, true, true},           {{1, 1}, 1, true, true},
        {{4, 1, 13}, 9, true, true}, {{2, 33, 40}, 17, true, false}, {{70, 65}, 33, false, false},
    };
    std::vector<OpCase> cases;
    for (const L& l : shapes) {
      OpCase c;
      c.label = fmt::format("x {} W ({}, {}){}", l.x.str(), l.N, l.x[-1], l.bias ? " + b" : "");
      c.inputs = {uniform(g, l.x), uniform(g, Shape{l.N, l.x[-1]})};
      if (l.bias) c.inputs.push_back(uniform(g, Shape{l.N}));
      c.gradcheck = l.grad;
      cases.push_back(c);
    }
    return cases;
  };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase&) {
    return ag::linear(v[0], v[1], v.size() > 2 ? v[2] : ag::Var());
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase&) {
    return std::vector<Tensor>{naive_linear(in[0], in[1], in.size() > 2 ? in[2] : Tensor())};
  };
  return s;
}

// The fused MLP, fc2(gelu_tanh(fc1(x))): its forward runs linear_gelu then linear, its backward
// linear_gelu_bwd (the gradient through fc2 and the GELU, and fc1's bias gradient) and three
// GEMMs; the gradcheck of every input covers both new ops.
PSVAE_OP_SPEC(mlp_gelu) {
  OpSpec s;
  s.name = "mlp_gelu";
  s.covers = {Op::linear_gelu, Op::linear_gelu_bwd};
  s.cases = [](Generator& g) {
    struct M {
      Shape x;
      int64_t H, N;
      bool b2, grad;
    };
    const std::vector<M> shapes = {
        {{5, 7}, 6, 3, true, true},
        {{2, 3, 4}, 9, 5, true, true},
        {{1, 1}, 1, 1, true, true},
        {{6}, 4, 2, false, true},
        {{4, 1, 13}, 7, 3, false, true},
        {{2, 33, 40}, 65, 17, true, false},
        {{70, 65}, 33, 9, true, false},
        {{3, 2}, 70, 2, true, true},  // H = 70, gradchecked: a wider bias sum
    };
    std::vector<OpCase> cases;
    for (const M& m : shapes) {
      const int64_t K = m.x[-1];
      OpCase c;
      c.label = fmt::format("x {} W1 ({}, {}) W2 ({}, {}){}", m.x.str(), m.H, K, m.N, m.H,
                            m.b2 ? " + b2" : "");
      // Inputs over [-2, 2]: pre-activations reach where the GELU bends.
      c.inputs = {uniform(g, m.x, -2, 2), uniform(g, Shape{m.H, K}), uniform(g, Shape{m.H}),
                  uniform(g, Shape{m.N, m.H})};
      if (m.b2) c.inputs.push_back(uniform(g, Shape{m.N}));
      c.gradcheck = m.grad;
      cases.push_back(c);
    }
    return cases;
  };
  s.apply = single([](const std::vector<ag::Var>& v, const OpCase&) {
    return ag::mlp_gelu(v[0], v[1], v[2], v[3], v.size() > 4 ? v[4] : ag::Var());
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase&) {
    const Tensor p = naive_linear(in[0], in[1], in[2]);
    std::vector<double> a = vals(p);
    for (double& v : a)  // PyTorch's gelu(approximate='tanh'), in f64
      v = 0.5 * v * (1.0 + std::tanh(0.79788456080286535588 * (v + 0.044715 * v * v * v)));
    return std::vector<Tensor>{
        naive_linear(Tensor::from_vector(a, p.shape()), in[3], in.size() > 4 ? in[4] : Tensor())};
  };
  return s;
}

TEST_CASE("linear_gelu and linear_gelu_bwd: bad operands are refused, naming the op and shapes") {
  Generator g(5);
  const Tensor x = uniform(g, {4, 3}), w1 = uniform(g, {6, 3}), b1 = uniform(g, {6});
  CHECK_THROWS_WITH_AS(ops::linear_gelu(x, w1, Tensor()), doctest::Contains("linear_gelu: bias"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::linear_gelu(x, uniform(g, {6, 2}), b1),
                       doctest::Contains("linear_gelu: x (4, 3) and W (6, 2)"),
                       std::invalid_argument);
  const Tensor gy = uniform(g, {4, 5}), w2 = uniform(g, {5, 6}), pre = uniform(g, {4, 6});
  CHECK_NOTHROW(ops::linear_gelu_bwd(gy, w2, pre));
  CHECK_THROWS_WITH_AS(ops::linear_gelu_bwd(gy, w2, uniform(g, {3, 6})),
                       doctest::Contains("linear_gelu_bwd: g (4, 5), W (5, 6) and pre (3, 6)"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::linear_gelu_bwd(gy, uniform(g, {6, 5}), pre),
                       doctest::Contains("do not match"), std::invalid_argument);
}

// The CPU backend promises the same bits for any thread count (cpu_common.h). A 128x96x80 GEMM is
// two 64-row blocks, so with 2 threads each block runs on its own thread.
TEST_CASE("matmul: bit-identical with 1 and 2 OpenMP threads") {
  Generator g(7);
  for (DType dt : {DType::F32, DType::F64}) {
    for (int ta = 0; ta < 2; ++ta) {
      Tensor a = Tensor::empty(ta ? Shape{96, 128} : Shape{128, 96}, dt);
      Tensor b = Tensor::empty(Shape{96, 80}, dt);
      g.uniform_(a, -1, 1);
      g.uniform_(b, -1, 1);
      int prev = omp_get_max_threads();
      omp_set_num_threads(1);
      Tensor c1 = ops::matmul(a, b, ta != 0, false);
      omp_set_num_threads(2);
      Tensor c2 = ops::matmul(a, b, ta != 0, false);
      omp_set_num_threads(prev);
      REQUIRE(c1.shape() == Shape{128, 80});
      CHECK(std::memcmp(c1.raw_data(), c2.raw_data(), c1.nbytes()) == 0);
    }
  }
}

TEST_CASE("matmul and linear: shape errors name the op and the shapes") {
  Tensor a = Tensor::zeros(Shape{3, 4}, DType::F64), b = Tensor::zeros(Shape{5, 6}, DType::F64);
  CHECK_THROWS_WITH_AS(ops::matmul(a, b), doctest::Contains("matmul: inner dims differ (4 vs 5)"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::linear(a, b, Tensor()), doctest::Contains("linear: x (3, 4)"),
                       std::invalid_argument);
}

}  // namespace psvae::test
