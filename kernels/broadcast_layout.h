// NumPy broadcasting as both backends lay it out (kernels/cpu/elementwise.cpp and
// kernels/cuda/broadcast.cu share it, the typed wrappers in kernels/ops_elementwise.cpp and the
// CUDA sum_to use broadcasts_to). Every operand is addressed through its own element strides over
// the output's index space, 0 on broadcast dims; size-1 dims are dropped and adjacent dims merged
// wherever every operand stays contiguous across them, so the common cases collapse to one or two
// dims: (N, D) + (N, D) is one dim of N*D, (N, D) + (D) is N rows of D with the bias stride 0 on
// rows.
#pragma once
#include <cstdint>
#include <vector>

#include "tensor/shape.h"

namespace psvae::kernels {

// True when `from` broadcasts to exactly `to` (NumPy rules, aligned from the right): what expand
// accepts and sum_to inverts.
bool broadcasts_to(const Shape& from, const Shape& to);

constexpr int kMaxOperands = 4;  // output + up to 3 inputs (where)

// Index space of the output with per-operand strides, after merging contiguous dims.
struct Broadcast {
  int rank = 0;
  int nops = 0;
  int64_t size[kMaxRank] = {};
  int64_t stride[kMaxOperands][kMaxRank] = {};
  int64_t rows() const {
    int64_t r = 1;
    for (int d = 0; d + 1 < rank; ++d) r *= size[d];
    return r;
  }
  int64_t cols() const { return rank ? size[rank - 1] : 1; }
  // Offsets of operand k at the start of row `row` (all dims but the last).
  void row_offsets(int64_t row, int64_t* off) const {
    for (int k = 0; k < nops; ++k) off[k] = 0;
    for (int d = rank - 2; d >= 0; --d) {
      int64_t i = row % size[d];
      row /= size[d];
      for (int k = 0; k < nops; ++k) off[k] += i * stride[k][d];
    }
  }
};

// Operand 0 is the output (its own shape, contiguous); operand k + 1 is ins[k], broadcast to it,
// aligned from the right. At least one dim is left (size 1 when the output has one element).
Broadcast make_broadcast(const Shape& out, const std::vector<Shape>& ins);

}  // namespace psvae::kernels
