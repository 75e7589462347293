// Placeholders for the layout family until its real definitions land; each throws.
// The family's owner deletes this file when it writes layout.
#include <stdexcept>

#include "kernels/ops.h"

namespace psvae::ops {

Tensor permute(const Tensor& x, const std::vector<int>& perm) {
  throw std::logic_error("permute: not implemented yet");
}
Tensor transpose(const Tensor& x, int d0, int d1) {
  throw std::logic_error("transpose: not implemented yet");
}
Tensor concat(const std::vector<Tensor>& xs, int dim) {
  throw std::logic_error("concat: not implemented yet");
}
Tensor slice(const Tensor& x, const std::vector<int64_t>& starts, const Shape& sizes) {
  throw std::logic_error("slice: not implemented yet");
}
Tensor narrow(const Tensor& x, int dim, int64_t start, int64_t length) {
  throw std::logic_error("narrow: not implemented yet");
}
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int dim) {
  throw std::logic_error("split: not implemented yet");
}
Tensor pad(const Tensor& x, const std::vector<int64_t>& before, const std::vector<int64_t>& after, double value) {
  throw std::logic_error("pad: not implemented yet");
}
Tensor embedding(const Tensor& table, const Tensor& ids) {
  throw std::logic_error("embedding: not implemented yet");
}
Tensor embedding_bwd(const Tensor& gy, const Tensor& ids, int64_t num_rows) {
  throw std::logic_error("embedding_bwd: not implemented yet");
}

}  // namespace psvae::ops
