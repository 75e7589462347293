// The built-in dataset: one saturated shape (circle, square, triangle, cross) in one of six
// colours over a low-saturation background, drawn procedurally from Philox so that image i is a
// pure function of (seed, i) and needs no files.
//
// Random stream layout (key = seed; see tensor/philox.h):
//   counters [i*16, i*16 + 16): the 64 uniforms that choose image i's parameters (kParam* below);
//   counters from 2^63 + i * ceil(3*S*S / 4): the per-pixel noise of image i.
// Geometry is drawn as fractions of the side, so image i shows the same scene at every size.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "tensor/philox.h"
#include "tensor/random.h"
#include "train/data/dataset.h"

namespace psvae::train {

namespace {

const char* const kShapeNames[kSyntheticNumShapes] = {"circle", "square", "triangle", "cross"};
const char* const kColourNames[kSyntheticNumColours] = {"red",    "green",   "blue",
                                                        "yellow", "magenta", "cyan"};
// Saturated primaries and secondaries (sRGB in [0, 1]); the background's saturation stays below
// ~0.15, so the hue of the shape is never ambiguous.
const float kColours[kSyntheticNumColours][3] = {{0.90f, 0.12f, 0.10f}, {0.12f, 0.78f, 0.18f},
                                                 {0.15f, 0.30f, 0.95f}, {0.95f, 0.88f, 0.12f},
                                                 {0.88f, 0.15f, 0.85f}, {0.12f, 0.82f, 0.90f}};

constexpr uint64_t kCountersPerImage = 16;  // 64 uniforms; the parameters use the first 20
constexpr uint64_t kNoiseBase = uint64_t{1} << 63;

// Which uniform drives which parameter.
enum : int {
  kParamShape = 0,
  kParamColour,
  kParamSize,
  kParamX,
  kParamY,
  kParamGrey,
  kParamTintHue,
  kParamTintAmount,
  kParamGradientOn,
  kParamGradientAngle,
  kParamGradientAmount,
  kParamNoiseOn,
  kParamNoiseAmount,
  kParamJitterR,
  kParamJitterG,
  kParamJitterB,
  kParamBrightness,
  kParamCaption,
};

constexpr double kMargin = 0.03;        // shape keeps this far from the frame
constexpr double kCentreRadius = 0.08;  // "in the centre" within this offset

struct Scene {
  SyntheticInfo info;  // geometry in pixels
  float fg[3];
  float bg[3];
  double grad_amount = 0, grad_cos = 0, grad_sin = 0;  // 0 amount: flat background
  double noise = 0;                                    // 0: no noise
};

double param(uint64_t seed, int64_t index, int k) {
  return philox::uniform_at(seed, static_cast<uint64_t>(index) * kCountersPerImage, k);
}

int pick(double u, int n) { return std::min(static_cast<int>(u * n), n - 1); }

// Fully saturated colour of hue h in [0, 1) (HSV with s = v = 1).
void hue_rgb(double h, float out[3]) {
  double x = h * 6.0;
  for (int c = 0; c < 3; ++c) {
    // Distance of the hue from the channel's peak (r at 0, g at 2, b at 4 sixths).
    double d = std::fmod(std::fabs(x - 2.0 * c) + 6.0, 6.0);
    d = std::min(d, 6.0 - d);
    out[c] = static_cast<float>(std::clamp(2.0 - d, 0.0, 1.0));
  }
}

std::string position_of(double fx, double fy) {
  const double dx = fx - 0.5, dy = fy - 0.5;
  if (std::hypot(dx, dy) < kCentreRadius) return "in the centre";
  if (std::fabs(dx) >= std::fabs(dy)) return dx < 0 ? "on the left" : "on the right";
  return dy < 0 ? "at the top" : "at the bottom";
}

Scene make_scene(const SyntheticOptions& opt, int64_t index) {
  const uint64_t seed = opt.seed;
  const int size = opt.image_size;
  auto u = [&](int k) { return param(seed, index, k); };
  Scene s;
  SyntheticInfo& info = s.info;
  info.shape = pick(u(kParamShape), kSyntheticNumShapes);
  info.colour = pick(u(kParamColour), kSyntheticNumColours);
  const double half = 0.5 * (opt.min_extent + (opt.max_extent - opt.min_extent) * u(kParamSize));
  const double span = 1.0 - 2.0 * (half + kMargin);
  const double fx = half + kMargin + span * u(kParamX), fy = half + kMargin + span * u(kParamY);
  info.cx = fx * size;
  info.cy = fy * size;
  info.size = half * size;
  info.position = position_of(fx, fy);
  info.position_in_caption = u(kParamCaption) < opt.position_caption_rate;

  // Brightness and per-channel jitter vary the shade without moving it to another colour name.
  const double bright = 0.85 + 0.2 * u(kParamBrightness);
  const int jit[3] = {kParamJitterR, kParamJitterG, kParamJitterB};
  for (int c = 0; c < 3; ++c)
    s.fg[c] = static_cast<float>(
        std::clamp(kColours[info.colour][c] * bright + 0.08 * (u(jit[c]) - 0.5), 0.0, 1.0));

  // Background: dark-to-mid grey with a faint tint of a random hue (zero-mean across channels, so
  // the grey level is kept), then optionally a gentle gradient and light noise.
  const double grey = 0.08 + 0.37 * u(kParamGrey);
  float tint[3];
  hue_rgb(u(kParamTintHue), tint);
  const float mean = (tint[0] + tint[1] + tint[2]) / 3.0f;
  const double tint_amount = 0.10 * u(kParamTintAmount);
  for (int c = 0; c < 3; ++c) s.bg[c] = static_cast<float>(grey + tint_amount * (tint[c] - mean));
  if (u(kParamGradientOn) < 0.5) {
    const double angle = 6.283185307179586 * u(kParamGradientAngle);
    s.grad_amount = 0.03 + 0.09 * u(kParamGradientAmount);
    s.grad_cos = std::cos(angle);
    s.grad_sin = std::sin(angle);
  }
  if (u(kParamNoiseOn) < 0.5) s.noise = 0.01 + 0.03 * u(kParamNoiseAmount);
  return s;
}

// Is the point (px, py), in pixels, inside the shape?
bool inside(const SyntheticInfo& g, double px, double py) {
  const double dx = px - g.cx, dy = py - g.cy, h = g.size;
  switch (g.shape) {
    case 0: return dx * dx + dy * dy <= h * h;
    case 1: return std::fabs(dx) <= h && std::fabs(dy) <= h;
    case 2: {  // apex at the top centre, base along the bottom of the box
      if (dy < -h || dy > h) return false;
      const double half_width = h * (dy + h) / (2.0 * h);
      return std::fabs(dx) <= half_width;
    }
    default: {  // plus sign with arms 0.6 h thick
      const double t = 0.3 * h;
      return (std::fabs(dx) <= h && std::fabs(dy) <= t) ||
             (std::fabs(dy) <= h && std::fabs(dx) <= t);
    }
  }
}

uint8_t quantise(double v) {
  v = std::clamp(v, 0.0, 1.0) * 255.0;
  return static_cast<uint8_t>(std::floor(v + 0.5));
}

Image render(const SyntheticOptions& opt, int64_t index) {
  const Scene s = make_scene(opt, index);
  const uint64_t seed = opt.seed;
  const int size = opt.image_size;
  const size_t n = static_cast<size_t>(size) * size;
  std::vector<float> rgb(n * 3);
  for (int y = 0; y < size; ++y) {
    for (int x = 0; x < size; ++x) {
      double shade = 0.0;
      if (s.grad_amount > 0) {
        const double px = (x + 0.5) / size - 0.5, py = (y + 0.5) / size - 0.5;
        shade = s.grad_amount * (px * s.grad_cos + py * s.grad_sin);
      }
      for (int c = 0; c < 3; ++c)
        rgb[(static_cast<size_t>(y) * size + x) * 3 + c] = static_cast<float>(s.bg[c] + shade);
    }
  }
  // Coverage from 4x4 samples per pixel gives antialiased edges; only the bounding box is visited.
  const SyntheticInfo& g = s.info;
  const int x0 = std::max(0, static_cast<int>(std::floor(g.cx - g.size)) - 1);
  const int x1 = std::min(size - 1, static_cast<int>(std::ceil(g.cx + g.size)) + 1);
  const int y0 = std::max(0, static_cast<int>(std::floor(g.cy - g.size)) - 1);
  const int y1 = std::min(size - 1, static_cast<int>(std::ceil(g.cy + g.size)) + 1);
  for (int y = y0; y <= y1; ++y) {
    for (int x = x0; x <= x1; ++x) {
      int hits = 0;
      for (int sy = 0; sy < 4; ++sy)
        for (int sx = 0; sx < 4; ++sx)
          hits += inside(g, x + (sx + 0.5) / 4.0, y + (sy + 0.5) / 4.0);
      if (hits == 0) continue;
      const float a = static_cast<float>(hits) / 16.0f;
      float* p = &rgb[(static_cast<size_t>(y) * size + x) * 3];
      for (int c = 0; c < 3; ++c) p[c] = p[c] * (1.0f - a) + s.fg[c] * a;
    }
  }
  Image img;
  img.width = img.height = size;
  img.rgb.resize(n * 3);
  const uint64_t noise_offset = kNoiseBase + static_cast<uint64_t>(index) * philox_counters(3 * n);
  for (size_t i = 0; i < n * 3; i += 4) {
    philox::U32x4 b{};
    if (s.noise > 0) b = philox::block(seed, noise_offset + i / 4);
    for (size_t j = 0; j < 4 && i + j < n * 3; ++j) {
      double v = rgb[i + j];
      if (s.noise > 0) v += s.noise * (2.0 * philox::to_uniform(b.v[j]) - 1.0);
      img.rgb[i + j] = quantise(v);
    }
  }
  return img;
}

void check_options(const SyntheticOptions& opt) {
  if (opt.image_size < 16)
    throw std::invalid_argument("synthetic: image_size must be at least 16, got " +
                                std::to_string(opt.image_size));
  if (opt.num_images < 1)
    throw std::invalid_argument("synthetic: num_images must be at least 1, got " +
                                std::to_string(opt.num_images));
  // The largest shape plus its margins must fit the frame.
  if (!(opt.min_extent > 0 && opt.min_extent <= opt.max_extent &&
        opt.max_extent <= 1.0 - 2.0 * kMargin))
    throw std::invalid_argument(
        "synthetic: need 0 < min_extent <= max_extent <= " + std::to_string(1.0 - 2.0 * kMargin) +
        ", got min_extent " + std::to_string(opt.min_extent) + ", max_extent " +
        std::to_string(opt.max_extent));
  if (!(opt.position_caption_rate >= 0 && opt.position_caption_rate <= 1))
    throw std::invalid_argument("synthetic: position_caption_rate must be in [0, 1], got " +
                                std::to_string(opt.position_caption_rate));
}

class SyntheticDataset : public Dataset {
 public:
  explicit SyntheticDataset(const SyntheticOptions& opt) : opt_(opt) { check_options(opt); }

  int64_t size() const override { return opt_.num_images; }
  Sample get(int64_t index) const override {
    if (index < 0 || index >= opt_.num_images)
      throw std::out_of_range("synthetic: index " + std::to_string(index) + " out of range [0, " +
                              std::to_string(opt_.num_images) + ")");
    const SyntheticInfo info = make_scene(opt_, index).info;
    Sample s;
    s.image = image_to_tensor(render(opt_, index));
    s.label = info.shape * kSyntheticNumColours + info.colour;
    s.caption = std::string("a ") + kColourNames[info.colour] + " " + kShapeNames[info.shape];
    if (info.position_in_caption) s.caption += " " + info.position;
    s.source = "synthetic:" + std::to_string(index);
    return s;
  }
  int64_t num_classes() const override { return kSyntheticNumShapes * kSyntheticNumColours; }
  std::string class_name(int64_t label) const override {
    if (label < 0 || label >= num_classes())
      throw std::out_of_range("synthetic: label " + std::to_string(label) + " out of range");
    return std::string(kColourNames[label % kSyntheticNumColours]) + " " +
           kShapeNames[label / kSyntheticNumColours];
  }
  int image_size() const override { return opt_.image_size; }
  std::string describe() const override {
    const std::string s = std::to_string(opt_.image_size);
    return "synthetic: " + std::to_string(opt_.num_images) + " images " + s + "x" + s + ", " +
           std::to_string(num_classes()) + " classes (seed " + std::to_string(opt_.seed) + ")";
  }

 private:
  SyntheticOptions opt_;
};

}  // namespace

const char* synthetic_shape_name(int shape) {
  if (shape < 0 || shape >= kSyntheticNumShapes)
    throw std::out_of_range("synthetic: shape " + std::to_string(shape) + " out of range");
  return kShapeNames[shape];
}

const char* synthetic_colour_name(int colour) {
  if (colour < 0 || colour >= kSyntheticNumColours)
    throw std::out_of_range("synthetic: colour " + std::to_string(colour) + " out of range");
  return kColourNames[colour];
}

std::unique_ptr<Dataset> make_synthetic(const SyntheticOptions& opt) {
  return std::make_unique<SyntheticDataset>(opt);
}

SyntheticInfo synthetic_info(const SyntheticOptions& opt, int64_t index) {
  check_options(opt);
  return make_scene(opt, index).info;
}

}  // namespace psvae::train
