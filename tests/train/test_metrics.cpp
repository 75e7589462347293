// PSNR and SSIM against values derived by hand (the derivations are in the comments), plus an
// independent direct 2-D SSIM written here as a second reference for the separable filter.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "train/metrics.h"

using namespace psvae;
using psvae::train::mean_of;
using psvae::train::psnr;
using psvae::train::ssim;

namespace {

constexpr double C1 = 0.01 * 0.01;  // (K1 L)^2 with L = 1
constexpr double C2 = 0.03 * 0.03;  // (K2 L)^2

// (n,3,h,w) f64 tensor in [-1,1] from a function giving the [0,1] value of (n, c, y, x): the
// metrics map t -> (t+1)/2, so we store 2v-1 (exact for the dyadic values used below).
Tensor image(int64_t n, int64_t h, int64_t w,
             const std::function<double(int64_t, int64_t, int64_t, int64_t)>& v,
             DType dtype = DType::F64) {
  std::vector<double> d;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) d.push_back(2 * v(i, c, y, x) - 1);
  Tensor t = Tensor::from_vector(d, Shape{n, 3, h, w});
  if (dtype == DType::F64) return t;
  std::vector<float> f(d.begin(), d.end());
  return Tensor::from_vector(f, Shape{n, 3, h, w});
}

// The normalised 1-D Gaussian of the paper: 11 taps at offsets -5..5, sigma 1.5.
std::vector<double> taps() {
  std::vector<double> g;
  double s = 0;
  for (int d = -5; d <= 5; ++d) g.push_back(std::exp(-d * d / (2 * 1.5 * 1.5))), s += g.back();
  for (double& v : g) v /= s;
  return g;
}

// Reference SSIM written the slow, obvious way: for every valid position, the 121 weights of the
// 2-D Gaussian built directly (not as two 1-D passes), the weighted moments, the SSIM formula.
double ssim_direct(const std::vector<double>& x, const std::vector<double>& y, int64_t h,
                   int64_t w) {
  double w2[11][11], s = 0;
  for (int i = 0; i < 11; ++i)
    for (int j = 0; j < 11; ++j)
      s += w2[i][j] = std::exp(-((i - 5) * (i - 5) + (j - 5) * (j - 5)) / 4.5);
  double total = 0;
  int count = 0;
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t r = 0; r + 11 <= h; ++r)
      for (int64_t q = 0; q + 11 <= w; ++q) {
        double mx = 0, my = 0;
        for (int i = 0; i < 11; ++i)
          for (int j = 0; j < 11; ++j) {
            size_t k = static_cast<size_t>((c * h + r + i) * w + q + j);
            mx += w2[i][j] / s * x[k];
            my += w2[i][j] / s * y[k];
          }
        double vx = 0, vy = 0, cxy = 0;  // central moments: same values, another route
        for (int i = 0; i < 11; ++i)
          for (int j = 0; j < 11; ++j) {
            size_t k = static_cast<size_t>((c * h + r + i) * w + q + j);
            vx += w2[i][j] / s * (x[k] - mx) * (x[k] - mx);
            vy += w2[i][j] / s * (y[k] - my) * (y[k] - my);
            cxy += w2[i][j] / s * (x[k] - mx) * (y[k] - my);
          }
        total += (2 * mx * my + C1) * (2 * cxy + C2) / ((mx * mx + my * my + C1) * (vx + vy + C2));
        ++count;
      }
  return total / count;
}

}  // namespace

TEST_CASE("psnr: constant difference, identical images, two differing pixels") {
  // a = 0.5 everywhere, b = 0.625 everywhere ([0,1] values): every squared error is 0.125^2 =
  // 1/64, so MSE = 1/64 and PSNR = 10 log10(64) = 60 log10(2) = 18.0617997398388...
  // Second image: b = 0.75, MSE = 1/16, PSNR = 10 log10(16) = 12.0411998265592...
  Tensor a = image(2, 5, 7, [](int64_t, int64_t, int64_t, int64_t) { return 0.5; });
  Tensor b = image(2, 5, 7, [](int64_t n, int64_t, int64_t, int64_t) { return n ? 0.75 : 0.625; });
  std::vector<double> p = psnr(a, b);
  REQUIRE(p.size() == 2);
  CHECK(p[0] == doctest::Approx(18.0617997398388).epsilon(1e-12));
  CHECK(p[1] == doctest::Approx(12.0411998265592).epsilon(1e-12));
  CHECK(psnr(b, a)[0] == p[0]);

  // identical: MSE = 0 -> +inf
  std::vector<double> same = psnr(a, a);
  CHECK(std::isinf(same[0]));
  CHECK(same[0] > 0);
  CHECK(std::isinf(mean_of(same)));

  // 3x4x4 = 48 values; two differ, by 0.5 (0.5 -> 1.0) and by 0.25 (0.5 -> 0.25):
  // SE = 0.25 + 0.0625 = 0.3125, MSE = 0.3125/48, PSNR = 10 log10(48/0.3125) = 10 log10(153.6).
  // log10(153.6) = log10(2^9 * 3) - 1 = 9*0.30102999566 + 0.47712125472 - 1 = 2.18639121566.
  Tensor x = image(1, 4, 4, [](int64_t, int64_t, int64_t, int64_t) { return 0.5; });
  Tensor y = image(1, 4, 4, [](int64_t, int64_t c, int64_t r, int64_t q) {
    if (c == 1 && r == 2 && q == 3) return 1.0;
    if (c == 2 && r == 0 && q == 0) return 0.25;
    return 0.5;
  });
  CHECK(psnr(x, y)[0] == doctest::Approx(21.8639121566).epsilon(1e-10));
}

TEST_CASE("ssim: identical images give exactly 1") {
  Generator g(7);
  Tensor a = test::uniform(g, Shape{2, 3, 16, 13});
  std::vector<double> s = ssim(a, a);
  CHECK(s[0] == 1.0);
  CHECK(s[1] == 1.0);
}

TEST_CASE("ssim: two constant images") {
  // Every window of a constant image has zero variance and covariance, so the structure term is
  // (2*0 + C2)/(0 + 0 + C2) = 1 and SSIM = (2ab + C1)/(a^2 + b^2 + C1) at every position.
  // a = 0.4, b = 0.8: (0.64 + 1e-4)/(0.16 + 0.64 + 1e-4) = 0.6401/0.8001.
  Tensor a = image(1, 12, 14, [](int64_t, int64_t, int64_t, int64_t) { return 0.4; });
  Tensor b = image(1, 12, 14, [](int64_t, int64_t, int64_t, int64_t) { return 0.8; });
  CHECK(ssim(a, b)[0] == doctest::Approx(0.6401 / 0.8001).epsilon(1e-12));
  // a = 0 (black) vs b = 0: both means 0 -> C1/C1 = 1.
  Tensor z = image(1, 11, 11, [](int64_t, int64_t, int64_t, int64_t) { return 0.0; });
  CHECK(ssim(z, z)[0] == 1.0);
}

TEST_CASE("ssim: a ramp and its affine transforms (closed forms)") {
  // x(r, q) = p + k q, a ramp along columns, the same on every row and channel. The normalised
  // Gaussian is symmetric, so the window centred on column q0 has mean mu = p + k q0 exactly (in
  // exact arithmetic) and variance V = k^2 * sum_d g_d d^2 (rows all alike: only the column offset
  // d = -5..5 matters, and the row weights sum to 1).
  // y = s x + c gives mu_y = s mu + c, sigma_y^2 = s^2 V, sigma_xy = s V, so per window
  //   SSIM = (2 mu (s mu + c) + C1) / (mu^2 + (s mu + c)^2 + C1)  *  (2 s V + C2) / ((1 + s^2) V +
  //   C2)
  // and the image's SSIM is the mean over the valid centres q0 = 5 .. w-6 (every row and channel
  // repeats the same values). s = 1 is the pure shift: the second factor is exactly 1.
  const double p = 0.2, k = 0.03;
  const int64_t h = 12, w = 16;
  std::vector<double> g = taps();
  double var_g = 0;
  for (int d = -5; d <= 5; ++d) var_g += g[static_cast<size_t>(d + 5)] * d * d;
  const double V = k * k * var_g;
  Tensor x = image(1, h, w, [&](int64_t, int64_t, int64_t, int64_t q) { return p + k * q; });
  struct Case {
    double s, c;
  };
  for (Case cs : {Case{1.0, 0.1}, Case{1.0, -0.15}, Case{0.5, 0.1}, Case{1.5, -0.2}}) {
    Tensor y = image(
        1, h, w, [&](int64_t, int64_t, int64_t, int64_t q) { return cs.s * (p + k * q) + cs.c; });
    double expect = 0;
    for (int64_t q0 = 5; q0 <= w - 6; ++q0) {
      double mu = p + k * q0, muy = cs.s * mu + cs.c;
      expect += (2 * mu * muy + C1) / (mu * mu + muy * muy + C1) * (2 * cs.s * V + C2) /
                ((1 + cs.s * cs.s) * V + C2);
    }
    expect /= static_cast<double>(w - 10);
    CAPTURE(cs.s);
    CAPTURE(cs.c);
    CHECK(ssim(x, y)[0] == doctest::Approx(expect).epsilon(1e-12));
  }
}

TEST_CASE("ssim: matches a direct 2-D double loop; symmetric; f32 input") {
  Generator g(3);
  for (auto hw : {std::pair<int64_t, int64_t>{11, 11}, {13, 17}, {20, 12}}) {
    Tensor a = test::uniform(g, Shape{2, 3, hw.first, hw.second});
    // b = a plus noise, so the images are related (SSIM well inside (0,1)), not independent.
    Tensor noise = test::uniform(g, Shape{2, 3, hw.first, hw.second}, -0.3, 0.3);
    std::vector<double> av = test::as_doubles(a), nv = test::as_doubles(noise), bv(av.size());
    for (size_t i = 0; i < av.size(); ++i) bv[i] = std::max(-1.0, std::min(1.0, av[i] + nv[i]));
    Tensor b = Tensor::from_vector(bv, a.shape());
    std::vector<double> s = ssim(a, b), t = ssim(b, a);
    const size_t per = static_cast<size_t>(3 * hw.first * hw.second);
    for (size_t n = 0; n < 2; ++n) {
      std::vector<double> x(per), y(per);
      for (size_t i = 0; i < per; ++i) {
        x[i] = (av[n * per + i] + 1) / 2;
        y[i] = (bv[n * per + i] + 1) / 2;
      }
      CAPTURE(hw.first);
      CAPTURE(hw.second);
      CHECK(s[n] == doctest::Approx(ssim_direct(x, y, hw.first, hw.second)).epsilon(1e-12));
      CHECK(s[n] == doctest::Approx(t[n]).epsilon(1e-14));  // symmetric up to rounding
      CHECK(s[n] > 0.0);
      CHECK(s[n] < 1.0);
    }
  }
  // f32 inputs go through the same f64 computation; the only difference is the f32 rounding of
  // the pixel values (relative ~6e-8), far inside 1e-5.
  Tensor a = image(1, 12, 12, [](int64_t, int64_t c, int64_t r, int64_t q) {
    return 0.1 + 0.05 * ((r * 7 + q * 3 + c) % 11);
  });
  Tensor b = image(1, 12, 12, [](int64_t, int64_t c, int64_t r, int64_t q) {
    return 0.12 + 0.05 * ((r * 5 + q * 2 + c) % 9);
  });
  Tensor af = image(
      1, 12, 12,
      [](int64_t, int64_t c, int64_t r, int64_t q) {
        return 0.1 + 0.05 * ((r * 7 + q * 3 + c) % 11);
      },
      DType::F32);
  CHECK(ssim(af, b)[0] == doctest::Approx(ssim(a, b)[0]).epsilon(1e-5));
  CHECK(psnr(af, b)[0] == doctest::Approx(psnr(a, b)[0]).epsilon(1e-5));
}

TEST_CASE("metrics: clear errors for bad inputs") {
  auto flat = [](int64_t n, int64_t c, int64_t h, int64_t w) {
    return Tensor::zeros(Shape{n, c, h, w}, DType::F32);
  };
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string m = message([&] { ssim(flat(1, 3, 10, 12), flat(1, 3, 10, 12)); });
  CHECK(m.find("at least 11x11") != std::string::npos);
  CHECK(m.find("10x12") != std::string::npos);
  m = message([&] { psnr(flat(1, 3, 8, 8), flat(2, 3, 8, 8)); });
  CHECK(m.find("(1, 3, 8, 8) vs (2, 3, 8, 8)") != std::string::npos);
  m = message([&] { ssim(flat(1, 1, 16, 16), flat(1, 1, 16, 16)); });
  CHECK(m.find("(N,3,H,W)") != std::string::npos);
  m = message([&] {
    psnr(Tensor::zeros(Shape{1, 3, 4, 4}, DType::I64),
         Tensor::zeros(Shape{1, 3, 4, 4}, DType::I64));
  });
  CHECK(m.find("f32 or f64") != std::string::npos);
  CHECK(mean_of({1.0, 2.0, 4.5}) == 2.5);
}
