// The synthetic-image analyser (train/eval/analyser.h) on real dataset images it was not developed
// on: the images of held_out_seed(0) (development used seed 0), at the demo size 32x32 and at
// 64x64, clean and blurred by a 3x3 box filter (generated images come through a VAE decoder and
// are softer than renders). Prints the confusion matrices; asserts the 98% (colour and
// shape both right) on clean images (2000 each) and 95% on blurred ones (1000 each). Measured:
// 100.00% at 32 and 64, clean and blurred (2000 images each); blurring twice at 32 gives 99.0%
// (small crosses become circles); the harsher degrade() below 98.9% at 32, 100% at 64. (Those
// figures are for objects 25-45% of the side, the dataset's default until 2026-11-21; that size
// range is still checked.) Plus the no-object case, input checks and the prompt parser.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <string>
#include <tuple>
#include <vector>

#include "tensor/random.h"
#include "train/data/dataset.h"
#include "train/eval/analyser.h"

using namespace psvae;
using namespace psvae::train;

namespace {

// 3x3 box filter with edge replication, per channel.
Tensor box_blur(const Tensor& im) {
  const int S = static_cast<int>(im.size(1));
  Tensor out = im.clone();
  const float* a = im.data<float>();
  float* b = out.data<float>();
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x) {
        double s = 0;
        for (int dy = -1; dy <= 1; ++dy)
          for (int dx = -1; dx <= 1; ++dx) {
            const int yy = std::clamp(y + dy, 0, S - 1), xx = std::clamp(x + dx, 0, S - 1);
            s += a[(c * S + yy) * S + xx];
          }
        b[(c * S + y) * S + x] = static_cast<float>(s / 9.0);
      }
  return out;
}

// A harsher stand-in for a VAE decoder's output: 2x2 pixelation, the 3x3 box blur, colours pulled
// 30% towards grey, and uniform noise of +-0.1 (in [-1, 1] units) per channel.
Tensor degrade(const Tensor& im, uint64_t seed) {
  const int S = static_cast<int>(im.size(1));
  Tensor px = im.clone();
  const float* a = im.data<float>();
  float* p = px.data<float>();
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x) {
        const int y0 = y / 2 * 2, x0 = x / 2 * 2;
        p[(c * S + y) * S + x] =
            0.25f * (a[(c * S + y0) * S + x0] + a[(c * S + y0) * S + x0 + 1] +
                     a[(c * S + y0 + 1) * S + x0] + a[(c * S + y0 + 1) * S + x0 + 1]);
      }
  Tensor out = box_blur(px);
  Tensor noise = Tensor::zeros({3, S, S});
  Generator g(seed);
  g.uniform_(noise, -0.1, 0.1);
  float* o = out.data<float>();
  for (int i = 0; i < S * S; ++i) {
    const float grey = (o[i] + o[S * S + i] + o[2 * S * S + i]) / 3.0f;
    for (int c = 0; c < 3; ++c)
      o[c * S * S + i] = 0.7f * o[c * S * S + i] + 0.3f * grey + noise.data<float>()[c * S * S + i];
  }
  return out;
}

enum class Damage { none, blur, degrade };

struct Score {
  int64_t n = 0, both = 0, colour = 0, shape = 0;
  // Rows: truth; columns: the analyser's answer, column 0 = none (-1).
  std::array<std::array<int64_t, kSyntheticNumShapes + 1>, kSyntheticNumShapes> shapes{};
  std::array<std::array<int64_t, kSyntheticNumColours + 1>, kSyntheticNumColours> colours{};
  double rate() const { return static_cast<double>(both) / static_cast<double>(n); }
};

// extent: the objects' {min_extent, max_extent}; {0, 0} keeps the dataset's default.
Score score(int size, int64_t num, uint64_t seed, Damage damage,
            std::pair<double, double> extent = {0, 0}) {
  SyntheticOptions o;
  if (extent.second > 0) std::tie(o.min_extent, o.max_extent) = extent;
  o.num_images = num;
  o.image_size = size;
  o.seed = seed;
  std::unique_ptr<Dataset> ds = make_synthetic(o);
  std::vector<Analysis> got(static_cast<size_t>(num));
  // Images are independent and both the dataset and the analyser are thread-safe.
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < num; ++i) {
    Tensor im = ds->get(i).image;
    if (damage == Damage::blur) im = box_blur(im);
    if (damage == Damage::degrade) im = degrade(im, static_cast<uint64_t>(i));
    got[static_cast<size_t>(i)] = analyse_synthetic(im);
  }
  Score s;
  for (int64_t i = 0; i < num; ++i) {
    const SyntheticInfo t = synthetic_info(o, i);
    const Analysis& a = got[static_cast<size_t>(i)];
    ++s.n;
    s.colour += a.colour == t.colour;
    s.shape += a.shape == t.shape;
    s.both += a.colour == t.colour && a.shape == t.shape;
    ++s.shapes[static_cast<size_t>(t.shape)][static_cast<size_t>(a.shape + 1)];
    ++s.colours[static_cast<size_t>(t.colour)][static_cast<size_t>(a.colour + 1)];
  }
  return s;
}

std::string confusion(const Score& s) {
  std::string out = "  shapes (rows truth; cols none circle square triangle cross)\n";
  for (int t = 0; t < kSyntheticNumShapes; ++t) {
    out += fmt::format("    {:>8}:", synthetic_shape_name(t));
    for (int64_t v : s.shapes[static_cast<size_t>(t)]) out += fmt::format(" {:5d}", v);
    out += "\n";
  }
  out += "  colours (rows truth; cols none red green blue yellow magenta cyan)\n";
  for (int t = 0; t < kSyntheticNumColours; ++t) {
    out += fmt::format("    {:>8}:", synthetic_colour_name(t));
    for (int64_t v : s.colours[static_cast<size_t>(t)]) out += fmt::format(" {:5d}", v);
    out += "\n";
  }
  return out;
}

void check_accuracy(int size, int64_t num, Damage damage, double threshold,
                    std::pair<double, double> extent = {0, 0}) {
  const auto t0 = std::chrono::steady_clock::now();
  const Score s = score(size, num, held_out_seed(0), damage, extent);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE(fmt::format(
      "analyser {}x{}{}: both {:.2f}% (colour {:.2f}%, shape {:.2f}%) over {} "
      "images, {:.1f} s\n{}",
      size, size,
      damage == Damage::blur      ? " blurred 3x3"
      : damage == Damage::degrade ? " degraded"
                                  : "",
      100.0 * s.rate(), 100.0 * static_cast<double>(s.colour) / static_cast<double>(s.n),
      100.0 * static_cast<double>(s.shape) / static_cast<double>(s.n), s.n, secs, confusion(s)));
  CHECK(s.rate() >= threshold);
}

}  // namespace

TEST_CASE("analyser: >= 98% on held-out dataset images at 32x32 and 64x64") {
  check_accuracy(32, 2000, Damage::none, 0.98);
  check_accuracy(64, 2000, Damage::none, 0.98);
  // Smaller objects (25-45% of the side, 8 px wide at the least: the dataset's default until
  // 2026-11-21) are read as well.
  check_accuracy(32, 1000, Damage::none, 0.98, {0.25, 0.45});
}

TEST_CASE("analyser: >= 95% on held-out images blurred by a 3x3 box filter, or degraded") {
  check_accuracy(32, 1000, Damage::blur, 0.95);
  check_accuracy(64, 1000, Damage::blur, 0.95);
  check_accuracy(32, 1000, Damage::degrade, 0.95);
}

TEST_CASE("analyser: every (colour, shape) pair, drawn at every size from 16 to 96") {
  // Each size sees all 24 pairs (the dataset's label cycles through them quickly enough in 400
  // images); sizes the demo does not use still work (the fit runs at 32x32 for larger images).
  for (int size : {16, 24, 48, 96}) {
    const Score s = score(size, 400, held_out_seed(0), Damage::none);
    INFO("size ", size, "\n", confusion(s));
    CHECK(s.rate() >= 0.98);
    for (int t = 0; t < kSyntheticNumShapes; ++t)
      CHECK(s.shapes[static_cast<size_t>(t)][static_cast<size_t>(t + 1)] > 0);
  }
}

TEST_CASE("analyser: hand-drawn scenes, no coloured object, and input checks") {
  // Flat grey, and grey with a faint tint: no colour stands out.
  Tensor grey = Tensor::full({3, 32, 32}, -0.4);
  Analysis a = analyse_synthetic(grey);
  CHECK(a.colour == -1);
  CHECK(a.shape == -1);
  Tensor tinted = Tensor::full({3, 32, 32}, -0.4);
  for (int64_t i = 0; i < 32 * 32; ++i) tinted.data<float>()[i] = -0.3f;  // red channel +0.05
  a = analyse_synthetic(tinted);
  CHECK(a.colour == -1);

  // A saturated square drawn by hand: colour and shape without any dataset code.
  Tensor sq = Tensor::full({3, 32, 32}, -0.5);
  float* p = sq.data<float>();
  for (int y = 10; y < 22; ++y)
    for (int x = 8; x < 20; ++x) {
      p[(0 * 32 + y) * 32 + x] = -0.8f;  // blue: (0.1, 0.25, 0.95) in [0,1]
      p[(1 * 32 + y) * 32 + x] = -0.5f;
      p[(2 * 32 + y) * 32 + x] = 0.9f;
    }
  a = analyse_synthetic(sq);
  CHECK(a.colour == 2);
  CHECK(a.shape == 1);
  CHECK(a.confidence > 0);
  CHECK(a.confidence <= 1);

  // A second, smaller blob of another colour (generated images have them): the larger object
  // decides both colour and shape; the blue blob's hue is not mixed into the red (the mean of all
  // coloured pixels would read magenta).
  Tensor two = Tensor::full({3, 32, 32}, -0.5);
  float* q = two.data<float>();
  auto paint = [&](int y0, int y1, int x0, int x1, const float rgb[3]) {
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x)
        for (int c = 0; c < 3; ++c) q[(c * 32 + y) * 32 + x] = rgb[c];
  };
  const float red[3] = {0.8f, -0.76f, -0.8f}, blue[3] = {-0.7f, -0.4f, 0.9f};
  paint(2, 12, 2, 12, red);     // 100 px
  paint(20, 29, 20, 29, blue);  // 81 px: the mean colour of both would be magenta
  a = analyse_synthetic(two);
  CHECK(a.colour == 0);
  CHECK(a.shape == 1);

  CHECK_THROWS_AS(analyse_synthetic(Tensor::zeros({3, 32, 16})), std::invalid_argument);
  CHECK_THROWS_AS(analyse_synthetic(Tensor::zeros({1, 32, 32})), std::invalid_argument);
  CHECK_THROWS_AS(analyse_synthetic(Tensor::zeros({3, 8, 8})), std::invalid_argument);
}

TEST_CASE("parse_synthetic_prompt: colour and shape words of a caption") {
  PromptTarget t = parse_synthetic_prompt("a red circle on the left");
  CHECK(t.colour == 0);
  CHECK(t.shape == 0);
  t = parse_synthetic_prompt("A Magenta CROSS");
  CHECK(t.colour == 4);
  CHECK(t.shape == 3);
  t = parse_synthetic_prompt("two cyan crosses, at the top");
  CHECK(t.colour == 5);
  CHECK(t.shape == 3);
  t = parse_synthetic_prompt("a yellow triangle");
  CHECK(t.colour == 3);
  CHECK(t.shape == 2);
  t = parse_synthetic_prompt("green squares");
  CHECK(t.colour == 1);
  CHECK(t.shape == 1);
  t = parse_synthetic_prompt("a blue thing");
  CHECK(t.colour == 2);
  CHECK(t.shape == -1);
  t = parse_synthetic_prompt("");
  CHECK(t.colour == -1);
  CHECK(t.shape == -1);
  // Whole words only: "reddish" is not "red", "circled" not "circle".
  t = parse_synthetic_prompt("a reddish circled");
  CHECK(t.colour == -1);
  CHECK(t.shape == -1);
  // Every caption the dataset writes parses back to its label.
  SyntheticOptions o;
  o.num_images = 200;
  auto ds = make_synthetic(o);
  for (int64_t i = 0; i < 200; ++i) {
    Sample s = ds->get(i);
    t = parse_synthetic_prompt(s.caption);
    CHECK(t.shape * kSyntheticNumColours + t.colour == s.label);
  }
}
