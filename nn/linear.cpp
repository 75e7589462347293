#include "nn/linear.h"

#include <cmath>

#include "nn/init.h"

namespace psvae::nn {

Linear::Linear(const Config& c, Generator& g) : cfg_(c) {
  Tensor w = Tensor::empty({c.out, c.in});
  init::kaiming_uniform_default_(w, g);
  weight_ = &register_parameter("weight", w);
  if (c.bias) {
    Tensor b = Tensor::empty({c.out});
    double bound = 1.0 / std::sqrt(static_cast<double>(c.in));
    init::uniform_(b, g, -bound, bound);
    bias_ = &register_parameter("bias", b);
  }
}

Var Linear::forward(const Var& x) const { return ag::linear(x, *weight_, bias_ ? *bias_ : Var()); }

Conv2d::Conv2d(const Config& c, Generator& g) : cfg_(c) {
  Tensor w = Tensor::empty({c.out, c.in, c.kernel, c.kernel});
  init::kaiming_uniform_default_(w, g);
  weight_ = &register_parameter("weight", w);
  if (c.bias) {
    Tensor b = Tensor::empty({c.out});
    double bound = 1.0 / std::sqrt(static_cast<double>(c.in * c.kernel * c.kernel));
    init::uniform_(b, g, -bound, bound);
    bias_ = &register_parameter("bias", b);
  }
}

Var Conv2d::forward(const Var& x) const {
  ops::Conv2dParams p;
  p.stride_h = p.stride_w = cfg_.stride;
  p.pad_h = p.pad_w = cfg_.pad;
  return ag::conv2d(x, *weight_, bias_ ? *bias_ : Var(), p);
}

Embedding::Embedding(const Config& c, Generator& g) : cfg_(c) {
  Tensor w = Tensor::empty({c.num, c.dim});
  init::normal_(w, g, 1.0);
  weight_ = &register_parameter("weight", w);
}

}  // namespace psvae::nn
