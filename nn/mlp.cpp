#include "nn/mlp.h"

#include <stdexcept>

namespace psvae::nn {

Var activate(const Var& x, Activation a) {
  switch (a) {
    case Activation::GeluTanh: return ag::gelu_tanh(x);
    case Activation::GeluErf: return ag::gelu_erf(x);
    case Activation::Silu: return ag::silu(x);
    case Activation::Relu: return ag::relu(x);
    case Activation::Tanh: return ag::tanh(x);
  }
  throw std::invalid_argument("activate: unknown activation");
}

Mlp::Mlp(const Config& c, Generator& g) : cfg_(c) {
  fc1 = register_module("fc1", std::make_shared<Linear>(c.in, c.hidden, c.bias, g));
  fc2 = register_module("fc2", std::make_shared<Linear>(c.hidden, c.out, c.bias, g));
}

Var Mlp::forward(const Var& x) const {
  // The DiT MLP (tanh GELU, biases): one function whose GEMMs carry the activation and its
  // gradient (ag::mlp_gelu; docs/kernels.md, "DiT block memory traffic").
  if (cfg_.act == Activation::GeluTanh && fc1->bias())
    return ag::mlp_gelu(x, fc1->weight(), *fc1->bias(), fc2->weight(),
                        fc2->bias() ? *fc2->bias() : Var());
  return fc2->forward(activate(fc1->forward(x), cfg_.act));
}

SwiGLU::SwiGLU(const Config& c, Generator& g) : cfg_(c) {
  w12 = register_module("w12", std::make_shared<Linear>(c.in, 2 * c.hidden, c.bias, g));
  w3 = register_module("w3", std::make_shared<Linear>(c.hidden, c.out, c.bias, g));
}

Var SwiGLU::forward(const Var& x) const {
  Var h = w12->forward(x);  // (..., 2H)
  std::vector<Var> halves = ag::split(h, {cfg_.hidden, cfg_.hidden}, h.rank() - 1);
  return w3->forward(ag::mul(ag::silu(halves[0]), halves[1]));
}

}  // namespace psvae::nn
