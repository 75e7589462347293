// Placeholders for the layout family until its real definitions land; each throws.
// The family's owner deletes this file when it writes layout.
#include <stdexcept>

#include "autograd/functions.h"

namespace psvae::ag {

Var reshape(const Var& x, const Shape& shape) {
  throw std::logic_error("reshape: not implemented yet");
}
Var permute(const Var& x, const std::vector<int>& perm) {
  throw std::logic_error("permute: not implemented yet");
}
Var transpose(const Var& x, int d0, int d1) {
  throw std::logic_error("transpose: not implemented yet");
}
Var concat(const std::vector<Var>& xs, int dim) {
  throw std::logic_error("concat: not implemented yet");
}
std::vector<Var> split(const Var& x, const std::vector<int64_t>& sizes, int dim) {
  throw std::logic_error("split: not implemented yet");
}
Var slice(const Var& x, const std::vector<int64_t>& starts, const Shape& sizes) {
  throw std::logic_error("slice: not implemented yet");
}
Var narrow(const Var& x, int dim, int64_t start, int64_t length) {
  throw std::logic_error("narrow: not implemented yet");
}
Var pad(const Var& x, const std::vector<int64_t>& before, const std::vector<int64_t>& after, double value) {
  throw std::logic_error("pad: not implemented yet");
}
Var embedding(const Var& table, const Tensor& ids) {
  throw std::logic_error("embedding: not implemented yet");
}

}  // namespace psvae::ag
