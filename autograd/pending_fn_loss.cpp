// Placeholders for the loss family until its real definitions land; each throws.
// The family's owner deletes this file when it writes loss.
#include <stdexcept>

#include "autograd/functions.h"

namespace psvae::ag {

Var mse_loss(const Var& a, const Var& b) {
  throw std::logic_error("mse_loss: not implemented yet");
}
Var l1_loss(const Var& a, const Var& b) {
  throw std::logic_error("l1_loss: not implemented yet");
}
Var kl_gauss(const Var& mu, const Var& logvar, double normaliser) {
  throw std::logic_error("kl_gauss: not implemented yet");
}
Var cross_entropy(const Var& logits, const Tensor& target) {
  throw std::logic_error("cross_entropy: not implemented yet");
}

}  // namespace psvae::ag
