// Image files through stb, tensor conversion, grids, and PIL-compatible bicubic resampling.
#include "train/image_io.h"

#include <stb_image.h>
#include <stb_image_write.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "tensor/atomic_file.h"

namespace psvae::train {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw DataError(path + ": " + what);
}

uint8_t to_u8(double x) {    // round to nearest, clamp to [0, 255]
  if (!(x > 0.0)) return 0;  // also maps NaN to 0
  if (x >= 255.0) return 255;
  return static_cast<uint8_t>(std::floor(x + 0.5));
}

// A CPU f32 copy of any tensor, so the pixel loops below read one layout.
Tensor host_f32(const Tensor& t) {
  Tensor h = t.to(Device::cpu());
  if (h.dtype() == DType::F32) return h;
  Tensor out = Tensor::empty(h.shape(), DType::F32);
  float* o = out.data<float>();
  for (int64_t i = 0; i < h.numel(); ++i) {
    switch (h.dtype()) {
      case DType::F64: o[i] = static_cast<float>(h.data<double>()[i]); break;
      case DType::BF16: o[i] = static_cast<float>(h.data<bf16>()[i]); break;
      case DType::I32: o[i] = static_cast<float>(h.data<int32_t>()[i]); break;
      case DType::I64: o[i] = static_cast<float>(h.data<int64_t>()[i]); break;
      case DType::F32: break;
    }
  }
  return out;
}

// PIL's bicubic kernel (Keys' cubic convolution with a = -0.5), support 2.
double bicubic_kernel(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// The taps of one output pixel: input range [first, first + weights.size()).
struct Taps {
  int first = 0;
  std::vector<float> weights;
};

// Output pixel i covers input interval [i*scale, (i+1)*scale) with centre (i+0.5)*scale. When
// shrinking, the kernel is stretched by the scale so that every input pixel contributes (the
// antialiasing of PIL's resample); its support grows from 2 to 2*scale. The window bounds use
// PIL's rounding (int(centre -/+ support + 0.5), clipped to the image) so the taps match.
std::vector<Taps> make_taps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = 2.0 * filter_scale;
  std::vector<Taps> taps(static_cast<size_t>(out_size));
  for (int i = 0; i < out_size; ++i) {
    const double centre = (i + 0.5) * scale;
    int lo = std::max(static_cast<int>(centre - support + 0.5), 0);
    int hi = std::min(static_cast<int>(centre + support + 0.5), in_size);
    Taps& t = taps[static_cast<size_t>(i)];
    t.first = lo;
    double total = 0.0;
    std::vector<double> w;
    for (int x = lo; x < hi; ++x) {
      double v = bicubic_kernel((x - centre + 0.5) / filter_scale);
      w.push_back(v);
      total += v;
    }
    // Normalising per pixel keeps flat regions flat at the borders, where part of the kernel
    // falls outside the image.
    for (double v : w) t.weights.push_back(static_cast<float>(total != 0.0 ? v / total : 0.0));
  }
  return taps;
}

// One separable pass along x (horizontal) or y, rounding to 8 bits as PIL's intermediate does.
Image resample_pass(const Image& src, int out_size, bool horizontal) {
  Image dst;
  dst.width = horizontal ? out_size : src.width;
  dst.height = horizontal ? src.height : out_size;
  dst.rgb.resize(static_cast<size_t>(dst.width) * dst.height * 3);
  const std::vector<Taps> taps = make_taps(horizontal ? src.width : src.height, out_size);
  const size_t sw = static_cast<size_t>(src.width);
  for (int y = 0; y < dst.height; ++y) {
    for (int x = 0; x < dst.width; ++x) {
      const Taps& t = taps[static_cast<size_t>(horizontal ? x : y)];
      float acc[3] = {0.f, 0.f, 0.f};
      for (size_t k = 0; k < t.weights.size(); ++k) {
        const int sx = horizontal ? t.first + static_cast<int>(k) : x;
        const int sy = horizontal ? y : t.first + static_cast<int>(k);
        const uint8_t* p = &src.rgb[(static_cast<size_t>(sy) * sw + static_cast<size_t>(sx)) * 3];
        for (int c = 0; c < 3; ++c) acc[c] += t.weights[k] * static_cast<float>(p[c]);
      }
      uint8_t* q = &dst.rgb[(static_cast<size_t>(y) * dst.width + static_cast<size_t>(x)) * 3];
      for (int c = 0; c < 3; ++c) q[c] = to_u8(acc[c]);
    }
  }
  return dst;
}

void check_image(const Image& img, const char* who) {
  if (img.width <= 0 || img.height <= 0 ||
      img.rgb.size() != static_cast<size_t>(img.width) * img.height * 3)
    throw std::invalid_argument(std::string(who) + ": image of " + std::to_string(img.width) + "x" +
                                std::to_string(img.height) + " with " +
                                std::to_string(img.rgb.size()) + " bytes");
}

// Python's round(): half to even (torchvision's CenterCrop rounds its offset with it).
int round_half_even(double x) {
  double r = std::nearbyint(x);  // the default FE_TONEAREST mode rounds half to even
  return static_cast<int>(r);
}

}  // namespace

Image load_image(const std::string& path) {
  int w = 0, h = 0, channels = 0;
  unsigned char* data = stbi_load(path.c_str(), &w, &h, &channels, 3);
  if (!data) {
    const char* why = stbi_failure_reason();
    fail(path, std::string("cannot decode image: ") + (why ? why : "unknown error"));
  }
  Image img;
  img.width = w;
  img.height = h;
  img.rgb.assign(data, data + static_cast<size_t>(w) * h * 3);
  stbi_image_free(data);
  return img;
}

bool probe_image(const std::string& path, int* width, int* height) {
  int w = 0, h = 0, c = 0;
  if (!stbi_info(path.c_str(), &w, &h, &c) || w <= 0 || h <= 0) return false;
  if (width) *width = w;
  if (height) *height = h;
  return true;
}

void save_png(const std::string& path, const Image& img) {
  check_image(img, "save_png");
  // Encode in memory first: a failed encode never touches the file system.
  std::vector<unsigned char> bytes;
  auto sink = [](void* ctx, void* data, int size) {
    auto* out = static_cast<std::vector<unsigned char>*>(ctx);
    const auto* p = static_cast<const unsigned char*>(data);
    out->insert(out->end(), p, p + size);
  };
  if (!stbi_write_png_to_func(sink, &bytes, img.width, img.height, 3, img.rgb.data(),
                              img.width * 3))
    throw std::runtime_error(path + ": cannot encode PNG");

  // Atomic: readers see the old file or the new, never half. Errors start with the path.
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

Tensor image_to_tensor(const Image& img) {
  check_image(img, "image_to_tensor");
  const int64_t h = img.height, w = img.width;
  Tensor t = Tensor::empty({3, h, w}, DType::F32);
  float* p = t.data<float>();
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int64_t c = 0; c < 3; ++c)
        p[(c * h + y) * w + x] =
            static_cast<float>(img.rgb[static_cast<size_t>((y * w + x) * 3 + c)]) / 127.5f - 1.0f;
  return t;
}

Image tensor_to_image(const Tensor& chw) {
  if (chw.rank() != 3 || chw.size(0) != 3)
    throw std::invalid_argument("tensor_to_image: expected (3, H, W), got " + chw.shape().str());
  Tensor t = host_f32(chw);
  const int64_t h = t.size(1), w = t.size(2);
  Image img;
  img.width = static_cast<int>(w);
  img.height = static_cast<int>(h);
  img.rgb.resize(static_cast<size_t>(h * w * 3));
  const float* p = t.data<float>();
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int64_t c = 0; c < 3; ++c)
        img.rgb[static_cast<size_t>((y * w + x) * 3 + c)] =
            to_u8((static_cast<double>(p[(c * h + y) * w + x]) + 1.0) * 127.5);
  return img;
}

Image make_grid(const Tensor& images, int nrow, int pad, uint8_t pad_value) {
  if (images.rank() != 4 || images.size(1) != 3)
    throw std::invalid_argument("make_grid: expected (N, 3, H, W), got " + images.shape().str());
  if (nrow < 1 || pad < 0) throw std::invalid_argument("make_grid: nrow >= 1 and pad >= 0");
  const int64_t n = images.size(0), h = images.size(2), w = images.size(3);
  if (n < 1) throw std::invalid_argument("make_grid: no images");
  // torchvision's layout: min(nrow, N) columns, ceil(N / columns) rows, `pad` pixels before every
  // tile and after the last one in both directions.
  const int64_t cols = std::min<int64_t>(nrow, n), rows = (n + cols - 1) / cols;
  Image grid;
  grid.width = static_cast<int>(cols * (w + pad) + pad);
  grid.height = static_cast<int>(rows * (h + pad) + pad);
  grid.rgb.assign(static_cast<size_t>(grid.width) * grid.height * 3, pad_value);
  Tensor t = host_f32(images);
  const float* p = t.data<float>();
  for (int64_t k = 0; k < n; ++k) {
    const int64_t x0 = (k % cols) * (w + pad) + pad, y0 = (k / cols) * (h + pad) + pad;
    const float* src = p + k * 3 * h * w;
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x)
        for (int64_t c = 0; c < 3; ++c)
          grid.rgb[static_cast<size_t>(((y0 + y) * grid.width + x0 + x) * 3 + c)] =
              to_u8((static_cast<double>(src[(c * h + y) * w + x]) + 1.0) * 127.5);
  }
  return grid;
}

Image resize_bicubic(const Image& img, int out_w, int out_h) {
  check_image(img, "resize_bicubic");
  if (out_w < 1 || out_h < 1)
    throw std::invalid_argument("resize_bicubic: output size " + std::to_string(out_w) + "x" +
                                std::to_string(out_h));
  // Horizontal first, then vertical, each skipped when that side keeps its size (as PIL).
  Image cur = img;
  if (out_w != cur.width) cur = resample_pass(cur, out_w, true);
  if (out_h != cur.height) cur = resample_pass(cur, out_h, false);
  return cur;
}

Image resize_center_crop(const Image& img, int size) {
  check_image(img, "resize_center_crop");
  if (size < 1) throw std::invalid_argument("resize_center_crop: size " + std::to_string(size));
  // torchvision's Resize(size): the short side becomes `size`, the long side int(size * long /
  // short) - Python's int() truncates, so 3:2 at 32 gives 48 and 100x33 at 32 gives 96 (not 97).
  // The integer division below is that truncation, computed exactly.
  int w = img.width, h = img.height;
  int nw, nh;
  if (w <= h) {
    nw = size;
    nh = static_cast<int>(static_cast<int64_t>(size) * h / w);
  } else {
    nh = size;
    nw = static_cast<int>(static_cast<int64_t>(size) * w / h);
  }
  Image r = (nw == w && nh == h) ? img : resize_bicubic(img, nw, nh);
  // torchvision's CenterCrop: offset round((side - size) / 2) with Python's half-to-even round.
  const int top = round_half_even((nh - size) / 2.0), left = round_half_even((nw - size) / 2.0);
  Image out;
  out.width = out.height = size;
  out.rgb.resize(static_cast<size_t>(size) * size * 3);
  for (int y = 0; y < size; ++y)
    std::memcpy(&out.rgb[static_cast<size_t>(y) * size * 3],
                &r.rgb[(static_cast<size_t>(top + y) * nw + static_cast<size_t>(left)) * 3],
                static_cast<size_t>(size) * 3);
  return out;
}

}  // namespace psvae::train
