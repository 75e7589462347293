// CUDA kernels: fused attention forward and backward (FlashAttention-2 style), the CUDA column of
// ops attention and attention_bwd. Semantics as kernels/cpu/attention.cpp:
//   (q (B,Tq,H,d), k (B,Tk,H,d), v (B,Tk,H,dv), [key_mask i32 (B,Tk), 0 = masked]) -> (o, lse)
//   (go, q, k, v, o, lse, [key_mask]) -> (gq, gk, gv);  reals[0] = scale
// with lse in the data's dtype, o = 0 and lse = -inf for a row whose keys are all masked (and for
// Tk = 0), and no gradient through such a row. Self and cross attention (Tq != Tk), dv != d, any
// sequence length, head dims up to 128.
//
// The same kernels are the CUDA column of attention_qkv and attention_qkv_bwd: self-attention on
// q, k, v read in place from the packed rows of a qkv projection (B,T,3,H,d), row stride 3 H d,
// and gq, gk, gv written in place into one gqkv of that shape. That saves the three slices of the
// forward and the concatenation of the backward: 24 bytes per token and channel in bf16 (read and
// write of q, k, v and of their gradients). attention_kv and attention_kv_bwd do the same for
// cross-attention: q dense, k and v read in place from a kv projection's rows (B,Tk,2,H,d).
//
// This file: input checks, the choice between the two implementations, the temporary D of the
// backward, and registration. The kernels are in attention_fwd.cu and attention_bwd.cu.
//
// Paths (environment variable PSVAE_ATTN, read at every call):
//   auto (default)  MMA when it applies (bf16, d and dv multiples of 8 in [8, 128], 16-byte
//                   aligned tensors), else SIMT;
//   simt            the SIMT kernels for every call (f32, bf16, f64);
//   mma             the tensor-core kernels, and an error for a call they cannot take.
// Any other value throws std::invalid_argument naming the op.
//
// The MMA forward's kernel (environment variable PSVAE_ATTN_FWD, read at every call):
//   auto (default), mma  mma.sync, FlashAttention-2's structure (attention_fwd.cu), any sm_80+;
//   wgmma                 Hopper's warpgroup MMA (attention_fwd_wgmma_sm90a.cu), FlashAttention-3's
//                         products; an error on a device without sm_90a;
//   wgmma_tma             the same products with FlashAttention-3's warp specialisation (a TMA
//                         copy warpgroup) and intra-warpgroup pipelining
//                         (attention_fwd_wgmma_tma_sm90a.cu); an error without sm_90a or without
//                         the driver's tensor-map encoder;
//   wgmma_pingpong        wgmma_tma with FlashAttention-3's ping-pong: the two consumer
//                         warpgroups take turns at the tensor cores (named barriers).
//                         No wgmma kernel is the default yet: no GPU has measured them
//                         (docs/kernels.md).
//
// The MMA backward's form (environment variable PSVAE_ATTN_BWD, read at every call; the SIMT
// backward has one form, split):
//   auto (default), fused  dK, dV and dQ in one kernel per key tile, dQ summed across key tiles
//                          in a fixed order through per-tile counters (5 GEMMs, FlashAttention-2's
//                          count; scratch: an f32 copy of gq and a counter per query tile);
//   split                  dK/dV and dQ in two kernels, S and dP rebuilt by the second (7 GEMMs);
//   wgmma                  the fused form on Hopper's warpgroup MMA (attention_bwd_wgmma_sm90a.cu);
//                          an error on a device without sm_90a. Not yet the default: no GPU has
//                          measured it (docs/kernels.md).
// All are deterministic; they round differently (their sums run in different orders).
#include <algorithm>
#include <array>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/gemm.h"
#include "kernels/env_choice.h"
#include "kernels/op_table.h"

namespace psvae::kernels::cuda {

namespace {

using attn::Dims;
using detail::aligned16;
using detail::launch_on;

[[noreturn]] void fail(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

void check_head_dims(const char* op, const Dims& n) {
  if (n.d > attn::kMaxHeadDim || n.dv > attn::kMaxHeadDim)
    detail::unsupported(op, "head dim d = " + std::to_string(n.d) +
                                ", dv = " + std::to_string(n.dv) + " (at most " +
                                std::to_string(attn::kMaxHeadDim) + ")");
}

// q (B,Tq,H,d), k (B,Tk,H,d), v (B,Tk,H,dv) of one float dtype, mask i32 (B,Tk) or null: the
// checks of ops::attention (kernels/ops_attention.cpp), repeated here for direct kernels::run
// callers. Returns the dims.
Dims check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
               const Tensor* mask) {
  if (q.rank() != 4 || k.rank() != 4 || v.rank() != 4)
    fail(op, "q, k, v must be (B,T,H,d), got q " + q.shape().str() + ", k " + k.shape().str() +
                 ", v " + v.shape().str());
  if (!is_floating(q.dtype()) || k.dtype() != q.dtype() || v.dtype() != q.dtype())
    fail(op, std::string("q, k, v must share one float dtype, got ") + dtype_name(q.dtype()) +
                 ", " + dtype_name(k.dtype()) + ", " + dtype_name(v.dtype()));
  if (k.size(0) != q.size(0) || k.size(2) != q.size(2) || k.size(3) != q.size(3) ||
      v.size(0) != q.size(0) || v.size(1) != k.size(1) || v.size(2) != q.size(2))
    fail(op, "shapes do not fit q (B,Tq,H,d), k (B,Tk,H,d), v (B,Tk,H,dv): q " + q.shape().str() +
                 ", k " + k.shape().str() + ", v " + v.shape().str());
  if (mask && (mask->dtype() != DType::I32 || mask->shape() != Shape({k.size(0), k.size(1)})))
    fail(op, "key_mask must be i32 (B,Tk) = (" + std::to_string(k.size(0)) + ", " +
                 std::to_string(k.size(1)) + "), got " + dtype_name(mask->dtype()) + " " +
                 mask->shape().str());
  const int64_t H = q.size(2), d = q.size(3), dv = v.size(3);
  const Dims n{q.size(0), q.size(1), k.size(1), H, d, dv, H * d, H * d, H * dv};
  check_head_dims(op, n);
  return n;
}

// qkv (B,T,3,H,d) of a float dtype, mask i32 (B,T) or null: the checks of ops::attention_qkv.
// Returns the dims of q, k and v read in place: rows 3 H d elements apart.
Dims check_packed(const char* op, const Tensor& qkv, const Tensor* mask) {
  if (qkv.rank() != 5 || qkv.size(2) != 3 || !is_floating(qkv.dtype()))
    fail(op, std::string("qkv must be a float (B,T,3,H,d), got ") + dtype_name(qkv.dtype()) + " " +
                 qkv.shape().str());
  const int64_t B = qkv.size(0), T = qkv.size(1), H = qkv.size(3), d = qkv.size(4);
  if (mask && (mask->dtype() != DType::I32 || mask->shape() != Shape({B, T})))
    fail(op, "key_mask must be i32 (B,T) = (" + std::to_string(B) + ", " + std::to_string(T) +
                 "), got " + dtype_name(mask->dtype()) + " " + mask->shape().str());
  const Dims n{B, T, T, H, d, d, 3 * H * d, 3 * H * d, 3 * H * d};
  check_head_dims(op, n);
  return n;
}

// q (B,Tq,H,d) of a float dtype, kv (B,Tk,2,H,d) of the same, mask i32 (B,Tk) or null: the checks
// of ops::attention_kv. Returns the dims of q dense and k, v read in place: rows 2 H d apart.
Dims check_kv_packed(const char* op, const Tensor& q, const Tensor& kv, const Tensor* mask) {
  if (q.rank() != 4 || kv.rank() != 5 || kv.size(2) != 2 || kv.size(0) != q.size(0) ||
      kv.size(3) != q.size(2) || kv.size(4) != q.size(3))
    fail(op, "shapes do not fit q (B,Tq,H,d), kv (B,Tk,2,H,d): q " + q.shape().str() + ", kv " +
                 kv.shape().str());
  if (!is_floating(q.dtype()) || kv.dtype() != q.dtype())
    fail(op, std::string("q and kv must share one float dtype, got ") + dtype_name(q.dtype()) +
                 ", " + dtype_name(kv.dtype()));
  const int64_t B = q.size(0), Tk = kv.size(1), H = q.size(2), d = q.size(3);
  if (mask && (mask->dtype() != DType::I32 || mask->shape() != Shape({B, Tk})))
    fail(op, "key_mask must be i32 (B,Tk) = (" + std::to_string(B) + ", " + std::to_string(Tk) +
                 "), got " + dtype_name(mask->dtype()) + " " + mask->shape().str());
  const Dims n{B, q.size(1), Tk, H, d, d, H * d, 2 * H * d, 2 * H * d};
  check_head_dims(op, n);
  return n;
}

void check_tensor(const char* op, const char* name, const Tensor& t, const Shape& shape, DType dt) {
  if (t.shape() != shape || t.dtype() != dt)
    fail(op, std::string(name) + " must be " + dtype_name(dt) + " " + shape.str() + ", got " +
                 dtype_name(t.dtype()) + " " + t.shape().str());
}

enum class Path { kSimt, kMma };

constexpr const char* kNeedsSm90a = " needs a device that runs this binary's sm_90a code (Hopper)";

// The path for this call: PSVAE_ATTN (see the top of the file) and whether the MMA kernels can
// take it. `data` are where all the call's float operands start (inputs and outputs); their row
// strides are multiples of d or dv (and of 8 elements when d and dv are).
Path choose_path(const char* op, DType dt, const Dims& n, std::initializer_list<const void*> data) {
  enum { kAuto, kSimt, kMma };
  const int mode = env_choice("PSVAE_ATTN", {"auto", "simt", "mma"}, std::string(op) + ": ");
  if (mode == kSimt) return Path::kSimt;
  bool aligned = true;
  for (const void* p : data) aligned = aligned && aligned16(p);
  const bool mma_ok = dt == DType::BF16 && n.d % 8 == 0 && n.dv % 8 == 0 && n.d >= 8 && n.dv >= 8 &&
                      aligned;  // d, dv <= 128 checked in check_qkv
  if (mode == kMma && !mma_ok)
    fail(op, std::string("PSVAE_ATTN=mma, but the tensor-core path needs bf16, d and dv "
                         "multiples of 8 in [8, 128] and 16-byte aligned tensors; got ") +
                 dtype_name(dt) + ", d = " + std::to_string(n.d) +
                 ", dv = " + std::to_string(n.dv) + (aligned ? "" : ", unaligned data"));
  return mma_ok ? Path::kMma : Path::kSimt;
}

enum class FwdKernel { kMma, kWgmma, kWgmmaTma, kWgmmaPingPong };

// The MMA forward's kernel for this call: PSVAE_ATTN_FWD (see the top of the file). Read (and a
// bad value refused) on every call, whichever path the call takes.
FwdKernel choose_fwd_kernel(const char* op) {
  // auto is mma: the wgmma forwards are not chosen before they are measured on a GPU.
  const FwdKernel by_value[] = {FwdKernel::kMma, FwdKernel::kMma, FwdKernel::kWgmma,
                                FwdKernel::kWgmmaTma, FwdKernel::kWgmmaPingPong};
  return by_value[env_choice("PSVAE_ATTN_FWD",
                             {"auto", "mma", "wgmma", "wgmma_tma", "wgmma_pingpong"},
                             std::string(op) + ": ")];
}

// The MMA backward's form for this call: PSVAE_ATTN_BWD (see the top of the file).
attn::BwdVariant choose_bwd_variant(const char* op) {
  const attn::BwdVariant forms[] = {attn::BwdVariant::kFused, attn::BwdVariant::kFused,
                                    attn::BwdVariant::kSplit, attn::BwdVariant::kWgmma};
  return forms[env_choice("PSVAE_ATTN_BWD", {"auto", "fused", "split", "wgmma"},
                          std::string(op) + ": ")];
}

// Where q, k, v and gq, gk, gv start (gq.. null for a forward), read with the strides of Dims.
struct Operands {
  const void *q, *k, *v;
  void *gq, *gk, *gv;
};

// The forward of a call whose q, k, v are checked: o and lse checked, then path and kernel choice
// (PSVAE_ATTN, PSVAE_ATTN_FWD) and the launch.
void run_fwd(const char* op, const OpCall& c, const Dims& n, DType dt, const Operands& p,
             const Tensor* mask, Device device) {
  check_tensor(op, "o", c.out[0], Shape({n.B, n.Tq, n.H, n.dv}), dt);
  check_tensor(op, "lse", c.out[1], Shape({n.B, n.H, n.Tq}), dt);
  attn::FwdArgs a{};
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.mask = mask ? mask->data<int32_t>() : nullptr;
  a.o = c.out[0].raw_data();
  a.lse = c.out[1].raw_data();
  a.n = n;
  a.scale = c.reals[0];
  const Path path = choose_path(op, dt, n, {a.q, a.k, a.v, a.o, a.lse});
  const FwdKernel kernel = choose_fwd_kernel(op);
  if (n.B * n.H * n.Tq == 0) return;  // o and lse are empty
  launch_on(device, [&](cudaStream_t s, int dev) {
    if (path == Path::kSimt) {
      attn::launch_fwd_simt(a, dt, s);
    } else if (kernel == FwdKernel::kWgmma) {
      if (!detail::gemm_wgmma_available(dev))
        fail(op, std::string("PSVAE_ATTN_FWD=wgmma") + kNeedsSm90a);
      attn::launch_fwd_wgmma(a, s);
    } else if (kernel == FwdKernel::kWgmmaTma || kernel == FwdKernel::kWgmmaPingPong) {
      const bool pingpong = kernel == FwdKernel::kWgmmaPingPong;
      if (!detail::gemm_wgmma_tma_available(dev))
        fail(op, std::string("PSVAE_ATTN_FWD=") + (pingpong ? "wgmma_pingpong" : "wgmma_tma") +
                     kNeedsSm90a + " and a driver with cuTensorMapEncodeTiled");
      attn::launch_fwd_wgmma_tma(a, pingpong, s);
    } else {
      attn::launch_fwd_mma(a, s);
    }
  });
}

// The backward of a call whose q, k, v and gradients are checked: go, o and lse checked, then
// path and form choice (PSVAE_ATTN, PSVAE_ATTN_BWD), D, and the launches.
void run_bwd(const char* op, const OpCall& c, const Tensor& go, const Tensor& o, const Tensor& lse,
             const Dims& n, DType dt, const Operands& p, const Tensor* mask, Device device) {
  const Shape o_shape({n.B, n.Tq, n.H, n.dv});
  check_tensor(op, "gout", go, o_shape, dt);
  check_tensor(op, "out", o, o_shape, dt);
  check_tensor(op, "lse", lse, Shape({n.B, n.H, n.Tq}), dt);
  attn::BwdArgs a{};
  a.go = go.raw_data();
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.o = o.raw_data();
  a.lse = lse.raw_data();
  a.mask = mask ? mask->data<int32_t>() : nullptr;
  a.gq = p.gq;
  a.gk = p.gk;
  a.gv = p.gv;
  a.n = n;
  a.scale = c.reals[0];
  const Path path = choose_path(op, dt, n, {a.go, a.q, a.k, a.v, a.o, a.lse, a.gq, a.gk, a.gv});
  const attn::BwdVariant variant = choose_bwd_variant(op);
  if (n.B * n.H == 0) return;  // every output is empty

  // D = rowsum(go * o), (B, H, Tq) in the math type: 4 (f64: 8) bytes per query row.
  Tensor D = Tensor::empty({n.B * n.H * n.Tq}, dt == DType::F64 ? DType::F64 : DType::F32, device);
  a.D = D.raw_data();
  launch_on(device, [&](cudaStream_t s, int dev) {
    const bool wgmma = path == Path::kMma && variant == attn::BwdVariant::kWgmma;
    if (wgmma && !detail::gemm_wgmma_available(dev))
      fail(op, std::string("PSVAE_ATTN_BWD=wgmma") + kNeedsSm90a);
    attn::launch_rowdot(a, dt, s, dev);
    if (wgmma)
      attn::launch_bwd_wgmma(a, s, dev);
    else if (path == Path::kMma)
      attn::launch_bwd_mma(a, variant, s, dev);
    else
      attn::launch_bwd_simt(a, dt, s);
  });
}

// (q, k, v, [key_mask]) -> (o, lse); reals: scale.
void attention_cuda(const OpCall& c) {
  const char* op = "attention";
  if (c.in.size() < 3 || c.in.size() > 4 || c.out.size() != 2)
    fail(op, "expects (q, k, v, [key_mask]) -> (o, lse), got " + std::to_string(c.in.size()) +
                 " inputs and " + std::to_string(c.out.size()) + " outputs");
  const Tensor &q = c.in[0], &k = c.in[1], &v = c.in[2];
  const Tensor* mask = c.in.size() > 3 ? &c.in[3] : nullptr;
  const Dims n = check_qkv(op, q, k, v, mask);
  run_fwd(op, c, n, q.dtype(),
          {q.raw_data(), k.raw_data(), v.raw_data(), nullptr, nullptr, nullptr}, mask, q.device());
}

// (go, q, k, v, o, lse, [key_mask]) -> (gq, gk, gv); reals: scale.
void attention_bwd_cuda(const OpCall& c) {
  const char* op = "attention_bwd";
  if (c.in.size() < 6 || c.in.size() > 7 || c.out.size() != 3)
    fail(op, "expects (go, q, k, v, o, lse, [key_mask]) -> (gq, gk, gv), got " +
                 std::to_string(c.in.size()) + " inputs and " + std::to_string(c.out.size()) +
                 " outputs");
  const Tensor &q = c.in[1], &k = c.in[2], &v = c.in[3];
  const Tensor* mask = c.in.size() > 6 ? &c.in[6] : nullptr;
  const Dims n = check_qkv(op, q, k, v, mask);
  const DType dt = q.dtype();
  check_tensor(op, "gq", c.out[0], q.shape(), dt);
  check_tensor(op, "gk", c.out[1], k.shape(), dt);
  check_tensor(op, "gv", c.out[2], v.shape(), dt);
  const Operands p{q.raw_data(),        k.raw_data(),        v.raw_data(),
                   c.out[0].raw_data(), c.out[1].raw_data(), c.out[2].raw_data()};
  run_bwd(op, c, c.in[0], c.in[4], c.in[5], n, dt, p, mask, q.device());
}

// The N parts of packed rows at `rows` (q, k, v of (B,T,3,H,d), or k, v of (B,T,2,H,d)): element
// offsets 0, H d, 2 H d. Empty rows may have no storage: a null `rows` gives null parts.
template <int N, class P>
std::array<P, N> packed_parts(P rows, DType dt, const Dims& n) {
  using Byte = std::conditional_t<std::is_const_v<std::remove_pointer_t<P>>, const char, char>;
  Byte* b = static_cast<Byte*>(rows);
  const size_t part = static_cast<size_t>(n.H * n.d) * dtype_size(dt);  // bytes
  std::array<P, N> r{};
  for (int i = 0; i < N; ++i) r[static_cast<size_t>(i)] = b ? b + i * part : b;
  return r;
}

// (qkv (B,T,3,H,d), [key_mask]) -> (o, lse); reals: scale. Self-attention on q, k and v read in
// place from the packed projection rows: the kernels of attention with row strides 3 H d.
void attention_qkv_cuda(const OpCall& c) {
  const char* op = "attention_qkv";
  if (c.in.empty() || c.in.size() > 2 || c.out.size() != 2)
    fail(op, "expects (qkv, [key_mask]) -> (o, lse), got " + std::to_string(c.in.size()) +
                 " inputs and " + std::to_string(c.out.size()) + " outputs");
  const Tensor& qkv = c.in[0];
  const Tensor* mask = c.in.size() > 1 ? &c.in[1] : nullptr;
  const Dims n = check_packed(op, qkv, mask);
  const auto in = packed_parts<3>(qkv.raw_data(), qkv.dtype(), n);
  run_fwd(op, c, n, qkv.dtype(), {in[0], in[1], in[2], nullptr, nullptr, nullptr}, mask,
          qkv.device());
}

// (go, qkv, o, lse, [key_mask]) -> gqkv (B,T,3,H,d); reals: scale. gq, gk and gv are written in
// place into gqkv's rows, with qkv's strides.
void attention_qkv_bwd_cuda(const OpCall& c) {
  const char* op = "attention_qkv_bwd";
  if (c.in.size() < 4 || c.in.size() > 5 || c.out.size() != 1)
    fail(op, "expects (go, qkv, o, lse, [key_mask]) -> gqkv, got " + std::to_string(c.in.size()) +
                 " inputs and " + std::to_string(c.out.size()) + " outputs");
  const Tensor& qkv = c.in[1];
  const Tensor* mask = c.in.size() > 4 ? &c.in[4] : nullptr;
  const Dims n = check_packed(op, qkv, mask);
  const DType dt = qkv.dtype();
  check_tensor(op, "gqkv", c.out[0], qkv.shape(), dt);
  const auto in = packed_parts<3>(qkv.raw_data(), dt, n);
  const auto g = packed_parts<3>(c.out[0].raw_data(), dt, n);
  run_bwd(op, c, c.in[0], c.in[2], c.in[3], n, dt, {in[0], in[1], in[2], g[0], g[1], g[2]}, mask,
          qkv.device());
}

// (q (B,Tq,H,d), kv (B,Tk,2,H,d), [key_mask]) -> (o, lse); reals: scale. Attention of q on k and
// v read in place from the packed rows of a kv projection (cross-attention), row stride 2 H d.
void attention_kv_cuda(const OpCall& c) {
  const char* op = "attention_kv";
  if (c.in.size() < 2 || c.in.size() > 3 || c.out.size() != 2)
    fail(op, "expects (q, kv, [key_mask]) -> (o, lse), got " + std::to_string(c.in.size()) +
                 " inputs and " + std::to_string(c.out.size()) + " outputs");
  const Tensor &q = c.in[0], &kv = c.in[1];
  const Tensor* mask = c.in.size() > 2 ? &c.in[2] : nullptr;
  const Dims n = check_kv_packed(op, q, kv, mask);
  const auto in = packed_parts<2>(kv.raw_data(), kv.dtype(), n);
  run_fwd(op, c, n, q.dtype(), {q.raw_data(), in[0], in[1], nullptr, nullptr, nullptr}, mask,
          q.device());
}

// (go, q, kv, o, lse, [key_mask]) -> (gq, gkv (B,Tk,2,H,d)); reals: scale. gk and gv are
// written in place into gkv's rows, with kv's strides.
void attention_kv_bwd_cuda(const OpCall& c) {
  const char* op = "attention_kv_bwd";
  if (c.in.size() < 5 || c.in.size() > 6 || c.out.size() != 2)
    fail(op, "expects (go, q, kv, o, lse, [key_mask]) -> (gq, gkv), got " +
                 std::to_string(c.in.size()) + " inputs and " + std::to_string(c.out.size()) +
                 " outputs");
  const Tensor &q = c.in[1], &kv = c.in[2];
  const Tensor* mask = c.in.size() > 5 ? &c.in[5] : nullptr;
  const Dims n = check_kv_packed(op, q, kv, mask);
  const DType dt = q.dtype();
  check_tensor(op, "gq", c.out[0], q.shape(), dt);
  check_tensor(op, "gkv", c.out[1], kv.shape(), dt);
  const auto in = packed_parts<2>(kv.raw_data(), dt, n);
  const auto g = packed_parts<2>(c.out[1].raw_data(), dt, n);
  run_bwd(op, c, c.in[0], c.in[3], c.in[4], n, dt,
          {q.raw_data(), in[0], in[1], c.out[0].raw_data(), g[0], g[1]}, mask, q.device());
}

}  // namespace

void register_attention(OpTable& t) {
  t[Op::attention].cuda = &attention_cuda;
  t[Op::attention_bwd].cuda = &attention_bwd_cuda;
  t[Op::attention_qkv].cuda = &attention_qkv_cuda;
  t[Op::attention_qkv_bwd].cuda = &attention_qkv_bwd_cuda;
  t[Op::attention_kv].cuda = &attention_kv_cuda;
  t[Op::attention_kv_bwd].cuda = &attention_kv_bwd_cuda;
}

}  // namespace psvae::kernels::cuda
