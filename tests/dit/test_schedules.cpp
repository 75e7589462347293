// Noise schedules, respacing, time shift and training pairs against hand-computed values.
#include <doctest/doctest.h>

#include <cmath>

#include "dit/diffusion.h"

using namespace psvae;
using namespace psvae::dit;

TEST_CASE("linear betas: endpoints and alphas_cumprod") {
  std::vector<double> b = make_betas(BetaSchedule::linear, 1000);
  REQUIRE(b.size() == 1000);
  CHECK(b[0] == 1e-4);
  CHECK(b[999] == 0.02);
  // step = (0.02 - 1e-4) / 999 = 1.991991991992e-5; beta_500 = 1e-4 + 500 step.
  CHECK(b[500] == doctest::Approx(0.010059959959959959).epsilon(1e-14));
  std::vector<double> a = cumprod_alphas(b);
  CHECK(a[0] == 1.0 - 1e-4);
  // abar_1 = 0.9999 * (1 - 1.1991991991992e-4) = 0.99978009207207...
  CHECK(a[1] == doctest::Approx(0.9997800920720721).epsilon(1e-14));
  // abar_499 = prod_{i<=499} (1 - beta_i). By hand: sum beta = 500e-4 + step * 499*500/2 = 2.53501,
  // exp(-2.53501) = 0.07926; the next term of log(1-b) = -b - b^2/2, -sum b^2/2 = -0.00851, gives
  // 0.07926 * exp(-0.00851) = 0.07859. The product evaluated exactly is 0.0785872428817782.
  CHECK(a[499] == doctest::Approx(0.0785872428817782).epsilon(1e-12));
  CHECK(a[999] == doctest::Approx(4.035829765375676e-05).epsilon(1e-10));
}

TEST_CASE("scaled_linear and cosine betas") {
  std::vector<double> s = make_betas(BetaSchedule::scaled_linear, 1000);
  CHECK(s[0] == doctest::Approx(0.00085).epsilon(1e-14));
  CHECK(s[999] == doctest::Approx(0.012).epsilon(1e-14));
  // Cosine: abar_t telescopes to f((t+1)/T) / f(0), f(u) = cos((u + 0.008)/1.008 pi/2)^2, as long
  // as no beta hit the 0.999 cap (only the last steps do).
  //   t = 0:   f(0.001)/f(0) = 0.999958715775178
  //   t = 499: f(0.5)/f(0)   = cos(0.508/1.008 pi/2)^2 / cos(0.008/1.008 pi/2)^2 = 0.4938435904406
  std::vector<double> a = cumprod_alphas(make_betas(BetaSchedule::cosine, 1000));
  CHECK(a[0] == doctest::Approx(0.999958715775178).epsilon(1e-12));
  CHECK(a[499] == doctest::Approx(0.49384359044063775).epsilon(1e-12));
  std::vector<double> bc = make_betas(BetaSchedule::cosine, 1000);
  CHECK(bc[999] == 0.999);  // abar(1) = 0: capped
}

TEST_CASE("respacing follows upstream space_timesteps") {
  // frac_stride = 999/9 = 111 exactly: 0, 111, ..., 999.
  std::vector<int64_t> ten = space_timesteps(1000, 10);
  CHECK(ten == std::vector<int64_t>{0, 111, 222, 333, 444, 555, 666, 777, 888, 999});
  // frac_stride = 999/24 = 41.625: the ties 166.5, 499.5 and 832.5 round to even (166, 500, 832)
  // as Python's round().
  std::vector<int64_t> tf = space_timesteps(1000, 25);
  CHECK(tf == std::vector<int64_t>{0,   42,  83,  125, 166, 208, 250, 291, 333, 375, 416, 458, 500,
                                   541, 583, 624, 666, 708, 749, 791, 832, 874, 916, 957, 999});
  // 250 steps: stride 999/249 = 4.01205; index 124 -> 497.49 -> 497, 125 -> 501.51 -> 502.
  std::vector<int64_t> k250 = space_timesteps(1000, 250);
  CHECK(k250[1] == 4);
  CHECK(k250[124] == 497);
  CHECK(k250[125] == 502);
  CHECK(k250[249] == 999);

  // The respaced schedule keeps abar at the kept steps; beta_i = 1 - abar_i / abar_{i-1}.
  std::vector<double> full = cumprod_alphas(make_betas(BetaSchedule::linear, 1000));
  Schedule s = Schedule::make(BetaSchedule::linear, 1000, 10);
  REQUIRE(s.size() == 10);
  CHECK(s.betas[0] == doctest::Approx(1e-4).epsilon(1e-14));
  for (int i = 0; i < 10; ++i) {
    CHECK(s.abar(i) == full[static_cast<size_t>(s.timesteps[static_cast<size_t>(i)])]);
    if (i > 0) CHECK(s.betas[static_cast<size_t>(i)] == 1.0 - s.abar(i) / s.abar(i - 1));
  }
  // Product of the respaced (1 - beta) telescopes back to abar.
  CHECK(cumprod_alphas(s.betas)[9] == doctest::Approx(full[999]).epsilon(1e-12));
  CHECK(Schedule::make(BetaSchedule::linear).size() == 1000);
}

TEST_CASE("flow time shift") {
  CHECK(shift_time(0.5, 2.0) == doctest::Approx(2.0 / 3.0).epsilon(1e-15));  // 1 / 1.5
  CHECK(shift_time(0.0, 3.0) == 0.0);
  CHECK(shift_time(1.0, 3.0) == 1.0);
  CHECK(shift_time(0.3, 1.0) == 0.3);
  CHECK(shift_factor(Shape{64, 16, 16}) == 2.0);                              // sqrt(16384 / 4096)
  CHECK(shift_factor(Shape{96, 16, 16}) == doctest::Approx(std::sqrt(6.0)));  // PS-VAE latent
}

TEST_CASE("training pairs: x_t and targets per objective") {
  std::vector<double> abar = cumprod_alphas(make_betas(BetaSchedule::linear, 1000));
  Tensor x0 = Tensor::from_vector<double>({1, 2, -3, 4}, Shape{2, 2});
  Tensor eps = Tensor::from_vector<double>({0.5, -1, 2, 0.25}, Shape{2, 2});
  std::vector<int64_t> t{0, 499};
  TrainPair pe = diffusion_pair(Objective::eps, abar, x0, eps, t);
  TrainPair pv = diffusion_pair(Objective::v, abar, x0, eps, t);
  std::vector<double> xt = pe.x_t.to_vector<double>(), ve = pe.target.to_vector<double>(),
                      vv = pv.target.to_vector<double>(), x = x0.to_vector<double>(),
                      e = eps.to_vector<double>();
  for (int i = 0; i < 4; ++i) {
    double ab = abar[static_cast<size_t>(t[static_cast<size_t>(i / 2)])];
    double a = std::sqrt(ab), b = std::sqrt(1 - ab);
    size_t k = static_cast<size_t>(i);
    CHECK(xt[k] == doctest::Approx(a * x[k] + b * e[k]).epsilon(1e-14));
    CHECK(ve[k] == e[k]);
    CHECK(vv[k] == doctest::Approx(a * e[k] - b * x[k]).epsilon(1e-14));
  }
  TrainPair pf = flow_pair(x0, eps, {0.25, 1.0});
  std::vector<double> xf = pf.x_t.to_vector<double>(), vf = pf.target.to_vector<double>();
  for (int i = 0; i < 4; ++i) {
    size_t k = static_cast<size_t>(i);
    double s = i < 2 ? 0.25 : 1.0;
    CHECK(xf[k] == doctest::Approx((1 - s) * x[k] + s * e[k]).epsilon(1e-15));
    CHECK(vf[k] == e[k] - x[k]);
  }
}
