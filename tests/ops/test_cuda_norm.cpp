// The CUDA norm family (kernels/cuda/norm.cu: layernorm, modulate, groupnorm and their backwards)
// and the fused DiT kernels of kernels/cuda/norm_fused.h (layernorm + modulate, gated residual)
// against the CPU kernels in f64 on the same (dtype-rounded) inputs, outputs poisoned with NaN,
// every element compared through the relative norm error ||out - ref|| / ||ref||: under 1e-5 in
// f32, 1e-12 in f64, 1e-2 in bf16 (NaN fails). A reference that is zero up to rounding (gx when a
// row or group has one element) asks for an absolute error under the same bound instead.
// The backwards get the statistics rounded to the dtype on both sides, as the forward stores them,
// and run twice: the two results must be bitwise equal (parameter sums have a fixed order).
// Row lengths 1, 7, 32, 33, 384, 1152 and 4100 over 3 x 77 rows reach both layernorm paths (the
// register path for aligned rows up to ~1.5k, the loop path for the rest, and the column kernel
// for its parameter sums); groupnorm runs 32 channels in 8, 1 and 32 groups over 1x1, 7x9 and
// 32x32 positions. Skipped without a CUDA device.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "common/cuda_compare.h"
#include "common/test_util.h"
#include "kernels/op_table.h"
#include "kernels/ops.h"
#ifdef PSVAE_WITH_CUDA
#include "kernels/cuda/norm_fused.h"
#endif

using namespace psvae;
using kernels::Op;
using test::as_dtype;
using test::on_gpu;
using test::tolerance;
using test::uniform_as;
using test::widen;

namespace {

const Device kGpu = Device::cuda(0);
constexpr double kNormEps = 1e-5;
const std::vector<int64_t> kRowLengths = {1, 7, 32, 33, 384, 1152, 4100};
const std::vector<DType> kDtypes = {DType::F32, DType::BF16, DType::F64};

// A reference that is 0 up to the CPU's own rounding (the f64 kernel may fuse g - mean(g) into an
// FMA and leave ~1e-14 where the exact answer is 0) is compared absolutely: ||ref||^2 <= 1e-20.
constexpr double kZeroFloor = 1e-20;
double rel_norm_error(const Tensor& got, const Tensor& ref) {
  return test::rel_norm_error(got, ref, kZeroFloor);
}

void check_close(const std::vector<Tensor>& got, const std::vector<Tensor>& ref, DType dt,
                 const std::string& what) {
  REQUIRE(got.size() == ref.size());
  for (size_t i = 0; i < got.size(); ++i) {
    CAPTURE(what);
    CAPTURE(i);
    CHECK(got[i].shape() == ref[i].shape());
    CHECK(rel_norm_error(got[i], ref[i]) < tolerance(dt));
  }
}

void check_same_bits(const std::vector<Tensor>& a, const std::vector<Tensor>& b,
                     const std::string& what) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(what);
    CAPTURE(i);
    CHECK(test::same_bits(a[i], b[i]));
  }
}

// Runs op on `in` into fresh outputs of the given shapes (dtype dt, device d).
std::vector<Tensor> run(Op op, const std::vector<Tensor>& in, const std::vector<Shape>& outs,
                        DType dt, Device d, int64_t groups = 0) {
  return test::run_op(op, in, outs, dt, d, {groups}, {kNormEps});
}

Shape without_last(const Shape& s) {
  Shape r;
  for (int d = 0; d + 1 < s.rank(); ++d) r.push_back(s[d]);
  return r;
}

// layernorm forward and backward of x (CPU, dtype dt) against the f64 CPU; x_dev is the copy the
// GPU reads (x itself on the GPU, or a view at a misaligned address).
void layernorm_case(Generator& g, const Tensor& x, const Tensor& x_dev, bool affine, DType dt) {
  const Shape xs = x.shape(), rs = without_last(xs);
  const int64_t D = xs[xs.rank() - 1];
  std::vector<Tensor> in = {x};
  if (affine) {
    in.push_back(uniform_as(g, Shape{D}, dt, 0.5, 1.5));
    in.push_back(uniform_as(g, Shape{D}, dt));
  }
  const std::vector<Tensor> ref =
      run(Op::layernorm, widen(in), {xs, rs, rs}, DType::F64, Device::cpu());
  std::vector<Tensor> in_dev = on_gpu(in);
  in_dev[0] = x_dev;
  check_close(run(Op::layernorm, in_dev, {xs, rs, rs}, dt, kGpu), ref, dt, "layernorm");

  std::vector<Tensor> bin = {uniform_as(g, xs, dt), x, as_dtype(ref[1], dt), as_dtype(ref[2], dt)};
  std::vector<Shape> outs = {xs};
  if (affine) {
    bin.push_back(in[1]);
    outs.push_back(Shape{D});
    outs.push_back(Shape{D});
  }
  const std::vector<Tensor> bref =
      run(Op::layernorm_bwd, widen(bin), outs, DType::F64, Device::cpu());
  std::vector<Tensor> bin_dev = on_gpu(bin);
  bin_dev[1] = x_dev;
  const std::vector<Tensor> b1 = run(Op::layernorm_bwd, bin_dev, outs, dt, kGpu);
  const std::vector<Tensor> b2 = run(Op::layernorm_bwd, bin_dev, outs, dt, kGpu);
  check_close(b1, bref, dt, "layernorm_bwd");
  check_same_bits(b1, b2, "layernorm_bwd twice");
}

void modulate_case(Generator& g, const Shape& xs, DType dt) {
  const Shape nd{xs[0], xs[2]};
  const std::vector<Tensor> in = {uniform_as(g, xs, dt), uniform_as(g, nd, dt),
                                  uniform_as(g, nd, dt)};
  const std::vector<Tensor> ref = run(Op::modulate, widen(in), {xs}, DType::F64, Device::cpu());
  check_close(run(Op::modulate, on_gpu(in), {xs}, dt, kGpu), ref, dt, "modulate");

  const std::vector<Tensor> bin = {uniform_as(g, xs, dt), in[0], in[2]};
  const std::vector<Shape> outs = {xs, nd, nd};
  const std::vector<Tensor> bref =
      run(Op::modulate_bwd, widen(bin), outs, DType::F64, Device::cpu());
  const std::vector<Tensor> b1 = run(Op::modulate_bwd, on_gpu(bin), outs, dt, kGpu);
  const std::vector<Tensor> b2 = run(Op::modulate_bwd, on_gpu(bin), outs, dt, kGpu);
  check_close(b1, bref, dt, "modulate_bwd");
  check_same_bits(b1, b2, "modulate_bwd twice");
}

void groupnorm_case(Generator& g, const Shape& xs, int64_t groups, bool affine, DType dt) {
  const int64_t C = xs[1];
  const Shape stats{xs[0], groups};
  std::vector<Tensor> in = {
      uniform_as(g, xs, dt, 2.0, 4.0)};  // offset mean: no cancellation allowed
  if (affine) {
    in.push_back(uniform_as(g, Shape{C}, dt, 0.5, 1.5));
    in.push_back(uniform_as(g, Shape{C}, dt));
  }
  const std::vector<Tensor> ref =
      run(Op::groupnorm, widen(in), {xs, stats, stats}, DType::F64, Device::cpu(), groups);
  check_close(run(Op::groupnorm, on_gpu(in), {xs, stats, stats}, dt, kGpu, groups), ref, dt,
              "groupnorm");

  std::vector<Tensor> bin = {uniform_as(g, xs, dt), in[0], as_dtype(ref[1], dt),
                             as_dtype(ref[2], dt)};
  std::vector<Shape> outs = {xs};
  if (affine) {
    bin.push_back(in[1]);
    outs.push_back(Shape{C});
    outs.push_back(Shape{C});
  }
  const std::vector<Tensor> bref =
      run(Op::groupnorm_bwd, widen(bin), outs, DType::F64, Device::cpu(), groups);
  const std::vector<Tensor> b1 = run(Op::groupnorm_bwd, on_gpu(bin), outs, dt, kGpu, groups);
  const std::vector<Tensor> b2 = run(Op::groupnorm_bwd, on_gpu(bin), outs, dt, kGpu, groups);
  check_close(b1, bref, dt, "groupnorm_bwd");
  check_same_bits(b1, b2, "groupnorm_bwd twice");
}

}  // namespace

TEST_CASE("cuda kernels: layernorm and its backward match the CPU, bitwise repeatable") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(41);
  for (int64_t D : kRowLengths) {
    for (bool affine : {false, true}) {
      for (DType dt : kDtypes) {
        CAPTURE(D);
        CAPTURE(affine);
        CAPTURE(std::string(dtype_name(dt)));
        // 3 x 77 rows; mean about 3 against a spread of about 0.6, so a variance computed as
        // E[x^2] - E[x]^2 would lose the f32 tolerance.
        const Tensor x = uniform_as(g, Shape{3, 77, D}, dt, 2.0, 4.0);
        layernorm_case(g, x, x.to(kGpu), affine, dt);
      }
    }
  }
  for (DType dt : kDtypes) {
    CAPTURE(std::string(dtype_name(dt)));
    // A rank-1 input (one row) and a row of 16-byte packs starting at a misaligned address (the
    // loop path must take it, not the vector path).
    const Tensor x1 = uniform_as(g, Shape{384}, dt, 2.0, 4.0);
    layernorm_case(g, x1, x1.to(kGpu), true, dt);
    const Tensor flat = uniform_as(g, Shape{5 * 384 + 1}, dt, 2.0, 4.0);
    const Tensor x_dev = flat.to(kGpu).slice0(1, 5 * 384 + 1).reshape({5, 384});
    layernorm_case(g, x_dev.to(Device::cpu()), x_dev, true, dt);
    // No rows: nothing to normalise, and the parameter gradients are exactly 0.
    const Tensor x0 = Tensor::empty(Shape{0, 33}, dt);
    const Tensor w = uniform_as(g, Shape{33}, dt);
    const std::vector<Tensor> r =
        run(Op::layernorm_bwd,
            on_gpu({x0, x0, Tensor::empty(Shape{0}, dt), Tensor::empty(Shape{0}, dt), w}),
            {Shape{0, 33}, Shape{33}, Shape{33}}, dt, kGpu);
    CHECK(rel_norm_error(r[1], Tensor::zeros(Shape{33}, DType::F64)) == 0.0);
    CHECK(rel_norm_error(r[2], Tensor::zeros(Shape{33}, DType::F64)) == 0.0);
  }
}

TEST_CASE("cuda kernels: modulate and its backward match the CPU, bitwise repeatable") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(43);
  for (int64_t D : kRowLengths) {
    for (DType dt : kDtypes) {
      CAPTURE(D);
      CAPTURE(std::string(dtype_name(dt)));
      modulate_case(g, Shape{3, 77, D}, dt);
    }
  }
  for (DType dt : kDtypes) {
    CAPTURE(std::string(dtype_name(dt)));
    modulate_case(g, Shape{1, 1, 1}, dt);
    modulate_case(g, Shape{2, 300, 64}, dt);  // several chunks of rows per sample
    // No tokens: gshift and gscale are sums over nothing, exactly 0.
    const Tensor e = Tensor::empty(Shape{3, 0, 16}, dt);
    const std::vector<Tensor> r =
        run(Op::modulate_bwd, on_gpu({e, e, uniform_as(g, Shape{3, 16}, dt)}),
            {Shape{3, 0, 16}, Shape{3, 16}, Shape{3, 16}}, dt, kGpu);
    CHECK(rel_norm_error(r[1], Tensor::zeros(Shape{3, 16}, DType::F64)) == 0.0);
    CHECK(rel_norm_error(r[2], Tensor::zeros(Shape{3, 16}, DType::F64)) == 0.0);
  }
  // Shapes are checked by the kernel itself, naming the op.
  kernels::OpCall c;
  c.in = {Tensor::zeros(Shape{2, 3, 4}, DType::F32, kGpu),
          Tensor::zeros(Shape{2, 4}, DType::F32, kGpu),
          Tensor::zeros(Shape{2, 5}, DType::F32, kGpu)};
  c.out = {Tensor::zeros(Shape{2, 3, 4}, DType::F32, kGpu)};
  CHECK_THROWS_WITH_AS(kernels::run(Op::modulate, c), doctest::Contains("modulate: scale"),
                       std::invalid_argument);
}

TEST_CASE("cuda kernels: groupnorm and its backward match the CPU, bitwise repeatable") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(47);
  for (const Shape& xs : {Shape{3, 32, 1, 1}, Shape{3, 32, 7, 9}, Shape{3, 32, 32, 32}}) {
    for (int64_t groups : {8, 1, 32}) {
      for (bool affine : {false, true}) {
        for (DType dt : kDtypes) {
          CAPTURE(xs.str());
          CAPTURE(groups);
          CAPTURE(affine);
          CAPTURE(std::string(dtype_name(dt)));
          groupnorm_case(g, xs, groups, affine, dt);
        }
      }
    }
  }
  for (DType dt : kDtypes) {
    CAPTURE(std::string(dtype_name(dt)));
    groupnorm_case(g, Shape{2, 6}, 3, true, dt);  // no spatial dims
    // No samples: gw and gb are exactly 0.
    const Tensor e = Tensor::empty(Shape{0, 8, 3}, dt);
    const Tensor s = Tensor::empty(Shape{0, 2}, dt);
    const std::vector<Tensor> r =
        run(Op::groupnorm_bwd, on_gpu({e, e, s, s, uniform_as(g, Shape{8}, dt)}),
            {Shape{0, 8, 3}, Shape{8}, Shape{8}}, dt, kGpu, 2);
    CHECK(rel_norm_error(r[1], Tensor::zeros(Shape{8}, DType::F64)) == 0.0);
    CHECK(rel_norm_error(r[2], Tensor::zeros(Shape{8}, DType::F64)) == 0.0);
  }
  kernels::OpCall c;
  c.in = {Tensor::zeros(Shape{2, 6, 4}, DType::F32, kGpu)};
  c.out = {Tensor::zeros(Shape{2, 6, 4}, DType::F32, kGpu),
           Tensor::zeros(Shape{2, 4}, DType::F32, kGpu),
           Tensor::zeros(Shape{2, 4}, DType::F32, kGpu)};
  c.ints[0] = 4;
  c.reals[0] = kNormEps;
  CHECK_THROWS_WITH_AS(kernels::run(Op::groupnorm, c),
                       doctest::Contains("groupnorm: 4 groups do not divide the 6 channels"),
                       std::invalid_argument);
}

#ifdef PSVAE_WITH_CUDA

namespace {

// layernorm_modulate_fwd / _bwd against the CPU composition in f64: layernorm without affine
// weights, then modulate; backward modulate_bwd on xhat, then layernorm_bwd.
void fused_layernorm_modulate_case(Generator& g, int64_t N, int64_t T, int64_t D, DType dt) {
  const Shape xs{N, T, D}, nd{N, D}, nt{N, T};
  const Tensor x = uniform_as(g, xs, dt, 2.0, 4.0), shift = uniform_as(g, nd, dt),
               scale = uniform_as(g, nd, dt);
  const Tensor x64 = widen(x), shift64 = widen(shift), scale64 = widen(scale);
  const ops::NormOut ln = ops::layernorm(x64, Tensor(), Tensor(), kNormEps);
  const Tensor y_ref = ops::modulate(ln.y, shift64, scale64);
  const std::vector<Tensor> got = {Tensor::empty(xs, dt, kGpu), Tensor::empty(nt, dt, kGpu),
                                   Tensor::empty(nt, dt, kGpu)};
  kernels::cuda::layernorm_modulate_fwd(x.to(kGpu), shift.to(kGpu), scale.to(kGpu), kNormEps,
                                        got[0], got[1], got[2]);
  check_close(got, {y_ref, ln.mean, ln.rstd}, dt, "layernorm_modulate_fwd");

  // Backward with the dtype-rounded statistics on both sides.
  const Tensor gy = uniform_as(g, xs, dt), mean = as_dtype(ln.mean, dt),
               rstd = as_dtype(ln.rstd, dt);
  const Tensor mean64 = widen(mean), rstd64 = widen(rstd);
  const Tensor xhat64 =
      ops::mul(ops::sub(x64, mean64.reshape({N, T, 1})), rstd64.reshape({N, T, 1}));
  const ops::ModulateGrads mg = ops::modulate_bwd(widen(gy), xhat64, scale64);
  const ops::NormGrads lg = ops::layernorm_bwd(mg.gx, x64, mean64, rstd64, Tensor());
  auto bwd = [&] {
    std::vector<Tensor> o = {Tensor::empty(xs, dt, kGpu), Tensor::empty(nd, dt, kGpu),
                             Tensor::empty(nd, dt, kGpu)};
    kernels::cuda::layernorm_modulate_bwd(gy.to(kGpu), x.to(kGpu), mean.to(kGpu), rstd.to(kGpu),
                                          scale.to(kGpu), o[0], o[1], o[2]);
    return o;
  };
  const std::vector<Tensor> b1 = bwd(), b2 = bwd();
  check_close(b1, {lg.gx, mg.gshift, mg.gscale}, dt, "layernorm_modulate_bwd");
  check_same_bits(b1, b2, "layernorm_modulate_bwd twice");
  if (dt == DType::BF16) return;  // gres is for f32 and f64 streams

  // gres (the residual stream's gradient waiting for x) added in the kernel: the bits of the GPU's
  // own add after it, on every path (register and loop, every row length above).
  const Tensor gres = uniform_as(g, xs, dt).to(kGpu);
  std::vector<Tensor> o = {Tensor::empty(xs, dt, kGpu), Tensor::empty(nd, dt, kGpu),
                           Tensor::empty(nd, dt, kGpu)};
  kernels::cuda::layernorm_modulate_bwd(gy.to(kGpu), x.to(kGpu), mean.to(kGpu), rstd.to(kGpu),
                                        scale.to(kGpu), o[0], o[1], o[2], gres);
  check_same_bits(o, {ops::add(gres, b1[0]), b1[1], b1[2]}, "layernorm_modulate_bwd with gres");
}

// gated_residual_fwd / _bwd against mul + add (and sum over t) in f64.
void gated_residual_case(Generator& g, int64_t N, int64_t T, int64_t D, DType dt) {
  const Shape xs{N, T, D}, nd{N, D};
  const Tensor x = uniform_as(g, xs, dt), h = uniform_as(g, xs, dt), gate = uniform_as(g, nd, dt);
  const Tensor gate64 = widen(gate).reshape({N, 1, D}), h64 = widen(h);
  const Tensor out_ref = ops::add(widen(x), ops::mul(gate64, h64));
  const Tensor out = Tensor::empty(xs, dt, kGpu);
  kernels::cuda::gated_residual_fwd(x.to(kGpu), gate.to(kGpu), h.to(kGpu), out);
  check_close({out}, {out_ref}, dt, "gated_residual_fwd");

  const Tensor gout = uniform_as(g, xs, dt), gout64 = widen(gout);
  const Tensor gh_ref = ops::mul(gout64, gate64), ggate_ref = ops::sum(ops::mul(gout64, h64), 1);
  auto bwd = [&] {
    std::vector<Tensor> o = {Tensor::empty(xs, dt, kGpu), Tensor::empty(nd, dt, kGpu)};
    kernels::cuda::gated_residual_bwd(gout.to(kGpu), gate.to(kGpu), h.to(kGpu), o[0], o[1]);
    return o;
  };
  const std::vector<Tensor> b1 = bwd(), b2 = bwd();
  check_close(b1, {gh_ref, ggate_ref}, dt, "gated_residual_bwd");
  check_same_bits(b1, b2, "gated_residual_bwd twice");
}

// The bf16 GEMM side of the fused DiT kernels beside an f32 x (bf16 autocast): layernorm +
// modulate writing a bf16 y and reading a bf16 gy; the gated residual reading a bf16 h and
// writing a bf16 gh. Each must give the bits of the f32 kernel with a cast after it (y, gh) or
// before it (gy, h) on the GPU: widening bf16 is exact and the one rounding to bf16 is of the
// same f32 value. And the f64 composition on the CPU within the stored dtype's tolerance.
void mixed_adaln_case(Generator& g, int64_t N, int64_t T, int64_t D) {
  const Shape xs{N, T, D}, nd{N, D}, nt{N, T};
  const DType f32 = DType::F32, bf16 = DType::BF16;
  const Tensor x = uniform_as(g, xs, f32, 2.0, 4.0), shift = uniform_as(g, nd, f32),
               scale = uniform_as(g, nd, f32);
  const Tensor xg = x.to(kGpu), shg = shift.to(kGpu), scg = scale.to(kGpu);
  auto gpu = [](const Shape& s, DType dt) { return Tensor::empty(s, dt, kGpu); };
  auto to_f32 = [](const Tensor& t) { return ops::cast(t, DType::F32); };
  auto to_bf16 = [](const Tensor& t) { return ops::cast(t, DType::BF16); };

  const std::vector<Tensor> fwd = {gpu(xs, bf16), gpu(nt, f32), gpu(nt, f32)};
  kernels::cuda::layernorm_modulate_fwd(xg, shg, scg, kNormEps, fwd[0], fwd[1], fwd[2]);
  const std::vector<Tensor> fwd32 = {gpu(xs, f32), gpu(nt, f32), gpu(nt, f32)};
  kernels::cuda::layernorm_modulate_fwd(xg, shg, scg, kNormEps, fwd32[0], fwd32[1], fwd32[2]);
  check_same_bits(fwd, {to_bf16(fwd32[0]), fwd32[1], fwd32[2]}, "layernorm_modulate_fwd, bf16 y");
  const Tensor x64 = widen(x), scale64 = widen(scale);
  const ops::NormOut ln = ops::layernorm(x64, Tensor(), Tensor(), kNormEps);
  check_close({fwd[0]}, {ops::modulate(ln.y, widen(shift), scale64)}, bf16, "bf16 y");
  check_close({fwd[1], fwd[2]}, {ln.mean, ln.rstd}, f32, "mean, rstd beside a bf16 y");

  const Tensor gy = uniform_as(g, xs, bf16), gyg = gy.to(kGpu);
  auto bwd = [&](const Tensor& gyv) {
    std::vector<Tensor> o = {gpu(xs, f32), gpu(nd, f32), gpu(nd, f32)};
    kernels::cuda::layernorm_modulate_bwd(gyv, xg, fwd[1], fwd[2], scg, o[0], o[1], o[2]);
    return o;
  };
  const std::vector<Tensor> b1 = bwd(gyg), b2 = bwd(gyg);
  check_same_bits(b1, b2, "layernorm_modulate_bwd, bf16 gy, twice");
  check_same_bits(b1, bwd(to_f32(gyg)), "layernorm_modulate_bwd, bf16 gy");
  const Tensor mean64 = widen(fwd[1].to(Device::cpu())), rstd64 = widen(fwd[2].to(Device::cpu()));
  const Tensor xhat64 =
      ops::mul(ops::sub(x64, mean64.reshape({N, T, 1})), rstd64.reshape({N, T, 1}));
  const ops::ModulateGrads mg = ops::modulate_bwd(widen(gy), xhat64, scale64);
  const ops::NormGrads lg = ops::layernorm_bwd(mg.gx, x64, mean64, rstd64, Tensor());
  check_close(b1, {lg.gx, mg.gshift, mg.gscale}, f32, "layernorm_modulate_bwd, bf16 gy");
  const Tensor gres = uniform_as(g, xs, f32).to(kGpu);
  std::vector<Tensor> o = {gpu(xs, f32), gpu(nd, f32), gpu(nd, f32)};
  kernels::cuda::layernorm_modulate_bwd(gyg, xg, fwd[1], fwd[2], scg, o[0], o[1], o[2], gres);
  check_same_bits(o, {ops::add(gres, b1[0]), b1[1], b1[2]}, "bf16 gy with gres");

  const Tensor h = uniform_as(g, xs, bf16), gate = uniform_as(g, nd, f32);
  const Tensor hg = h.to(kGpu), gateg = gate.to(kGpu);
  const Tensor out = gpu(xs, f32), out32 = gpu(xs, f32);
  kernels::cuda::gated_residual_fwd(xg, gateg, hg, out);
  kernels::cuda::gated_residual_fwd(xg, gateg, to_f32(hg), out32);
  check_same_bits({out}, {out32}, "gated_residual_fwd, bf16 h");
  const Tensor gate64 = widen(gate).reshape({N, 1, D}), h64 = widen(h);
  check_close({out}, {ops::add(x64, ops::mul(gate64, h64))}, f32, "gated_residual_fwd, bf16 h");

  const Tensor gout = uniform_as(g, xs, f32), goutg = gout.to(kGpu), gout64 = widen(gout);
  const std::vector<Tensor> gr = {gpu(xs, bf16), gpu(nd, f32)}, gr32 = {gpu(xs, f32), gpu(nd, f32)};
  kernels::cuda::gated_residual_bwd(goutg, gateg, hg, gr[0], gr[1]);
  kernels::cuda::gated_residual_bwd(goutg, gateg, to_f32(hg), gr32[0], gr32[1]);
  check_same_bits(gr, {to_bf16(gr32[0]), gr32[1]}, "gated_residual_bwd, bf16 h");
  check_close({gr[0]}, {ops::mul(gout64, gate64)}, bf16, "bf16 gh");
  check_close({gr[1]}, {ops::sum(ops::mul(gout64, h64), 1)}, f32, "ggate beside a bf16 h");
}

}  // namespace

TEST_CASE(
    "cuda kernels: the fused adaLN kernels take a bf16 GEMM side beside f32, as a cast would") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(61);
  for (int64_t D : kRowLengths) {
    CAPTURE(D);
    mixed_adaln_case(g, 3, 77, D);
  }
  mixed_adaln_case(g, 2, 300, 384);  // several chunks of rows per sample
  // bf16 goes beside f32 only.
  const Tensor x64 = Tensor::zeros(Shape{2, 3, 4}, DType::F64, kGpu);
  const Tensor nd64 = Tensor::zeros(Shape{2, 4}, DType::F64, kGpu);
  const Tensor nt64 = Tensor::zeros(Shape{2, 3}, DType::F64, kGpu);
  const Tensor y16 = Tensor::zeros(Shape{2, 3, 4}, DType::BF16, kGpu);
  CHECK_THROWS_WITH_AS(
      kernels::cuda::layernorm_modulate_fwd(x64, nd64, nd64, kNormEps, y16, nt64, nt64),
      doctest::Contains("layernorm_modulate_fwd: y must be (2, 3, 4) (f64, cuda:0), got"),
      std::invalid_argument);
  CHECK_THROWS_WITH_AS(kernels::cuda::gated_residual_fwd(x64, nd64, y16, x64),
                       doctest::Contains("gated_residual_fwd: h must be"), std::invalid_argument);
}

TEST_CASE("cuda kernels: fused layernorm + modulate matches layernorm then modulate on the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(53);
  for (int64_t D : kRowLengths) {
    for (DType dt : kDtypes) {
      CAPTURE(D);
      CAPTURE(std::string(dtype_name(dt)));
      fused_layernorm_modulate_case(g, 3, 77, D, dt);
    }
  }
  for (DType dt : kDtypes) {
    CAPTURE(std::string(dtype_name(dt)));
    fused_layernorm_modulate_case(g, 2, 300, 384, dt);  // several chunks of rows per sample
    fused_layernorm_modulate_case(g, 1, 1, 32, dt);
  }
  const Tensor x = Tensor::zeros(Shape{2, 3, 4}, DType::F32, kGpu);
  const Tensor bad = Tensor::zeros(Shape{3, 4}, DType::F32, kGpu);
  const Tensor nt = Tensor::zeros(Shape{2, 3}, DType::F32, kGpu);
  CHECK_THROWS_WITH_AS(kernels::cuda::layernorm_modulate_fwd(x, bad, bad, kNormEps, x, nt, nt),
                       doctest::Contains("layernorm_modulate_fwd: shift"), std::invalid_argument);
}

TEST_CASE("cuda kernels: fused gated residual matches mul + add on the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(59);
  for (int64_t D : kRowLengths) {
    for (DType dt : kDtypes) {
      CAPTURE(D);
      CAPTURE(std::string(dtype_name(dt)));
      gated_residual_case(g, 3, 77, D, dt);
    }
  }
  const Tensor x = Tensor::zeros(Shape{2, 3, 4}, DType::F32, kGpu);
  const Tensor bad = Tensor::zeros(Shape{2, 5}, DType::F32, kGpu);
  CHECK_THROWS_WITH_AS(kernels::cuda::gated_residual_fwd(x, bad, x, x),
                       doctest::Contains("gated_residual_fwd: gate"), std::invalid_argument);
}

#endif  // PSVAE_WITH_CUDA
