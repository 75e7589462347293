// AdamW, clipping, schedules and EMA against values worked out by hand.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "nn/linear.h"
#include "nn/optim.h"

using namespace psvae;
using namespace psvae::nn;

TEST_CASE("AdamW: two steps on a 2-element parameter match the hand computation") {
  // lr 0.1, betas (0.9, 0.999), eps 1e-8, wd 0.01, p0 = (1, -2).
  // step 1, g = (0.5, -1):   m = (0.05, -0.1), v = (2.5e-4, 1e-3)
  //   m_hat = m / 0.1 = (0.5, -1), v_hat = v / 0.001 = (0.25, 1)
  //   r = m_hat / (sqrt(v_hat) + eps) = (0.99999998, -0.99999999)
  //   p = p - 0.1 (r + 0.01 p) = (1 - 0.1 * 1.00999998, -2 + 0.1 * 1.01999999)
  //     = (0.899000002, -1.898000001)
  // step 2, g = (-0.25, 2):  m = 0.9 m + 0.1 g = (0.02, 0.11)
  //   v = 0.999 v + 0.001 g^2 = (3.1225e-4, 4.999e-3)
  //   m_hat = m / 0.19 = (0.10526316, 0.57894737), v_hat = v / 0.001999 = (0.15620310, 2.50075038)
  //   r = (0.10526316 / 0.39522538, 0.57894737 / 1.58137610) = (0.26633703, 0.36610352)
  //   p = (0.899000002 - 0.1 (0.26633703 + 0.00899000), -1.898000001 - 0.1 (0.36610352 -
  //   0.01898000))
  //     = (0.87146730, -1.93271235)
  Var p(Tensor::from_vector(std::vector<float>{1.0f, -2.0f}, Shape{2}), true);
  AdamWOptions o;
  o.lr = 0.1;
  o.weight_decay = 0.01;
  AdamW opt({{"p", p}}, o);
  p.set_grad(Tensor::from_vector(std::vector<float>{0.5f, -1.0f}, Shape{2}));
  opt.step();
  auto v1 = p.data().to_vector<float>();
  CHECK(v1[0] == doctest::Approx(0.899000002).epsilon(1e-6));
  CHECK(v1[1] == doctest::Approx(-1.898000001).epsilon(1e-6));
  p.set_grad(Tensor::from_vector(std::vector<float>{-0.25f, 2.0f}, Shape{2}));
  opt.step();
  auto v2 = p.data().to_vector<float>();
  CHECK(v2[0] == doctest::Approx(0.8714672987).epsilon(1e-6));
  CHECK(v2[1] == doctest::Approx(-1.9327123535).epsilon(1e-6));
  CHECK(opt.steps_taken() == 2);

  auto sd = opt.state_dict();
  REQUIRE(sd.size() == 3);
  CHECK(sd[0].first == "optim.p.m");
  CHECK(sd[1].first == "optim.p.v");
  CHECK(sd[2].first == "optim.step");
  auto m = sd[0].second.to_vector<float>();
  CHECK(m[0] == doctest::Approx(0.02).epsilon(1e-6));
  CHECK(m[1] == doctest::Approx(0.11).epsilon(1e-6));
  auto v = sd[1].second.to_vector<float>();
  CHECK(v[0] == doctest::Approx(3.1225e-4).epsilon(1e-6));
  CHECK(v[1] == doctest::Approx(4.999e-3).epsilon(1e-6));

  // A second optimiser restored from the state (through a safetensors file) takes the same third
  // step.
  std::string path = (std::filesystem::temp_directory_path() /
                      ("psvae_nn_adamw_" + std::to_string(::getpid()) + ".safetensors"))
                         .string();
  safetensors::save(path, sd);
  Var q(p.data().clone(), true);
  AdamW opt2({{"p", q}}, o);
  opt2.load_state_dict(safetensors::load(path));
  std::filesystem::remove(path);
  CHECK(opt2.steps_taken() == 2);
  Tensor g3 = Tensor::from_vector(std::vector<float>{1.0f, 1.0f}, Shape{2});
  p.set_grad(g3);
  q.set_grad(g3);
  opt.step();
  opt2.step();
  CHECK(p.data().to_vector<float>() == q.data().to_vector<float>());
  CHECK_THROWS_WITH_AS(opt2.load_state_dict({sd[0], sd[2]}),
                       doctest::Contains("missing key 'optim.p.v'"), std::runtime_error);

  // A parameter without a gradient is skipped.
  p.zero_grad();
  auto before = p.data().to_vector<float>();
  opt.step();
  CHECK(p.data().to_vector<float>() == before);
}

TEST_CASE("warmup_cosine") {
  // base 1e-3, warmup 100, total 1100, min 1e-5.
  CHECK(warmup_cosine(0, 1e-3, 100, 1100, 1e-5) == 0.0);
  CHECK(warmup_cosine(50, 1e-3, 100, 1100, 1e-5) == doctest::Approx(5e-4));
  CHECK(warmup_cosine(100, 1e-3, 100, 1100, 1e-5) == doctest::Approx(1e-3));
  // Midpoint of the decay: (1 + cos(pi / 2)) / 2 = 1/2 -> min + (base - min) / 2 = 5.05e-4.
  CHECK(warmup_cosine(600, 1e-3, 100, 1100, 1e-5) == doctest::Approx(5.05e-4));
  // A quarter in: (1 + cos(pi / 4)) / 2 = 0.85355339.
  CHECK(warmup_cosine(350, 1e-3, 100, 1100, 1e-5) ==
        doctest::Approx(1e-5 + 0.99e-3 * 0.8535533906));
  CHECK(warmup_cosine(1100, 1e-3, 100, 1100, 1e-5) == doctest::Approx(1e-5));
  CHECK(warmup_cosine(5000, 1e-3, 100, 1100, 1e-5) == doctest::Approx(1e-5));
  CHECK(constant_lr(123, 3e-4) == 3e-4);
}

TEST_CASE("EMA update arithmetic and copy_to") {
  Generator g(1);
  Linear model(2, 1, false, g);
  Tensor w = model.weight().data();
  w.copy_from(Tensor::from_vector(std::vector<float>{1.0f, 2.0f}, Shape{1, 2}));
  EMA ema(model);
  w.copy_from(Tensor::from_vector(std::vector<float>{3.0f, -1.0f}, Shape{1, 2}));
  // 0.9 * (1, 2) + 0.1 * (3, -1) = (1.2, 1.7)
  ema.update(0.9);
  auto s = ema.shadows()[0].second.to_vector<float>();
  CHECK(s[0] == doctest::Approx(1.2).epsilon(1e-6));
  CHECK(s[1] == doctest::Approx(1.7).epsilon(1e-6));
  // 0.5 * (1.2, 1.7) + 0.5 * (3, -1) = (2.1, 0.35)
  ema.update(0.5);
  Linear target(2, 1, false, g);
  ema.copy_to(target);
  auto t = target.weight().data().to_vector<float>();
  CHECK(t[0] == doctest::Approx(2.1).epsilon(1e-6));
  CHECK(t[1] == doctest::Approx(0.35).epsilon(1e-6));
  // The model itself is untouched by the EMA.
  CHECK(model.weight().data().to_vector<float>() == std::vector<float>{3.0f, -1.0f});

  auto sd = ema.state_dict();
  REQUIRE(sd.size() == 1);
  CHECK(sd[0].first == "ema.weight");
  EMA other(target);
  other.load_state_dict(sd);
  CHECK(other.shadows()[0].second.to_vector<float>() == ema.shadows()[0].second.to_vector<float>());
}

TEST_CASE("clip_grad_norm scales the global norm down to max_norm") {
  Var a(Tensor::zeros({2}), true), b(Tensor::zeros({1}), true), c(Tensor::zeros({3}), true);
  a.set_grad(Tensor::from_vector(std::vector<float>{3.0f, 0.0f}, Shape{2}));
  b.set_grad(Tensor::from_vector(std::vector<float>{4.0f}, Shape{1}));
  // c has no gradient: skipped. Global norm sqrt(9 + 16) = 5.
  double n = clip_grad_norm(std::vector<Var>{a, b, c}, 10.0);
  CHECK(n == doctest::Approx(5.0));
  CHECK(a.grad().to_vector<float>() == std::vector<float>{3.0f, 0.0f});  // below max: untouched
  n = clip_grad_norm(std::vector<Var>{a, b, c}, 1.0);
  CHECK(n == doctest::Approx(5.0));
  auto ga = a.grad().to_vector<float>();
  auto gb = b.grad().to_vector<float>();
  CHECK(ga[0] == doctest::Approx(0.6).epsilon(1e-6));
  CHECK(gb[0] == doctest::Approx(0.8).epsilon(1e-6));
  double after = std::sqrt(ga[0] * ga[0] + ga[1] * ga[1] + gb[0] * gb[0]);
  CHECK(after == doctest::Approx(1.0).epsilon(1e-6));
  CHECK_FALSE(c.grad().defined());
}

TEST_CASE("AdamW::step(clip factor) equals clip_grad_norm then step, without touching the grads") {
  // What the trainer does (clip folded into the step) against the plain torch order.
  const std::vector<float> w0 = {0.5f, -1.25f, 2.0f}, g0 = {30.0f, -40.0f, 12.5f};
  AdamWOptions o;
  o.lr = 1e-2;
  o.weight_decay = 0.1;
  o.eps = 0.1;  // of the size of the clipped gradient, so the update depends on its scale
  Var p(Tensor::from_vector(w0, Shape{3}), true), q(Tensor::from_vector(w0, Shape{3}), true);
  AdamW clipped({{"p", p}}, o), folded({{"q", q}}, o);
  for (int step = 0; step < 3; ++step) {
    CAPTURE(step);
    p.set_grad(Tensor::from_vector(g0, Shape{3}));
    q.set_grad(Tensor::from_vector(g0, Shape{3}));
    const double n_p = clip_grad_norm(std::vector<Var>{p}, 1.0);
    const double n_q = grad_norm(std::vector<Var>{q});
    CHECK(n_q == n_p);
    const double coef = clip_coefficient(n_q, 1.0);
    CHECK(coef == doctest::Approx(1.0 / (n_q + 1e-6)));
    clipped.step();
    folded.step(coef);
    CHECK(q.grad().to_vector<float>() == g0);  // the gradients are left as they were
    CHECK(q.data().to_vector<float>() == p.data().to_vector<float>());  // bit for bit
  }
  CHECK(q.data().to_vector<float>() != w0);
  // The coefficient's edges: below max_norm, clipping off, a NaN or infinite norm.
  CHECK(clip_coefficient(0.5, 1.0) == 1.0);
  CHECK(clip_coefficient(5.0, std::numeric_limits<double>::infinity()) == 1.0);
  CHECK(clip_coefficient(std::nan(""), 1.0) == 1.0);
  CHECK(clip_coefficient(std::numeric_limits<double>::infinity(), 1.0) == 0.0);
}
