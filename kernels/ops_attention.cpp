// Typed wrappers of the attention family: shape/dtype validation and output allocation.
#include <fmt/format.h>

#include <limits>

#include "kernels/ops.h"

namespace psvae::ops {

namespace {
// q (B,Tq,H,d), k (B,Tk,H,d), v (B,Tk,H,dv), key_mask (B,Tk) i32 or undefined.
void check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
               const Tensor& key_mask) {
  check(q.rank() == 4 && k.rank() == 4 && v.rank() == 4,
        fmt::format("{}: q, k, v must be (B,T,H,d), got q {}, k {}, v {}", op, q.shape().str(),
                    k.shape().str(), v.shape().str()));
  check(is_floating(q.dtype()) && k.dtype() == q.dtype() && v.dtype() == q.dtype(),
        fmt::format("{}: q, k, v must share one float dtype, got {}, {}, {}", op,
                    dtype_name(q.dtype()), dtype_name(k.dtype()), dtype_name(v.dtype())));
  check(k.size(0) == q.size(0) && k.size(2) == q.size(2) && k.size(3) == q.size(3) &&
            v.size(0) == q.size(0) && v.size(1) == k.size(1) && v.size(2) == q.size(2),
        fmt::format("{}: shapes do not fit q (B,Tq,H,d), k (B,Tk,H,d), v (B,Tk,H,dv): q {}, k {}, "
                    "v {}",
                    op, q.shape().str(), k.shape().str(), v.shape().str()));
  if (key_mask.defined())
    check(key_mask.dtype() == DType::I32 && key_mask.shape() == Shape({k.size(0), k.size(1)}),
          fmt::format("{}: key_mask must be i32 (B,Tk) = ({}, {}), got {} {}", op, k.size(0),
                      k.size(1), dtype_name(key_mask.dtype()), key_mask.shape().str()));
}

// qkv (B,T,3,H,d), key_mask (B,T) i32 or undefined.
void check_packed(const char* op, const Tensor& qkv, const Tensor& key_mask) {
  check(qkv.rank() == 5 && qkv.size(2) == 3 && is_floating(qkv.dtype()),
        fmt::format("{}: qkv must be a float (B,T,3,H,d), got {} {}", op, dtype_name(qkv.dtype()),
                    qkv.shape().str()));
  if (key_mask.defined())
    check(key_mask.dtype() == DType::I32 && key_mask.shape() == Shape({qkv.size(0), qkv.size(1)}),
          fmt::format("{}: key_mask must be i32 (B,T) = ({}, {}), got {} {}", op, qkv.size(0),
                      qkv.size(1), dtype_name(key_mask.dtype()), key_mask.shape().str()));
}

// q (B,Tq,H,d), kv (B,Tk,2,H,d) of one float dtype, key_mask (B,Tk) i32 or undefined.
void check_kv_packed(const char* op, const Tensor& q, const Tensor& kv, const Tensor& key_mask) {
  check(q.rank() == 4 && kv.rank() == 5 && kv.size(2) == 2 && kv.size(0) == q.size(0) &&
            kv.size(3) == q.size(2) && kv.size(4) == q.size(3),
        fmt::format("{}: shapes do not fit q (B,Tq,H,d), kv (B,Tk,2,H,d): q {}, kv {}", op,
                    q.shape().str(), kv.shape().str()));
  check(is_floating(q.dtype()) && kv.dtype() == q.dtype(),
        fmt::format("{}: q and kv must share one float dtype, got {}, {}", op,
                    dtype_name(q.dtype()), dtype_name(kv.dtype())));
  if (key_mask.defined())
    check(key_mask.dtype() == DType::I32 && key_mask.shape() == Shape({kv.size(0), kv.size(1)}),
          fmt::format("{}: key_mask must be i32 (B,Tk) = ({}, {}), got {} {}", op, kv.size(0),
                      kv.size(1), dtype_name(key_mask.dtype()), key_mask.shape().str()));
}

// gout and out (B,Tq,H,dv), lse (B,H,Tq), all of dtype dt: the backward's extra inputs.
void check_bwd_extras(const char* op, const Tensor& gout, const Tensor& out, const Tensor& lse,
                      const Shape& o_shape, DType dt) {
  const Shape lse_shape{o_shape[0], o_shape[2], o_shape[1]};
  check(gout.shape() == o_shape && out.shape() == o_shape && lse.shape() == lse_shape &&
            gout.dtype() == dt && out.dtype() == dt && lse.dtype() == dt,
        fmt::format("{}: expected gout and out {} and lse {} in {}, got gout {} {}, out {} {}, "
                    "lse {} {}",
                    op, o_shape.str(), lse_shape.str(), dtype_name(dt), dtype_name(gout.dtype()),
                    gout.shape().str(), dtype_name(out.dtype()), out.shape().str(),
                    dtype_name(lse.dtype()), lse.shape().str()));
}
}  // namespace

AttnOut attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                  double scale) {
  check_qkv("attention", q, k, v, key_mask);
  const int64_t B = q.size(0), Tq = q.size(1), H = q.size(2);
  kernels::OpCall c;
  c.in = {q, k, v};
  if (key_mask.defined()) c.in.push_back(key_mask);
  c.out = {Tensor::empty({B, Tq, H, v.size(3)}, q.dtype(), q.device()),
           Tensor::empty({B, H, Tq}, q.dtype(), q.device())};
  c.reals[0] = scale;
  kernels::run(Op::attention, c);
  return {c.out[0], c.out[1]};
}

AttnGrads attention_bwd(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const Tensor& key_mask,
                        double scale) {
  check_qkv("attention_bwd", q, k, v, key_mask);
  const int64_t B = q.size(0), Tq = q.size(1), H = q.size(2);
  check_bwd_extras("attention_bwd", gout, out, lse, Shape{B, Tq, H, v.size(3)}, q.dtype());
  kernels::OpCall c;
  c.in = {gout, q, k, v, out, lse};
  if (key_mask.defined()) c.in.push_back(key_mask);
  c.out = {Tensor::empty(q.shape(), q.dtype(), q.device()),
           Tensor::empty(k.shape(), k.dtype(), k.device()),
           Tensor::empty(v.shape(), v.dtype(), v.device())};
  c.reals[0] = scale;
  kernels::run(Op::attention_bwd, c);
  return {c.out[0], c.out[1], c.out[2]};
}

AttnOut attention_qkv(const Tensor& qkv, const Tensor& key_mask, double scale) {
  check_packed("attention_qkv", qkv, key_mask);
  const int64_t B = qkv.size(0), T = qkv.size(1), H = qkv.size(3), d = qkv.size(4);
  kernels::OpCall c;
  c.in = {qkv};
  if (key_mask.defined()) c.in.push_back(key_mask);
  c.out = {Tensor::empty({B, T, H, d}, qkv.dtype(), qkv.device()),
           Tensor::empty({B, H, T}, qkv.dtype(), qkv.device())};
  c.reals[0] = scale;
  kernels::run(Op::attention_qkv, c);
  return {c.out[0], c.out[1]};
}

Tensor attention_qkv_bwd(const Tensor& gout, const Tensor& qkv, const Tensor& out,
                         const Tensor& lse, const Tensor& key_mask, double scale) {
  check_packed("attention_qkv_bwd", qkv, key_mask);
  check_bwd_extras("attention_qkv_bwd", gout, out, lse,
                   Shape{qkv.size(0), qkv.size(1), qkv.size(3), qkv.size(4)}, qkv.dtype());
  kernels::OpCall c;
  c.in = {gout, qkv, out, lse};
  if (key_mask.defined()) c.in.push_back(key_mask);
  c.out = {Tensor::empty(qkv.shape(), qkv.dtype(), qkv.device())};
  c.reals[0] = scale;
  kernels::run(Op::attention_qkv_bwd, c);
  return c.out[0];
}

AttnOut attention_kv(const Tensor& q, const Tensor& kv, const Tensor& key_mask, double scale) {
  check_kv_packed("attention_kv", q, kv, key_mask);
  kernels::OpCall c;
  c.in = {q, kv};
  if (key_mask.defined()) c.in.push_back(key_mask);
  c.out = {Tensor::empty(q.shape(), q.dtype(), q.device()),
           Tensor::empty({q.size(0), q.size(2), q.size(1)}, q.dtype(), q.device())};
  c.reals[0] = scale;
  kernels::run(Op::attention_kv, c);
  return {c.out[0], c.out[1]};
}

AttnKvGrads attention_kv_bwd(const Tensor& gout, const Tensor& q, const Tensor& kv,
                             const Tensor& out, const Tensor& lse, const Tensor& key_mask,
                             double scale) {
  check_kv_packed("attention_kv_bwd", q, kv, key_mask);
  check_bwd_extras("attention_kv_bwd", gout, out, lse, q.shape(), q.dtype());
  kernels::OpCall c;
  c.in = {gout, q, kv, out, lse};
  if (key_mask.defined()) c.in.push_back(key_mask);
  c.out = {Tensor::empty(q.shape(), q.dtype(), q.device()),
           Tensor::empty(kv.shape(), kv.dtype(), kv.device())};
  c.reals[0] = scale;
  kernels::run(Op::attention_kv_bwd, c);
  return {c.out[0], c.out[1]};
}

}  // namespace psvae::ops
