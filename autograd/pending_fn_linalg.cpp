// Placeholders for the linalg family until its real definitions land; each throws.
// The family's owner deletes this file when it writes linalg.
#include <stdexcept>

#include "autograd/functions.h"

namespace psvae::ag {

Var matmul(const Var& a, const Var& b, bool trans_a, bool trans_b) {
  throw std::logic_error("matmul: not implemented yet");
}
Var linear(const Var& x, const Var& w, const Var& b) {
  throw std::logic_error("linear: not implemented yet");
}

}  // namespace psvae::ag
