// Placeholders for the spatial family until its real definitions land; each throws.
// The family's owner deletes this file when it writes spatial.
#include <stdexcept>

#include "autograd/functions.h"

namespace psvae::ag {

Var conv2d(const Var& x, const Var& w, const Var& b, const ops::Conv2dParams& p) {
  throw std::logic_error("conv2d: not implemented yet");
}
Var upsample_nearest(const Var& x, int64_t out_h, int64_t out_w) {
  throw std::logic_error("upsample_nearest: not implemented yet");
}
Var upsample_bilinear(const Var& x, int64_t out_h, int64_t out_w, bool align_corners) {
  throw std::logic_error("upsample_bilinear: not implemented yet");
}
Var avg_pool2d(const Var& x, const ops::Pool2dParams& p) {
  throw std::logic_error("avg_pool2d: not implemented yet");
}
Var max_pool2d(const Var& x, const ops::Pool2dParams& p) {
  throw std::logic_error("max_pool2d: not implemented yet");
}

}  // namespace psvae::ag
