// THE op table: every op of the engine, declared once. Each entry is
//   X(name, family, "inputs -> outputs; params")
// and gets an OpId, a CPU entry and (issue 6) a CUDA entry in kernels/op_table.cpp. Forward and
// backward are separate entries side by side. Conventions for every kernel:
//   - all tensors contiguous, on one device; outputs are allocated by the caller with their final
//     shape and dtype and are overwritten (=), except where "in place" is stated;
//   - float kernels run in f32 and f64 on the CPU (f64 is the gradcheck precision), f32 and bf16
//     on CUDA, always accumulating in at least f32;
//   - ints[] / reals[] are the op's parameters, in the order given here.
// The typed wrappers in kernels/ops.h compute output shapes and fill OpCall for you.
#pragma once

// Unary elementwise functions y = f(x), each with its backward NAME_bwd: (x, y, gy) -> gx.
// pow_scalar and clamp read reals[0] (exponent / low) and reals[1] (high).
#define PSVAE_UNARY_OPS(X)                                                              \
  X(exp, elementwise, "x -> y = e^x")                                                   \
  X(exp_bwd, elementwise, "(x, y, gy) -> gx = gy * f'(x); params as exp")               \
  X(log, elementwise, "x -> y = ln x")                                                  \
  X(log_bwd, elementwise, "(x, y, gy) -> gx = gy * f'(x); params as log")               \
  X(sqrt, elementwise, "x -> y = sqrt x")                                               \
  X(sqrt_bwd, elementwise, "(x, y, gy) -> gx = gy * f'(x); params as sqrt")             \
  X(rsqrt, elementwise, "x -> y = 1/sqrt x")                                            \
  X(rsqrt_bwd, elementwise, "(x, y, gy) -> gx = gy * f'(x); params as rsqrt")           \
  X(tanh, elementwise, "x -> y = tanh x")                                               \
  X(tanh_bwd, elementwise, "(x, y, gy) -> gx = gy * f'(x); params as tanh")             \
  X(sigmoid, elementwise, "x -> y = 1/(1+e^-x)")                                        \
  X(sigmoid_bwd, elementwise, "(x, y, gy) -> gx = gy * f'(x); params as sigmoid")       \
  X(relu, elementwise, "x -> y = max(x, 0)")                                            \
  X(relu_bwd, elementwise, "(x, y, gy) -> gx = gy * f'(x); params as relu")             \
  X(silu, elementwise, "x -> y = x sigmoid(x)")                                         \
  X(silu_bwd, elementwise, "(x, y, gy) -> gx = gy * f'(x); params as silu")             \
  X(gelu_tanh, elementwise, "x -> GELU, tanh approximation")                            \
  X(gelu_tanh_bwd, elementwise, "(x, y, gy) -> gx = gy * f'(x); params as gelu_tanh")   \
  X(gelu_erf, elementwise, "x -> GELU, exact erf form")                                 \
  X(gelu_erf_bwd, elementwise, "(x, y, gy) -> gx = gy * f'(x); params as gelu_erf")     \
  X(abs, elementwise, "x -> |x|")                                                       \
  X(abs_bwd, elementwise, "(x, y, gy) -> gx = gy * f'(x); params as abs")               \
  X(pow_scalar, elementwise, "x -> x^p; reals: p")                                      \
  X(pow_scalar_bwd, elementwise, "(x, y, gy) -> gx = gy * f'(x); params as pow_scalar") \
  X(clamp, elementwise, "x -> min(max(x, lo), hi); reals: lo, hi")                      \
  X(clamp_bwd, elementwise, "(x, y, gy) -> gx = gy * f'(x); params as clamp")

#define PSVAE_OTHER_OPS(X)                                                                       \
  /* ---- elementwise, numpy broadcasting of inputs to the output shape ---- */                  \
  X(add, elementwise, "(a, b) -> a + b")                                                         \
  X(sub, elementwise, "(a, b) -> a - b")                                                         \
  X(mul, elementwise, "(a, b) -> a * b")                                                         \
  X(div, elementwise, "(a, b) -> a / b")                                                         \
  X(where, elementwise, "(cond, a, b) -> cond != 0 ? a : b; cond any dtype")                     \
  X(add_scalar, elementwise, "x -> x + s; reals: s")                                             \
  X(mul_scalar, elementwise, "x -> x * s; reals: s")                                             \
  X(expand, elementwise, "x -> x broadcast to the output shape")                                 \
  X(sum_to, elementwise, "x -> x summed down to the output shape (adjoint of expand)")           \
  X(cast, elementwise, "x -> x converted to the output dtype")                                   \
  /* ---- reductions over one dim (the output shape may keep it as 1 or drop it) ---- */         \
  X(sum_dim, reduce, "x -> sum over dim; ints: dim")                                             \
  X(max_dim, reduce, "x -> (max, argmax i64) over dim; ints: dim; first index wins ties")        \
  X(max_dim_bwd, reduce, "(gy, argmax) -> gx, gy routed to argmax; ints: dim")                   \
  X(var_dim, reduce, "x -> (var, mean) over dim; ints: dim, correction (0 or 1)")                \
  X(var_dim_bwd, reduce, "(gy, x, mean) -> gx; ints: dim, correction")                           \
  X(softmax, reduce, "x -> softmax over the last dim")                                           \
  X(softmax_bwd, reduce, "(y, gy) -> gx")                                                        \
  X(log_softmax, reduce, "x -> log-softmax over the last dim")                                   \
  X(log_softmax_bwd, reduce, "(y, gy) -> gx")                                                    \
  /* ---- linear algebra ---- */                                                                 \
  X(matmul, linalg,                                                                              \
    "(A (...,M,K), B (...,K,N) or (K,N)) -> C = op(A) op(B); ints: trans_a, trans_b; "           \
    "with a transpose flag the last two dims of that input are swapped")                         \
  X(linear, linalg, "(x (...,K), W (N,K), [b (N)]) -> x W^T + b")                                \
  X(linear_gelu, linalg,                                                                         \
    "(x (...,K), W (N,K), b (N)) -> (gelu_tanh(p), p = x W^T + b): an MLP's first layer")        \
  X(linear_gelu_bwd, linalg,                                                                     \
    "(g (...,N), W (N,H), p (...,H)) -> (gp = g W * gelu_tanh'(p), column sums of gp (H)): "     \
    "the gradient of the MLP's hidden pre-activation and first bias")                            \
  /* ---- normalisation ---- */                                                                  \
  X(layernorm, norm, "(x (...,D), [w (D), b (D)]) -> (y, mean, rstd (rows)); reals: eps")        \
  X(layernorm_bwd, norm, "(gy, x, mean, rstd, [w]) -> (gx, [gw, gb])")                           \
  X(modulate, norm, "(x (N,T,D), shift (N,D), scale (N,D)) -> x*(1+scale)+shift (adaLN)")        \
  X(modulate_bwd, norm, "(gy, x, scale) -> (gx, gshift, gscale)")                                \
  X(layernorm_modulate, norm,                                                                    \
    "(x (N,T,D), shift (N,D), scale (N,D)) -> (y = LN(x)(1+scale)+shift, mean, rstd (N,T)); "    \
    "reals: eps (the DiT's adaLN: layernorm without affine weights, fused)")                     \
  X(layernorm_modulate_bwd, norm,                                                                \
    "(gy, x, mean, rstd, scale, [gres]) -> (gx, gshift, gscale); gx += gres when given")         \
  X(gated_residual, norm, "(x (N,T,D), gate (N,D), h (N,T,D)) -> x + gate*h (adaLN-Zero)")       \
  X(gated_residual_bwd, norm, "(gout, gate, h) -> (gh, ggate); the gradient of x is gout")       \
  X(groupnorm, norm,                                                                             \
    "(x (N,C,...), [w (C), b (C)]) -> (y, mean (N,G), rstd (N,G)); ints: groups; reals: eps")    \
  X(groupnorm_bwd, norm, "(gy, x, mean, rstd, [w]) -> (gx, [gw, gb]); ints: groups")             \
  /* ---- convolution, pooling, resampling (NCHW) ---- */                                        \
  X(conv2d, spatial, "(x, w (O,C,kh,kw), [b (O)]) -> y; ints: stride_h, stride_w, pad_h, pad_w") \
  X(conv2d_bwd, spatial, "(gy, x, w) -> (gx, gw, [gb]); ints as conv2d")                         \
  X(upsample_nearest, spatial, "x -> y at the output H, W (PyTorch 'nearest')")                  \
  X(upsample_nearest_bwd, spatial, "gy -> gx at the output H, W")                                \
  X(upsample_bilinear, spatial, "x -> y at the output H, W; ints: align_corners")                \
  X(upsample_bilinear_bwd, spatial, "gy -> gx at the output H, W; ints: align_corners")          \
  X(avg_pool2d, spatial, "x -> y; ints: kh, kw, sh, sw, ph, pw (padding counted, as PyTorch)")   \
  X(avg_pool2d_bwd, spatial, "gy -> gx; ints as avg_pool2d")                                     \
  X(max_pool2d, spatial, "x -> (y, argmax i64 into the H*W plane); ints as avg_pool2d")          \
  X(max_pool2d_bwd, spatial, "(gy, argmax) -> gx")                                               \
  /* ---- data movement ---- */                                                                  \
  X(permute, layout, "x -> x permuted; ints: perm[0..rank)")                                     \
  X(concat, layout, "(x0, x1, ...) -> concatenation along dim; ints: dim")                       \
  X(slice, layout, "x -> x[start_d : start_d + out.size(d)] for every d; ints: start per dim")   \
  X(pad, layout,                                                                                 \
    "x -> x placed at offset before_d in an output filled with value; ints: before per dim; "    \
    "reals: value")                                                                              \
  X(embedding, layout, "(table (V,D), ids i64 (...)) -> rows (..., D)")                          \
  X(embedding_bwd, layout, "(gy (...,D), ids) -> gtable (V,D), rows summed in id order")         \
  /* ---- attention (reference: materialises one row of scores at a time) ---- */                \
  X(attention, attention,                                                                        \
    "(q (B,Tq,H,d), k (B,Tk,H,d), v (B,Tk,H,dv), [key_mask i32 (B,Tk), 0 = masked]) -> "         \
    "(o (B,Tq,H,dv), lse f32/f64 (B,H,Tq)); reals: scale")                                       \
  X(attention_bwd, attention, "(go, q, k, v, o, lse, [key_mask]) -> (gq, gk, gv); reals: scale") \
  X(attention_qkv, attention,                                                                    \
    "(qkv (B,T,3,H,d), [key_mask i32 (B,T)]) -> (o (B,T,H,d), lse (B,H,T)): attention of the "   \
    "q, k, v slices, read in place; reals: scale")                                               \
  X(attention_qkv_bwd, attention,                                                                \
    "(go, qkv, o, lse, [key_mask]) -> gqkv (B,T,3,H,d); reals: scale")                           \
  X(attention_kv, attention,                                                                     \
    "(q (B,Tq,H,d), kv (B,Tk,2,H,d), [key_mask i32 (B,Tk)]) -> (o (B,Tq,H,d), lse (B,H,Tq)): "   \
    "attention of q on the k, v slices, read in place; reals: scale")                            \
  X(attention_kv_bwd, attention,                                                                 \
    "(go, q, kv, o, lse, [key_mask]) -> (gq, gkv (B,Tk,2,H,d)); reals: scale")                   \
  /* ---- losses: scalar (rank-0) outputs ---- */                                                \
  X(mse_loss, loss, "(a, b) -> mean((a-b)^2)")                                                   \
  X(mse_loss_bwd, loss, "(gy, a, b) -> ga (gb = -ga)")                                           \
  X(l1_loss, loss, "(a, b) -> mean|a-b|")                                                        \
  X(l1_loss_bwd, loss, "(gy, a, b) -> ga (gb = -ga)")                                            \
  X(kl_gauss, loss,                                                                              \
    "(mu, logvar) -> 0.5 * sum(mu^2 + e^logvar - 1 - logvar) / normaliser; reals: normaliser")   \
  X(kl_gauss_bwd, loss, "(gy, mu, logvar) -> (gmu, glogvar); reals: normaliser")                 \
  X(cross_entropy, loss, "(logits (N,C), target i64 (N)) -> (mean NLL, lse (N))")                \
  X(cross_entropy_bwd, loss, "(gy, logits, target, lse) -> glogits")                             \
  X(lpips_tap, loss,                                                                             \
    "(f0 (N,C,H,W), f1, w (C)) -> d (N): LPIPS v0.1 at one tap, the mean over H,W of "           \
    "sum_c w_c (f0_c/n0 - f1_c/n1)^2, n = sqrt(sum_c f_c^2 + reals[1]) + reals[0]; "             \
    "reals: norm_eps, sqrt_floor")                                                               \
  X(lpips_tap_bwd, loss, "(gd (N), f0, f1, w) -> (g0, g1); reals as lpips_tap; w gets none")     \
  /* ---- optimiser ---- */                                                                      \
  X(adamw_step, optim,                                                                           \
    "(grad) -> in place (param, m, v); reals: lr, beta1, beta2, eps, weight_decay; ints: step")  \
  X(ema_update, optim, "(param) -> in place (ema): ema = decay*ema + (1-decay)*param; reals: decay")

#define PSVAE_ALL_OPS(X) PSVAE_UNARY_OPS(X) PSVAE_OTHER_OPS(X)
