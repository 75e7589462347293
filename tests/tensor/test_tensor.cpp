// Tensor core: creation, views, copies, fills, bf16 rounding, poison mode, Shape errors and the fmt
// formatters. Error tests assert the message, since the message is the user's only clue.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "tensor/format.h"
#include "tensor/tensor.h"

using namespace psvae;

namespace {

// The message of the exception `f` throws, or "(no exception)".
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

TEST_CASE("empty, zeros, full: shape, dtype, size and values") {
  Tensor e = Tensor::empty({2, 3, 4}, DType::F64);
  CHECK(e.defined());
  CHECK(e.shape() == Shape{2, 3, 4});
  CHECK(e.rank() == 3);
  CHECK(e.size(-1) == 4);
  CHECK(e.numel() == 24);
  CHECK(e.nbytes() == 24 * 8);
  CHECK(e.dtype() == DType::F64);
  CHECK(e.device() == Device::cpu());
  CHECK(reinterpret_cast<uintptr_t>(e.raw_data()) % 64 == 0);  // the allocator's promise

  Tensor z = Tensor::zeros({5}, DType::I32);
  CHECK(z.to_vector<int32_t>() == std::vector<int32_t>(5, 0));
  Tensor f = Tensor::full({2, 2}, -2.5, DType::F32);
  CHECK(f.to_vector<float>() == std::vector<float>(4, -2.5f));
  Tensor s = Tensor::scalar(3.0, DType::I64);
  CHECK(s.rank() == 0);
  CHECK(s.numel() == 1);
  CHECK(s.item() == 3.0);

  Tensor none;
  CHECK_FALSE(none.defined());
  CHECK(none.str() == "Tensor(undefined)");
  CHECK(contains(error_of([&] { (void)none.raw_data(); }), "undefined tensor"));

  Tensor zero_el = Tensor::zeros({3, 0, 2});
  CHECK(zero_el.numel() == 0);
  CHECK(zero_el.nbytes() == 0);
  CHECK(zero_el.to_vector<float>().empty());
}

TEST_CASE("from_vector / to_vector round trip every dtype, and reject a wrong count") {
  CHECK(Tensor::from_vector<float>({1.5f, -2.f, 3.f}, {3}).to_vector<float>() ==
        std::vector<float>{1.5f, -2.f, 3.f});
  CHECK(Tensor::from_vector<double>({1e-300, 2.0}, {2, 1}).to_vector<double>() ==
        std::vector<double>{1e-300, 2.0});
  CHECK(Tensor::from_vector<int32_t>({-1, 7}, {2}).to_vector<int32_t>() ==
        std::vector<int32_t>{-1, 7});
  CHECK(Tensor::from_vector<int64_t>({int64_t(1) << 40}, {1}).to_vector<int64_t>() ==
        std::vector<int64_t>{int64_t(1) << 40});
  std::vector<bf16> b = Tensor::from_vector<bf16>({bf16(1.0f), bf16(-0.5f)}, {2}).to_vector<bf16>();
  CHECK(b[0].bits == 0x3f80);
  CHECK(b[1].bits == 0xbf00);

  CHECK(error_of([] {
          Tensor::from_vector<float>({1, 2, 3}, {2, 2});
        }) == "Tensor::from_vector: 3 values for shape (2, 2)");
  Tensor t = Tensor::zeros({2}, DType::F32);
  CHECK(error_of([&] { t.to_vector<double>(); }) ==
        "Tensor::data: requested f64 from a f32 tensor");
}

TEST_CASE("reshape: -1 inference, shared storage, and its errors") {
  Tensor t = Tensor::from_vector<float>({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor r = t.reshape({3, -1});
  CHECK(r.shape() == Shape{3, 2});
  CHECK(r.storage().get() == t.storage().get());
  CHECK(t.reshape({-1}).shape() == Shape{6});
  CHECK(t.reshape(Shape{1, 6, 1}).shape() == Shape{1, 6, 1});
  r.data<float>()[5] = 50.f;
  CHECK(t.data<float>()[5] == 50.f);  // a view, not a copy

  CHECK(error_of([&] { t.reshape({-1, -1}); }) == "reshape: more than one -1");
  CHECK(error_of([&] {
          t.reshape({4, -1});
        }) == "reshape (2, 3): cannot infer -1 with 4 known elements");
  CHECK(error_of([&] {
          t.reshape({0, -1});
        }) == "reshape (2, 3): cannot infer -1 with 0 known elements");
  CHECK(error_of([&] {
          t.reshape({4, 2});
        }) == "reshape (2, 3) -> (4, 2): element counts differ (6 vs 8)");
}

TEST_CASE("slice0 views share storage: writes are visible both ways") {
  Tensor t = Tensor::from_vector<int32_t>({0, 1, 2, 3, 4, 5, 6, 7}, {4, 2});
  Tensor s = t.slice0(1, 3);
  CHECK(s.shape() == Shape{2, 2});
  CHECK(s.storage().get() == t.storage().get());
  CHECK(s.byte_offset() == 2 * sizeof(int32_t));
  CHECK(s.to_vector<int32_t>() == std::vector<int32_t>{2, 3, 4, 5});
  s.fill_(-1);
  CHECK(t.to_vector<int32_t>() == std::vector<int32_t>{0, 1, -1, -1, -1, -1, 6, 7});
  t.data<int32_t>()[2] = 9;
  CHECK(s.data<int32_t>()[0] == 9);
  CHECK(t.slice0(4, 4).numel() == 0);

  CHECK(error_of([&] { t.slice0(3, 5); }) == "slice0 [3, 5) out of range for shape (4, 2)");
  CHECK(error_of([&] { t.slice0(2, 1); }) == "slice0 [2, 1) out of range for shape (4, 2)");
  CHECK(error_of([] { Tensor::scalar(1).slice0(0, 1); }) == "slice0: rank-0 tensor");
}

TEST_CASE("clone is independent; copy_from checks shape and dtype") {
  Tensor a = Tensor::from_vector<double>({1, 2, 3}, {3});
  Tensor c = a.clone();
  CHECK(c.storage().get() != a.storage().get());
  c.fill_(7);
  CHECK(a.to_vector<double>() == std::vector<double>{1, 2, 3});
  a.copy_from(c);
  CHECK(a.to_vector<double>() == std::vector<double>{7, 7, 7});
  CHECK(a.to(Device::cpu()).storage().get() == a.storage().get());  // already there: no copy

  Tensor wrong_shape = Tensor::zeros({4}, DType::F64);
  Tensor wrong_dtype = Tensor::zeros({3}, DType::F32);
  CHECK(error_of([&] { a.copy_from(wrong_shape); }) ==
        "copy_from: Tensor(f64, (4), cpu) into Tensor(f64, (3), cpu)");
  CHECK(error_of([&] { a.copy_from(wrong_dtype); }) ==
        "copy_from: Tensor(f32, (3), cpu) into Tensor(f64, (3), cpu)");
}

TEST_CASE("fill_ and item for every dtype") {
  Tensor f32 = Tensor::empty({3}, DType::F32);
  f32.fill_(0.1);
  CHECK(f32.to_vector<float>() == std::vector<float>(3, 0.1f));
  Tensor f64 = Tensor::empty({3}, DType::F64);
  f64.fill_(0.1);
  CHECK(f64.to_vector<double>() == std::vector<double>(3, 0.1));
  Tensor b = Tensor::empty({3}, DType::BF16);
  b.fill_(1.5);
  for (bf16 v : b.to_vector<bf16>()) CHECK(v.bits == 0x3fc0);
  Tensor i32 = Tensor::empty({3}, DType::I32);
  i32.fill_(-7);
  CHECK(i32.to_vector<int32_t>() == std::vector<int32_t>(3, -7));
  Tensor i64 = Tensor::empty({3}, DType::I64);
  i64.fill_(1099511627776.0);  // 2^40: needs the 64-bit pattern
  CHECK(i64.to_vector<int64_t>() == std::vector<int64_t>(3, int64_t(1) << 40));
  Tensor big = Tensor::empty({100003}, DType::F32);  // above the parallel-fill threshold
  big.fill_(2.0);
  CHECK(big.to_vector<float>() == std::vector<float>(100003, 2.0f));
  i32.zero_();
  CHECK(i32.to_vector<int32_t>() == std::vector<int32_t>(3, 0));

  CHECK(Tensor::scalar(0.25, DType::F32).item() == 0.25);
  CHECK(Tensor::scalar(0.1, DType::F64).item() == 0.1);
  CHECK(Tensor::scalar(3.0, DType::BF16).item() == 3.0);
  CHECK(Tensor::full({1, 1}, -4, DType::I32).item() == -4.0);
  CHECK(Tensor::scalar(1e15, DType::I64).item() == 1e15);
  CHECK(error_of([] { Tensor::zeros({2}).item(); }) == "item: tensor of shape (2) has 2 elements");
}

TEST_CASE("bf16 rounds to nearest even; inf and NaN survive") {
  auto round = [](uint32_t f32_bits) { return bf16::from_float(bits_float(f32_bits)); };
  CHECK(round(0x3f800000u) == 0x3f80);  // 1.0 exact
  CHECK(round(0x3f808000u) == 0x3f80);  // 1 + 2^-8: a tie, 0x3f80 is even: down
  CHECK(round(0x3f818000u) == 0x3f82);  // 1 + 2^-7 + 2^-8: a tie, 0x3f81 is odd: up
  CHECK(round(0x3f80c000u) == 0x3f81);  // 1 + 3 * 2^-9: above the tie: up
  CHECK(round(0x3f807fffu) == 0x3f80);  // just below the tie: down
  CHECK(round(0xbf80c000u) == 0xbf81);  // sign does not change the rounding
  CHECK(round(0x7f7fffffu) == 0x7f80);  // FLT_MAX rounds up to inf, as RNE must
  CHECK(round(0x7f800000u) == 0x7f80);  // inf
  CHECK(round(0xff800000u) == 0xff80);  // -inf
  CHECK(round(0x00000001u) == 0x0000);  // the smallest subnormal rounds to zero
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0x7fffffffu, 0xffc00000u}) {
    uint16_t b = round(nan);
    CHECK((b & 0x7f80) == 0x7f80);
    CHECK((b & 0x007f) != 0);  // still a NaN: a payload only in the low bits must not become inf
  }
  CHECK(bf16::to_float(0x3f81) == 1.0f + 1.0f / 128);
  CHECK(float_bits(static_cast<float>(bf16(-0.0f))) == 0x80000000u);
  CHECK(std::isnan(static_cast<float>(bf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST_CASE("poison mode fills new tensors with NaN / 0xA5") {
  set_poison_new_tensors(true);
  CHECK(poison_new_tensors());
  Tensor f = Tensor::empty({17}, DType::F32);
  Tensor d = Tensor::empty({5}, DType::F64);
  Tensor b = Tensor::empty({5}, DType::BF16);
  Tensor i = Tensor::empty({3}, DType::I32);
  Tensor l = Tensor::empty({3}, DType::I64);
  Tensor z = Tensor::zeros({4}, DType::F32);  // zeros still zeroes after the poison
  set_poison_new_tensors(false);
  CHECK_FALSE(poison_new_tensors());
  for (float v : f.to_vector<float>()) CHECK(std::isnan(v));
  for (double v : d.to_vector<double>()) CHECK(std::isnan(v));
  for (bf16 v : b.to_vector<bf16>()) CHECK(std::isnan(static_cast<float>(v)));
  for (int32_t v : i.to_vector<int32_t>()) CHECK(static_cast<uint32_t>(v) == 0xa5a5a5a5u);
  for (int64_t v : l.to_vector<int64_t>()) CHECK(static_cast<uint64_t>(v) == 0xa5a5a5a5a5a5a5a5u);
  CHECK(z.to_vector<float>() == std::vector<float>(4, 0.f));
}

TEST_CASE("overlaps: byte ranges within one storage") {
  Tensor t = Tensor::zeros({6, 2});
  CHECK(t.overlaps(t));
  CHECK(t.slice0(0, 3).overlaps(t.slice0(2, 4)));
  CHECK_FALSE(t.slice0(0, 3).overlaps(t.slice0(3, 6)));  // adjacent is not overlapping
  CHECK(t.reshape({-1}).overlaps(t.slice0(5, 6)));
  CHECK_FALSE(t.overlaps(t.clone()));
  CHECK_FALSE(t.overlaps(Tensor()));
}

TEST_CASE("Shape: rank limit, negative dims, dim range") {
  Shape s{2, 3, 4};
  CHECK(s.numel() == 24);
  CHECK(s.prod(1, 3) == 12);
  CHECK(s[-1] == 4);
  CHECK(s.norm(-3) == 0);
  CHECK(s.strides()[0] == 12);
  CHECK(s.strides()[2] == 1);
  CHECK(Shape{}.numel() == 1);
  CHECK(Shape{}.str() == "()");
  CHECK(Shape{5}.str() == "(5)");
  CHECK(Shape(std::vector<int64_t>{1, 2}) == Shape{1, 2});
  CHECK(Shape{1, 2} != Shape{2, 1});
  CHECK(Shape{1} != Shape{1, 1});

  CHECK(error_of([] { Shape{1, 1, 1, 1, 1, 1, 1}; }) == "shape rank 7 exceeds the maximum 6");
  CHECK(error_of([] { Shape{2, -1}; }) == "negative dimension -1 in shape");
  CHECK(error_of([&] { (void)s[3]; }) == "dim 3 out of range for shape (2, 3, 4)");
  CHECK(error_of([&] { (void)s.norm(-4); }) == "dim -4 out of range for shape (2, 3, 4)");
  CHECK_THROWS_AS((void)Shape{}[0], std::out_of_range);
  Shape full{1, 1, 1, 1, 1, 1};
  CHECK(error_of([&] { full.push_back(1); }) == "shape rank would exceed the maximum 6");
  CHECK(error_of([] {
          Tensor::zeros({4}).reshape({2, 2, 1, 1, 1, 1, 1});
        }) == "shape rank 7 exceeds the maximum 6");
}

TEST_CASE("fmt formatters: Shape, DType, Device, Tensor") {
  CHECK(fmt::format("{}", Shape{2, 3}) == "(2, 3)");
  CHECK(fmt::format("{:>8}", Shape{2, 3}) == "  (2, 3)");
  CHECK(fmt::format("{}", DType::BF16) == "bf16");
  CHECK(fmt::format("{}", Device::cuda(1)) == "cuda:1");

  Tensor t = Tensor::from_vector<float>({1, 2.5f, -3, 4, 5, 6}, {2, 3});
  CHECK(fmt::format("{}", t) ==
        "Tensor(f32, (2, 3), cpu)\n"
        "[[ 1.0000,  2.5000, -3.0000],\n"
        " [ 4.0000,  5.0000,  6.0000]]");
  CHECK(fmt::format("{}", Tensor::from_vector<int64_t>({1, -20, 3, 4}, {2, 1, 2})) ==
        "Tensor(i64, (2, 1, 2), cpu)\n"
        "[[[  1, -20]],\n"
        "\n"
        " [[  3,   4]]]");
  CHECK(fmt::format("{}", Tensor::scalar(0.5, DType::F64)) == "Tensor(f64, (), cpu)\n0.5000");
  CHECK(fmt::format("{}", Tensor::from_vector<float>({1e-6f, 1.f}, {2})) ==
        "Tensor(f32, (2), cpu)\n[1.0000e-06, 1.0000e+00]");
  CHECK(fmt::format("{}", Tensor::zeros({0, 3}, DType::I32)) == "Tensor(i32, (0, 3), cpu)\n[]");
  CHECK(fmt::format("{}", Tensor()) == "Tensor(undefined)");

  // Over 1000 elements: 3 leading and 3 trailing entries per dim.
  std::vector<int32_t> v(40 * 30);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int32_t>(i);
  std::string big = fmt::format("{}", Tensor::from_vector<int32_t>(v, {40, 30}));
  CHECK(big ==
        "Tensor(i32, (40, 30), cpu)\n"
        "[[   0,    1,    2, ...,   27,   28,   29],\n"
        " [  30,   31,   32, ...,   57,   58,   59],\n"
        " [  60,   61,   62, ...,   87,   88,   89],\n"
        " ...,\n"
        " [1110, 1111, 1112, ..., 1137, 1138, 1139],\n"
        " [1140, 1141, 1142, ..., 1167, 1168, 1169],\n"
        " [1170, 1171, 1172, ..., 1197, 1198, 1199]]");
  if (cuda_available()) {
    Tensor g = t.to(Device::cuda());
    CHECK(fmt::format("{}", g) ==
          "Tensor(f32, (2, 3), cuda:0)\n"
          "[[ 1.0000,  2.5000, -3.0000],\n"
          " [ 4.0000,  5.0000,  6.0000]]");
  }
}

TEST_CASE("wrapping storage checks the byte range") {
  auto st = std::make_shared<Storage>(16, Device::cpu());
  Tensor ok(st, 8, Shape{2}, DType::F32);
  CHECK(ok.numel() == 2);
  CHECK(error_of([&] { Tensor(st, 8, Shape{3}, DType::F32); }) ==
        "Tensor: 12 bytes at offset 8 exceed storage of 16 bytes");
}
