// Placeholders for the optim family until its real definitions land; each throws.
// The family's owner deletes this file when it writes optim.
#include <stdexcept>

#include "kernels/ops.h"

namespace psvae::ops {

void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p) {
  throw std::logic_error("adamw_step: not implemented yet");
}
void ema_update(Tensor& ema, const Tensor& param, double decay) {
  throw std::logic_error("ema_update: not implemented yet");
}

}  // namespace psvae::ops
