// The tape itself: graph wiring, accumulation, grad mode, detach, freezing, multi-output nodes,
// deep graphs, the gradcheck utility's ability to catch a wrong backward, and a node adding the
// gradient waiting for its input in its own kernel (Node::takes_waiting).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "autograd/gradcheck.h"
#include "common/test_util.h"
#include "kernels/profile.h"

using namespace psvae;
using ag::Var;

namespace {
Var leaf(std::vector<double> v, bool grad = true) {
  Shape s{static_cast<int64_t>(v.size())};
  return Var(Tensor::from_vector(v, s), grad);
}
std::vector<double> grad_of(const Var& v) { return v.grad().to_vector<double>(); }
}  // namespace

TEST_CASE("a shared subexpression receives the sum of both paths (diamond)") {
  Var x = leaf({1.0, -2.0, 0.5});
  Var y = ag::sum_all(ag::mul(x, x) + ag::mul_scalar(x, 3.0));  // dy/dx = 2x + 3
  y.backward();
  auto g = grad_of(x);
  CHECK(g[0] == doctest::Approx(5.0));
  CHECK(g[1] == doctest::Approx(-1.0));
  CHECK(g[2] == doctest::Approx(4.0));
}

TEST_CASE("leaf gradients accumulate across backward passes until zero_grad") {
  Var x = leaf({2.0, 3.0});
  for (int pass = 0; pass < 2; ++pass) {
    Var y = ag::sum_all(ag::mul(x, x));  // dy/dx = 2x
    y.backward();
  }
  CHECK(grad_of(x) == std::vector<double>{8.0, 12.0});
  // Backward twice over the same graph also accumulates (saved tensors are kept).
  x.zero_grad();
  CHECK(!x.grad().defined());
  Var y = ag::sum_all(ag::mul_scalar(x, 5.0));
  y.backward();
  y.backward();
  CHECK(grad_of(x) == std::vector<double>{10.0, 10.0});
}

TEST_CASE("no-grad mode builds no graph") {
  Var x = leaf({1.0, 2.0});
  {
    ag::NoGradGuard ng;
    CHECK(!ag::grad_enabled());
    Var y = ag::mul(x, x);
    CHECK(!y.requires_grad());
    CHECK_FALSE(static_cast<bool>(y.grad_fn()));
  }
  CHECK(ag::grad_enabled());
  Var z = ag::mul(x, x);
  CHECK(z.requires_grad());
  CHECK(static_cast<bool>(z.grad_fn()));
  CHECK(std::string(z.grad_fn()->name()) == "mul");
}

TEST_CASE("detach and frozen leaves stop the gradient") {
  Var x = leaf({1.0, 2.0});
  Var w = leaf({3.0, 4.0});
  w.set_requires_grad(false);  // frozen parameter
  Var y = ag::sum_all(ag::mul(x, w) + ag::mul(x.detach(), x));
  y.backward();
  CHECK(grad_of(x) == std::vector<double>{3.0 + 1.0, 4.0 + 2.0});  // w + x through the live path
  CHECK(!w.grad().defined());
  // A graph with no leaf requiring grad cannot be differentiated.
  Var c = ag::mul(w, w);
  CHECK_THROWS_WITH_AS(c.backward(), doctest::Contains("does not require grad"),
                       std::invalid_argument);
  // Only leaves can be frozen.
  Var nonleaf = ag::mul(x, x);
  CHECK_THROWS_AS(nonleaf.set_requires_grad(false), std::invalid_argument);
}

TEST_CASE("backward needs an explicit gradient for a non-scalar output") {
  Var x = leaf({1.0, 2.0});
  Var y = ag::mul(x, x);
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("one-element output"),
                       std::invalid_argument);
  y.backward(Tensor::from_vector(std::vector<double>{1.0, 0.5}, {2}));
  CHECK(grad_of(x) == std::vector<double>{2.0, 2.0});
}

TEST_CASE("multi-output nodes: an unused output contributes a zero gradient") {
  Var x = leaf({1.0, 2.0, 3.0, 4.0});
  std::vector<Var> parts = ag::split(x, {1, 3}, 0);
  REQUIRE(parts.size() == 2);
  Var y = ag::sum_all(ag::mul_scalar(parts[1], 2.0));  // parts[0] unused
  y.backward();
  CHECK(grad_of(x) == std::vector<double>{0.0, 2.0, 2.0, 2.0});
}

TEST_CASE("a deep chain does not overflow the stack") {
  Var x = leaf({1.0});
  Var y = x;
  for (int i = 0; i < 20000; ++i) y = ag::add_scalar(y, 1e-3);
  ag::sum_all(y).backward();
  CHECK(grad_of(x)[0] == 1.0);
}

namespace {
// Deliberately wrong: claims d(x^2)/dx = x instead of 2x.
struct WrongSquare : ag::Node {
  Tensor x;
  const char* name() const override { return "wrong_square"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {ops::mul(g[0], x)};
  }
};
Var wrong_square(const Var& x) {
  Tensor out = ops::mul(x.data(), x.data());
  if (!ag::any_requires_grad({x})) return Var(out);
  auto n = std::make_shared<WrongSquare>();
  n->x = x.data();
  return ag::attach(n, {x}, out);
}
}  // namespace

TEST_CASE("gradcheck accepts a correct backward and rejects a wrong one") {
  Generator g(7);
  Tensor x = test::uniform(g, {5}, 0.5, 2.0);
  auto right =
      ag::gradcheck([](const std::vector<Var>& v) { return ag::mul(v[0], v[0]); }, {x}, {true});
  CHECK(right.ok);
  CHECK(right.max_abs_err < 1e-8);
  auto wrong =
      ag::gradcheck([](const std::vector<Var>& v) { return wrong_square(v[0]); }, {x}, {true});
  CHECK(!wrong.ok);
  CHECK(wrong.report.find("input 0") != std::string::npos);
}

TEST_CASE("a node may add the gradient waiting for its input in its own kernel, bit for bit") {
  // layernorm_modulate takes the gradient already waiting for its x (Node::takes_waiting): in the
  // DiT block x also feeds the gated residual, whose backward runs first. Against the same graph
  // with layernorm_modulate reading x * 1 (the waiting gradient then sits at x's own slot, which
  // the multiply's backward adds to, so nothing is offered): the same loss and gradients, bit
  // for bit, and one add op fewer in the backward.
  for (DType dt : {DType::F32, DType::F64}) {
    CAPTURE(std::string(dtype_name(dt)));
    Generator g(7);
    auto param = [&](const Shape& s) { return Var(ops::cast(test::normal(g, s), dt), true); };
    Var x = param({2, 5, 16}), shift = param({2, 16}), scale = param({2, 16});
    Var gate = param({2, 16}), w = param({16, 16});
    auto run = [&](bool offered, int64_t& adds) {
      for (Var* v : {&x, &shift, &scale, &gate, &w}) v->zero_grad();
      Var h = ag::layernorm_modulate(offered ? x : ag::mul_scalar(x, 1.0), shift, scale, 1e-6);
      Var loss = ag::sum_all(ag::square(ag::gated_residual(x, gate, ag::linear(h, w, Var()))));
      kernels::profile_reset();
      kernels::profile_enable(true);
      loss.backward();
      kernels::profile_enable(false);
      adds = 0;
      for (const kernels::ProfileRow& r : kernels::profile_rows())
        if (r.name == "add") adds += r.calls;
      kernels::profile_reset();
      return std::vector<Tensor>{loss.data(),  x.grad(),    shift.grad(),
                                 scale.grad(), gate.grad(), w.grad()};
    };
    int64_t adds_fused = -1, adds_plain = -1;
    const std::vector<Tensor> fused = run(true, adds_fused), plain = run(false, adds_plain);
    CHECK(adds_plain == adds_fused + 1);
    for (size_t i = 0; i < fused.size(); ++i) {
      CAPTURE(i);
      CHECK(test::bit_mismatches_host(fused[i], plain[i]) == 0);
    }
  }
}
