#include "nn/norm.h"

#include <fmt/format.h>

namespace psvae::nn {

LayerNorm::LayerNorm(const Config& c, Generator&) : cfg_(c) {
  if (c.affine) {
    weight_ = &register_parameter("weight", Tensor::full({c.dim}, 1.0));
    bias_ = &register_parameter("bias", Tensor::zeros({c.dim}));
  }
}

Var LayerNorm::forward(const Var& x) const {
  return ag::layer_norm(x, weight_ ? *weight_ : Var(), bias_ ? *bias_ : Var(), cfg_.eps);
}

GroupNorm::GroupNorm(const Config& c, Generator&) : cfg_(c) {
  check(c.groups > 0 && c.channels % c.groups == 0,
        fmt::format("GroupNorm: {} channels do not split into {} groups", c.channels, c.groups));
  if (c.affine) {
    weight_ = &register_parameter("weight", Tensor::full({c.channels}, 1.0));
    bias_ = &register_parameter("bias", Tensor::zeros({c.channels}));
  }
}

Var GroupNorm::forward(const Var& x) const {
  return ag::group_norm(x, cfg_.groups, weight_ ? *weight_ : Var(), bias_ ? *bias_ : Var(),
                        cfg_.eps);
}

LayerScale::LayerScale(const Config& c, Generator&) : cfg_(c) {
  gamma_ = &register_parameter("gamma", Tensor::full({c.dim}, c.init_value));
}

}  // namespace psvae::nn
