// conv2d and conv2d_bwd on CUDA: the path switch, and the entry points shared by the three files
// of the convolution family (plain C++, no CUDA types, so tests and benches compiled by g++ can
// include it):
//   conv.cu                 op-table kernels: shape checks, path choice, bias add / bias gradient;
//   conv_cudnn.cu           cuDNN's legacy convolution API (built when PSVAE_WITH_CUDNN is set);
//   conv_implicit_gemm.cu   our own implicit-GEMM kernels: the fallback, and the baseline that
//                           bench/bench_conv.cu compares with cuDNN.
//
// Path choice: PSVAE_CONV=auto|cudnn|own in the environment (unset or empty = auto), or
// set_conv_path(), which overrides the environment until reset_conv_path().
//   auto   cuDNN for f32 and bf16 when the build has it and it has a suitable (deterministic, no
//          TF32) algorithm for the shape; our own kernels otherwise;
//   cudnn  cuDNN for f32 and bf16; an error when the build has no cuDNN or cuDNN offers no
//          suitable algorithm;
//   own    our own kernels always.
// f64 always runs our own kernels (whatever the path), the bias gradient always runs our own
// deterministic reduction, and zero-sized tensors never reach cuDNN.
#pragma once
#include <cstdint>

#include "tensor/tensor.h"

namespace psvae::kernels::cuda {

enum class ConvPath { kAuto, kCudnn, kOwn };

// Forces the path of every later conv2d / conv2d_bwd on CUDA (tests, benches); process-wide.
void set_conv_path(ConvPath path);
// Back to PSVAE_CONV.
void reset_conv_path();
// The path in force: set_conv_path's, else PSVAE_CONV's. Throws std::invalid_argument naming the
// variable and the accepted values when PSVAE_CONV holds anything else.
ConvPath conv_path();
const char* conv_path_name(ConvPath path);
// Whether this build was compiled with cuDNN (PSVAE_WITH_CUDNN).
bool conv_has_cudnn();

namespace conv {

// Geometry of one conv2d call: x (N, C, H, W), w (O, C, kh, kw), y (N, O, Ho, Wo), strides and
// paddings. Ho, Wo are the wrapper's (H + 2 ph - kh) / sh + 1 and the same for the width.
struct Dims {
  int64_t N, C, H, W, O, kh, kw, Ho, Wo, sh, sw, ph, pw;
};

// ---- our own kernels (conv_implicit_gemm.cu); every output element is written ----------------
// y = conv(x, w) + b; b may be null.
void own_forward(const Dims& d, const Tensor& x, const Tensor& w, const Tensor* b, const Tensor& y);
// gx = the transposed convolution of gy with w.
void own_data_grad(const Dims& d, const Tensor& gy, const Tensor& w, const Tensor& gx);
// gw = sum over samples and output pixels of gy (x) im2col(x).
void own_filter_grad(const Dims& d, const Tensor& gy, const Tensor& x, const Tensor& gw);
// gb[o] = sum of gy[:, o, :, :]; deterministic, used by both paths.
void bias_grad(const Dims& d, const Tensor& gy, const Tensor& gb);
// y[:, o, :, :] += b[o]; the cuDNN path's bias.
void add_bias(const Dims& d, const Tensor& b, const Tensor& y);

// ---- cuDNN (conv_cudnn.cu, only with PSVAE_WITH_CUDNN) ---------------------------------------
// Each returns false, doing nothing, when cuDNN cannot take the call (a dtype other than f32 and
// bf16, a size beyond its int32 descriptors, no deterministic algorithm without TF32 fitting the
// workspace cap); throws on a cuDNN error.
#ifdef PSVAE_WITH_CUDNN
bool cudnn_forward(const Dims& d, const Tensor& x, const Tensor& w, const Tensor& y);
bool cudnn_data_grad(const Dims& d, const Tensor& gy, const Tensor& w, const Tensor& gx);
bool cudnn_filter_grad(const Dims& d, const Tensor& gy, const Tensor& x, const Tensor& gw);
#endif

}  // namespace conv

}  // namespace psvae::kernels::cuda
