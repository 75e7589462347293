// Placeholders for the norm family until its real definitions land; each throws.
// The family's owner deletes this file when it writes norm.
#include <stdexcept>

#include "autograd/functions.h"

namespace psvae::ag {

Var layer_norm(const Var& x, const Var& w, const Var& b, double eps) {
  throw std::logic_error("layer_norm: not implemented yet");
}
Var modulate(const Var& x, const Var& shift, const Var& scale) {
  throw std::logic_error("modulate: not implemented yet");
}
Var group_norm(const Var& x, int groups, const Var& w, const Var& b, double eps) {
  throw std::logic_error("group_norm: not implemented yet");
}

}  // namespace psvae::ag
