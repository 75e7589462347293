// Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11, "Parallel random numbers:
// as easy as 1, 2, 3"). A value depends only on (seed, offset, element index), so the CPU and CUDA
// fills produce the same stream bit for bit, any thread split gives the same result, and a run
// resumes exactly from a stored (seed, offset).
//
// Stream layout (shared by CPU and CUDA; see tensor/philox.h):
//   element i of a fill that starts at `offset` uses counter c = offset + i / 4 (128-bit counter,
//   low 64 bits = c, high 64 bits = 0), key = (seed low 32 bits, seed high 32 bits), and word
//   i % 4 of the 4x32-bit output block. A fill of n elements consumes ceil(n / 4) counters.
//   uniform: u = (word >> 8 + 0.5) * 2^-24 in (0, 1) for f32/bf16 (24 bits, never 0 or 1);
//            f64 uses the same 24-bit value so every dtype sees the same numbers.
//   normal:  Box-Muller on the pair (word 2j, word 2j+1) of a block: elements 4c+2j and 4c+2j+1
//            get r*cos(theta) and r*sin(theta), r = sqrt(-2 ln u1), theta = 2 pi u2.
#pragma once
#include <cstdint>

#include "tensor/tensor.h"

namespace psvae {

void fill_uniform(Tensor& t, uint64_t seed, uint64_t offset, double lo = 0.0, double hi = 1.0);
void fill_normal(Tensor& t, uint64_t seed, uint64_t offset, double mean = 0.0, double std = 1.0);

// Counters a fill of n elements consumes: advance an offset by this between fills.
inline uint64_t philox_counters(int64_t n) { return static_cast<uint64_t>((n + 3) / 4); }

// A seed plus a running offset: each fill takes the next unused counters. Its whole state is the
// two integers, which checkpoints store for exact resume.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0, uint64_t offset = 0) : seed_(seed), offset_(offset) {}
  void uniform_(Tensor& t, double lo = 0.0, double hi = 1.0);
  void normal_(Tensor& t, double mean = 0.0, double std = 1.0);
  // Reserve counters for n elements and return the offset to use (for kernels that draw their
  // own randomness, e.g. dropout on the GPU).
  uint64_t reserve(int64_t n) {
    uint64_t o = offset_;
    offset_ += philox_counters(n);
    return o;
  }
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) {
    seed_ = seed;
    offset_ = offset;
  }

 private:
  uint64_t seed_;
  uint64_t offset_;
};

}  // namespace psvae
