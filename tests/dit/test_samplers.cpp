// Samplers against a known answer: data from a 1-D two-component Gaussian mixture, whose exact
// denoiser is available in closed form, so any deviation of the samples' statistics from the
// mixture's is the sampler's discretisation error plus the Monte-Carlo error of the sample count.
//
// Mixture: p(x0) = 1/2 N(-2, 0.5^2) + 1/2 N(2, 0.5^2): mean 0, variance 4 + 0.25 = 4.25, and a
// fraction 1/2 on each side of 0 (P(|0.5 z| > 2) = 3e-5 of each mode crosses it).
//
// Exact denoiser. Both families noise as x = a x0 + b eps (diffusion a = sqrt(abar), b =
// sqrt(1-abar); flow a = 1-s, b = s). Given component k, x ~ N(a mu_k, a^2 tau^2 + b^2) =: N(a
// mu_k, V_k), and x0 | x, k is Gaussian with mean mu_k + a tau^2 / V_k (x - a mu_k). With
// responsibilities r_k ∝ w_k N(x; a mu_k, V_k):  E[x0 | x] = sum_k r_k (mu_k + a tau^2 / V_k (x - a
// mu_k)).
//   eps:  E[eps | x] = (x - a E[x0|x]) / b;  v: a E[eps|x] - b E[x0|x];
//   flow: v = E[eps - x0 | x] and eps = (x - (1-s) x0)/s give eps - x0 = (x - x0)/s, so
//         v(x, s) = (x - E[x0 | x]) / s.
// Those are the minimisers of the training losses, i.e. a perfectly trained model.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>

#include "dit/samplers.h"
#include "kernels/ops.h"

using namespace psvae;
using namespace psvae::dit;

namespace {
constexpr int64_t kSamples = 20000;
const double kMu[2] = {-2.0, 2.0};
constexpr double kTau = 0.5;

double posterior_mean(double x, double a, double b) {
  double lw[2], m[2];
  for (int k = 0; k < 2; ++k) {
    double var = a * a * kTau * kTau + b * b, d = x - a * kMu[k];
    lw[k] = -0.5 * d * d / var - 0.5 * std::log(var);  // equal weights drop out
    m[k] = kMu[k] + a * kTau * kTau / var * d;
  }
  double mx = std::max(lw[0], lw[1]);
  double r0 = std::exp(lw[0] - mx), r1 = std::exp(lw[1] - mx);
  return (r0 * m[0] + r1 * m[1]) / (r0 + r1);
}

// Exact eps- or v-prediction model; t_model holds original step indices.
Denoiser exact_diffusion(Objective objective) {
  auto abar =
      std::make_shared<std::vector<double>>(cumprod_alphas(make_betas(BetaSchedule::linear, 1000)));
  return [abar, objective](const Tensor& x, const Tensor& t) {
    Tensor out = Tensor::empty(x.shape(), DType::F64);
    const double* px = x.data<double>();
    const float* pt = t.data<float>();
    double* po = out.data<double>();
    int64_t per = x.numel() / x.size(0);
    for (int64_t i = 0; i < x.numel(); ++i) {
      double ab = (*abar)[static_cast<size_t>(std::lround(pt[i / per]))];
      double a = std::sqrt(ab), b = std::sqrt(1 - ab);
      double m = posterior_mean(px[i], a, b), eps = (px[i] - a * m) / b;
      po[i] = objective == Objective::eps ? eps : a * eps - b * m;
    }
    return out;
  };
}

Denoiser exact_flow() {
  return [](const Tensor& x, const Tensor& t) {
    Tensor out = Tensor::empty(x.shape(), DType::F64);
    const double* px = x.data<double>();
    const float* pt = t.data<float>();
    double* po = out.data<double>();
    int64_t per = x.numel() / x.size(0);
    for (int64_t i = 0; i < x.numel(); ++i) {
      double s = pt[i / per];
      po[i] = (px[i] - posterior_mean(px[i], 1 - s, s)) / s;
    }
    return out;
  };
}

struct Stats {
  double mean = 0, var = 0, right = 0, near_right = 0;
};
Stats stats(const Tensor& x) {
  std::vector<double> v = x.to_vector<double>();
  Stats s;
  for (double e : v) {
    s.mean += e;
    s.right += e > 0;
    s.near_right += std::abs(e - 2.0) < 1.0;
  }
  double n = static_cast<double>(v.size());
  s.mean /= n;
  for (double e : v) s.var += (e - s.mean) * (e - s.mean);
  s.var /= n - 1;
  s.right /= n;
  s.near_right /= n;
  return s;
}

Tensor noise(uint64_t seed) {
  Generator g(seed);
  return initial_noise(Shape{kSamples, 1}, DType::F64, Device::cpu(), g);
}

// Monte-Carlo standard errors for 20000 draws of the mixture:
//   mean: sqrt(4.25 / 20000) = 0.0146;
//   variance: sqrt((mu4 - sigma^4) / n), mu4 = 16 + 6*4*0.25 + 3*0.0625 = 22.1875,
//             sigma^4 = 18.0625 -> sqrt(4.125 / 20000) = 0.0144;
//   fraction right of 0: sqrt(0.25 / 20000) = 0.0035; within 1 of +2 (p = 0.5 * P(|z| < 2) =
//   0.4772): 0.0035.
// The checks allow 4 standard errors (mean 0.06, variance 0.06, fractions 0.014) plus each
// sampler's discretisation bias `var_bias` (a third of it for the mode fraction). The bias was
// measured by sweeping the step count with the same noise (variance error; the 400-step values
// are the Monte-Carlo floor of that noise, about -0.004):
//   steps      25      50      100     200     400
//   DDPM     -0.269  -0.135  -0.072  -0.014  -0.012   (250 steps: -0.029) -> allowance 0.03
//   DDIM     -0.248  -0.127  -0.066  -0.035  -0.020   first order         -> 0.10 at 50
//   DPM++2M  +0.113  +0.026  +0.003  -0.003  -0.004   (uniform steps; the first, very long
//                                                     log-SNR steps dominate) -> 0.12 at 25
//   Euler    -0.225  -0.116  -0.060  -0.032  -0.018   first order         -> 0.10 at 50
//   Heun     -0.009  -0.005  -0.004  -0.004  -0.004   second order        -> 0.02 at 25
// The low-step samplers under-disperse (DDIM, Euler) or over-disperse (DPM++ at 25 uniform
// steps) the modes; the test below of the convergence order is the sharper check of the math.
void check_mixture(const char* name, const Stats& s, double var_bias) {
  MESSAGE(fmt::format("{}: mean {:+.4f} var {:.4f} (err {:+.4f}) right {:.4f} near +2 {:.4f}", name,
                      s.mean, s.var, s.var - 4.25, s.right, s.near_right));
  CHECK(std::abs(s.mean) < 0.06);
  CHECK(std::abs(s.var - 4.25) < 0.06 + var_bias);
  CHECK(std::abs(s.right - 0.5) < 0.014);
  CHECK(std::abs(s.near_right - 0.4772) < 0.014 + var_bias / 3);
}
}  // namespace

TEST_CASE("classifier-free guidance") {
  Denoiser c = [](const Tensor& x, const Tensor&) { return ops::mul_scalar(x, 3.0); };
  Denoiser u = [](const Tensor& x, const Tensor&) { return ops::add_scalar(x, 0.1); };
  Tensor x = Tensor::from_vector<double>({0.3, -1.7, 2.9, 0.1}, Shape{2, 2});
  Tensor t = time_tensor({100, 900}, Device::cpu());
  // w = 1 is the conditional output, bit for bit.
  Tensor g1 = classifier_free_guidance(c, u, {1.0, 0.0, 1.0, 1000.0})(x, t);
  CHECK(g1.to_vector<double>() == c(x, t).to_vector<double>());
  // w = 2 in the whole range: u + 2 (c - u) = 2c - u.
  std::vector<double> xv = x.to_vector<double>();
  std::vector<double> g2 =
      classifier_free_guidance(c, u, {2.0, 0.0, 1.0, 1000.0})(x, t).to_vector<double>();
  for (size_t i = 0; i < 4; ++i)
    CHECK(g2[i] == doctest::Approx(2 * 3 * xv[i] - (xv[i] + 0.1)).epsilon(1e-14));
  // Interval [0.5, 1]: sample 0 (t = 0.1) gets the conditional output, sample 1 (t = 0.9) guidance.
  std::vector<double> gi =
      classifier_free_guidance(c, u, {2.0, 0.5, 1.0, 1000.0})(x, t).to_vector<double>();
  CHECK(gi[0] == 3 * xv[0]);
  CHECK(gi[1] == 3 * xv[1]);
  CHECK(gi[2] == doctest::Approx(2 * 3 * xv[2] - (xv[2] + 0.1)).epsilon(1e-14));
}

TEST_CASE("DDPM ancestral, 250 steps, on a Gaussian mixture") {
  Schedule sch = Schedule::make(BetaSchedule::linear, 1000, 250);
  Generator g(11);
  Tensor x = ddpm_sample(exact_diffusion(Objective::eps), Objective::eps, sch, noise(1), g);
  check_mixture("ddpm-250", stats(x), 0.03);
}

TEST_CASE("DDIM, 50 steps, eta 0 and 1, eps and v objectives") {
  Schedule sch = Schedule::make(BetaSchedule::linear, 1000, 50);
  Generator g(12);
  check_mixture(
      "ddim-50 eta0 eps",
      stats(ddim_sample(exact_diffusion(Objective::eps), Objective::eps, sch, noise(2), 0.0, g)),
      0.10);
  check_mixture(
      "ddim-50 eta0 v",
      stats(ddim_sample(exact_diffusion(Objective::v), Objective::v, sch, noise(2), 0.0, g)), 0.10);
  check_mixture(
      "ddim-50 eta1 eps",
      stats(ddim_sample(exact_diffusion(Objective::eps), Objective::eps, sch, noise(3), 1.0, g)),
      0.10);
}

TEST_CASE("DPM-Solver++(2M), 25 steps") {
  Schedule sch = Schedule::make(BetaSchedule::linear, 1000, 25);
  check_mixture(
      "dpm++2m-25",
      stats(dpmpp_2m_sample(exact_diffusion(Objective::eps), Objective::eps, sch, noise(4))), 0.12);
}

TEST_CASE("rectified flow: Euler 50 steps, Heun 25 steps") {
  check_mixture("euler-50", stats(euler_sample(exact_flow(), 50, 1.0, noise(5))), 0.10);
  check_mixture("euler-50 shift 2", stats(euler_sample(exact_flow(), 50, 2.0, noise(5))), 0.10);
  check_mixture("heun-25", stats(heun_sample(exact_flow(), 25, 1.0, noise(6))), 0.02);
  std::vector<double> s = flow_times(4, 2.0);
  CHECK(s[0] == 1.0);
  CHECK(s[2] == doctest::Approx(2.0 / 3.0));
  CHECK(s[4] == 0.0);
}

namespace {
double rms_diff(const Tensor& p, const Tensor& q) {
  std::vector<double> u = p.to_vector<double>(), v = q.to_vector<double>();
  double acc = 0;
  for (size_t i = 0; i < u.size(); ++i) acc += (u[i] - v[i]) * (u[i] - v[i]);
  return std::sqrt(acc / static_cast<double>(u.size()));
}
double rms(const Tensor& p) { return rms_diff(p, ops::mul_scalar(p, 0.0)); }
}  // namespace

// The deterministic samplers solve an ODE (DDIM and DPM++: the probability-flow ODE of the
// diffusion; Euler and Heun: the flow ODE), so the per-sample distance to a fine solution from
// the same noise must shrink at the method's order. Measured rms errors (2000 samples; references
// DPM++ with all 1000 steps, Heun with 1000 steps):
//   steps      25       50       100      200
//   DDIM    6.59e-2  3.27e-2  1.63e-2  8.16e-3   (ratio 2.0: first order)
//   DPM++   8.23e-2  2.80e-2  7.04e-3  1.66e-3   (ratio 2.9, 4.0, 4.2: second order)
//   Euler   5.82e-2  2.92e-2  1.47e-2  7.33e-3   (ratio 2.0)
//   Heun    2.11e-3  6.05e-4  1.62e-4  4.08e-5   (ratio 3.5, 3.7, 4.0)
TEST_CASE("deterministic samplers converge at their order") {
  Generator g0(3), g(1);
  Tensor z = initial_noise(Shape{2000, 1}, DType::F64, Device::cpu(), g0);
  Denoiser m = exact_diffusion(Objective::eps);
  Tensor ref_d =
      dpmpp_2m_sample(m, Objective::eps, Schedule::make(BetaSchedule::linear, 1000, 1000), z);
  Tensor ref_f = heun_sample(exact_flow(), 1000, 1.0, z);
  Schedule s50 = Schedule::make(BetaSchedule::linear, 1000, 50);
  Schedule s100 = Schedule::make(BetaSchedule::linear, 1000, 100);
  double ddim = rms_diff(ddim_sample(m, Objective::eps, s50, z, 0.0, g), ref_d) /
                rms_diff(ddim_sample(m, Objective::eps, s100, z, 0.0, g), ref_d);
  double dpm = rms_diff(dpmpp_2m_sample(m, Objective::eps, s50, z), ref_d) /
               rms_diff(dpmpp_2m_sample(m, Objective::eps, s100, z), ref_d);
  double euler = rms_diff(euler_sample(exact_flow(), 50, 1.0, z), ref_f) /
                 rms_diff(euler_sample(exact_flow(), 100, 1.0, z), ref_f);
  double heun = rms_diff(heun_sample(exact_flow(), 50, 1.0, z), ref_f) /
                rms_diff(heun_sample(exact_flow(), 100, 1.0, z), ref_f);
  MESSAGE(
      fmt::format("error ratio 50 -> 100 steps: ddim {:.2f} dpm++ {:.2f} euler {:.2f} heun {:.2f}",
                  ddim, dpm, euler, heun));
  CHECK(ddim == doctest::Approx(2.0).epsilon(0.1));
  CHECK(euler == doctest::Approx(2.0).epsilon(0.1));
  CHECK(dpm > 3.5);
  CHECK(heun > 3.3);
}

// Inversion evaluates the model at the start of each step instead of its end, so its round trip
// is first order too. Measured relative errors of data -> noise -> data with 100 steps: see the
// MESSAGE; bounds sit about 1.5x above.
TEST_CASE("DDIM eta 0 is deterministic and invertible") {
  Schedule sch = Schedule::make(BetaSchedule::linear, 1000, 100);
  Denoiser model = exact_diffusion(Objective::eps);
  Generator g1(1), g2(2);
  Tensor a = ddim_sample(model, Objective::eps, sch, noise(7), 0.0, g1);
  Tensor b = ddim_sample(model, Objective::eps, sch, noise(7), 0.0, g2);
  CHECK(a.to_vector<double>() == b.to_vector<double>());

  Tensor z = ddim_invert(model, Objective::eps, sch, a);
  Tensor back = ddim_sample(model, Objective::eps, sch, z, 0.0, g1);
  double e_data = rms_diff(back, a) / rms(a), e_noise = rms_diff(z, noise(7)) / rms(noise(7));
  MESSAGE(fmt::format("ddim-100 inversion: data rel err {:.3e}, noise rel err {:.3e}", e_data,
                      e_noise));
  CHECK(e_data < 1.0);
  CHECK(e_noise < 1.0);
}
