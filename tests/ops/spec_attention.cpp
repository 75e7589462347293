// Op spec of attention: the kernel (one score row at a time, FlashAttention-2 backward) against a
// naive f64 reference that builds the whole (Tq, Tk) score matrix per (batch, head).
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "common/test_util.h"
#include "op_harness.h"

namespace psvae::test {

namespace {

using ag::Var;

// Key mask (B, Tk) i32: kind 0 = none (undefined tensor is not an input), 1 = random holes with at
// least one key kept per batch, 2 = as 1 but the last batch fully masked (lse -inf, o 0).
Tensor make_mask(Generator& g, int64_t B, int64_t Tk, int kind) {
  std::vector<double> u = as_doubles(uniform(g, {B, Tk}, 0.0, 1.0));
  std::vector<int32_t> m(u.size());
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < Tk; ++j)
      m[static_cast<size_t>(b * Tk + j)] = u[static_cast<size_t>(b * Tk + j)] < 0.35 ? 0 : 1;
    m[static_cast<size_t>(b * Tk + (b % Tk))] = 1;
    if (kind == 2 && b == B - 1)
      for (int64_t j = 0; j < Tk; ++j) m[static_cast<size_t>(b * Tk + j)] = 0;
  }
  return Tensor::from_vector(m, {B, Tk});
}

// Sizes of a reference call.
struct RefDims {
  int64_t B, Tq, Tk, H, d, dv;
};

// The naive f64 reference: the whole (Tq, Tk) score matrix per (batch, head), softmax by its
// definition. q, k, v dense (B,T,H,d|dv); mask (B,Tk) or empty. Returns {o, lse}.
std::vector<Tensor> reference_attention(const std::vector<double>& q, const std::vector<double>& k,
                                        const std::vector<double>& v,
                                        const std::vector<double>& mask, const RefDims& n,
                                        double scale) {
  const int64_t B = n.B, Tq = n.Tq, Tk = n.Tk, H = n.H, d = n.d, dv = n.dv;
  std::vector<double> o(static_cast<size_t>(B * Tq * H * dv)), lse(static_cast<size_t>(B * H * Tq));
  auto Q = [&](int64_t b, int64_t i, int64_t h, int64_t e) {
    return q[static_cast<size_t>(((b * Tq + i) * H + h) * d + e)];
  };
  auto K = [&](int64_t b, int64_t j, int64_t h, int64_t e) {
    return k[static_cast<size_t>(((b * Tk + j) * H + h) * d + e)];
  };
  auto V = [&](int64_t b, int64_t j, int64_t h, int64_t e) {
    return v[static_cast<size_t>(((b * Tk + j) * H + h) * dv + e)];
  };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> S(static_cast<size_t>(Tq * Tk));
      for (int64_t i = 0; i < Tq; ++i)
        for (int64_t j = 0; j < Tk; ++j) {
          double acc = 0;
          for (int64_t e = 0; e < d; ++e) acc += Q(b, i, h, e) * K(b, j, h, e);
          S[static_cast<size_t>(i * Tk + j)] = acc * scale;
        }
      for (int64_t i = 0; i < Tq; ++i) {
        auto keep = [&](int64_t j) {
          return mask.empty() || mask[static_cast<size_t>(b * Tk + j)] != 0;
        };
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Tk; ++j)
          if (keep(j)) m = std::max(m, S[static_cast<size_t>(i * Tk + j)]);
        double z = 0;
        for (int64_t j = 0; j < Tk; ++j)
          if (keep(j)) z += std::exp(S[static_cast<size_t>(i * Tk + j)] - m);
        bool none = z == 0;
        lse[static_cast<size_t>((b * H + h) * Tq + i)] =
            none ? -std::numeric_limits<double>::infinity() : m + std::log(z);
        for (int64_t e = 0; e < dv; ++e) {
          double acc = 0;
          for (int64_t j = 0; j < Tk; ++j)
            if (keep(j))
              acc += std::exp(S[static_cast<size_t>(i * Tk + j)] - m) / z * V(b, j, h, e);
          o[static_cast<size_t>(((b * Tq + i) * H + h) * dv + e)] = none ? 0.0 : acc;
        }
      }
    }
  return std::vector<Tensor>{Tensor::from_vector(o, {B, Tq, H, dv}),
                             Tensor::from_vector(lse, {B, H, Tq})};
}

}  // namespace

// inputs (q (B,Tq,H,d), k (B,Tk,H,d), v (B,Tk,H,dv), [key_mask]); reals = {scale}.
// Outputs: o and lse; lse is not differentiable here (the autograd function returns o only) and
// can be -inf, so only o is gradchecked.
PSVAE_OP_SPEC(attention) {
  OpSpec s;
  s.name = "attention";
  s.covers = {kernels::Op::attention, kernels::Op::attention_bwd};
  s.grad_outputs = {true, false};
  s.cases = [](Generator& g) {
    struct P {
      int64_t B, Tq, Tk, H, d, dv;
      int mask;
    };
    std::vector<P> ps = {
        {1, 1, 1, 1, 4, 4, 0},     {1, 3, 3, 1, 4, 4, 0},  {2, 7, 7, 3, 4, 4, 0},
        {1, 17, 17, 1, 8, 8, 0},   {2, 3, 7, 3, 5, 3, 0},  {1, 7, 3, 3, 8, 5, 0},
        {2, 1, 17, 1, 5, 4, 0},    {2, 7, 7, 1, 8, 8, 1},  {2, 3, 17, 3, 4, 5, 1},
        {2, 7, 7, 3, 5, 5, 2},     {2, 17, 3, 1, 4, 6, 2}, {1, 77, 77, 2, 32, 32, 1},
        {2, 77, 40, 3, 32, 16, 2},
    };
    std::vector<OpCase> cs;
    for (const P& p : ps) {
      OpCase c;
      c.label =
          fmt::format("B={} Tq={} Tk={} H={} d={} dv={} mask={}", p.B, p.Tq, p.Tk, p.H, p.d, p.dv,
                      p.mask == 0   ? "none"
                      : p.mask == 1 ? "holes"
                                    : "holes+all");
      c.inputs = {normal(g, {p.B, p.Tq, p.H, p.d}), normal(g, {p.B, p.Tk, p.H, p.d}),
                  normal(g, {p.B, p.Tk, p.H, p.dv})};
      if (p.mask) c.inputs.push_back(make_mask(g, p.B, p.Tk, p.mask));
      c.reals = {1.0 / std::sqrt(static_cast<double>(p.d))};
      c.gradcheck = p.B * std::max(p.Tq, p.Tk) * p.H * std::max(p.d, p.dv) <= 300;
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = [](const std::vector<Var>& v, const OpCase& c) {
    Tensor mask = v.size() > 3 ? v[3].data() : Tensor();
    Var o = ag::attention(v[0], v[1], v[2], mask, c.reals[0]);
    Tensor lse = ops::attention(v[0].data(), v[1].data(), v[2].data(), mask, c.reals[0]).lse;
    return std::vector<Var>{o, Var(lse)};
  };
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const Shape &qs = in[0].shape(), &ks = in[1].shape(), &vs = in[2].shape();
    const RefDims n{qs[0], qs[1], ks[1], qs[2], qs[3], vs[3]};
    return reference_attention(as_doubles(in[0]), as_doubles(in[1]), as_doubles(in[2]),
                               in.size() > 3 ? as_doubles(in[3]) : std::vector<double>(), n,
                               c.reals[0]);
  };
  return s;
}

namespace {
// Slice `part` of packed rows (B,T,parts,H,d) (qkv: 3 parts, kv: 2), as a dense (B,T,H,d) vector.
std::vector<double> packed_slice(const std::vector<double>& rows, int64_t B, int64_t T, int64_t H,
                                 int64_t d, int64_t part, int64_t parts = 3) {
  std::vector<double> r(static_cast<size_t>(B * T * H * d));
  for (int64_t row = 0; row < B * T; ++row)
    for (int64_t e = 0; e < H * d; ++e)
      r[static_cast<size_t>(row * H * d + e)] =
          rows[static_cast<size_t>((row * parts + part) * H * d + e)];
  return r;
}
}  // namespace

// inputs (qkv (B,T,3,H,d), [key_mask (B,T)]); reals = {scale}. The reference slices qkv and runs
// the reference above; the gradcheck covers attention_qkv_bwd's one output gqkv, so every
// slice's gradient lands in its own place.
PSVAE_OP_SPEC(attention_qkv) {
  OpSpec s;
  s.name = "attention_qkv";
  s.covers = {kernels::Op::attention_qkv, kernels::Op::attention_qkv_bwd};
  s.grad_outputs = {true, false};
  s.cases = [](Generator& g) {
    struct P {
      int64_t B, T, H, d;
      int mask;
    };
    const std::vector<P> ps = {{1, 1, 1, 4, 0}, {2, 7, 3, 4, 0},   {1, 17, 1, 8, 1},
                               {2, 7, 3, 5, 2}, {1, 77, 2, 32, 1}, {2, 40, 3, 16, 2}};
    std::vector<OpCase> cs;
    for (const P& p : ps) {
      OpCase c;
      c.label = fmt::format("B={} T={} H={} d={} mask={}", p.B, p.T, p.H, p.d, p.mask);
      c.inputs = {normal(g, {p.B, p.T, 3, p.H, p.d})};
      if (p.mask) c.inputs.push_back(make_mask(g, p.B, p.T, p.mask));
      c.reals = {1.0 / std::sqrt(static_cast<double>(p.d))};
      c.gradcheck = p.B * p.T * 3 * p.H * p.d <= 300;
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = [](const std::vector<Var>& v, const OpCase& c) {
    Tensor mask = v.size() > 1 ? v[1].data() : Tensor();
    Var o = ag::attention_qkv(v[0], mask, c.reals[0]);
    Tensor lse = ops::attention_qkv(v[0].data(), mask, c.reals[0]).lse;
    return std::vector<Var>{o, Var(lse)};
  };
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const Shape& qs = in[0].shape();
    const int64_t B = qs[0], T = qs[1], H = qs[3], d = qs[4];
    const std::vector<double> qkv = as_doubles(in[0]);
    return reference_attention(packed_slice(qkv, B, T, H, d, 0), packed_slice(qkv, B, T, H, d, 1),
                               packed_slice(qkv, B, T, H, d, 2),
                               in.size() > 1 ? as_doubles(in[1]) : std::vector<double>(),
                               {B, T, T, H, d, d}, c.reals[0]);
  };
  return s;
}

// The packed op is attention on the slices, read in place: same bits as slicing q, k, v out and
// calling attention, and gqkv the same bits as the three gradients concatenated, in every dtype.
TEST_CASE("attention_qkv: the bits of attention on the slices, forward and backward") {
  Generator g(11);
  for (DType dt : {DType::F64, DType::F32, DType::BF16}) {
    for (int mask_kind : {0, 2}) {
      CAPTURE(std::string(dtype_name(dt)));
      CAPTURE(mask_kind);
      const int64_t B = 2, T = 150, H = 3, d = 16;  // 150 queries: two CPU query blocks
      const Tensor qkv = ops::cast(normal(g, {B, T, 3, H, d}), dt);
      const Tensor go = ops::cast(normal(g, {B, T, H, d}), dt);
      const Tensor mask = mask_kind ? make_mask(g, B, T, mask_kind) : Tensor();
      std::vector<Tensor> parts;
      for (int64_t i = 0; i < 3; ++i)
        parts.push_back(ops::narrow(qkv, 2, i, 1).reshape({B, T, H, d}));
      const ops::AttnOut split = ops::attention(parts[0], parts[1], parts[2], mask, 0.3);
      const ops::AttnOut packed = ops::attention_qkv(qkv, mask, 0.3);
      CHECK(test::bit_mismatches_host(packed.out, split.out) == 0);
      CHECK(test::bit_mismatches_host(packed.lse, split.lse) == 0);
      const ops::AttnGrads gs =
          ops::attention_bwd(go, parts[0], parts[1], parts[2], split.out, split.lse, mask, 0.3);
      const Tensor gqkv = ops::attention_qkv_bwd(go, qkv, split.out, split.lse, mask, 0.3);
      const Tensor cat =
          ops::concat({gs.gq.reshape({B, T, 1, H, d}), gs.gk.reshape({B, T, 1, H, d}),
                       gs.gv.reshape({B, T, 1, H, d})},
                      2);
      CHECK(test::bit_mismatches_host(gqkv, cat) == 0);
    }
  }
}

// inputs (q (B,Tq,H,d), kv (B,Tk,2,H,d), [key_mask (B,Tk)]); reals = {scale}. Cross-attention
// on packed kv rows; q's row stride (H d) differs from k's and v's (2 H d) here. The gradcheck
// covers gq and gkv.
PSVAE_OP_SPEC(attention_kv) {
  OpSpec s;
  s.name = "attention_kv";
  s.covers = {kernels::Op::attention_kv, kernels::Op::attention_kv_bwd};
  s.grad_outputs = {true, false};
  s.cases = [](Generator& g) {
    struct P {
      int64_t B, Tq, Tk, H, d;
      int mask;
    };
    const std::vector<P> ps = {{1, 1, 1, 1, 4, 0}, {2, 3, 7, 3, 4, 0},    {1, 7, 3, 2, 5, 1},
                               {2, 5, 6, 2, 4, 2}, {1, 77, 40, 2, 32, 1}, {2, 40, 77, 3, 16, 2}};
    std::vector<OpCase> cs;
    for (const P& p : ps) {
      OpCase c;
      c.label =
          fmt::format("B={} Tq={} Tk={} H={} d={} mask={}", p.B, p.Tq, p.Tk, p.H, p.d, p.mask);
      c.inputs = {normal(g, {p.B, p.Tq, p.H, p.d}), normal(g, {p.B, p.Tk, 2, p.H, p.d})};
      if (p.mask) c.inputs.push_back(make_mask(g, p.B, p.Tk, p.mask));
      c.reals = {1.0 / std::sqrt(static_cast<double>(p.d))};
      c.gradcheck = p.B * (p.Tq + 2 * p.Tk) * p.H * p.d <= 300;
      cs.push_back(c);
    }
    return cs;
  };
  s.apply = [](const std::vector<Var>& v, const OpCase& c) {
    Tensor mask = v.size() > 2 ? v[2].data() : Tensor();
    Var o = ag::attention_kv(v[0], v[1], mask, c.reals[0]);
    Tensor lse = ops::attention_kv(v[0].data(), v[1].data(), mask, c.reals[0]).lse;
    return std::vector<Var>{o, Var(lse)};
  };
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const Shape &qs = in[0].shape(), &kvs = in[1].shape();
    const int64_t B = qs[0], Tq = qs[1], Tk = kvs[1], H = qs[2], d = qs[3];
    const std::vector<double> kv = as_doubles(in[1]);
    return reference_attention(as_doubles(in[0]), packed_slice(kv, B, Tk, H, d, 0, 2),
                               packed_slice(kv, B, Tk, H, d, 1, 2),
                               in.size() > 2 ? as_doubles(in[2]) : std::vector<double>(),
                               {B, Tq, Tk, H, d, d}, c.reals[0]);
  };
  return s;
}

// The same for the packed kv rows: attention_kv is attention on q and the two slices, bit for bit,
// and gkv the concatenation of gk and gv.
TEST_CASE("attention_kv: the bits of attention on the slices, forward and backward") {
  Generator g(13);
  for (DType dt : {DType::F64, DType::F32, DType::BF16}) {
    for (int mask_kind : {0, 2}) {
      CAPTURE(std::string(dtype_name(dt)));
      CAPTURE(mask_kind);
      const int64_t B = 2, Tq = 150, Tk = 45, H = 3, d = 16;
      const Tensor q = ops::cast(normal(g, {B, Tq, H, d}), dt);
      const Tensor kv = ops::cast(normal(g, {B, Tk, 2, H, d}), dt);
      const Tensor go = ops::cast(normal(g, {B, Tq, H, d}), dt);
      const Tensor mask = mask_kind ? make_mask(g, B, Tk, mask_kind) : Tensor();
      const Tensor k = ops::narrow(kv, 2, 0, 1).reshape({B, Tk, H, d});
      const Tensor v = ops::narrow(kv, 2, 1, 1).reshape({B, Tk, H, d});
      const ops::AttnOut split = ops::attention(q, k, v, mask, 0.3);
      const ops::AttnOut packed = ops::attention_kv(q, kv, mask, 0.3);
      CHECK(test::bit_mismatches_host(packed.out, split.out) == 0);
      CHECK(test::bit_mismatches_host(packed.lse, split.lse) == 0);
      const ops::AttnGrads gs = ops::attention_bwd(go, q, k, v, split.out, split.lse, mask, 0.3);
      const ops::AttnKvGrads gp = ops::attention_kv_bwd(go, q, kv, split.out, split.lse, mask, 0.3);
      CHECK(test::bit_mismatches_host(gp.gq, gs.gq) == 0);
      const Shape part{B, Tk, 1, H, d};
      CHECK(test::bit_mismatches_host(
                gp.gkv, ops::concat({gs.gk.reshape(part), gs.gv.reshape(part)}, 2)) == 0);
    }
  }
}

TEST_CASE("attention_kv: bad q, kv and mask name the op and the shapes") {
  const Tensor q = Tensor::zeros({1, 3, 2, 4}, DType::F32);
  CHECK_THROWS_WITH_AS(
      ops::attention_kv(q, Tensor::zeros({1, 5, 2, 2, 8}, DType::F32), Tensor(), 1.0),
      doctest::Contains("attention_kv: shapes do not fit q (B,Tq,H,d), kv "
                        "(B,Tk,2,H,d): q (1, 3, 2, 4), kv (1, 5, 2, 2, 8)"),
      std::invalid_argument);
  const Tensor kv = Tensor::zeros({1, 5, 2, 2, 4}, DType::F32);
  CHECK_THROWS_WITH_AS(ops::attention_kv(q, ops::cast(kv, DType::F64), Tensor(), 1.0),
                       doctest::Contains("attention_kv: q and kv must share one float dtype"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::attention_kv(q, kv, Tensor::zeros({1, 3}, DType::I32), 1.0),
                       doctest::Contains("attention_kv: key_mask must be i32 (B,Tk) = (1, 5)"),
                       std::invalid_argument);
  const ops::AttnOut f = ops::attention_kv(q, kv, Tensor(), 1.0);
  CHECK_THROWS_WITH_AS(ops::attention_kv_bwd(f.out, q, kv, f.out, f.out, Tensor(), 1.0),
                       doctest::Contains("attention_kv_bwd: expected gout and out"),
                       std::invalid_argument);
}

TEST_CASE("attention_qkv: bad qkv and mask name the op and the shapes") {
  CHECK_THROWS_WITH_AS(
      ops::attention_qkv(Tensor::zeros({1, 3, 2, 2, 4}, DType::F32), Tensor(), 1.0),
      doctest::Contains("attention_qkv: qkv must be a float (B,T,3,H,d), got f32 "
                        "(1, 3, 2, 2, 4)"),
      std::invalid_argument);
  const Tensor qkv = Tensor::zeros({1, 3, 3, 2, 4}, DType::F32);
  CHECK_THROWS_WITH_AS(ops::attention_qkv(qkv, Tensor::zeros({1, 4}, DType::I32), 1.0),
                       doctest::Contains("attention_qkv: key_mask must be i32 (B,T) = (1, 3)"),
                       std::invalid_argument);
  const ops::AttnOut f = ops::attention_qkv(qkv, Tensor(), 1.0);
  CHECK_THROWS_WITH_AS(ops::attention_qkv_bwd(f.out, qkv, f.out, f.out, Tensor(), 1.0),
                       doctest::Contains("attention_qkv_bwd: expected gout and out"),
                       std::invalid_argument);
}

// gk and gv sum over queries; the kernel keeps each sum inside one thread, so the result must be
// the same bits whatever the thread count (exact resume and multi-rank runs depend on it).
TEST_CASE("attention: forward and backward are bit-identical for 1 and 4 threads") {
  Generator g(7);
  const int64_t B = 2, T = 77, H = 3, d = 32;
  Tensor q = normal(g, {B, T, H, d}), k = normal(g, {B, T, H, d}), v = normal(g, {B, T, H, d});
  Tensor go = normal(g, {B, T, H, d});
  Tensor mask = make_mask(g, B, T, 1);
  auto run = [&](int threads) {
    int prev = omp_get_max_threads();
    omp_set_num_threads(threads);
    ops::AttnOut f = ops::attention(q, k, v, mask, 0.125);
    ops::AttnGrads r = ops::attention_bwd(go, q, k, v, f.out, f.lse, mask, 0.125);
    omp_set_num_threads(prev);
    return std::vector<Tensor>{f.out, f.lse, r.gq, r.gk, r.gv};
  };
  std::vector<Tensor> a = run(1), b = run(4);
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("output ", i);
    CHECK(std::memcmp(a[i].raw_data(), b[i].raw_data(), a[i].nbytes()) == 0);
  }
}

TEST_CASE("attention: shape errors name the op and the shapes") {
  Tensor q = Tensor::zeros({1, 3, 2, 4}, DType::F64), k = Tensor::zeros({1, 5, 2, 8}, DType::F64);
  CHECK_THROWS_WITH_AS(ops::attention(q, k, k, Tensor(), 1.0),
                       doctest::Contains("attention: shapes do not fit"), std::invalid_argument);
  Tensor k4 = Tensor::zeros({1, 5, 2, 4}, DType::F64);
  CHECK_THROWS_WITH_AS(ops::attention(q, k4, k4, Tensor::zeros({1, 4}, DType::I32), 1.0),
                       doctest::Contains("key_mask must be i32 (B,Tk) = (1, 5)"),
                       std::invalid_argument);
}

}  // namespace psvae::test
