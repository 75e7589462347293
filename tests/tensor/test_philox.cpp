// Philox4x32-10 against the known-answer vectors published with Random123 (kat_vectors), and the
// properties the rest of the engine relies on: offsets compose, fills are deterministic.
#include <doctest/doctest.h>

#include <cmath>

#include "common/test_util.h"
#include "tensor/philox.h"

using namespace psvae;

TEST_CASE("philox4x32-10 known-answer vectors (Random123)") {
  struct Kat {
    philox::U32x4 ctr;
    uint32_t k0, k1;
    philox::U32x4 expect;
  };
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
       0xffffffffu,
       0xffffffffu,
       {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
       0xa4093822u,
       0x299f31d0u,
       {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const Kat& k : kats) {
    philox::U32x4 got = philox::philox4x32_10(k.ctr, k.k0, k.k1);
    for (int i = 0; i < 4; ++i) CHECK(got.v[i] == k.expect.v[i]);
  }
}

TEST_CASE("philox fills: deterministic, offset-addressable, in range") {
  Tensor a = Tensor::empty({1000}, DType::F32);
  Tensor b = Tensor::empty({1000}, DType::F32);
  fill_uniform(a, 42, 7, -2.0, 3.0);
  fill_uniform(b, 42, 7, -2.0, 3.0);
  CHECK(a.to_vector<float>() == b.to_vector<float>());
  auto v = a.to_vector<float>();
  for (float x : v) CHECK((x > -2.0f && x < 3.0f));

  // Elements 8.. of a fill at offset 0 equal a fill at offset 2 (two counters of four values).
  Tensor c = Tensor::empty({12}, DType::F64), d = Tensor::empty({4}, DType::F64);
  fill_normal(c, 9, 0);
  fill_normal(d, 9, 2);
  for (int i = 0; i < 4; ++i) CHECK(c.data<double>()[8 + i] == d.data<double>()[i]);

  // A different seed gives a different stream.
  fill_uniform(b, 43, 7, -2.0, 3.0);
  CHECK(a.to_vector<float>() != b.to_vector<float>());
}

TEST_CASE("philox normal fill has the requested moments") {
  Generator g(123);
  Tensor t = Tensor::empty({200000}, DType::F64);
  g.normal_(t, 1.5, 2.0);
  double s = 0, s2 = 0;
  const double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) s += p[i];
  double mean = s / t.numel();
  for (int64_t i = 0; i < t.numel(); ++i) s2 += (p[i] - mean) * (p[i] - mean);
  double sd = std::sqrt(s2 / (t.numel() - 1));
  // Standard error of the mean is 2/sqrt(2e5) = 0.0045; 5 sigma bounds.
  CHECK(std::fabs(mean - 1.5) < 0.023);
  CHECK(std::fabs(sd - 2.0) < 0.02);
  CHECK(g.offset() == philox_counters(200000));
}
