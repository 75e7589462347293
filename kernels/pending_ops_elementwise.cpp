// Placeholders for the elementwise family until its real definitions land; each throws.
// The family's owner deletes this file when it writes elementwise.
#include <stdexcept>

#include "kernels/ops.h"

namespace psvae::ops {

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  throw std::logic_error("broadcast_shapes: not implemented yet");
}
Tensor add(const Tensor& a, const Tensor& b) {
  throw std::logic_error("add: not implemented yet");
}
Tensor sub(const Tensor& a, const Tensor& b) {
  throw std::logic_error("sub: not implemented yet");
}
Tensor mul(const Tensor& a, const Tensor& b) {
  throw std::logic_error("mul: not implemented yet");
}
Tensor div(const Tensor& a, const Tensor& b) {
  throw std::logic_error("div: not implemented yet");
}
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  throw std::logic_error("where: not implemented yet");
}
Tensor add_scalar(const Tensor& x, double s) {
  throw std::logic_error("add_scalar: not implemented yet");
}
Tensor mul_scalar(const Tensor& x, double s) {
  throw std::logic_error("mul_scalar: not implemented yet");
}
Tensor expand(const Tensor& x, const Shape& shape) {
  throw std::logic_error("expand: not implemented yet");
}
Tensor sum_to(const Tensor& x, const Shape& shape) {
  throw std::logic_error("sum_to: not implemented yet");
}
Tensor cast(const Tensor& x, DType dtype) {
  throw std::logic_error("cast: not implemented yet");
}
Tensor exp(const Tensor& x) {
  throw std::logic_error("exp: not implemented yet");
}
Tensor log(const Tensor& x) {
  throw std::logic_error("log: not implemented yet");
}
Tensor sqrt(const Tensor& x) {
  throw std::logic_error("sqrt: not implemented yet");
}
Tensor rsqrt(const Tensor& x) {
  throw std::logic_error("rsqrt: not implemented yet");
}
Tensor tanh(const Tensor& x) {
  throw std::logic_error("tanh: not implemented yet");
}
Tensor sigmoid(const Tensor& x) {
  throw std::logic_error("sigmoid: not implemented yet");
}
Tensor relu(const Tensor& x) {
  throw std::logic_error("relu: not implemented yet");
}
Tensor silu(const Tensor& x) {
  throw std::logic_error("silu: not implemented yet");
}
Tensor gelu_tanh(const Tensor& x) {
  throw std::logic_error("gelu_tanh: not implemented yet");
}
Tensor gelu_erf(const Tensor& x) {
  throw std::logic_error("gelu_erf: not implemented yet");
}
Tensor abs(const Tensor& x) {
  throw std::logic_error("abs: not implemented yet");
}
Tensor pow_scalar(const Tensor& x, double p) {
  throw std::logic_error("pow_scalar: not implemented yet");
}
Tensor clamp(const Tensor& x, double lo, double hi) {
  throw std::logic_error("clamp: not implemented yet");
}
Tensor unary_bwd(Op op_bwd, const Tensor& x, const Tensor& y, const Tensor& gy, double p0, double p1) {
  throw std::logic_error("unary_bwd: not implemented yet");
}

}  // namespace psvae::ops
