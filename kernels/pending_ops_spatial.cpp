// Placeholders for the spatial family until its real definitions land; each throws.
// The family's owner deletes this file when it writes spatial.
#include <stdexcept>

#include "kernels/ops.h"

namespace psvae::ops {

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p) {
  throw std::logic_error("conv2d: not implemented yet");
}
Conv2dGrads conv2d_bwd(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dParams& p, bool with_bias) {
  throw std::logic_error("conv2d_bwd: not implemented yet");
}
Tensor upsample_nearest(const Tensor& x, int64_t out_h, int64_t out_w) {
  throw std::logic_error("upsample_nearest: not implemented yet");
}
Tensor upsample_nearest_bwd(const Tensor& gy, int64_t in_h, int64_t in_w) {
  throw std::logic_error("upsample_nearest_bwd: not implemented yet");
}
Tensor upsample_bilinear(const Tensor& x, int64_t out_h, int64_t out_w, bool align_corners) {
  throw std::logic_error("upsample_bilinear: not implemented yet");
}
Tensor upsample_bilinear_bwd(const Tensor& gy, int64_t in_h, int64_t in_w, bool align_corners) {
  throw std::logic_error("upsample_bilinear_bwd: not implemented yet");
}
Tensor avg_pool2d(const Tensor& x, const Pool2dParams& p) {
  throw std::logic_error("avg_pool2d: not implemented yet");
}
Tensor avg_pool2d_bwd(const Tensor& gy, const Shape& x_shape, const Pool2dParams& p) {
  throw std::logic_error("avg_pool2d_bwd: not implemented yet");
}
std::pair<Tensor, Tensor> max_pool2d(const Tensor& x, const Pool2dParams& p) {
  throw std::logic_error("max_pool2d: not implemented yet");
}
Tensor max_pool2d_bwd(const Tensor& gy, const Tensor& argmax, const Shape& x_shape) {
  throw std::logic_error("max_pool2d_bwd: not implemented yet");
}

}  // namespace psvae::ops
