// The CUDA attention kernels (kernels/cuda/attention*.cu), forward (o, lse) and backward (gq, gk,
// gv), against the CPU kernel run in f64 on the same dtype-rounded inputs, every output element
// compared by the relative norm error (test::compare): under 1e-5 in f32, 1e-2 in bf16, 1e-12 in
// f64; a -inf lse (a row whose keys are all masked) must be matched exactly, a NaN never passes.
// (With a single key, gq and gk are exactly zero and checked against zero; see check_case.)
// Outputs are poisoned with NaN, so an unwritten element fails.
//
// Both implementations are run where they apply, forced through PSVAE_ATTN: the SIMT kernels
// (every dtype) and the bf16 tensor-core kernels (head dims multiples of 8), whose backward runs
// in all its forms (PSVAE_ATTN_BWD: fused, where key tiles add to gq in turn, split, and the
// fused form on Hopper's wgmma) and whose forward runs on each of its kernels (PSVAE_ATTN_FWD:
// mma.sync, wgmma, and wgmma with a TMA copy warpgroup); the wgmma kernels where the device runs
// sm_90a code, as the emulator does. The cases cover sequence lengths 1 to 4096, head dims 8 to 128
// (32, 64, 72, 96, 128 and odd ones), self and cross attention (Tq != Tk both ways), dv != d, no
// mask, random holes, a batch entry with every key masked and one with nearly every key masked, and
// the empty edges (Tk = 0, d = 0). The backward of each case is fed o and lse of the f64 reference
// rounded to the dtype, so both sides differentiate the same forward. Determinism: the backward run
// twice gives the same bits. attention_qkv and attention_kv (the same kernels reading q, k, v, or
// k and v, in place from packed projection rows) against attention on the slices, bit for bit.
// Skipped without a CUDA device.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/cuda_compare.h"
#include "common/test_util.h"
#include "kernels/cuda/gemm.h"
#include "kernels/op_table.h"
#include "kernels/ops.h"

using namespace psvae;
using kernels::Op;
using test::as_dtype;
using test::check_close;
using test::on_gpu;
using test::widen;

namespace {

const Device kGpu = Device::cuda(0);

// PSVAE_ATTN (the CUDA attention path: auto, simt, mma), PSVAE_ATTN_FWD (the MMA forward's
// kernel: auto, mma, wgmma, wgmma_tma, wgmma_pingpong) and PSVAE_ATTN_BWD (the MMA backward's form:
// auto, fused, split, wgmma) for a scope.
struct AttnPath : test::EnvScope {
  explicit AttnPath(const char* value) : test::EnvScope("PSVAE_ATTN", value) {}
};
struct AttnFwd : test::EnvScope {
  explicit AttnFwd(const char* value) : test::EnvScope("PSVAE_ATTN_FWD", value) {}
};
struct AttnBwd : test::EnvScope {
  explicit AttnBwd(const char* value) : test::EnvScope("PSVAE_ATTN_BWD", value) {}
};

// Whether the device runs sm_90a code, for the wgmma kernels (said once when it does not).
bool have_wgmma() {
#ifdef PSVAE_WITH_CUDA
  const bool yes = kernels::cuda::detail::gemm_wgmma_available(0);
#else
  const bool yes = false;  // a build without the CUDA backend: every case skips anyway
#endif
  static const bool said = [yes] {
    if (!yes) MESSAGE("no sm_90a device: the wgmma attention kernels are not tested here");
    return true;
  }();
  (void)said;
  return yes;
}

// The backward forms of a path: the MMA backward is fused (5 GEMMs, gq summed across key tiles
// through ordered hand-offs), split (a separate dq kernel) or the fused form on wgmma; the SIMT
// backward has one form.
std::vector<const char*> bwd_forms(const char* path) {
  if (std::string(path) != "mma") return {"auto"};
  if (have_wgmma()) return {"fused", "split", "wgmma"};
  return {"fused", "split"};
}

// Whether the device also has the tensor-map encoder, for the TMA forward.
bool have_wgmma_tma() {
#ifdef PSVAE_WITH_CUDA
  return have_wgmma() && kernels::cuda::detail::gemm_wgmma_tma_available(0);
#else
  return false;
#endif
}

// The forward kernels of a path: the MMA forward on mma.sync, wgmma, wgmma fed by TMA, or that
// with its consumers taking turns (ping-pong); the SIMT forward has one kernel.
std::vector<const char*> fwd_kernels(const char* path) {
  if (std::string(path) != "mma") return {"auto"};
  if (have_wgmma_tma()) return {"mma", "wgmma", "wgmma_tma", "wgmma_pingpong"};
  if (have_wgmma()) return {"mma", "wgmma"};
  return {"mma"};
}

// Key mask (B, Tk) i32, 0 = masked. kind 0: none (undefined tensor); 1: ~35% random holes, key
// b % Tk always kept; 2: as 1, and batch entry B-1 fully masked (its rows: o = 0, lse = -inf, no
// gradient); 3: as 1, and batch entry 0 keeps only keys 0 and Tk-1.
Tensor make_mask(Generator& g, int64_t B, int64_t Tk, int kind) {
  if (kind == 0) return Tensor();
  std::vector<double> u = test::as_doubles(test::uniform(g, {B, Tk}, 0.0, 1.0));
  std::vector<int32_t> m(u.size());
  for (int64_t b = 0; b < B; ++b) {
    auto at = [&](int64_t j) -> int32_t& { return m[static_cast<size_t>(b * Tk + j)]; };
    for (int64_t j = 0; j < Tk; ++j) at(j) = u[static_cast<size_t>(b * Tk + j)] < 0.35 ? 0 : 1;
    if (Tk > 0) at(b % Tk) = 1;
    if (kind == 2 && b == B - 1)
      for (int64_t j = 0; j < Tk; ++j) at(j) = 0;
    if (kind == 3 && b == 0)
      for (int64_t j = 0; j < Tk; ++j) at(j) = (j == 0 || j == Tk - 1) ? 1 : 0;
  }
  return Tensor::from_vector(m, {B, Tk});
}

struct Cfg {
  int64_t B, Tq, Tk, H, d, dv;
  int mask;      // make_mask kind
  double sharp;  // scale = sharp / sqrt(d)
  std::vector<DType> dtypes;
};

std::string label(const Cfg& c) {
  return fmt::format("B={} Tq={} Tk={} H={} d={} dv={} mask={} sharp={}", c.B, c.Tq, c.Tk, c.H, c.d,
                     c.dv, c.mask, c.sharp);
}

// Does the bf16 tensor-core path take these head dims (the dispatcher's rule in attention.cu)?
bool mma_applies(const Cfg& c) {
  return c.d % 8 == 0 && c.dv % 8 == 0 && c.d >= 8 && c.dv >= 8 && c.d <= 128 && c.dv <= 128;
}

std::vector<const char*> paths_for(const Cfg& c, DType dt) {
  if (dt == DType::BF16 && mma_applies(c)) return {"simt", "mma"};
  return {"simt"};
}

// (q, k, v, [mask]) -> {o, lse} on the inputs' device, outputs of dtype dt.
std::vector<Tensor> run_fwd(const std::vector<Tensor>& in, double scale, DType dt) {
  const Shape &qs = in[0].shape(), &vs = in[2].shape();
  return test::run_op(Op::attention, in,
                      {Shape{qs[0], qs[1], qs[2], vs[3]}, Shape{qs[0], qs[2], qs[1]}}, dt,
                      in[0].device(), {}, {scale});
}

// (go, q, k, v, o, lse, [mask]) -> {gq, gk, gv}.
std::vector<Tensor> run_bwd(const std::vector<Tensor>& in, double scale, DType dt) {
  return test::run_op(Op::attention_bwd, in, {in[1].shape(), in[2].shape(), in[3].shape()}, dt,
                      in[0].device(), {}, {scale});
}

// Forward and backward of one configuration in one dtype, on every path that applies.
void check_case(Generator& g, const Cfg& c, DType dt) {
  CAPTURE(label(c));
  CAPTURE(std::string(dtype_name(dt)));
  const double scale = c.sharp / std::sqrt(static_cast<double>(std::max<int64_t>(c.d, 1)));
  const Tensor q = as_dtype(test::normal(g, {c.B, c.Tq, c.H, c.d}), dt);
  const Tensor k = as_dtype(test::normal(g, {c.B, c.Tk, c.H, c.d}), dt);
  const Tensor v = as_dtype(test::normal(g, {c.B, c.Tk, c.H, c.dv}), dt);
  const Tensor go = as_dtype(test::normal(g, {c.B, c.Tq, c.H, c.dv}), dt);
  const Tensor mask = make_mask(g, c.B, c.Tk, c.mask);

  std::vector<Tensor> ref_in = {widen(q), widen(k), widen(v)}, in = {q, k, v};
  if (mask.defined()) {
    ref_in.push_back(mask);
    in.push_back(mask);
  }
  const std::vector<Tensor> ref = run_fwd(ref_in, scale, DType::F64);
  // The backward's o and lse: the reference's, rounded to the dtype, on both sides.
  const Tensor o_d = as_dtype(ref[0], dt), lse_d = as_dtype(ref[1], dt);
  std::vector<Tensor> ref_bin = {widen(go), widen(q), widen(k), widen(v), widen(o_d), widen(lse_d)};
  std::vector<Tensor> bin = {go, q, k, v, o_d, lse_d};
  if (mask.defined()) {
    ref_bin.push_back(mask);
    bin.push_back(mask);
  }
  const std::vector<Tensor> ref_g = run_bwd(ref_bin, scale, DType::F64);
  const std::vector<Tensor> gin = on_gpu(in), gbin = on_gpu(bin);

  for (const char* path : paths_for(c, dt)) {
    CAPTURE(std::string(path));
    AttnPath force(path);
    for (const char* fwd : fwd_kernels(path)) {
      CAPTURE(std::string(fwd));
      AttnFwd force_fwd(fwd);
      const std::vector<Tensor> out = run_fwd(gin, scale, dt);
      check_close(out[0], ref[0], dt, "o");
      check_close(out[1], ref[1], dt, "lse");
    }
    for (const char* form : bwd_forms(path)) {
      CAPTURE(std::string(form));
      AttnBwd force_bwd(form);
      const std::vector<Tensor> gr = run_bwd(gbin, scale, dt);
      check_close(gr[2], ref_g[2], dt, "gv");
      if (c.Tk == 1) {
        // One key per row: the softmax is the constant 1, so gq and gk are exactly zero and each
        // side returns only its own rounding noise (about 1e-16 in the f64 reference, 1e-8 in
        // f32), which a relative error against the reference's noise cannot judge. Checked
        // against zero instead, at the dtype's tolerance times ||gv|| (the gradient's scale).
        const double gv_norm = test::l2_norm(ref_g[2]);
        CHECK(test::l2_norm(gr[0]) <= test::tolerance(dt) * gv_norm);
        CHECK(test::l2_norm(gr[1]) <= test::tolerance(dt) * gv_norm);
      } else {
        check_close(gr[0], ref_g[0], dt, "gq");
        check_close(gr[1], ref_g[1], dt, "gk");
      }
    }
  }
}

const std::vector<DType> kF32Bf16 = {DType::F32, DType::BF16};
const std::vector<DType> kAll = {DType::F32, DType::BF16, DType::F64};

}  // namespace

TEST_CASE("cuda attention: forward and backward match the CPU on both paths") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(41);
  // Tile sizes: SIMT 64 (f64: 32) stationary rows x 32 streamed; MMA 64 rows x 64 keys (dkdv
  // query tiles of 64 or 32). The lengths below end mid-tile on both.
  const std::vector<Cfg> cases = {
      {1, 1, 1, 1, 32, 32, 0, 1.0, kAll},            // one query, one key
      {2, 77, 77, 3, 64, 64, 1, 1.0, kAll},          // holes
      {1, 256, 256, 2, 128, 128, 0, 2.0, kF32Bf16},  // whole tiles, sharper softmax
      {2, 77, 1000, 2, 72, 72, 2, 1.0, kF32Bf16},    // cross, Tk > Tq, a masked-out batch
      {1, 1000, 77, 2, 96, 96, 0, 1.0, kF32Bf16},    // cross, Tq > Tk
      {2, 256, 256, 1, 32, 32, 3, 1.0, kF32Bf16},    // batch 0 keeps 2 keys of 256
      {2, 130, 130, 2, 128, 128, 2, 1.0, kF32Bf16},  // d = 128 with a masked-out batch
      {2, 33, 45, 3, 64, 32, 1, 1.0, kAll},          // dv < d
      {1, 40, 70, 2, 8, 24, 0, 1.0, kF32Bf16},       // small head dims, dv > d
      {1, 50, 61, 2, 20, 12, 1, 1.0, kAll},          // head dims not multiples of 8
      // The fused backward's ticket groups (attention_bwd.cu, fused_group): on the emulator
      // (4 SMs, 3 blocks each at d = 128) 32 query tiles give groups of 2 pairs, so the third
      // pair is a short last group; 4 key tiles add to each gq tile in turn.
      {1, 1000, 200, 3, 128, 128, 1, 1.0, {DType::BF16}},
      // The same for the wgmma backward (128 keys x 64 queries, 1 block per SM at d = 128): 10
      // query tiles give groups of 2 pairs, a short third; 3 key tiles add to each gq tile.
      {1, 600, 300, 3, 128, 128, 1, 1.0, {DType::BF16}},
      // The wgmma forwards at head-dim capacity 128 with d <= 64: Q's and K's second slab is
      // never loaded (the TMA kernel zeroes it once), V's is.
      {1, 200, 300, 2, 40, 128, 1, 1.0, {DType::BF16}},
  };
  for (const Cfg& c : cases)
    for (DType dt : c.dtypes) check_case(g, c, dt);
}

// The long sequence on its own: on the emulator it takes most of this file's time (about 70 s of
// 100), so `make test-emu` runs it in the plain pass only and leaves it out of the race passes
// (shuffled and warps orders, early async copies), where the shorter cases above already end
// mid-tile, wrap the rings and take turns on gq; 64 key tiles of 64 add nothing new there.
TEST_CASE("cuda attention: a 4096-token sequence matches the CPU on both paths") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(42);
  check_case(g, {1, 4096, 4096, 1, 64, 64, 1, 1.0, {DType::BF16}}, DType::BF16);
}

TEST_CASE("cuda attention: empty edges (no keys, head dim 0) match the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(43);
  // Tk = 0: o = 0, lse = -inf, gq = 0. d = 0: uniform weights over the kept keys, gq and gk
  // empty. dv = 0: o empty, lse still written, gq = gk = 0.
  const std::vector<Cfg> cases = {
      {1, 9, 0, 2, 16, 16, 0, 1.0, kAll},
      {2, 5, 7, 2, 0, 8, 1, 1.0, kAll},
      {2, 5, 7, 2, 8, 0, 1, 1.0, kAll},
  };
  for (const Cfg& c : cases)
    for (DType dt : c.dtypes) check_case(g, c, dt);
}

TEST_CASE("cuda attention: forward and backward are bit-identical run to run") {
  PSVAE_REQUIRE_CUDA();
  Generator g(47);
  const int64_t B = 2, Tq = 300, Tk = 333, H = 2, d = 64;
  for (DType dt : {DType::BF16, DType::F32}) {
    // (PSVAE_ATTN, PSVAE_ATTN_FWD, PSVAE_ATTN_BWD, whether the device runs it)
    struct Run {
      const char *path, *fwd, *bwd;
      bool (*runs)();
    };
    auto always = [] { return true; };
    const Run runs[] = {{"simt", "mma", "fused", always},
                        {"mma", "mma", "fused", always},
                        {"mma", "mma", "split", always},
                        {"mma", "wgmma", "wgmma", have_wgmma},
                        {"mma", "wgmma_tma", "fused", have_wgmma_tma},
                        {"mma", "wgmma_pingpong", "fused", have_wgmma_tma}};
    for (const Run& r : runs) {
      const bool mma = std::string(r.path) == "mma";
      if ((dt != DType::BF16 && mma) || !r.runs()) continue;
      CAPTURE(std::string(dtype_name(dt)));
      CAPTURE(std::string(r.path) + " fwd " + r.fwd + " bwd " + r.bwd);
      AttnPath force(r.path);
      AttnFwd force_fwd(r.fwd);
      AttnBwd force_bwd(r.bwd);
      const Tensor mask = make_mask(g, B, Tk, 1).to(kGpu);
      std::vector<Tensor> in = {as_dtype(test::normal(g, {B, Tq, H, d}), dt).to(kGpu),
                                as_dtype(test::normal(g, {B, Tk, H, d}), dt).to(kGpu),
                                as_dtype(test::normal(g, {B, Tk, H, d}), dt).to(kGpu), mask};
      const Tensor go = as_dtype(test::normal(g, {B, Tq, H, d}), dt).to(kGpu);
      const std::vector<Tensor> f1 = run_fwd(in, 0.125, dt), f2 = run_fwd(in, 0.125, dt);
      const std::vector<Tensor> bin = {go, in[0], in[1], in[2], f1[0], f1[1], mask};
      const std::vector<Tensor> b1 = run_bwd(bin, 0.125, dt), b2 = run_bwd(bin, 0.125, dt);
      const std::vector<std::pair<Tensor, Tensor>> pairs = {
          {f1[0], f2[0]}, {f1[1], f2[1]}, {b1[0], b2[0]}, {b1[1], b2[1]}, {b1[2], b2[2]}};
      for (size_t i = 0; i < pairs.size(); ++i) {
        CAPTURE(i);
        CHECK(test::bit_mismatches_host(pairs[i].first.to(Device::cpu()),
                                        pairs[i].second.to(Device::cpu())) == 0);
      }
    }
  }
}

namespace {

// A packed op pair (attention_qkv or attention_kv) against attention on the slices copied out,
// on every path, forward kernel and backward form that `cfg` takes in dt: o and lse, then the
// packed backward's outputs against `expected`(gq, gk, gv), bit for bit. `packed` are the packed
// op's operands (qkv, or q and kv), which are also the shapes of its gradients; `split` are q, k,
// v copied out. The backward takes (go, packed..., o, lse, [mask]).
void check_packed_vs_split(
    const Cfg& cfg, DType dt, Op fwd_op, Op bwd_op, const std::vector<Tensor>& packed,
    const std::vector<Tensor>& split, const Tensor& go, const Tensor& gmask,
    const std::function<std::vector<Tensor>(const std::vector<Tensor>&)>& expected) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(cfg.d));
  auto with = [&](std::vector<Tensor> head, const std::vector<Tensor>& mid,
                  std::vector<Tensor> tail) {
    head.insert(head.end(), mid.begin(), mid.end());
    head.insert(head.end(), tail.begin(), tail.end());
    if (gmask.defined()) head.push_back(gmask);
    return head;
  };
  auto same_bits = [](const Tensor& a, const Tensor& b) {
    return test::bit_mismatches_host(a.to(Device::cpu()), b.to(Device::cpu())) == 0;
  };
  const Shape o_shape{cfg.B, cfg.Tq, cfg.H, cfg.dv}, lse_shape{cfg.B, cfg.H, cfg.Tq};
  std::vector<Shape> grad_shapes;
  for (const Tensor& t : packed) grad_shapes.push_back(t.shape());
  for (const char* path : paths_for(cfg, dt)) {
    CAPTURE(std::string(path));
    AttnPath force(path);
    for (const char* fwd : fwd_kernels(path)) {
      CAPTURE(std::string(fwd));
      AttnFwd force_fwd(fwd);
      const std::vector<Tensor> ref = run_fwd(with({}, split, {}), scale, dt);
      const std::vector<Tensor> out =
          test::run_op(fwd_op, with({}, packed, {}), {o_shape, lse_shape}, dt, kGpu, {}, {scale});
      CHECK(same_bits(out[0], ref[0]));
      CHECK(same_bits(out[1], ref[1]));
    }
    const std::vector<Tensor> f = run_fwd(with({}, split, {}), scale, dt);
    for (const char* form : bwd_forms(path)) {
      CAPTURE(std::string(form));
      AttnBwd force_bwd(form);
      const std::vector<Tensor> want =
          expected(run_bwd(with({go}, split, {f[0], f[1]}), scale, dt));
      const std::vector<Tensor> got = test::run_op(bwd_op, with({go}, packed, {f[0], f[1]}),
                                                   grad_shapes, dt, kGpu, {}, {scale});
      for (size_t i = 0; i < got.size(); ++i) {
        CAPTURE(i);
        CHECK(same_bits(got[i], want[i]));
      }
    }
  }
}

}  // namespace

// attention_qkv reads q, k, v in place from packed rows (B,T,3,H,d) (row stride 3 H d, k and v at
// offsets H d and 2 H d) and writes gq, gk, gv into one gqkv: the same kernels as attention with
// other strides, so the same bits as attention on the three slices copied out, on every path,
// forward kernel and backward form. Outputs poisoned: an element of gqkv left unwritten, or one
// written with a dense stride, fails.
TEST_CASE("cuda attention_qkv: packed rows give the bits of attention on the slices") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(53);
  struct Packed {
    int64_t B, T, H, d;
    int mask;
  };
  // Tile ends mid-way on both paths; d = 128 takes the wgmma kernels' full capacity, d = 40 a
  // partial slab; d = 20 (not a multiple of 8) runs SIMT only; T = 1; T = 0.
  const std::vector<Packed> cases = {{2, 77, 3, 64, 1}, {1, 130, 2, 128, 2}, {2, 200, 2, 40, 3},
                                     {1, 50, 2, 20, 1}, {1, 1, 1, 32, 0},    {1, 0, 2, 16, 0}};
  for (const Packed& p : cases)
    for (DType dt : kAll) {
      CAPTURE(fmt::format("B={} T={} H={} d={} mask={}", p.B, p.T, p.H, p.d, p.mask));
      CAPTURE(std::string(dtype_name(dt)));
      const Tensor qkv = as_dtype(test::normal(g, {p.B, p.T, 3, p.H, p.d}), dt).to(kGpu);
      const Tensor go = as_dtype(test::normal(g, {p.B, p.T, p.H, p.d}), dt).to(kGpu);
      const Tensor mask = make_mask(g, p.B, p.T, p.mask);
      std::vector<Tensor> parts;  // q, k, v copied out (B,T,H,d)
      for (int64_t i = 0; i < 3; ++i)
        parts.push_back(ops::narrow(qkv, 2, i, 1).reshape({p.B, p.T, p.H, p.d}));
      const Shape part{p.B, p.T, 1, p.H, p.d};
      check_packed_vs_split(
          {p.B, p.T, p.T, p.H, p.d, p.d, p.mask, 1.0, {dt}}, dt, Op::attention_qkv,
          Op::attention_qkv_bwd, {qkv}, parts, go, mask.defined() ? mask.to(kGpu) : Tensor(),
          [&](const std::vector<Tensor>& gs) {
            return std::vector<Tensor>{
                ops::concat({gs[0].reshape(part), gs[1].reshape(part), gs[2].reshape(part)}, 2)};
          });
    }
}

// attention_kv: q dense (row stride H d), k and v read in place from packed kv rows (B,Tk,2,H,d),
// row stride 2 H d, and gk, gv written into one gkv: so q's stride differs from k's and v's, which
// no other op has. The same bits as attention on q and the two slices copied out, on every path,
// forward kernel and backward form, outputs poisoned. Tq != Tk both ways; d = 64, 128, 40, 20.
TEST_CASE("cuda attention_kv: packed kv rows give the bits of attention on the slices") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(59);
  struct Packed {
    int64_t B, Tq, Tk, H, d;
    int mask;
  };
  const std::vector<Packed> cases = {
      {2, 77, 20, 3, 64, 1}, {1, 40, 130, 2, 128, 2}, {2, 200, 77, 2, 40, 3}, {1, 50, 9, 2, 20, 1}};
  for (const Packed& p : cases)
    for (DType dt : kAll) {
      CAPTURE(fmt::format("B={} Tq={} Tk={} H={} d={} mask={}", p.B, p.Tq, p.Tk, p.H, p.d, p.mask));
      CAPTURE(std::string(dtype_name(dt)));
      const Tensor q = as_dtype(test::normal(g, {p.B, p.Tq, p.H, p.d}), dt).to(kGpu);
      const Tensor kv = as_dtype(test::normal(g, {p.B, p.Tk, 2, p.H, p.d}), dt).to(kGpu);
      const Tensor go = as_dtype(test::normal(g, {p.B, p.Tq, p.H, p.d}), dt).to(kGpu);
      const Tensor mask = make_mask(g, p.B, p.Tk, p.mask);
      const Tensor k = ops::narrow(kv, 2, 0, 1).reshape({p.B, p.Tk, p.H, p.d});
      const Tensor v = ops::narrow(kv, 2, 1, 1).reshape({p.B, p.Tk, p.H, p.d});
      const Shape part{p.B, p.Tk, 1, p.H, p.d};
      check_packed_vs_split(
          {p.B, p.Tq, p.Tk, p.H, p.d, p.d, p.mask, 1.0, {dt}}, dt, Op::attention_kv,
          Op::attention_kv_bwd, {q, kv}, {q, k, v}, go, mask.defined() ? mask.to(kGpu) : Tensor(),
          [&](const std::vector<Tensor>& gs) {
            return std::vector<Tensor>{gs[0],
                                       ops::concat({gs[1].reshape(part), gs[2].reshape(part)}, 2)};
          });
    }
}

TEST_CASE("cuda attention_qkv, attention_kv: bad operands throw naming the op") {
  PSVAE_REQUIRE_CUDA();
  const Tensor qkv = Tensor::zeros({1, 4, 3, 2, 8}, DType::F32, kGpu);
  const std::vector<Shape> outs = {Shape{1, 4, 2, 8}, Shape{1, 2, 4}};
  CHECK_THROWS_WITH_AS(
      test::run_op(Op::attention_qkv, {Tensor::zeros({1, 4, 2, 2, 8}, DType::F32, kGpu)}, outs,
                   DType::F32, kGpu, {}, {1.0}),
      doctest::Contains("attention_qkv: qkv must be a float (B,T,3,H,d)"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      test::run_op(Op::attention_qkv, {qkv, Tensor::zeros({1, 5}, DType::I32, kGpu)}, outs,
                   DType::F32, kGpu, {}, {1.0}),
      doctest::Contains("attention_qkv: key_mask must be i32 (B,T) = (1, 4)"),
      std::invalid_argument);
  CHECK_THROWS_WITH_AS(test::run_op(Op::attention_qkv, {qkv}, {Shape{1, 4, 2, 8}, Shape{1, 4, 2}},
                                    DType::F32, kGpu, {}, {1.0}),
                       doctest::Contains("attention_qkv: lse must be f32 (1, 2, 4)"),
                       std::invalid_argument);
  const std::vector<Tensor> f =
      test::run_op(Op::attention_qkv, {qkv}, outs, DType::F32, kGpu, {}, {1.0});
  CHECK_THROWS_WITH_AS(test::run_op(Op::attention_qkv_bwd, {f[0], qkv, f[0], f[1]},
                                    {Shape{1, 4, 9, 2, 8}}, DType::F32, kGpu, {}, {1.0}),
                       doctest::Contains("attention_qkv_bwd: gqkv must be f32 (1, 4, 3, 2, 8)"),
                       std::invalid_argument);
  const Tensor q = Tensor::zeros({1, 4, 2, 8}, DType::F32, kGpu);
  CHECK_THROWS_WITH_AS(
      test::run_op(Op::attention_kv, {q, qkv}, outs, DType::F32, kGpu, {}, {1.0}),
      doctest::Contains("attention_kv: shapes do not fit q (B,Tq,H,d), kv (B,Tk,2,H,d)"),
      std::invalid_argument);
  const Tensor kv = Tensor::zeros({1, 6, 2, 2, 8}, DType::F32, kGpu);
  CHECK_THROWS_WITH_AS(
      test::run_op(Op::attention_kv, {q, kv, Tensor::zeros({1, 4}, DType::I32, kGpu)}, outs,
                   DType::F32, kGpu, {}, {1.0}),
      doctest::Contains("attention_kv: key_mask must be i32 (B,Tk) = (1, 6)"),
      std::invalid_argument);
  const std::vector<Tensor> fk =
      test::run_op(Op::attention_kv, {q, kv}, outs, DType::F32, kGpu, {}, {1.0});
  CHECK_THROWS_WITH_AS(test::run_op(Op::attention_kv_bwd, {fk[0], q, kv, fk[0], fk[1]},
                                    {q.shape(), qkv.shape()}, DType::F32, kGpu, {}, {1.0}),
                       doctest::Contains("attention_kv_bwd: gkv must be f32 (1, 6, 2, 2, 8)"),
                       std::invalid_argument);
}

TEST_CASE("cuda attention: bad input and a bad PSVAE_ATTN throw naming the op") {
  PSVAE_REQUIRE_CUDA();
  auto gpu = [](const Shape& s, DType dt) { return Tensor::zeros(s, dt, kGpu); };
  const std::vector<Tensor> ok = {gpu({1, 4, 2, 8}, DType::F32), gpu({1, 5, 2, 8}, DType::F32),
                                  gpu({1, 5, 2, 8}, DType::F32)};
  {
    AttnPath force("fastest");
    CHECK_THROWS_WITH_AS(run_fwd(ok, 1.0, DType::F32),
                         doctest::Contains("attention: PSVAE_ATTN must be auto, simt or mma"),
                         std::invalid_argument);
  }
  {
    AttnPath force("mma");  // f32 has no tensor-core path
    CHECK_THROWS_WITH_AS(run_fwd(ok, 1.0, DType::F32),
                         doctest::Contains("attention: PSVAE_ATTN=mma"), std::invalid_argument);
  }
  {
    AttnFwd force("fastest");
    CHECK_THROWS_WITH_AS(
        run_fwd(ok, 1.0, DType::F32),
        doctest::Contains(
            "attention: PSVAE_ATTN_FWD must be auto, mma, wgmma, wgmma_tma or wgmma_pingpong"),
        std::invalid_argument);
  }
  {
    AttnBwd force("fastest");
    const std::vector<Tensor> f = run_fwd(ok, 1.0, DType::F32);
    CHECK_THROWS_WITH_AS(
        run_bwd({f[0], ok[0], ok[1], ok[2], f[0], f[1]}, 1.0, DType::F32),
        doctest::Contains("attention_bwd: PSVAE_ATTN_BWD must be auto, fused, split or wgmma"),
        std::invalid_argument);
  }
  AttnPath force("auto");
  CHECK_THROWS_WITH_AS(run_fwd({ok[0], gpu({1, 5, 2, 4}, DType::F32), ok[2]}, 1.0, DType::F32),
                       doctest::Contains("attention: shapes do not fit"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(run_fwd({ok[0], ok[1], ok[2], gpu({1, 4}, DType::I32)}, 1.0, DType::F32),
                       doctest::Contains("attention: key_mask must be i32 (B,Tk) = (1, 5)"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(run_fwd({gpu({1, 4, 1, 160}, DType::BF16), gpu({1, 4, 1, 160}, DType::BF16),
                                gpu({1, 4, 1, 160}, DType::BF16)},
                               1.0, DType::BF16),
                       doctest::Contains("attention: head dim"), std::runtime_error);
  // The backward checks its extra inputs: lse of the wrong shape.
  const std::vector<Tensor> f = run_fwd(ok, 1.0, DType::F32);
  CHECK_THROWS_WITH_AS(
      run_bwd({f[0], ok[0], ok[1], ok[2], f[0], gpu({1, 2, 5}, DType::F32)}, 1.0, DType::F32),
      doctest::Contains("attention_bwd: lse must be"), std::invalid_argument);
}
