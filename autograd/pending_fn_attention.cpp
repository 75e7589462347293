// Placeholders for the attention family until its real definitions land; each throws.
// The family's owner deletes this file when it writes attention.
#include <stdexcept>

#include "autograd/functions.h"

namespace psvae::ag {

Var attention(const Var& q, const Var& k, const Var& v, const Tensor& key_mask, double scale) {
  throw std::logic_error("attention: not implemented yet");
}

}  // namespace psvae::ag
