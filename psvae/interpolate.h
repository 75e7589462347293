// Bicubic resampling as PyTorch's F.interpolate(mode="bicubic", align_corners=False), written as
// one (out x in) matrix per axis. Bicubic is linear in its input, so resizing a (H, W, C) grid is
// two matmuls: exact to PyTorch's weights, differentiable for free, and cheap for the small grids
// it is used on (DINOv2's 37x37 position embedding).
//
// The matrices are built on the host in double. Two PyTorch details matter for parity:
// - Source coordinates use scale = 1 / scale_factor when a scale factor is given (the output size
//   is then floor(in * scale_factor)), and in / out only when an explicit size is given. DINOv2's
//   (h + 0.1) / 37 factor therefore samples slightly differently from size = h.
// - antialias=True is a different kernel (_upsample_bicubic2d_aa, PIL's): Keys' cubic with
//   a = -0.5 (not -0.75), its support widened by the downscale factor when shrinking, and the
//   weights of each output renormalised to sum to 1 over the in-range taps (no edge clamping).
#pragma once
#include <cstdint>
#include <vector>

#include "autograd/var.h"

namespace psvae::interp {

// Output length PyTorch's F.interpolate uses for a scale factor: floor(in * scale_factor).
int64_t output_size(int64_t in, double scale_factor);

// Row-major (out x in) weights: y[o] = sum_i M[o][i] x[i] reproduces F.interpolate along one axis.
// scale_factor <= 0 means "an explicit size was given" (scale = in / out).
std::vector<double> bicubic_matrix(int64_t in, int64_t out, double scale_factor, bool antialias);

struct BicubicOptions {
  // Per axis (rows, cols); <= 0: the explicit output size was given instead.
  double scale_h = 0, scale_w = 0;
  bool antialias = false;
};

// x (Hin, Win, C) -> (out_h, out_w, C) in x's dtype; gradients flow to x. Returns x when both
// sizes match and no scale factor is given (PyTorch's weights are then the identity).
ag::Var resize_bicubic(const ag::Var& x, int64_t out_h, int64_t out_w, const BicubicOptions& o);

}  // namespace psvae::interp
