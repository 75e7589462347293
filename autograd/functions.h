// Differentiable functions: one per op of the table (kernels/op_list.h), each calling the op's
// forward kernel and recording a Node whose backward calls the op's backward kernel (or, for
// cheap ops, other table ops). Grouped by the same families as the kernels; each family's
// definitions live in autograd/fn_<family>.cpp.
#pragma once
#include <initializer_list>
#include <vector>

#include "autograd/node.h"
#include "kernels/ops.h"

namespace psvae::ag {

// ---- elementwise (fn_elementwise.cpp) -----------------------------------------------------------
Var add(const Var& a, const Var& b);  // broadcasting; gradients summed back to each input's shape
Var sub(const Var& a, const Var& b);
Var mul(const Var& a, const Var& b);
Var div(const Var& a, const Var& b);
Var where(const Tensor& cond, const Var& a, const Var& b);
Var add_scalar(const Var& x, double s);
Var mul_scalar(const Var& x, double s);
Var neg(const Var& x);
Var expand(const Var& x, const Shape& shape);
Var exp(const Var& x);
Var log(const Var& x);
Var sqrt(const Var& x);
Var rsqrt(const Var& x);
Var tanh(const Var& x);
Var sigmoid(const Var& x);
Var relu(const Var& x);
Var silu(const Var& x);
Var gelu_tanh(const Var& x);
Var gelu_erf(const Var& x);
Var abs(const Var& x);
Var pow_scalar(const Var& x, double p);
Var square(const Var& x);  // pow_scalar(x, 2)
Var clamp(const Var& x, double lo, double hi);
// dtype conversion; the gradient is cast back to the input's dtype (mixed precision).
Var cast(const Var& x, DType dtype);

inline Var operator+(const Var& a, const Var& b) { return add(a, b); }
inline Var operator-(const Var& a, const Var& b) { return sub(a, b); }
inline Var operator*(const Var& a, const Var& b) { return mul(a, b); }
inline Var operator/(const Var& a, const Var& b) { return div(a, b); }
inline Var operator-(const Var& a) { return neg(a); }
inline Var operator+(const Var& a, double s) { return add_scalar(a, s); }
inline Var operator*(const Var& a, double s) { return mul_scalar(a, s); }
inline Var operator*(double s, const Var& a) { return mul_scalar(a, s); }

// ---- reductions (fn_reduce.cpp)
// -------------------------------------------------------------------
Var sum(const Var& x, int dim, bool keepdim = false);
Var sum_all(const Var& x);
Var mean(const Var& x, int dim, bool keepdim = false);
Var mean_all(const Var& x);
Var max(const Var& x, int dim, bool keepdim = false);  // values; the argmax routes the gradient
Var var(const Var& x, int dim, int correction = 1, bool keepdim = false);
Var softmax(const Var& x);  // last dim
Var log_softmax(const Var& x);

// ---- linear algebra (fn_linalg.cpp) -------------------------------------------------------------
Var matmul(const Var& a, const Var& b, bool trans_a = false, bool trans_b = false);
Var linear(const Var& x, const Var& w, const Var& b);  // b may be an undefined Var
// The two-layer MLP with the tanh GELU between, fc2(gelu_tanh(fc1(x))), as one function whose GEMMs
// carry the elementwise work (ops::linear_gelu forward, ops::linear_gelu_bwd backward: on CUDA
// the bias+GELU and the dGELU+bias-gradient GEMM epilogues), so the hidden rows are never read
// and written again for the activation. w1 (H, K), b1 (H), w2 (N, H), b2 (N) or undefined; the
// same values as linear(gelu_tanh(linear(x, w1, b1)), w2, b2) up to rounding.
Var mlp_gelu(const Var& x, const Var& w1, const Var& b1, const Var& w2, const Var& b2);

// ---- normalisation (fn_norm.cpp) ----------------------------------------------------------------
Var layer_norm(const Var& x, const Var& w, const Var& b, double eps);  // w, b may be undefined
Var modulate(const Var& x, const Var& shift, const Var& scale);        // adaLN, see ops::modulate
// The DiT's adaLN-Zero path fused: LN(x) (1 + scale) + shift without affine weights, and the
// gated residual x + gate h; x, h (N, T, D), shift, scale, gate (N, D).
Var layernorm_modulate(const Var& x, const Var& shift, const Var& scale, double eps);
Var gated_residual(const Var& x, const Var& gate, const Var& h);
Var group_norm(const Var& x, int groups, const Var& w, const Var& b, double eps);

// ---- convolution, pooling, resampling (fn_spatial.cpp) -----------------------------------------
Var conv2d(const Var& x, const Var& w, const Var& b, const ops::Conv2dParams& p);
Var upsample_nearest(const Var& x, int64_t out_h, int64_t out_w);
Var upsample_bilinear(const Var& x, int64_t out_h, int64_t out_w, bool align_corners);
Var avg_pool2d(const Var& x, const ops::Pool2dParams& p);
Var max_pool2d(const Var& x, const ops::Pool2dParams& p);

// ---- data movement (fn_layout.cpp) --------------------------------------------------------------
Var reshape(const Var& x, const Shape& shape);  // a free view
// Shape cannot hold -1 (its constructor rejects negative dims), so the -1 form takes a list.
Var reshape(const Var& x, std::initializer_list<int64_t> dims);  // reshape(x, {B, -1})
Var permute(const Var& x, const std::vector<int>& perm);
Var transpose(const Var& x, int d0, int d1);
Var concat(const std::vector<Var>& xs, int dim);
std::vector<Var> split(const Var& x, const std::vector<int64_t>& sizes, int dim);
Var slice(const Var& x, const std::vector<int64_t>& starts, const Shape& sizes);
Var narrow(const Var& x, int dim, int64_t start, int64_t length);
Var pad(const Var& x, const std::vector<int64_t>& before, const std::vector<int64_t>& after,
        double value = 0.0);
Var embedding(const Var& table, const Tensor& ids);

// ---- attention (fn_attention.cpp) ---------------------------------------------------------------
// q (B,Tq,H,d), k (B,Tk,H,d), v (B,Tk,H,dv); key_mask (B,Tk) i32 or undefined.
Var attention(const Var& q, const Var& k, const Var& v, const Tensor& key_mask, double scale);
// Self-attention on packed projection rows qkv (B,T,3,H,d): attention of its slices 0, 1, 2 of
// dim 2, read in place, with one gradient gqkv (no slice copies, no concatenation).
Var attention_qkv(const Var& qkv, const Tensor& key_mask, double scale);
// Cross-attention of q (B,Tq,H,d) on packed projection rows kv (B,Tk,2,H,d): attention of q on
// its slices 0, 1 of dim 2, read in place, with one gradient gkv.
Var attention_kv(const Var& q, const Var& kv, const Tensor& key_mask, double scale);

// ---- losses (fn_loss.cpp) -----------------------------------------------------------------------
Var mse_loss(const Var& a, const Var& b);
Var l1_loss(const Var& a, const Var& b);
Var kl_gauss(const Var& mu, const Var& logvar, double normaliser);
Var cross_entropy(const Var& logits, const Tensor& target);
// LPIPS v0.1 distance at one tap, fused (ops::lpips_tap): f0, f1 (N,C,H,W) -> (N). w (C), the
// tap's lin weights, is a constant (LPIPS ships it), so it is a Tensor and gets no gradient.
Var lpips_tap(const Var& f0, const Var& f1, const Tensor& w, double norm_eps, double sqrt_floor);

}  // namespace psvae::ag
