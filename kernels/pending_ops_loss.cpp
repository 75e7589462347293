// Placeholders for the loss family until its real definitions land; each throws.
// The family's owner deletes this file when it writes loss.
#include <stdexcept>

#include "kernels/ops.h"

namespace psvae::ops {

Tensor mse_loss(const Tensor& a, const Tensor& b) {
  throw std::logic_error("mse_loss: not implemented yet");
}
Tensor mse_loss_bwd(const Tensor& gy, const Tensor& a, const Tensor& b) {
  throw std::logic_error("mse_loss_bwd: not implemented yet");
}
Tensor l1_loss(const Tensor& a, const Tensor& b) {
  throw std::logic_error("l1_loss: not implemented yet");
}
Tensor l1_loss_bwd(const Tensor& gy, const Tensor& a, const Tensor& b) {
  throw std::logic_error("l1_loss_bwd: not implemented yet");
}
Tensor kl_gauss(const Tensor& mu, const Tensor& logvar, double normaliser) {
  throw std::logic_error("kl_gauss: not implemented yet");
}
std::pair<Tensor, Tensor> kl_gauss_bwd(const Tensor& gy, const Tensor& mu, const Tensor& logvar, double normaliser) {
  throw std::logic_error("kl_gauss_bwd: not implemented yet");
}
CrossEntropyOut cross_entropy(const Tensor& logits, const Tensor& target) {
  throw std::logic_error("cross_entropy: not implemented yet");
}
Tensor cross_entropy_bwd(const Tensor& gy, const Tensor& logits, const Tensor& target, const Tensor& lse) {
  throw std::logic_error("cross_entropy_bwd: not implemented yet");
}

}  // namespace psvae::ops
