// Placeholders for the linalg family until its real definitions land; each throws.
// The family's owner deletes this file when it writes linalg.
#include <stdexcept>

#include "kernels/ops.h"

namespace psvae::ops {

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  throw std::logic_error("matmul: not implemented yet");
}
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  throw std::logic_error("linear: not implemented yet");
}

}  // namespace psvae::ops
