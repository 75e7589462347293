#include "kernels/broadcast_layout.h"

#include <array>

namespace psvae::kernels {

bool broadcasts_to(const Shape& from, const Shape& to) {
  if (from.rank() > to.rank()) return false;
  const int lead = to.rank() - from.rank();
  for (int d = 0; d < from.rank(); ++d)
    if (from[d] != 1 && from[d] != to[d + lead]) return false;
  return true;
}

Broadcast make_broadcast(const Shape& out, const std::vector<Shape>& ins) {
  Broadcast b;
  b.nops = 1 + static_cast<int>(ins.size());
  int r = out.rank();
  int64_t size[kMaxRank];
  int64_t st[kMaxOperands][kMaxRank];
  std::array<int64_t, kMaxRank> os = out.strides();
  for (int d = 0; d < r; ++d) {
    size[d] = out[d];
    st[0][d] = os[static_cast<size_t>(d)];
  }
  for (size_t k = 0; k < ins.size(); ++k) {
    const Shape& s = ins[k];
    std::array<int64_t, kMaxRank> ss = s.strides();
    int lead = r - s.rank();
    for (int d = 0; d < r; ++d) {
      int sd = d - lead;
      bool present = sd >= 0 && s[sd] != 1;
      st[k + 1][d] = present ? ss[static_cast<size_t>(sd)] : 0;
    }
  }
  // Drop size-1 dims and merge dim d into d+1 when, for every operand, stride[d] == stride[d+1] *
  // size[d+1] (contiguous across the pair; also true for two broadcast dims, both 0).
  for (int d = 0; d < r; ++d) {
    if (size[d] == 1) continue;
    int n = b.rank;
    if (n > 0) {
      bool merge = true;
      for (int k = 0; k < b.nops; ++k)
        if (b.stride[k][n - 1] != st[k][d] * size[d]) merge = false;
      if (merge) {
        b.size[n - 1] *= size[d];
        for (int k = 0; k < b.nops; ++k) b.stride[k][n - 1] = st[k][d];
        continue;
      }
    }
    b.size[n] = size[d];
    for (int k = 0; k < b.nops; ++k) b.stride[k][n] = st[k][d];
    ++b.rank;
  }
  if (b.rank == 0) {  // every dim 1 (or rank 0): one element
    b.rank = 1;
    b.size[0] = 1;
    for (int k = 0; k < b.nops; ++k) b.stride[k][0] = 1;
  }
  return b;
}

}  // namespace psvae::kernels
