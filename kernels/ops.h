// Typed entry points to the op table: each computes the output shapes, allocates the outputs on
// the inputs' device and runs the table's kernel. Models and autograd call these, never a
// backend directly. Shapes in comments; "scalar" means a rank-0 tensor.
#pragma once
#include <optional>
#include <utility>
#include <vector>

#include "kernels/op_table.h"
#include "tensor/tensor.h"

namespace psvae::ops {

using kernels::Op;

// ---- elementwise (kernels/ops_elementwise.cpp)
// --------------------------------------------------- NumPy broadcasting: dims aligned from the
// right, each pair equal or one of them 1. Throws naming both shapes when they do not broadcast.
Shape broadcast_shapes(const Shape& a, const Shape& b);
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor add_scalar(const Tensor& x, double s);
Tensor mul_scalar(const Tensor& x, double s);
Tensor expand(const Tensor& x, const Shape& shape);
Tensor sum_to(const Tensor& x, const Shape& shape);  // inverse of broadcasting: sums expanded dims
Tensor cast(const Tensor& x, DType dtype);           // returns x itself when the dtype matches

// Unary functions and their backward: gx = gy * f'(x), given x and y = f(x).
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor silu(const Tensor& x);
Tensor gelu_tanh(const Tensor& x);
Tensor gelu_erf(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor pow_scalar(const Tensor& x, double p);
Tensor clamp(const Tensor& x, double lo, double hi);
// op_bwd is the _bwd entry (Op::gelu_tanh_bwd, ...); p0/p1 are the forward's reals.
Tensor unary_bwd(Op op_bwd, const Tensor& x, const Tensor& y, const Tensor& gy, double p0 = 0,
                 double p1 = 0);

// ---- reductions (kernels/ops_reduce.cpp) --------------------------------------------------------
Tensor sum(const Tensor& x, int dim, bool keepdim = false);
Tensor sum_all(const Tensor& x);  // scalar
Tensor mean(const Tensor& x, int dim, bool keepdim = false);
Tensor mean_all(const Tensor& x);                                               // scalar
std::pair<Tensor, Tensor> max(const Tensor& x, int dim, bool keepdim = false);  // values, argmax
Tensor max_bwd(const Tensor& gy, const Tensor& argmax, const Shape& x_shape, int dim);
// Variance with `correction` (0: population, 1: unbiased); returns (var, mean).
std::pair<Tensor, Tensor> var_mean(const Tensor& x, int dim, int correction = 1,
                                   bool keepdim = false);
Tensor var_bwd(const Tensor& gy, const Tensor& x, const Tensor& mean, int dim, int correction);
Tensor softmax(const Tensor& x);  // last dim
Tensor softmax_bwd(const Tensor& y, const Tensor& gy);
Tensor log_softmax(const Tensor& x);
Tensor log_softmax_bwd(const Tensor& y, const Tensor& gy);

// ---- linear algebra (kernels/ops_linalg.cpp) ----------------------------------------------------
// a (..., M, K) (or (..., K, M) with trans_a), b (..., K, N) (or (..., N, K) with trans_b) with the
// same leading dims, or b of rank 2 shared by every batch. Returns (..., M, N).
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// x (..., K), w (N, K), b (N) or undefined -> (..., N). PyTorch's nn.Linear layout.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b);
// An MLP's first layer with its activation, as one GEMM with a fused epilogue on CUDA: p = x W^T
// + b and y = gelu_tanh(p); p is kept for the backward. x (..., K), w (N, K), b (N).
struct LinearGeluOut {
  Tensor y, pre;
};
LinearGeluOut linear_gelu(const Tensor& x, const Tensor& w, const Tensor& b);
// Through the MLP's second layer back to its hidden pre-activation, as one GEMM with a fused
// epilogue on CUDA: gpre = (g w) * gelu_tanh'(pre) and gbias = the column sums of gpre (the first
// layer's bias gradient). g (..., N), w (N, H) (the second layer's weight), pre (..., H).
struct LinearGeluGrads {
  Tensor gpre, gbias;
};
LinearGeluGrads linear_gelu_bwd(const Tensor& g, const Tensor& w, const Tensor& pre);

// ---- normalisation (kernels/ops_norm.cpp) -------------------------------------------------------
struct NormOut {
  Tensor y, mean, rstd;
};
struct NormGrads {
  Tensor gx, gw, gb;  // gw, gb defined only when the forward had an affine weight
};
// Over the last dim; w and b may be undefined (no affine).
NormOut layernorm(const Tensor& x, const Tensor& w, const Tensor& b, double eps);
NormGrads layernorm_bwd(const Tensor& gy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                        const Tensor& w);
// adaLN: x (N,T,D), shift and scale (N,D) -> x * (1 + scale) + shift, per sample.
Tensor modulate(const Tensor& x, const Tensor& shift, const Tensor& scale);
struct ModulateGrads {
  Tensor gx, gshift, gscale;
};
ModulateGrads modulate_bwd(const Tensor& gy, const Tensor& x, const Tensor& scale);
// The DiT block's adaLN-Zero path fused (kernels/cpu/adaln.cpp): layernorm without affine weights
// then the modulation, y = LN(x) (1 + scale) + shift; mean and rstd (N, T) as layernorm's.
// y is of x's dtype, or of y_dtype: bf16 beside an f32 x, for the bf16 GEMM that reads it (the
// f32 result rounded once, as a cast would; the backward then takes that GEMM's bf16 gy as is).
NormOut layernorm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, double eps,
                           std::optional<DType> y_dtype = std::nullopt);
// gres (optional, like x, f32 or f64): a gradient to add into gx in the same pass, with the bits
// of a separate add (the residual stream's gradient that autograd would otherwise add after).
ModulateGrads layernorm_modulate_bwd(const Tensor& gy, const Tensor& x, const Tensor& mean,
                                     const Tensor& rstd, const Tensor& scale,
                                     const Tensor& gres = Tensor());
// The gated residual add x + gate * h, gate (N, D) per sample, x and h (N, T, D); h of x's dtype
// or bf16 beside f32 (the bf16 output of the branch's last GEMM), read as it is.
Tensor gated_residual(const Tensor& x, const Tensor& gate, const Tensor& h);
struct GatedResidualGrads {
  Tensor gh, ggate;  // the gradient of x is the incoming gradient itself; gh has h's dtype
};
GatedResidualGrads gated_residual_bwd(const Tensor& gout, const Tensor& gate, const Tensor& h);
// x (N, C, ...): statistics over each group of C/groups channels and all spatial positions.
NormOut groupnorm(const Tensor& x, int groups, const Tensor& w, const Tensor& b, double eps);
NormGrads groupnorm_bwd(const Tensor& gy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                        int groups, const Tensor& w);

// ---- convolution, pooling, resampling (kernels/ops_spatial.cpp) ---------------------------------
struct Conv2dParams {
  int stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
};
// x (N,C,H,W), w (O,C,kh,kw), b (O) or undefined -> (N,O,Ho,Wo), Ho = (H + 2 pad_h - kh)/stride_h
// + 1.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p);
struct Conv2dGrads {
  Tensor gx, gw, gb;  // gb defined when with_bias
};
Conv2dGrads conv2d_bwd(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dParams& p,
                       bool with_bias);
Tensor upsample_nearest(const Tensor& x, int64_t out_h, int64_t out_w);
Tensor upsample_nearest_bwd(const Tensor& gy, int64_t in_h, int64_t in_w);
Tensor upsample_bilinear(const Tensor& x, int64_t out_h, int64_t out_w, bool align_corners);
Tensor upsample_bilinear_bwd(const Tensor& gy, int64_t in_h, int64_t in_w, bool align_corners);
struct Pool2dParams {
  int kh = 2, kw = 2, stride_h = 2, stride_w = 2, pad_h = 0, pad_w = 0;
};
Tensor avg_pool2d(const Tensor& x, const Pool2dParams& p);
Tensor avg_pool2d_bwd(const Tensor& gy, const Shape& x_shape, const Pool2dParams& p);
std::pair<Tensor, Tensor> max_pool2d(const Tensor& x, const Pool2dParams& p);  // y, argmax
Tensor max_pool2d_bwd(const Tensor& gy, const Tensor& argmax, const Shape& x_shape);

// ---- data movement (kernels/ops_layout.cpp) -----------------------------------------------------
Tensor permute(const Tensor& x, const std::vector<int>& perm);
Tensor transpose(const Tensor& x, int d0, int d1);  // a permute swapping two dims
Tensor concat(const std::vector<Tensor>& xs, int dim);
// Multi-dim slice: out[i] = x[starts + i], out shape `sizes`.
Tensor slice(const Tensor& x, const std::vector<int64_t>& starts, const Shape& sizes);
Tensor narrow(const Tensor& x, int dim, int64_t start, int64_t length);  // one dim
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int dim);
// Constant padding: `before`/`after` give the count per dim (rank entries each).
Tensor pad(const Tensor& x, const std::vector<int64_t>& before, const std::vector<int64_t>& after,
           double value = 0.0);
Tensor embedding(const Tensor& table, const Tensor& ids);
Tensor embedding_bwd(const Tensor& gy, const Tensor& ids, int64_t num_rows);

// ---- attention (kernels/ops_attention.cpp) ------------------------------------------------------
struct AttnOut {
  Tensor out, lse;  // (B,Tq,H,dv), logsumexp of the scaled scores (B,H,Tq)
};
struct AttnGrads {
  Tensor gq, gk, gv;
};
// softmax(q k^T * scale) v per (batch, head); key_mask (B,Tk) i32 or undefined. A query whose
// keys are all masked gets output 0 and lse -inf.
AttnOut attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                  double scale);
AttnGrads attention_bwd(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const Tensor& key_mask, double scale);
// Self-attention on the packed rows of a qkv projection, qkv (B,T,3,H,d) (q, k, v = its slices
// 0, 1, 2 of dim 2), read in place: the result of attention on the three slices, bit for bit,
// without copying them out. key_mask (B,T) i32 or undefined. The backward returns gqkv, the
// three gradients written into one tensor of qkv's shape.
AttnOut attention_qkv(const Tensor& qkv, const Tensor& key_mask, double scale);
Tensor attention_qkv_bwd(const Tensor& gout, const Tensor& qkv, const Tensor& out,
                         const Tensor& lse, const Tensor& key_mask, double scale);
// Cross-attention of q (B,Tq,H,d) on the packed rows of a kv projection, kv (B,Tk,2,H,d) (k, v =
// its slices 0, 1 of dim 2), read in place: attention(q, k, v) bit for bit. key_mask (B,Tk) i32
// or undefined. The backward writes gk and gv into one gkv of kv's shape.
struct AttnKvGrads {
  Tensor gq, gkv;
};
AttnOut attention_kv(const Tensor& q, const Tensor& kv, const Tensor& key_mask, double scale);
AttnKvGrads attention_kv_bwd(const Tensor& gout, const Tensor& q, const Tensor& kv,
                             const Tensor& out, const Tensor& lse, const Tensor& key_mask,
                             double scale);

// ---- losses (kernels/ops_loss.cpp), scalar outputs
// -------------------------------------------------
Tensor mse_loss(const Tensor& a, const Tensor& b);
Tensor mse_loss_bwd(const Tensor& gy, const Tensor& a, const Tensor& b);  // grad wrt a
Tensor l1_loss(const Tensor& a, const Tensor& b);
Tensor l1_loss_bwd(const Tensor& gy, const Tensor& a, const Tensor& b);  // grad wrt a
// 0.5 * sum(mu^2 + exp(logvar) - 1 - logvar) / normaliser.
Tensor kl_gauss(const Tensor& mu, const Tensor& logvar, double normaliser);
std::pair<Tensor, Tensor> kl_gauss_bwd(const Tensor& gy, const Tensor& mu, const Tensor& logvar,
                                       double normaliser);
struct CrossEntropyOut {
  Tensor loss, lse;
};
CrossEntropyOut cross_entropy(const Tensor& logits, const Tensor& target);
Tensor cross_entropy_bwd(const Tensor& gy, const Tensor& logits, const Tensor& target,
                         const Tensor& lse);
// LPIPS v0.1 at one tap, fused (kernels/cpu/lpips.cpp): f0, f1 (N,C,H,W) feature maps of the two
// images, w (C) the tap's lin weights -> d (N), the mean over positions of the w-weighted squared
// difference of the channel-normalised features; norm = sqrt(sum_c f^2 + sqrt_floor) + norm_eps.
// The backward gives the gradients of f0 and f1 (w is fixed).
Tensor lpips_tap(const Tensor& f0, const Tensor& f1, const Tensor& w, double norm_eps,
                 double sqrt_floor);
std::pair<Tensor, Tensor> lpips_tap_bwd(const Tensor& gd, const Tensor& f0, const Tensor& f1,
                                        const Tensor& w, double norm_eps, double sqrt_floor);

// ---- optimiser (kernels/ops_optim.cpp), in place ------------------------------------------------
struct AdamWParams {
  double lr = 1e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;  // 1-based, for bias correction
};
// Decoupled weight decay (Loshchilov & Hutter): p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p).
void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p);
void ema_update(Tensor& ema, const Tensor& param, double decay);

}  // namespace psvae::ops
