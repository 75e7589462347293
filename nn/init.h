// Parameter initialisers, PyTorch's torch.nn.init semantics, all drawing from a psvae::Generator
// so a model built twice from the same seed is bit-identical (and the stream is the same on any
// device: values are drawn on the host in f64 and converted to the tensor's dtype and device).
//
// Fans as PyTorch computes them: a tensor (out, in, k...) has receptive field r = prod(k...),
// fan_in = in * r and fan_out = out * r; a Linear weight (out, in) has r = 1.
#pragma once
#include <cmath>
#include <utility>

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace psvae::nn::init {

std::pair<int64_t, int64_t> fans(const Shape& s);  // (fan_in, fan_out); needs rank >= 2

void uniform_(Tensor& t, Generator& g, double lo, double hi);
void normal_(Tensor& t, Generator& g, double std = 1.0, double mean = 0.0);
// Normal(mean, std) restricted to [a, b], drawn by inverting the CDF of a uniform in
// [Phi(a), Phi(b)] (one uniform per element, so the stream stays counter-aligned). NaN bounds mean
// the defaults a = mean - 2 std, b = mean + 2 std. (PyTorch's defaults are the absolute -2, 2.)
void trunc_normal_(Tensor& t, Generator& g, double std = 1.0, double mean = 0.0, double a = NAN,
                   double b = NAN);
// U(-bound, bound), bound = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010).
void xavier_uniform_(Tensor& t, Generator& g, double gain = 1.0);
// PyTorch's default for nn.Linear / nn.Conv2d weights: kaiming_uniform_(a = sqrt(5)), i.e.
// gain = sqrt(2 / (1 + 5)), bound = gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in).
void kaiming_uniform_default_(Tensor& t, Generator& g);
void constant_(Tensor& t, double v);
inline void zeros_(Tensor& t) { constant_(t, 0.0); }
inline void ones_(Tensor& t) { constant_(t, 1.0); }

// Inverse error function (|x| < 1), used by trunc_normal_: a rational first guess refined by
// Newton steps on std::erf, accurate to a few ulps in double.
double erfinv(double x);

}  // namespace psvae::nn::init
