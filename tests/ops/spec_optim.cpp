// Specs of the optimiser family. The updates are not differentiable (gradcheck off); each spec
// clones the state, runs one in-place step and compares every updated tensor with the formula
// evaluated in f64, written out independently of the kernel (which follows PyTorch's op order).
#include <doctest/doctest.h>

#include <cmath>

#include "common/test_util.h"
#include "op_harness.h"

namespace psvae::test {

namespace {

using kernels::Op;

// reals: lr, beta1, beta2, eps, weight_decay; ints: step.
struct AdamCase {
  Shape shape;
  int64_t step;
  double lr, beta1, beta2, eps, wd;
  bool fresh;  // m = v = 0, as on the first step
};

ops::AdamWParams params_of(const OpCase& c) {
  ops::AdamWParams p;
  p.lr = c.reals[0];
  p.beta1 = c.reals[1];
  p.beta2 = c.reals[2];
  p.eps = c.reals[3];
  p.weight_decay = c.reals[4];
  p.step = c.ints[0];
  return p;
}

}  // namespace

// Inputs: param, grad, m, v. lr 0.05 makes the update a visible part of the param (a relative
// error in it is not hidden by the param's own size); one case uses PyTorch's defaults.
PSVAE_OP_SPEC(adamw_step) {
  OpSpec s;
  s.name = "adamw_step";
  s.covers = {Op::adamw_step};
  s.gradcheck = false;
  s.cases = [](Generator& g) {
    const AdamCase list[] = {
        {Shape{7}, 1, 0.05, 0.9, 0.999, 1e-8, 0.0, true},
        {Shape{2, 3, 5}, 1, 0.05, 0.9, 0.999, 1e-8, 0.1, true},
        {Shape{7}, 10, 0.05, 0.9, 0.999, 1e-8, 0.1, false},
        {Shape{2, 3, 5}, 10, 0.05, 0.9, 0.95, 1e-8, 0.0, false},
        {Shape{1, 1}, 10, 0.05, 0.9, 0.999, 1e-8, 0.1, false},
        {Shape{13}, 1000, 1e-3, 0.9, 0.999, 1e-8, 0.01, false},    // torch.optim.AdamW defaults
        {Shape{300, 70}, 10, 0.05, 0.9, 0.999, 1e-8, 0.1, false},  // past kParallelGrain
    };
    std::vector<OpCase> cs;
    for (const AdamCase& a : list) {
      OpCase c;
      c.label = fmt::format("{} step {} lr {} betas ({}, {}) wd {}", a.shape.str(), a.step, a.lr,
                            a.beta1, a.beta2, a.wd);
      Tensor m = a.fresh ? Tensor::zeros(a.shape, DType::F64) : normal(g, a.shape, 0.0, 0.1);
      Tensor v = a.fresh ? Tensor::zeros(a.shape, DType::F64) : uniform(g, a.shape, 0.0, 0.01);
      c.inputs = {uniform(g, a.shape), normal(g, a.shape, 0.0, 0.1), m, v};
      c.reals = {a.lr, a.beta1, a.beta2, a.eps, a.wd};
      c.ints = {a.step};
      c.gradcheck = false;
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = [](const std::vector<ag::Var>& in, const OpCase& c) {
    Tensor p = in[0].data().clone(), m = in[2].data().clone(), v = in[3].data().clone();
    ops::adamw_step(p, in[1].data(), m, v, params_of(c));
    return std::vector<ag::Var>{ag::Var(p), ag::Var(m), ag::Var(v)};
  };
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const double lr = c.reals[0], b1 = c.reals[1], b2 = c.reals[2], eps = c.reals[3],
                 wd = c.reals[4];
    const double t = static_cast<double>(c.ints[0]);
    Tensor p = in[0].clone(), m = in[2].clone(), v = in[3].clone();
    const double* g = in[1].data<double>();
    for (int64_t i = 0; i < p.numel(); ++i) {
      double& pi = p.data<double>()[i];
      double& mi = m.data<double>()[i];
      double& vi = v.data<double>()[i];
      pi *= 1 - lr * wd;
      mi = b1 * mi + (1 - b1) * g[i];
      vi = b2 * vi + (1 - b2) * g[i] * g[i];
      double m_hat = mi / (1 - std::pow(b1, t));
      double denom = std::sqrt(vi) / std::sqrt(1 - std::pow(b2, t)) + eps;
      pi -= lr * m_hat / denom;
    }
    return std::vector<Tensor>{p, m, v};
  };
  return s;
}

// Inputs: ema, param; reals: decay. 0.9999 is DiT's EMA decay; 0 and 1 are the copy and no-op ends.
PSVAE_OP_SPEC(ema_update) {
  OpSpec s;
  s.name = "ema_update";
  s.covers = {Op::ema_update};
  s.gradcheck = false;
  s.cases = [](Generator& g) {
    std::vector<OpCase> cs;
    auto add = [&](const Shape& sh, double decay) {
      OpCase c;
      c.label = fmt::format("{} decay {}", sh.str(), decay);
      c.inputs = {uniform(g, sh), uniform(g, sh)};
      c.reals = {decay};
      c.gradcheck = false;
      cs.push_back(c);
    };
    add(Shape{7}, 0.5);
    add(Shape{2, 3, 5}, 0.9999);
    add(Shape{1, 1}, 0.9);
    add(Shape{4, 1, 9}, 0.0);
    add(Shape{4, 1, 9}, 1.0);
    add(Shape{20001}, 0.999);
    return cs;
  };
  s.apply = [](const std::vector<ag::Var>& in, const OpCase& c) {
    Tensor e = in[0].data().clone();
    ops::ema_update(e, in[1].data(), c.reals[0]);
    return std::vector<ag::Var>{ag::Var(e)};
  };
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const double d = c.reals[0];
    Tensor e = in[0].clone();
    for (int64_t i = 0; i < e.numel(); ++i)
      e.data<double>()[i] = d * e.data<double>()[i] + (1 - d) * in[1].data<double>()[i];
    return std::vector<Tensor>{e};
  };
  return s;
}

// One AdamW step worked by hand. param (1, -2), grad (0.5, -1), m = v = 0, step 1, lr 0.1,
// betas (0.9, 0.999), eps 1e-8, weight_decay 0.1:
//   decay:  p = p (1 - 0.1*0.1) = (0.99, -1.98)
//   m = 0.1 g = (0.05, -0.1);  v = 0.001 g^2 = (0.00025, 0.001)
//   bc1 = 1 - 0.9 = 0.1, bc2 = 1 - 0.999 = 0.001
//   sqrt(v)/sqrt(bc2) = sqrt(v / 0.001) = (0.5, 1);  denom = (0.5 + 1e-8, 1 + 1e-8)
//   p -= (0.1 / 0.1) m / denom = (0.05 / (0.5 + 1e-8), -0.1 / (1 + 1e-8))
//        = (0.1 (1 - 2e-8 + 4e-16), -0.1 (1 - 1e-8 + 1e-16))
//   p = (0.99 - 0.1 + 2e-9 - 4e-17, -1.98 + 0.1 - 1e-9 + 1e-17) = (0.89 + 2e-9, -1.88 - 1e-9)
// (On step 1 m_hat / sqrt(v_hat) = g / |g|: the first step moves every weight by lr, whatever
// the gradient's size, less eps's tiny share.)
TEST_CASE("adamw_step: one step against numbers worked by hand") {
  ops::AdamWParams hp;
  hp.lr = 0.1;
  hp.beta1 = 0.9;
  hp.beta2 = 0.999;
  hp.eps = 1e-8;
  hp.weight_decay = 0.1;
  hp.step = 1;
  Tensor p = Tensor::from_vector<double>({1.0, -2.0}, Shape{2});
  Tensor g = Tensor::from_vector<double>({0.5, -1.0}, Shape{2});
  Tensor m = Tensor::zeros(Shape{2}, DType::F64), v = Tensor::zeros(Shape{2}, DType::F64);
  ops::adamw_step(p, g, m, v, hp);
  std::vector<double> pv = p.to_vector<double>(), mv = m.to_vector<double>(),
                      vv = v.to_vector<double>();
  // Met to a few ulps: 1 - 0.9 and 1 - 0.999 are themselves off by 2e-16 and 9e-16 relative in
  // double (0.09999999999999998, 0.0010000000000000009).
  auto near = [](double x, double want) { return std::fabs(x - want) <= 2e-15 * std::fabs(want); };
  CHECK(near(pv[0], 0.89 + 2e-9));
  CHECK(near(pv[1], -1.88 - 1e-9));
  CHECK(near(mv[0], 0.05));
  CHECK(near(mv[1], -0.1));
  CHECK(near(vv[0], 0.00025));
  CHECK(near(vv[1], 0.001));

  // The f32 kernel agrees to f32 precision (2e-9 is below its resolution at 0.89).
  Tensor p32 = Tensor::from_vector<float>({1.0f, -2.0f}, Shape{2});
  Tensor g32 = Tensor::from_vector<float>({0.5f, -1.0f}, Shape{2});
  Tensor m32 = Tensor::zeros(Shape{2}, DType::F32), v32 = Tensor::zeros(Shape{2}, DType::F32);
  ops::adamw_step(p32, g32, m32, v32, hp);
  CHECK(p32.to_vector<float>()[0] == doctest::Approx(0.89).epsilon(1e-7));
  CHECK(p32.to_vector<float>()[1] == doctest::Approx(-1.88).epsilon(1e-7));
}

TEST_CASE("adamw_step / ema_update: shape and aliasing errors") {
  Tensor p = Tensor::zeros(Shape{3}, DType::F32), g = Tensor::zeros(Shape{4}, DType::F32);
  Tensor m = Tensor::zeros(Shape{3}, DType::F32), v = Tensor::zeros(Shape{3}, DType::F32);
  CHECK_THROWS_WITH_AS(ops::adamw_step(p, g, m, v, {}),
                       "adamw_step: grad is f32 (4) but param is f32 (3)", std::invalid_argument);
  Tensor g3 = Tensor::zeros(Shape{3}, DType::F32);
  CHECK_THROWS_AS(ops::adamw_step(p, g3, m, m, {}), std::invalid_argument);
  ops::AdamWParams step0;
  step0.step = 0;
  CHECK_THROWS_AS(ops::adamw_step(p, g3, m, v, step0), std::invalid_argument);
  CHECK_THROWS_AS(ops::ema_update(p, p, 0.9), std::invalid_argument);
}

}  // namespace psvae::test
