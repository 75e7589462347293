// The synthetic-image analyser: colour by hue, shape by fitting the dataset's four shape models.
//
//   image [-1,1] -> [0,1] RGB
//   1. chroma (max - min channel): the background's stays below ~0.2 (grey + a tint of at most
//      0.067 per channel + noise of at most 0.04), every dataset colour's is above ~0.45. The
//      object is present when the top chroma (the 1% quantile from the top) stands 0.15 above the
//      median (the background: the largest object covers 20% of the image).
//   2. background: a plane a + b x + c y per channel, least squares over the low-chroma pixels away
//      from the object (the dataset's gradients are planes); foreground: the mean colour of the
//      high-chroma core.
//   3. coverage: each pixel's colour projected on the background -> foreground segment,
//      a = <p - bg(x,y), fg - bg(x,y)> / |fg - bg(x,y)|^2. The dataset blends fg over bg with the
//      antialiasing coverage, and blur is linear, so `a` is the (blurred) coverage map itself.
//   4. shape: for each of circle, square, triangle, cross, the template that best matches the
//      coverage map in least squares: centre and half-size start from the coverage's moments (area
//      pi h^2, 4 h^2, 2 h^2, 2.04 h^2; the triangle's centroid sits h/3 below its box centre) and a
//      pattern search refines (cx, cy, h, sigma), sigma being a Gaussian blur of the template (0
//      for dataset images; generated images decoded by the VAE are blurrier). Templates are
//      rendered exactly as train/data/synthetic.cpp draws (4x4 samples per pixel), so a dataset
//      image is fit to its noise level. The shape with the smallest residual wins.
//   5. colour: the hue of the foreground colour, nearest of the six dataset hues.
// Fitting whole templates rather than thresholding features (fill ratio, corners) keeps working
// when edges are soft: a blurred square still fits a blurred square better than a blurred circle.
#include "train/eval/analyser.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "train/data/dataset.h"

namespace psvae::train {

namespace {

constexpr double kPi = 3.14159265358979323846;
// The largest template blur the fit tries, as a fraction of the side: 1.9 px at 32x32 (a 3x3 box
// filter is sigma 0.82 px, two of them 1.15 px).
constexpr double kMaxSigma = 0.06;

// The dataset's colours (train/data/synthetic.cpp kColours, sRGB in [0,1]); only their hues are
// used: brightness and per-channel jitter (+-0.04) move a shade by at most ~8 degrees of hue,
// and neighbouring dataset hues are 55 degrees or more apart.
constexpr double kColours[kSyntheticNumColours][3] = {{0.90, 0.12, 0.10}, {0.12, 0.78, 0.18},
                                                      {0.15, 0.30, 0.95}, {0.95, 0.88, 0.12},
                                                      {0.88, 0.15, 0.85}, {0.12, 0.82, 0.90}};
// Plus sign arm half-thickness, as a fraction of the half-size (synthetic.cpp: t = 0.3 h).
constexpr double kArm = 0.3;
// Area of each shape per h^2: circle pi, square 4, triangle 2 (base 2h, height 2h), cross
// 2 * (2h * 0.6h) - (0.6h)^2 = 2.04.
constexpr double kAreaPerH2[kSyntheticNumShapes] = {kPi, 4.0, 2.0, 2.04};

// Hue in degrees [0, 360) of an RGB colour (HSV hue).
double hue_deg(double r, double g, double b) {
  const double mx = std::max({r, g, b}), mn = std::min({r, g, b}), c = mx - mn;
  if (c <= 0) return 0;
  double h;
  if (mx == r)
    h = std::fmod((g - b) / c + 6.0, 6.0);
  else if (mx == g)
    h = (b - r) / c + 2.0;
  else
    h = (r - g) / c + 4.0;
  return h * 60.0;
}

double hue_distance(double a, double b) {
  double d = std::fabs(a - b);
  return std::min(d, 360.0 - d);
}

// Signed distance bound of the pixel-centre point to the shape's outline (negative inside): when
// |d| > 0.75 px the whole pixel (half-diagonal 0.707) is on one side, so its coverage is 0 or 1
// without sampling. Each shape is an intersection of half-planes (or a union of two boxes), and
// the max (min) of the half-plane distances bounds the true distance from below.
double outline_bound(int shape, double dx, double dy, double h) {
  switch (shape) {
    case 0: return std::hypot(dx, dy) - h;
    case 1: return std::max(std::fabs(dx), std::fabs(dy)) - h;
    case 2: {
      // Apex (0,-h), base y = h, half-width at row dy: (dy + h) / 2. Side edges |dx| <= (dy+h)/2,
      // i.e. 2|dx| - dy - h <= 0, unit normal length sqrt(5).
      const double side = (2.0 * std::fabs(dx) - dy - h) / std::sqrt(5.0);
      return std::max({side, dy - h, -dy - h});
    }
    default: {
      const double t = kArm * h;
      const double horiz = std::max(std::fabs(dx) - h, std::fabs(dy) - t);
      const double vert = std::max(std::fabs(dx) - t, std::fabs(dy) - h);
      return std::min(horiz, vert);
    }
  }
}

// synthetic.cpp's inside(): the same comparisons, so templates match dataset renders exactly.
bool inside(int shape, double dx, double dy, double h) {
  switch (shape) {
    case 0: return dx * dx + dy * dy <= h * h;
    case 1: return std::fabs(dx) <= h && std::fabs(dy) <= h;
    case 2: {
      if (dy < -h || dy > h) return false;
      return std::fabs(dx) <= h * (dy + h) / (2.0 * h);
    }
    default: {
      const double t = kArm * h;
      return (std::fabs(dx) <= h && std::fabs(dy) <= t) ||
             (std::fabs(dy) <= h && std::fabs(dx) <= t);
    }
  }
}

// The coverage map and the window (inclusive pixel bounds) the fit works in.
struct Window {
  int x0, y0, x1, y1;
  int w() const { return x1 - x0 + 1; }
  int h() const { return y1 - y0 + 1; }
};

struct Params {
  double cx, cy, h, sigma;
};

class TemplateFit {
 public:
  TemplateFit(const std::vector<double>& cover, int size, const Window& win)
      : size_(size), win_(win), obs_(static_cast<size_t>(win.w() * win.h())) {
    for (int y = win.y0; y <= win.y1; ++y)
      for (int x = win.x0; x <= win.x1; ++x)
        obs_[idx(x, y)] = cover[static_cast<size_t>(y) * size + x];
    tmpl_.resize(obs_.size());
    tmp_.resize(obs_.size());
  }

  // Least-squares residual of `shape` with parameters p over the window.
  double residual(int shape, const Params& p) {
    render(shape, p);
    if (p.sigma > 0.05) blur(p.sigma);
    double e = 0;
    for (size_t i = 0; i < obs_.size(); ++i) {
      const double d = obs_[i] - tmpl_[i];
      e += d * d;
    }
    return e;
  }

  // Pattern search from p: each of cx, cy, h, sigma is stepped up and down, a step that lowers
  // the residual is taken, and all steps halve when none does.
  double fit(int shape, Params& p) {
    double best = residual(shape, p);
    double step[4] = {0.5, 0.5, 0.06 * p.h, 0.4};
    const double max_sigma = kMaxSigma * size_, min_h = 0.5, max_h = 0.5 * size_;
    for (int iter = 0; iter < 200 && step[0] > 0.1; ++iter) {
      bool moved = false;
      for (int d = 0; d < 4; ++d) {
        for (int sgn : {1, -1}) {
          Params q = p;
          double* v = d == 0 ? &q.cx : d == 1 ? &q.cy : d == 2 ? &q.h : &q.sigma;
          *v += sgn * step[d];
          if (q.sigma < 0 || q.sigma > max_sigma || q.h < min_h || q.h > max_h) continue;
          const double e = residual(shape, q);
          if (e < best) {
            best = e;
            p = q;
            moved = true;
            break;
          }
        }
      }
      if (!moved)
        for (double& s : step) s *= 0.5;
    }
    return best;
  }

 private:
  size_t idx(int x, int y) const {
    return static_cast<size_t>(y - win_.y0) * win_.w() + static_cast<size_t>(x - win_.x0);
  }

  void render(int shape, const Params& p) {
    for (int y = win_.y0; y <= win_.y1; ++y)
      for (int x = win_.x0; x <= win_.x1; ++x) {
        const double d = outline_bound(shape, x + 0.5 - p.cx, y + 0.5 - p.cy, p.h);
        double a;
        if (d > 0.75) {
          a = 0;
        } else if (d < -0.75) {
          a = 1;
        } else {
          int hits = 0;
          for (int sy = 0; sy < 4; ++sy)
            for (int sx = 0; sx < 4; ++sx)
              hits += inside(shape, x + (sx + 0.5) / 4.0 - p.cx, y + (sy + 0.5) / 4.0 - p.cy, p.h);
          a = hits / 16.0;
        }
        tmpl_[idx(x, y)] = a;
      }
  }

  // Separable Gaussian blur of the template inside the window (zero outside: the shape sits in
  // the window's interior, see the margin in analyse_synthetic).
  void blur(double sigma) {
    const int r = std::max(1, static_cast<int>(std::ceil(3.0 * sigma)));
    std::vector<double> k(static_cast<size_t>(2 * r + 1));
    double ks = 0;
    for (int i = -r; i <= r; ++i)
      ks += k[static_cast<size_t>(i + r)] = std::exp(-0.5 * i * i / (sigma * sigma));
    for (double& v : k) v /= ks;
    const int w = win_.w(), h = win_.h();
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        double s = 0;
        for (int i = std::max(-r, -x); i <= std::min(r, w - 1 - x); ++i)
          s += k[static_cast<size_t>(i + r)] * tmpl_[static_cast<size_t>(y * w + x + i)];
        tmp_[static_cast<size_t>(y * w + x)] = s;
      }
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        double s = 0;
        for (int i = std::max(-r, -y); i <= std::min(r, h - 1 - y); ++i)
          s += k[static_cast<size_t>(i + r)] * tmp_[static_cast<size_t>((y + i) * w + x)];
        tmpl_[static_cast<size_t>(y * w + x)] = s;
      }
  }

  int size_;
  Window win_;
  std::vector<double> obs_, tmpl_, tmp_;
};

// Value at the q-quantile (0..1) of v (copied).
double quantile(std::vector<double> v, double q) {
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

// Solves the 3x3 system m x = r (normal equations of the background plane); false if singular.
bool solve3(double m[3][3], double r[3], double x[3]) {
  const double det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
                     m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
                     m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
  if (std::fabs(det) < 1e-12) return false;
  for (int c = 0; c < 3; ++c) {
    double mc[3][3];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) mc[i][j] = j == c ? r[i] : m[i][j];
    x[c] = (mc[0][0] * (mc[1][1] * mc[2][2] - mc[1][2] * mc[2][1]) -
            mc[0][1] * (mc[1][0] * mc[2][2] - mc[1][2] * mc[2][0]) +
            mc[0][2] * (mc[1][0] * mc[2][1] - mc[1][1] * mc[2][0])) /
           det;
  }
  return true;
}

// 4-connected components of mask (S x S): label per pixel (-1 outside the mask); returns the
// label of the component with the largest weight (sum of `weight` over its pixels), -1 if none.
int largest_component(const std::vector<char>& mask, const std::vector<double>& weight, int S,
                      std::vector<int>& label, size_t* count_out) {
  const size_t n = static_cast<size_t>(S) * S;
  label.assign(n, -1);
  int best = -1, next = 0;
  double best_w = -1;
  size_t best_count = 0;
  std::vector<size_t> stack;
  for (size_t s = 0; s < n; ++s) {
    if (!mask[s] || label[s] >= 0) continue;
    double w = 0;
    size_t count = 0;
    stack.push_back(s);
    label[s] = next;
    while (!stack.empty()) {
      const size_t p = stack.back();
      stack.pop_back();
      w += weight[p];
      ++count;
      const int x = static_cast<int>(p % S), y = static_cast<int>(p / S);
      const int nx[4] = {x - 1, x + 1, x, x}, ny[4] = {y, y, y - 1, y + 1};
      for (int k = 0; k < 4; ++k) {
        if (nx[k] < 0 || ny[k] < 0 || nx[k] >= S || ny[k] >= S) continue;
        const size_t q = static_cast<size_t>(ny[k]) * S + nx[k];
        if (mask[q] && label[q] < 0) {
          label[q] = next;
          stack.push_back(q);
        }
      }
    }
    if (w > best_w) best_w = w, best = next, best_count = count;
    ++next;
  }
  if (count_out) *count_out = best_count;
  return best;
}

// The largest side the shape fit works at (see analyse_synthetic).
constexpr int kFitSize = 32;

// (S,S) -> (T,T) by area averaging (T < S): output pixel i covers [i S/T, (i+1) S/T) of the input.
std::vector<double> area_resample(const std::vector<double>& in, int S, int T) {
  // Per axis, the weights of the input pixels for each output pixel (overlap / (S/T)).
  std::vector<std::vector<std::pair<int, double>>> taps(static_cast<size_t>(T));
  const double f = static_cast<double>(S) / T;
  for (int i = 0; i < T; ++i) {
    const double lo = i * f, hi = (i + 1) * f;
    for (int j = static_cast<int>(std::floor(lo)); j < std::min(S, static_cast<int>(std::ceil(hi)));
         ++j) {
      const double w = std::min(hi, j + 1.0) - std::max(lo, static_cast<double>(j));
      if (w > 0) taps[static_cast<size_t>(i)].emplace_back(j, w / f);
    }
  }
  std::vector<double> rows(static_cast<size_t>(T) * S), out(static_cast<size_t>(T) * T);
  for (int y = 0; y < T; ++y)
    for (int x = 0; x < S; ++x) {
      double s = 0;
      for (auto [j, w] : taps[static_cast<size_t>(y)]) s += w * in[static_cast<size_t>(j) * S + x];
      rows[static_cast<size_t>(y) * S + x] = s;
    }
  for (int y = 0; y < T; ++y)
    for (int x = 0; x < T; ++x) {
      double s = 0;
      for (auto [j, w] : taps[static_cast<size_t>(x)])
        s += w * rows[static_cast<size_t>(y) * S + j];
      out[static_cast<size_t>(y) * T + x] = s;
    }
  return out;
}

}  // namespace

Analysis analyse_synthetic(const Tensor& image) {
  if (image.rank() != 3 || image.size(0) != 3 || image.size(1) != image.size(2) ||
      image.size(1) < 16)
    throw std::invalid_argument("analyse_synthetic: expected a (3,S,S) image with S >= 16, got " +
                                image.shape().str());
  int S = static_cast<int>(image.size(1));
  size_t n = static_cast<size_t>(S) * S;
  Tensor host = image.to(Device::cpu());
  std::vector<double> rgb(3 * n);  // planar, [0,1]
  for (size_t i = 0; i < 3 * n; ++i) {
    double v;
    switch (host.dtype()) {
      case DType::F32: v = host.data<float>()[i]; break;
      case DType::F64: v = host.data<double>()[i]; break;
      case DType::BF16: v = static_cast<float>(host.data<bf16>()[i]); break;
      default: throw std::invalid_argument("analyse_synthetic: expected a floating image");
    }
    rgb[i] = std::clamp(0.5 * (v + 1.0), 0.0, 1.0);
  }
  auto at = [&](int c, size_t p) { return rgb[static_cast<size_t>(c) * n + p]; };

  // 1. Chroma and the object's presence.
  std::vector<double> chroma(n);
  for (size_t p = 0; p < n; ++p)
    chroma[p] = std::max({at(0, p), at(1, p), at(2, p)}) - std::min({at(0, p), at(1, p), at(2, p)});
  const double bg_level = quantile(chroma, 0.5);
  const double peak = quantile(chroma, 0.99);
  Analysis out;
  if (peak - bg_level < 0.15) return out;  // no coloured object

  // 2. Foreground colour: the high-chroma core of the most colourful blob (a generated image may
  // hold a second, smaller blob of another colour; averaging both would mix their hues).
  // Background: a plane per channel through the low-chroma pixels at least 2 px from any clearly
  // coloured pixel.
  const double core_thr = bg_level + 0.75 * (peak - bg_level);
  const double obj_thr = bg_level + 0.35 * (peak - bg_level);
  std::vector<char> coloured(n);
  for (size_t p = 0; p < n; ++p) coloured[p] = chroma[p] >= obj_thr;
  std::vector<int> blob;
  const int main_blob = largest_component(coloured, chroma, S, blob, nullptr);
  double fg[3] = {0, 0, 0};
  int64_t core = 0;
  for (size_t p = 0; p < n; ++p)
    if (blob[p] == main_blob && chroma[p] >= core_thr) {
      for (int c = 0; c < 3; ++c) fg[c] += at(c, p);
      ++core;
    }
  if (core == 0) return out;  // the 1% most colourful pixels are scattered noise
  for (double& v : fg) v /= static_cast<double>(core);

  std::vector<char> near(n, 0);
  for (int y = 0; y < S; ++y)
    for (int x = 0; x < S; ++x) {
      if (chroma[static_cast<size_t>(y) * S + x] < obj_thr) continue;
      for (int yy = std::max(0, y - 2); yy <= std::min(S - 1, y + 2); ++yy)
        for (int xx = std::max(0, x - 2); xx <= std::min(S - 1, x + 2); ++xx)
          near[static_cast<size_t>(yy) * S + xx] = 1;
    }
  // Plane in normalised coordinates u = (x + 0.5)/S - 0.5 (as the dataset's gradient).
  double m[3][3] = {}, rhs[3][3] = {};
  for (int y = 0; y < S; ++y)
    for (int x = 0; x < S; ++x) {
      const size_t p = static_cast<size_t>(y) * S + x;
      if (near[p]) continue;
      const double b[3] = {1.0, (x + 0.5) / S - 0.5, (y + 0.5) / S - 0.5};
      for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) m[i][j] += b[i] * b[j];
        for (int c = 0; c < 3; ++c) rhs[c][i] += b[i] * at(c, p);
      }
    }
  double plane[3][3] = {};
  for (int c = 0; c < 3; ++c) {
    if (!solve3(m, rhs[c], plane[c])) {  // (almost) no background pixels: the mean colour
      plane[c][0] = m[0][0] > 0 ? rhs[c][0] / m[0][0] : 0.0;
      plane[c][1] = plane[c][2] = 0;
    }
  }

  // 3. Coverage.
  std::vector<double> cover(n);
  for (int y = 0; y < S; ++y)
    for (int x = 0; x < S; ++x) {
      const size_t p = static_cast<size_t>(y) * S + x;
      const double u = (x + 0.5) / S - 0.5, v = (y + 0.5) / S - 0.5;
      double num = 0, den = 0;
      for (int c = 0; c < 3; ++c) {
        const double bg = plane[c][0] + plane[c][1] * u + plane[c][2] * v;
        num += (at(c, p) - bg) * (fg[c] - bg);
        den += (fg[c] - bg) * (fg[c] - bg);
      }
      cover[p] = den > 1e-9 ? std::clamp(num / den, 0.0, 1.0) : 0.0;
    }

  // Large images are analysed at 32x32: the coverage map is area-averaged (the average of
  // coverages is the coverage of the larger pixel), which keeps the fit's cost fixed (a 64x64
  // image would cost 4x more) and loses nothing the shapes need: shapes as small as 8 px wide at
  // 32x32 are read as well as at 64x64 (tests/train/test_analyser.cpp).
  if (S > kFitSize) {
    cover = area_resample(cover, S, kFitSize);
    S = kFitSize;
    n = static_cast<size_t>(S) * S;
  }

  // 4. The object's window: the largest 4-connected component of coverage > 0.5, its bounding box
  // widened by 2 px plus 1.5 sigma of the largest template blur.
  std::vector<char> solid(n);
  for (size_t p = 0; p < n; ++p) solid[p] = cover[p] > 0.5;
  std::vector<int> label;
  size_t best_count = 0;
  const int best_label = largest_component(solid, cover, S, label, &best_count);
  if (best_label < 0 || best_count < 3) return out;
  Window win{S, S, -1, -1};
  for (size_t p = 0; p < n; ++p)
    if (label[p] == best_label) {
      const int x = static_cast<int>(p % S), y = static_cast<int>(p / S);
      win.x0 = std::min(win.x0, x), win.x1 = std::max(win.x1, x);
      win.y0 = std::min(win.y0, y), win.y1 = std::max(win.y1, y);
    }
  const int margin = 2 + static_cast<int>(std::ceil(1.5 * kMaxSigma * S));
  win.x0 = std::max(0, win.x0 - margin), win.y0 = std::max(0, win.y0 - margin);
  win.x1 = std::min(S - 1, win.x1 + margin), win.y1 = std::min(S - 1, win.y1 + margin);

  // Moments of the coverage inside the window; other components inside it are zeroed so a stray
  // blob does not pull the fit.
  std::vector<double> obj(n, 0.0);
  double area = 0, mx = 0, my = 0;
  for (int y = win.y0; y <= win.y1; ++y)
    for (int x = win.x0; x <= win.x1; ++x) {
      const size_t p = static_cast<size_t>(y) * S + x;
      if (label[p] >= 0 && label[p] != best_label) continue;
      obj[p] = cover[p];
      area += cover[p];
      mx += cover[p] * (x + 0.5);
      my += cover[p] * (y + 0.5);
    }
  mx /= area;
  my /= area;

  // 5. Shape: the template with the smallest residual.
  TemplateFit fit(obj, S, win);
  double res[kSyntheticNumShapes];
  for (int s = 0; s < kSyntheticNumShapes; ++s) {
    Params p;
    p.h = std::sqrt(area / kAreaPerH2[s]);
    p.cx = mx;
    p.cy = s == 2 ? my - p.h / 3.0 : my;  // the triangle's centroid is h/3 below its box centre
    p.sigma = 0;
    res[s] = fit.fit(s, p);
  }
  int best = 0, second = -1;
  for (int s = 1; s < kSyntheticNumShapes; ++s)
    if (res[s] < res[best]) best = s;
  for (int s = 0; s < kSyntheticNumShapes; ++s)
    if (s != best && (second < 0 || res[s] < res[second])) second = s;

  // 6. Colour: the nearest dataset hue to the foreground's.
  const double h = hue_deg(fg[0], fg[1], fg[2]);
  int colour = 0;
  double d1 = 1e9, d2 = 1e9;
  for (int c = 0; c < kSyntheticNumColours; ++c) {
    const double d = hue_distance(h, hue_deg(kColours[c][0], kColours[c][1], kColours[c][2]));
    if (d < d1) {
      d2 = d1, d1 = d, colour = c;
    } else if (d < d2) {
      d2 = d;
    }
  }

  out.colour = colour;
  out.shape = best;
  // Shape margin (how much worse the runner-up fits) times colour margin (how much closer the hue
  // is to the chosen colour than to the next).
  const double shape_conf = res[second] > 0 ? (res[second] - res[best]) / res[second] : 1.0;
  const double colour_conf = d1 + d2 > 0 ? (d2 - d1) / (d2 + d1) : 1.0;
  out.confidence = std::clamp(shape_conf * colour_conf, 0.0, 1.0);
  return out;
}

PromptTarget parse_synthetic_prompt(const std::string& prompt) {
  PromptTarget t;
  std::string word;
  auto take = [&]() {
    if (word.empty()) return;
    std::string w = word;
    word.clear();
    for (int c = 0; c < kSyntheticNumColours; ++c)
      if (t.colour < 0 && w == synthetic_colour_name(c)) t.colour = c;
    // Plurals: "circles", "squares", "triangles" ("-s"), "crosses" ("-es").
    auto ends = [&](const char* suffix) {
      const size_t k = std::string(suffix).size();
      return w.size() > k && w.compare(w.size() - k, k, suffix) == 0;
    };
    std::vector<std::string> stems = {w};
    if (ends("s")) stems.push_back(w.substr(0, w.size() - 1));
    if (ends("es")) stems.push_back(w.substr(0, w.size() - 2));
    for (const std::string& stem : stems)
      for (int s = 0; s < kSyntheticNumShapes; ++s)
        if (t.shape < 0 && stem == synthetic_shape_name(s)) t.shape = s;
  };
  for (char ch : prompt) {
    if (std::isalpha(static_cast<unsigned char>(ch)))
      word.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
    else
      take();
  }
  take();
  return t;
}

}  // namespace psvae::train
