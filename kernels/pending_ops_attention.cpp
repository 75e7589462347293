// Placeholders for the attention family until its real definitions land; each throws.
// The family's owner deletes this file when it writes attention.
#include <stdexcept>

#include "kernels/ops.h"

namespace psvae::ops {

AttnOut attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask, double scale) {
  throw std::logic_error("attention: not implemented yet");
}
AttnGrads attention_bwd(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const Tensor& key_mask, double scale) {
  throw std::logic_error("attention_bwd: not implemented yet");
}

}  // namespace psvae::ops
