// Placeholders for the reduce family until its real definitions land; each throws.
// The family's owner deletes this file when it writes reduce.
#include <stdexcept>

#include "kernels/ops.h"

namespace psvae::ops {

Tensor sum(const Tensor& x, int dim, bool keepdim) {
  throw std::logic_error("sum: not implemented yet");
}
Tensor sum_all(const Tensor& x) {
  throw std::logic_error("sum_all: not implemented yet");
}
Tensor mean(const Tensor& x, int dim, bool keepdim) {
  throw std::logic_error("mean: not implemented yet");
}
Tensor mean_all(const Tensor& x) {
  throw std::logic_error("mean_all: not implemented yet");
}
std::pair<Tensor, Tensor> max(const Tensor& x, int dim, bool keepdim) {
  throw std::logic_error("max: not implemented yet");
}
Tensor max_bwd(const Tensor& gy, const Tensor& argmax, const Shape& x_shape, int dim) {
  throw std::logic_error("max_bwd: not implemented yet");
}
std::pair<Tensor, Tensor> var_mean(const Tensor& x, int dim, int correction, bool keepdim) {
  throw std::logic_error("var_mean: not implemented yet");
}
Tensor var_bwd(const Tensor& gy, const Tensor& x, const Tensor& mean, int dim, int correction) {
  throw std::logic_error("var_bwd: not implemented yet");
}
Tensor softmax(const Tensor& x) {
  throw std::logic_error("softmax: not implemented yet");
}
Tensor softmax_bwd(const Tensor& y, const Tensor& gy) {
  throw std::logic_error("softmax_bwd: not implemented yet");
}
Tensor log_softmax(const Tensor& x) {
  throw std::logic_error("log_softmax: not implemented yet");
}
Tensor log_softmax_bwd(const Tensor& y, const Tensor& gy) {
  throw std::logic_error("log_softmax_bwd: not implemented yet");
}

}  // namespace psvae::ops
