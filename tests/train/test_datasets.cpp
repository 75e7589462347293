// The three datasets and make_dataset: synthetic determinism and ground truth, ImageFolder on
// small files written here (corrupt and truncated ones included), CIFAR-10 on a tiny batch file.
#include <doctest/doctest.h>
#include <stb_image_write.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>

#include "common/test_util.h"
#include "train/config.h"
#include "train/data/dataset.h"
#include "train/data/loader.h"

using namespace psvae;
using namespace psvae::train;
namespace fs = std::filesystem;

using psvae::test::TempDir;

namespace {

bool same(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

Image solid(int w, int h, uint8_t r, uint8_t g, uint8_t b) {
  Image img;
  img.width = w;
  img.height = h;
  for (int i = 0; i < w * h; ++i) img.rgb.insert(img.rgb.end(), {r, g, b});
  return img;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}
bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

// ---- synthetic ----------------------------------------------------------------------------------

TEST_CASE("synthetic: deterministic by seed, different seeds differ") {
  SyntheticOptions a;
  a.seed = 3;
  a.num_images = 64;
  auto d1 = make_synthetic(a), d2 = make_synthetic(a);
  SyntheticOptions b = a;
  b.seed = 4;
  auto d3 = make_synthetic(b);
  CHECK(d1->size() == 64);
  CHECK(d1->num_classes() == 24);
  CHECK(d1->image_size() == 32);
  for (int64_t i = 0; i < 20; ++i) {
    Sample s1 = d1->get(i), s2 = d2->get(i), s3 = d3->get(i);
    CHECK(s1.image.shape() == Shape({3, 32, 32}));
    CHECK(same(s1.image, s2.image));
    CHECK(s1.caption == s2.caption);
    CHECK(s1.label == s2.label);
    CHECK_FALSE(same(s1.image, s3.image));
    CHECK(s1.source == "synthetic:" + std::to_string(i));
  }
  // Index order does not matter: image 7 is the same whether or not others were drawn first.
  CHECK(same(make_synthetic(a)->get(7).image, d1->get(7).image));
  // Neighbouring images differ.
  CHECK_FALSE(same(d1->get(0).image, d1->get(1).image));
  CHECK(d1->describe() == "synthetic: 64 images 32x32, 24 classes (seed 3)");
}

TEST_CASE("synthetic: labels and captions agree with synthetic_info") {
  SyntheticOptions opt;
  opt.num_images = 200;
  auto ds = make_synthetic(opt);
  std::set<std::string> positions;
  int with_position = 0;
  for (int64_t i = 0; i < 200; ++i) {
    SyntheticInfo info = synthetic_info(opt, i);
    Sample s = ds->get(i);
    CHECK(s.label == info.shape * kSyntheticNumColours + info.colour);
    const std::string colour = synthetic_colour_name(info.colour);
    const std::string shape = synthetic_shape_name(info.shape);
    CHECK(s.caption == "a " + colour + " " + shape +
                           (info.position_in_caption ? " " + info.position : std::string()));
    with_position += info.position_in_caption;
    CHECK(ds->class_name(s.label) == colour + " " + shape);
    // Extent (2 x the half-extent `size`) within [min_extent, max_extent] of the side, inside
    // the frame.
    CHECK(2 * info.size >= opt.min_extent * 32 - 1e-9);
    CHECK(2 * info.size <= opt.max_extent * 32 + 1e-9);
    CHECK(info.cx - info.size >= 0);
    CHECK(info.cx + info.size <= 32);
    CHECK(info.cy - info.size >= 0);
    CHECK(info.cy + info.size <= 32);
    // The position names the dominant offset from the centre.
    const double dx = info.cx - 16, dy = info.cy - 16;
    if (info.position == "in the centre") {
      CHECK(std::hypot(dx, dy) < 0.1 * 32);
    } else if (info.position == "on the left" || info.position == "on the right") {
      CHECK(std::fabs(dx) >= std::fabs(dy));
      CHECK((dx < 0) == (info.position == "on the left"));
    } else {
      CHECK(std::fabs(dy) > std::fabs(dx));
      CHECK((dy < 0) == (info.position == "at the top"));
    }
    positions.insert(info.position);
    // Values within [-1, 1].
    const std::vector<float> v = s.image.to_vector<float>();
    CHECK(*std::min_element(v.begin(), v.end()) >= -1.0f);
    CHECK(*std::max_element(v.begin(), v.end()) <= 1.0f);
  }
  CHECK(positions.size() == 5);
  // position_caption_rate 0.5: 100 expected of 200, binomial standard deviation ~7.
  CHECK(with_position > 70);
  CHECK(with_position < 130);
  CHECK(ds->class_name(0) == "red circle");
  CHECK(ds->class_name(23) == "cyan cross");
}

TEST_CASE("synthetic: the shape's colour is clearly identifiable at its centre") {
  // The prototypes of the six colour names; the centre pixel must be nearest to the right one and
  // stand out from the background corner by saturation.
  const float proto[6][3] = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}, {1, 1, 0}, {1, 0, 1}, {0, 1, 1}};
  SyntheticOptions opt;
  opt.num_images = 300;
  auto ds = make_synthetic(opt);
  for (int64_t i = 0; i < opt.num_images; ++i) {
    SyntheticInfo info = synthetic_info(opt, i);
    Tensor t = ds->get(i).image;
    const float* p = t.data<float>();
    const int x = static_cast<int>(info.cx), y = static_cast<int>(info.cy);
    float rgb[3];
    for (int c = 0; c < 3; ++c) rgb[c] = (p[(c * 32 + y) * 32 + x] + 1.0f) / 2.0f;
    const float mx = std::max({rgb[0], rgb[1], rgb[2]}), mn = std::min({rgb[0], rgb[1], rgb[2]});
    CHECK(mx - mn > 0.4f);  // saturated
    int best = -1;
    float best_d = 1e9f;
    for (int k = 0; k < 6; ++k) {
      // Compare chromaticity: scale so the brightest channel is 1.
      float d = 0;
      for (int c = 0; c < 3; ++c) d += std::pow(rgb[c] / mx - proto[k][c], 2.0f);
      if (d < best_d) {
        best_d = d;
        best = k;
      }
    }
    CHECK_MESSAGE(best == info.colour, "image " << i);
  }
}

TEST_CASE("synthetic: every class appears in 4096 images; larger sizes work") {
  SyntheticOptions opt;  // defaults: 4096 images, 32x32, seed 0
  std::vector<int> count(24, 0);
  for (int64_t i = 0; i < opt.num_images; ++i) {
    SyntheticInfo info = synthetic_info(opt, i);
    ++count[static_cast<size_t>(info.shape * kSyntheticNumColours + info.colour)];
  }
  for (int k = 0; k < 24; ++k) CHECK_MESSAGE(count[static_cast<size_t>(k)] > 100, "class " << k);

  SyntheticOptions big = opt;
  big.image_size = 64;
  auto ds = make_synthetic(big);
  Sample s = ds->get(5);
  CHECK(s.image.shape() == Shape({3, 64, 64}));
  // The same scene, at twice the resolution.
  SyntheticInfo i32 = synthetic_info(opt, 5), i64 = synthetic_info(big, 5);
  CHECK(i64.cx == doctest::Approx(2 * i32.cx));
  CHECK(i64.size == doctest::Approx(2 * i32.size));
  CHECK(i64.position == i32.position);
  CHECK(s.caption == make_synthetic(opt)->get(5).caption);

  SyntheticOptions small = opt;
  small.image_size = 16;
  CHECK(make_synthetic(small)->get(0).image.shape() == Shape({3, 16, 16}));
  small.image_size = 8;
  CHECK_THROWS_AS(make_synthetic(small), std::invalid_argument);
}

TEST_CASE("synthetic: object extent and position captions are options") {
  SyntheticOptions opt;
  opt.num_images = 100;
  opt.min_extent = opt.max_extent = 0.3;  // every shape 30% of the side
  opt.position_caption_rate = 0;          // no caption names the position
  auto ds = make_synthetic(opt);
  for (int64_t i = 0; i < opt.num_images; ++i) {
    SyntheticInfo info = synthetic_info(opt, i);
    CHECK(2 * info.size == doctest::Approx(0.3 * 32));
    CHECK_FALSE(info.position_in_caption);
    const std::string want = std::string("a ") + synthetic_colour_name(info.colour) + " " +
                             synthetic_shape_name(info.shape);
    CHECK(ds->get(i).caption == want);
  }
  opt.position_caption_rate = 1;
  CHECK(make_synthetic(opt)->get(0).caption.find(synthetic_info(opt, 0).position) !=
        std::string::npos);
  // The options leave the other draws alone: the same colours and shapes.
  SyntheticOptions base;
  base.num_images = 100;
  for (int64_t i = 0; i < 20; ++i) {
    CHECK(synthetic_info(opt, i).shape == synthetic_info(base, i).shape);
    CHECK(synthetic_info(opt, i).colour == synthetic_info(base, i).colour);
  }
  for (auto [lo, hi] : {std::pair{0.0, 0.5}, std::pair{0.5, 0.4}, std::pair{0.3, 0.95}}) {
    SyntheticOptions bad;
    bad.min_extent = lo;
    bad.max_extent = hi;
    CHECK_THROWS_WITH_AS(make_synthetic(bad), doctest::Contains("max_extent"),
                         std::invalid_argument);
  }
  SyntheticOptions bad;
  bad.position_caption_rate = 1.5;
  CHECK_THROWS_WITH_AS(make_synthetic(bad), doctest::Contains("position_caption_rate"),
                       std::invalid_argument);
}

// ---- imagefolder --------------------------------------------------------------------------------

namespace {

// root/cat: a.png (48x32 red, sidecar caption), b.jpg (green), c.PNG (blue)
// root/dog: bad.png (garbage), d.png (captions.jsonl), e.jpeg, trunc.png (valid header, cut data),
//           notes.md (not an image)
void build_folder(const TempDir& dir) {
  fs::create_directories(dir.path() / "cat");
  fs::create_directories(dir.path() / "dog");
  save_png(dir / "cat/a.png", solid(48, 32, 250, 10, 10));
  write_file(dir / "cat/a.txt", "  a red cat \n");
  Image green = solid(20, 20, 10, 240, 10);
  REQUIRE(stbi_write_jpg((dir / "cat/b.jpg").c_str(), 20, 20, 3, green.rgb.data(), 95));
  save_png(dir / "cat/c.PNG", solid(16, 16, 0, 0, 255));
  write_file(dir / "dog/bad.png", "garbage bytes, not a PNG at all");
  save_png(dir / "dog/d.png", solid(40, 40, 128, 128, 128));
  Image e = solid(33, 17, 200, 200, 0);
  REQUIRE(stbi_write_jpg((dir / "dog/e.jpeg").c_str(), 33, 17, 3, e.rgb.data(), 90));
  // A noisy image compresses poorly, so cutting the file removes most of its pixel data while
  // the header (IHDR) stays intact.
  Image noisy = solid(64, 64, 0, 0, 0);
  for (size_t i = 0; i < noisy.rgb.size(); ++i) noisy.rgb[i] = static_cast<uint8_t>(i * 7919 % 251);
  save_png(dir / "dog/trunc.png", noisy);
  std::string bytes = read_file(dir / "dog/trunc.png");
  write_file(dir / "dog/trunc.png", bytes.substr(0, bytes.size() / 2));
  write_file(dir / "dog/notes.md", "not an image");
  write_file(dir / "captions.jsonl",
             "{\"file\": \"dog/d.png\", \"caption\": \"a grey dog\"}\n\n"
             "{\"file\": \"cat/a.png\", \"caption\": \"loses to the sidecar\"}\n");
}

}  // namespace

TEST_CASE("imagefolder: classes, files, captions, skipped headers, decode errors") {
  TempDir dir("datasets");
  build_folder(dir);
  auto ds = make_image_folder(dir.path().string(), 16);
  CHECK(ds->num_classes() == 2);
  CHECK(ds->class_name(0) == "cat");
  CHECK(ds->class_name(1) == "dog");
  CHECK(ds->num_skipped() == 1);  // bad.png
  REQUIRE(ds->size() == 6);       // a b c | d e trunc
  CHECK(ds->image_size() == 16);
  CHECK(contains(ds->describe(), "6 images 16x16, 2 classes"));

  Sample a = ds->get(0);
  CHECK(a.source == dir / "cat/a.png");
  CHECK(a.label == 0);
  CHECK(a.caption == "a red cat");
  REQUIRE(a.image.shape() == Shape({3, 16, 16}));
  const float* p = a.image.data<float>();
  CHECK(p[0] == doctest::Approx(250 / 127.5 - 1));           // red
  CHECK(p[16 * 16 + 5] == doctest::Approx(10 / 127.5 - 1));  // green channel
  Sample b = ds->get(1);
  CHECK(b.caption.empty());
  CHECK(b.image.data<float>()[16 * 16 + 8 * 16 + 8] > 0.8f);  // JPEG green stays green
  CHECK(ds->get(2).source == dir / "cat/c.PNG");
  Sample d = ds->get(3);
  CHECK(d.label == 1);
  CHECK(d.caption == "a grey dog");
  CHECK(ds->get(4).image.shape() == Shape({3, 16, 16}));  // 33x17 JPEG resized and cropped

  CHECK_THROWS_AS(ds->get(5), DataError);  // dog/trunc.png: header fine, pixels cut
}

TEST_CASE("imagefolder: a truncated file throws DataError from get and the loader skips it") {
  TempDir dir("datasets");
  build_folder(dir);
  auto ds = std::shared_ptr<const Dataset>(make_image_folder(dir.path().string(), 16));
  const std::string trunc = dir / "dog/trunc.png";
  const std::string msg = error_of([&] { ds->get(5); });
  CHECK(starts_with(msg, trunc + ": cannot decode image"));
  CHECK_THROWS_AS(ds->get(5), DataError);

  for (int workers : {0, 2}) {
    LoaderOptions lo;
    lo.global_batch = 6;
    lo.workers = workers;
    Loader loader(ds, lo);
    Batch b = loader.next();  // the whole (one-batch) epoch
    CHECK(b.images.shape() == Shape({6, 3, 16, 16}));
    CHECK(std::count(b.indices.begin(), b.indices.end(), 5) == 0);
    CHECK(std::set<int64_t>(b.indices.begin(), b.indices.end()).size() == 5);  // one substitute
    CHECK(loader.num_bad_samples() == 1);
    loader.next();
    CHECK(loader.num_bad_samples() == 2);  // counted every time it is replaced
  }
}

TEST_CASE("imagefolder: errors for a missing folder, an empty one, no usable images, bad jsonl") {
  TempDir dir("datasets");
  const std::string missing = dir / "nope";
  CHECK(error_of([&] { make_image_folder(missing, 32); }) ==
        "imagefolder: directory '" + missing + "' does not exist");
  CHECK_THROWS_AS(make_image_folder(missing, 32), DataError);

  const std::string empty = dir / "empty";
  fs::create_directories(empty);
  std::string msg = error_of([&] { make_image_folder(empty, 32); });
  CHECK(contains(msg, "no class folders"));
  CHECK(contains(msg, empty));

  const std::string junk = dir / "junk";
  fs::create_directories(junk + "/a");
  write_file(junk + "/a/x.png", "not a png");
  write_file(junk + "/a/readme.txt", "hello");
  msg = error_of([&] { make_image_folder(junk, 32); });
  CHECK(contains(msg, "no usable images"));
  CHECK(contains(msg, junk));

  const std::string badjson = dir / "badjson";
  fs::create_directories(badjson + "/a");
  save_png(badjson + "/a/x.png", solid(4, 4, 1, 2, 3));
  write_file(badjson + "/captions.jsonl",
             "{\"file\": \"a/x.png\", \"caption\": \"ok\"}\n{\"file\": \"a/x.png\"\n");
  msg = error_of([&] { make_image_folder(badjson, 8); });
  CHECK(starts_with(msg, badjson + "/captions.jsonl:2: "));
  write_file(badjson + "/captions.jsonl", "{\"file\": 3, \"caption\": \"x\"}\n");
  CHECK(starts_with(error_of([&] { make_image_folder(badjson, 8); }),
                    badjson + "/captions.jsonl:1: "));
}

// ---- cifar10 ------------------------------------------------------------------------------------

namespace {

// A record: label, then the R plane (value r), G plane (x + 32 y, mod 256), B plane (200).
std::string cifar_record(uint8_t label, uint8_t r) {
  std::string rec(1 + 3072, '\0');
  rec[0] = static_cast<char>(label);
  for (int i = 0; i < 1024; ++i) {
    rec[static_cast<size_t>(1 + i)] = static_cast<char>(r);
    rec[static_cast<size_t>(1 + 1024 + i)] = static_cast<char>(i % 256);
    rec[static_cast<size_t>(1 + 2048 + i)] = static_cast<char>(200);
  }
  return rec;
}

}  // namespace

TEST_CASE("cifar10: records, planes, captions, splits, class names") {
  TempDir dir("datasets");
  write_file(dir / "data_batch_1.bin", cifar_record(3, 10) + cifar_record(7, 20));
  write_file(dir / "test_batch.bin", cifar_record(9, 30));
  auto train = make_cifar10(dir.path().string(), true);
  REQUIRE(train->size() == 2);
  CHECK(train->num_classes() == 10);
  Sample s = train->get(0);
  CHECK(s.label == 3);
  CHECK(s.caption == "a photo of a cat");
  CHECK(s.source == dir / "data_batch_1.bin" + "#0");
  REQUIRE(s.image.shape() == Shape({3, 32, 32}));
  const float* p = s.image.data<float>();
  CHECK(p[0] == doctest::Approx(10 / 127.5 - 1));
  CHECK(p[1024 + 3 * 32 + 5] == doctest::Approx((101 % 256) / 127.5 - 1));  // G(y=3, x=5)
  CHECK(p[2048 + 77] == doctest::Approx(200 / 127.5 - 1));
  CHECK(train->get(1).caption == "a photo of a horse");
  CHECK(train->get(1).image.data<float>()[7] == doctest::Approx(20 / 127.5 - 1));

  auto test = make_cifar10(dir.path().string(), false);
  REQUIRE(test->size() == 1);
  CHECK(test->get(0).caption == "a photo of a truck");

  auto big = make_cifar10(dir.path().string(), true, 64);
  CHECK(big->get(0).image.shape() == Shape({3, 64, 64}));
  CHECK(big->get(0).image.data<float>()[0] == doctest::Approx(10 / 127.5 - 1));  // flat R plane

  write_file(dir / "batches.meta.txt", "zero\none\ntwo\nthree\n\n");
  write_file(dir / "data_batch_1.bin", cifar_record(3, 10));
  auto named = make_cifar10(dir.path().string(), true);
  CHECK(named->num_classes() == 4);
  CHECK(named->get(0).caption == "a photo of a three");
  // Label 7 is out of range for 4 names: an error naming the file and record.
  write_file(dir / "data_batch_1.bin", cifar_record(7, 20));
  CHECK(starts_with(error_of([&] { make_cifar10(dir.path().string(), true); }),
                    dir / "data_batch_1.bin: record 0 has label 7"));
}

TEST_CASE("cifar10: errors name the file or folder") {
  TempDir dir("datasets");
  write_file(dir / "data_batch_1.bin", cifar_record(1, 1));
  write_file(dir / "data_batch_2.bin", std::string(3000, 'x'));
  const std::string msg = error_of([&] { make_cifar10(dir.path().string(), true); });
  CHECK(starts_with(msg, dir / "data_batch_2.bin: size 3000 bytes is not a multiple of 3073"));
  CHECK(contains(error_of([&] { make_cifar10(dir.path().string(), false); }), "test_batch.bin"));
  const std::string missing = dir / "none";
  CHECK(error_of([&] { make_cifar10(missing, true); }) ==
        "cifar10: directory '" + missing + "' does not exist");
  TempDir empty("datasets");
  CHECK(contains(error_of([&] { make_cifar10(empty.path().string(), true); }), "data_batch_1..5"));
}

// ---- make_dataset -------------------------------------------------------------------------------

TEST_CASE("make_dataset: the data.* keys and their datasets") {
  ConfigSchema schema;
  add_data_keys(schema);
  for (const char* k : {"data.dataset", "data.path", "data.image_size", "data.num_images",
                        "data.seed", "data.split", "data.hflip", "data.workers", "data.prefetch"})
    CHECK_MESSAGE(schema.find(k) != nullptr, k);
  Config cfg(schema);
  CHECK(cfg.get_string("data.dataset") == "synthetic");
  CHECK(cfg.get_int("data.image_size") == 32);
  CHECK(cfg.get_int("data.num_images") == 4096);
  CHECK(cfg.get_int("data.workers") == 2);
  CHECK(cfg.get_int("data.prefetch") == 2);
  CHECK_FALSE(cfg.get_bool("data.hflip"));
  CHECK(make_dataset(cfg)->describe() == "synthetic: 4096 images 32x32, 24 classes (seed 0)");

  cfg.set("data.num_images", "10");
  cfg.set("data.seed", "5");
  cfg.set("data.image_size", "16");
  CHECK(make_dataset(cfg)->describe() == "synthetic: 10 images 16x16, 24 classes (seed 5)");

  cfg.set("data.dataset", "imagefolder");
  CHECK(error_of([&] { make_dataset(cfg); }) ==
        "data.path is required for data.dataset=imagefolder");
  TempDir dir("datasets");
  fs::create_directories(dir.path() / "only");
  save_png(dir / "only/x.png", solid(20, 10, 9, 9, 9));
  cfg.set("data.path", dir.path().string());
  auto ds = make_dataset(cfg);
  CHECK(ds->size() == 1);
  CHECK(ds->image_size() == 16);

  cfg.set("data.dataset", "cifar10");
  cfg.set("data.split", "test");
  write_file(dir / "test_batch.bin", cifar_record(2, 5));
  CHECK(make_dataset(cfg)->get(0).caption == "a photo of a bird");
  CHECK_THROWS(cfg.set("data.split", "valid"));
  CHECK_THROWS(cfg.set("data.image_size", "4"));
}
