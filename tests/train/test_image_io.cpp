// Image files, tensor conversion, grids and PIL-compatible bicubic resampling, against values
// worked out by hand.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "common/test_util.h"
#include "train/image_io.h"

using namespace psvae;
using namespace psvae::train;
namespace fs = std::filesystem;

using psvae::test::TempDir;

namespace {

Image make_image(int w, int h, uint8_t (*f)(int x, int y, int c)) {
  Image img;
  img.width = w;
  img.height = h;
  img.rgb.resize(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) img.rgb[(static_cast<size_t>(y) * w + x) * 3 + c] = f(x, y, c);
  return img;
}

// A grey image from one row of values per line.
Image grey(const std::vector<std::vector<int>>& rows) {
  Image img;
  img.height = static_cast<int>(rows.size());
  img.width = static_cast<int>(rows[0].size());
  for (const auto& r : rows)
    for (int v : r)
      for (int c = 0; c < 3; ++c) img.rgb.push_back(static_cast<uint8_t>(v));
  return img;
}

int px(const Image& img, int x, int y, int c = 0) {
  return img.rgb[(static_cast<size_t>(y) * img.width + x) * 3 + c];
}

}  // namespace

TEST_CASE("save_png then load_image gives back the same pixels, atomically") {
  TempDir dir("image_io");
  Image img = make_image(7, 5, [](int x, int y, int c) {
    return static_cast<uint8_t>((x * 37 + y * 91 + c * 53) % 256);
  });
  const std::string path = dir / "a.png";
  save_png(path, img);
  Image back = load_image(path);
  CHECK(back.width == 7);
  CHECK(back.height == 5);
  CHECK(back.rgb == img.rgb);
  int w = 0, h = 0;
  CHECK(probe_image(path, &w, &h));
  CHECK(w == 7);
  CHECK(h == 5);
  // Only the target remains: the temporary file was renamed into place.
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) files += e.is_regular_file();
  CHECK(files == 1);
  // Overwriting replaces the file.
  Image black = make_image(3, 2, [](int, int, int) { return uint8_t{0}; });
  save_png(path, black);
  CHECK(load_image(path).width == 3);
}

TEST_CASE("load_image and save_png errors name the path") {
  TempDir dir("image_io");
  const std::string missing = dir / "missing.png";
  try {
    load_image(missing);
    FAIL("expected DataError");
  } catch (const DataError& e) {
    CHECK(std::string(e.what()).rfind(missing + ": cannot decode image: ", 0) == 0);
  }
  const std::string garbage = dir / "garbage.png";
  std::ofstream(garbage) << "this is not an image at all";
  int w = -1, h = -1;
  CHECK_FALSE(probe_image(garbage, &w, &h));
  CHECK_THROWS_AS(load_image(garbage), DataError);
  const std::string nowhere = dir / "no/such/dir/x.png";
  try {
    save_png(nowhere, grey({{1, 2}}));
    FAIL("expected an error");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).rfind(nowhere + ": ", 0) == 0);
  }
}

TEST_CASE("image_to_tensor and tensor_to_image: layout, scale, rounding and clamping") {
  Image img = grey({{0, 255, 51}});
  img.rgb[1] = 102;  // pixel (0,0) green
  Tensor t = image_to_tensor(img);
  REQUIRE(t.shape() == Shape({3, 1, 3}));
  const float* p = t.data<float>();
  CHECK(p[0] == doctest::Approx(-1.0));  // R(0,0)
  CHECK(p[1] == doctest::Approx(1.0));   // R(0,1)
  CHECK(p[2] == doctest::Approx(-0.6));  // R(0,2) = 51/127.5 - 1
  CHECK(p[3] == doctest::Approx(-0.2));  // G(0,0) = 102/127.5 - 1
  // Every 8-bit value survives the round trip.
  Image all;
  all.width = 256;
  all.height = 1;
  for (int v = 0; v < 256; ++v)
    for (int c = 0; c < 3; ++c) all.rgb.push_back(static_cast<uint8_t>(v));
  CHECK(tensor_to_image(image_to_tensor(all)).rgb == all.rgb);
  // Out of range clamps; 0 maps to 127.5, rounded up to 128; f64 input is accepted.
  Tensor v = Tensor::from_vector<double>({-3.0, 2.0, 0.0}, Shape{3, 1, 1});
  Image o = tensor_to_image(v);
  CHECK(o.rgb == std::vector<uint8_t>{0, 255, 128});
  CHECK_THROWS(tensor_to_image(Tensor::zeros({2, 1, 1})));
}

TEST_CASE("make_grid: torchvision geometry") {
  // 5 images of 4x6 (HxW), 3 per row, pad 2: 3 columns, 2 rows -> (3*(6+2)+2) x (2*(4+2)+2).
  Tensor imgs = Tensor::empty({5, 3, 4, 6});
  float* p = imgs.data<float>();
  for (int k = 0; k < 5; ++k)
    for (int i = 0; i < 3 * 4 * 6; ++i) p[k * 72 + i] = -1.0f + 0.25f * static_cast<float>(k);
  Image g = make_grid(imgs, 3, 2, 7);
  CHECK(g.width == 26);
  CHECK(g.height == 14);
  // Tile k starts at ((k % 3) * 8 + 2, (k / 3) * 6 + 2).
  for (int k = 0; k < 5; ++k) {
    const int x0 = (k % 3) * 8 + 2, y0 = (k / 3) * 6 + 2;
    const int want = static_cast<int>(std::floor(0.25 * k * 127.5 + 0.5));
    CHECK(px(g, x0, y0) == want);
    CHECK(px(g, x0 + 5, y0 + 3, 2) == want);
    CHECK(px(g, x0 - 1, y0) == 7);      // padding left of the tile
    CHECK(px(g, x0 + 6, y0 + 3) == 7);  // padding right of it
    CHECK(px(g, x0, y0 + 4) == 7);      // padding below
  }
  CHECK(px(g, 0, 0) == 7);
  CHECK(px(g, 25, 13) == 7);
  CHECK(px(g, 2 * 8 + 3, 6 + 3) == 7);  // the empty sixth slot keeps the pad value
  // Fewer images than nrow: one row of N.
  Image one = make_grid(imgs.slice0(0, 2), 8, 1);
  CHECK(one.width == 2 * 7 + 1);
  CHECK(one.height == 4 + 2);
}

TEST_CASE("resize_bicubic: a 4x1 -> 2x1 shrink matches the hand computation") {
  // Shrink by 2: the kernel widens to support 4 and is sampled at (x - centre + 0.5) / 2.
  // Output 0 (centre 1): taps x = 0..3 at -0.25, 0.25, 0.75, 1.25 with the a = -0.5 cubic:
  //   k(0.25) = (1.5*0.25 - 2.5)*0.25^2 + 1 = 0.8671875, k(0.75) = 0.2265625,
  //   k(1.25) = -0.5*((1.25 - 5)*1.25 + 8)*1.25 + 2 = -0.0703125; sum 1.890625.
  //   (10*0.8671875 + 50*0.8671875 + 100*0.2265625 - 200*0.0703125) / 1.890625 = 32.066 -> 32
  // Output 1 (centre 3): the mirror image of those weights:
  //   (-10*0.0703125 + 50*0.2265625 + 100*0.8671875 + 200*0.8671875) / 1.890625 = 143.22 -> 143
  Image out = resize_bicubic(grey({{10, 50, 100, 200}}), 2, 1);
  REQUIRE(out.width == 2);
  REQUIRE(out.height == 1);
  CHECK(px(out, 0, 0) == 32);
  CHECK(px(out, 1, 0) == 143);
  CHECK(px(out, 1, 0, 2) == 143);
}

TEST_CASE("resize_bicubic: a 2x2 -> 4x4 enlargement matches the hand computation") {
  // Enlarge by 2: support 2, centres (i + 0.5) / 2 = 0.25, 0.75, 1.25, 1.75; taps clipped to the
  // 2 input pixels and renormalised:
  //   i=0: k(0.25), k(1.25) = 0.8671875, -0.0703125 -> 1.0882353, -0.0882353
  //   i=1: k(-0.25), k(0.75) = 0.8671875, 0.2265625 -> 0.7928571, 0.2071429
  //   i=2, i=3: the mirror images.
  // Rows [100 200] -> [91.18 120.71 179.29 208.82] -> [91 121 179 209] (8-bit intermediate, as
  // PIL), and [200 100] -> [209 179 121 91]. Column 0, (91, 209) vertically:
  //   91*1.0882353 - 209*0.0882353 = 80.59 -> 81,  91*0.7928571 + 209*0.2071429 = 115.44 -> 115,
  //   91*0.2071429 + 209*0.7928571 = 184.56 -> 185, 209*1.0882353 - 91*0.0882353 = 219.41 -> 219.
  Image out = resize_bicubic(grey({{100, 200}, {200, 100}}), 4, 4);
  REQUIRE(out.width == 4);
  REQUIRE(out.height == 4);
  CHECK(px(out, 0, 0) == 81);
  CHECK(px(out, 0, 1) == 115);
  CHECK(px(out, 0, 2) == 185);
  CHECK(px(out, 0, 3) == 219);
  // Row 1 (vertical weights 0.7928571, 0.2071429) of column 1 (121 over 179): 133.01 -> 133.
  CHECK(px(out, 1, 1) == 133);
  // Clamped overshoot: [0 255] -> 0, 52.8 -> 53, 202.2 -> 202, 255.
  Image edge = resize_bicubic(grey({{0, 255}}), 4, 1);
  CHECK(edge.rgb == std::vector<uint8_t>{0, 0, 0, 53, 53, 53, 202, 202, 202, 255, 255, 255});
}

TEST_CASE("resize_bicubic: a constant image stays constant, identity at the same size") {
  Image flat = make_image(37, 23, [](int, int, int c) { return static_cast<uint8_t>(90 + c); });
  for (auto [w, h] : {std::pair{10, 7}, std::pair{50, 41}, std::pair{37, 5}, std::pair{1, 1}}) {
    Image r = resize_bicubic(flat, w, h);
    REQUIRE(r.width == w);
    REQUIRE(r.height == h);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < 3; ++c) CHECK(px(r, x, y, c) == 90 + c);
  }
  Image noise = make_image(9, 6, [](int x, int y, int c) {
    return static_cast<uint8_t>((x * 71 + y * 13 + c * 101) % 256);
  });
  CHECK(resize_bicubic(noise, 9, 6).rgb == noise.rgb);
}

TEST_CASE("resize_center_crop: short side to size, long side truncated, centred crop") {
  // 48x32 at 16: 24x16 (16 * 48 / 32 = 24), then columns [4, 20).
  Image wide = make_image(48, 32, [](int x, int y, int c) {
    return static_cast<uint8_t>((x * 5 + y * 3 + c * 40) % 256);
  });
  Image r = resize_center_crop(wide, 16);
  CHECK(r.width == 16);
  CHECK(r.height == 16);
  Image full = resize_bicubic(wide, 24, 16);
  for (int y = 0; y < 16; ++y)
    for (int x = 0; x < 16; ++x) CHECK(px(r, x, y, 1) == px(full, x + 4, y, 1));
  // 100x33 at 32: int(32 * 100 / 33) = int(96.97) = 96, as torchvision (truncation).
  Image odd = make_image(100, 33, [](int x, int, int) { return static_cast<uint8_t>(x * 2); });
  Image o = resize_center_crop(odd, 32);
  CHECK(o.width == 32);
  CHECK(o.height == 32);
  Image o_full = resize_bicubic(odd, 96, 32);
  CHECK(px(o, 0, 5) == px(o_full, 32, 5));  // left = round((96 - 32) / 2) = 32
  // No resize needed (10x15 at 10): rows [round(2.5), +10) = [2, 12), half to even as Python.
  Image tall = make_image(10, 15, [](int, int y, int) { return static_cast<uint8_t>(y * 10); });
  Image t = resize_center_crop(tall, 10);
  CHECK(px(t, 0, 0) == 20);
  CHECK(px(t, 3, 9) == 110);
  // 10x13: round(1.5) = 2.
  Image tall13 = make_image(10, 13, [](int, int y, int) { return static_cast<uint8_t>(y * 10); });
  CHECK(px(resize_center_crop(tall13, 10), 0, 0) == 20);
  // Square input at its own size is unchanged.
  CHECK(resize_center_crop(wide, 32).width == 32);
  Image sq = make_image(8, 8, [](int x, int y, int) { return static_cast<uint8_t>(x + 8 * y); });
  CHECK(resize_center_crop(sq, 8).rgb == sq.rgb);
}
