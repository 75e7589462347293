// Placeholders for the reduce family until its real definitions land; each throws.
// The family's owner deletes this file when it writes reduce.
#include <stdexcept>

#include "autograd/functions.h"

namespace psvae::ag {

Var sum(const Var& x, int dim, bool keepdim) {
  throw std::logic_error("sum: not implemented yet");
}
Var sum_all(const Var& x) {
  throw std::logic_error("sum_all: not implemented yet");
}
Var mean(const Var& x, int dim, bool keepdim) {
  throw std::logic_error("mean: not implemented yet");
}
Var mean_all(const Var& x) {
  throw std::logic_error("mean_all: not implemented yet");
}
Var max(const Var& x, int dim, bool keepdim) {
  throw std::logic_error("max: not implemented yet");
}
Var var(const Var& x, int dim, int correction, bool keepdim) {
  throw std::logic_error("var: not implemented yet");
}
Var softmax(const Var& x) {
  throw std::logic_error("softmax: not implemented yet");
}
Var log_softmax(const Var& x) {
  throw std::logic_error("log_softmax: not implemented yet");
}

}  // namespace psvae::ag
