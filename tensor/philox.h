// Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw (SC'11): ten rounds
// of a multiply-xor bijection keyed by the seed. Header-only and usable from host and device code,
// so the CPU and CUDA fills (tensor/random.cpp, tensor/cuda/random.cu) share one definition.
// The stream layout is documented in tensor/random.h.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PSVAE_HD __host__ __device__ __forceinline__
#else
#define PSVAE_HD inline
#endif

namespace psvae::philox {

struct U32x4 {
  uint32_t v[4];
};

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kW0 = 0x9E3779B9u,
                   kW1 = 0xBB67AE85u;  // Weyl key increments (golden ratio, sqrt 3)

PSVAE_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// The raw block function: counter (4 words) and key (2 words) -> 4 random words.
PSVAE_HD U32x4 philox4x32_10(U32x4 ctr, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kM0, ctr.v[0], hi0, lo0);
    mulhilo(kM1, ctr.v[2], hi1, lo1);
    ctr = U32x4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
  }
  return ctr;
}

// The block for counter index c (low 64 bits of the 128-bit counter) under `seed`.
PSVAE_HD U32x4 block(uint64_t seed, uint64_t c) {
  U32x4 ctr{{static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), 0u, 0u}};
  return philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// 24-bit uniform in (0, 1): the same value is exactly representable in f32 and f64.
PSVAE_HD double to_uniform(uint32_t w) {
  return (static_cast<double>(w >> 8) + 0.5) * (1.0 / 16777216.0);
}

// Element i of a uniform fill starting at counter `offset`.
PSVAE_HD double uniform_at(uint64_t seed, uint64_t offset, int64_t i) {
  U32x4 b = block(seed, offset + static_cast<uint64_t>(i) / 4);
  return to_uniform(b.v[i % 4]);
}

// Element i of a standard normal fill: Box-Muller on words (2j, 2j+1) of the block, in f64.
PSVAE_HD double normal_at(uint64_t seed, uint64_t offset, int64_t i) {
  U32x4 b = block(seed, offset + static_cast<uint64_t>(i) / 4);
  int j = static_cast<int>(i % 4) / 2;
  double u1 = to_uniform(b.v[2 * j]), u2 = to_uniform(b.v[2 * j + 1]);
  double r = sqrt(-2.0 * log(u1));
  double theta = 6.283185307179586476925 * u2;
  return (i % 2 == 0) ? r * cos(theta) : r * sin(theta);
}

}  // namespace psvae::philox
