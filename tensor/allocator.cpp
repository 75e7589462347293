#include "tensor/allocator.h"

#include <cstdlib>
#include <new>

namespace psvae {

void* cpu_alloc(size_t nbytes) {
  // aligned_alloc needs a size that is a multiple of the alignment; a zero-byte tensor still
  // gets a unique non-null pointer.
  size_t rounded = (nbytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
  if (rounded == 0) rounded = kCpuAlignment;
  void* p = std::aligned_alloc(kCpuAlignment, rounded);
  if (!p) throw std::bad_alloc();
  return p;
}

void cpu_free(void* p) { std::free(p); }

}  // namespace psvae
