// Placeholders for the elementwise family until its real definitions land; each throws.
// The family's owner deletes this file when it writes elementwise.
#include <stdexcept>

#include "autograd/functions.h"

namespace psvae::ag {

Var add(const Var& a, const Var& b) {
  throw std::logic_error("add: not implemented yet");
}
Var sub(const Var& a, const Var& b) {
  throw std::logic_error("sub: not implemented yet");
}
Var mul(const Var& a, const Var& b) {
  throw std::logic_error("mul: not implemented yet");
}
Var div(const Var& a, const Var& b) {
  throw std::logic_error("div: not implemented yet");
}
Var where(const Tensor& cond, const Var& a, const Var& b) {
  throw std::logic_error("where: not implemented yet");
}
Var add_scalar(const Var& x, double s) {
  throw std::logic_error("add_scalar: not implemented yet");
}
Var mul_scalar(const Var& x, double s) {
  throw std::logic_error("mul_scalar: not implemented yet");
}
Var neg(const Var& x) {
  throw std::logic_error("neg: not implemented yet");
}
Var expand(const Var& x, const Shape& shape) {
  throw std::logic_error("expand: not implemented yet");
}
Var exp(const Var& x) {
  throw std::logic_error("exp: not implemented yet");
}
Var log(const Var& x) {
  throw std::logic_error("log: not implemented yet");
}
Var sqrt(const Var& x) {
  throw std::logic_error("sqrt: not implemented yet");
}
Var rsqrt(const Var& x) {
  throw std::logic_error("rsqrt: not implemented yet");
}
Var tanh(const Var& x) {
  throw std::logic_error("tanh: not implemented yet");
}
Var sigmoid(const Var& x) {
  throw std::logic_error("sigmoid: not implemented yet");
}
Var relu(const Var& x) {
  throw std::logic_error("relu: not implemented yet");
}
Var silu(const Var& x) {
  throw std::logic_error("silu: not implemented yet");
}
Var gelu_tanh(const Var& x) {
  throw std::logic_error("gelu_tanh: not implemented yet");
}
Var gelu_erf(const Var& x) {
  throw std::logic_error("gelu_erf: not implemented yet");
}
Var abs(const Var& x) {
  throw std::logic_error("abs: not implemented yet");
}
Var pow_scalar(const Var& x, double p) {
  throw std::logic_error("pow_scalar: not implemented yet");
}
Var square(const Var& x) {
  throw std::logic_error("square: not implemented yet");
}
Var clamp(const Var& x, double lo, double hi) {
  throw std::logic_error("clamp: not implemented yet");
}
Var cast(const Var& x, DType dtype) {
  throw std::logic_error("cast: not implemented yet");
}

}  // namespace psvae::ag
