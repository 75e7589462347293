// Placeholders for the norm family until its real definitions land; each throws.
// The family's owner deletes this file when it writes norm.
#include <stdexcept>

#include "kernels/ops.h"

namespace psvae::ops {

NormOut layernorm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  throw std::logic_error("layernorm: not implemented yet");
}
NormGrads layernorm_bwd(const Tensor& gy, const Tensor& x, const Tensor& mean, const Tensor& rstd, const Tensor& w) {
  throw std::logic_error("layernorm_bwd: not implemented yet");
}
Tensor modulate(const Tensor& x, const Tensor& shift, const Tensor& scale) {
  throw std::logic_error("modulate: not implemented yet");
}
ModulateGrads modulate_bwd(const Tensor& gy, const Tensor& x, const Tensor& scale) {
  throw std::logic_error("modulate_bwd: not implemented yet");
}
NormOut groupnorm(const Tensor& x, int groups, const Tensor& w, const Tensor& b, double eps) {
  throw std::logic_error("groupnorm: not implemented yet");
}
NormGrads groupnorm_bwd(const Tensor& gy, const Tensor& x, const Tensor& mean, const Tensor& rstd, int groups, const Tensor& w) {
  throw std::logic_error("groupnorm_bwd: not implemented yet");
}

}  // namespace psvae::ops
