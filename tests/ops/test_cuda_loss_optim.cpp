// The CUDA loss kernels (kernels/cuda/loss.cu: mse, l1, Gaussian KL, cross-entropy, forward and
// backward, and the fused KL of loss_fused.h) and optimiser kernels (kernels/cuda/optim.cu:
// adamw_step, ema_update, and the multi-tensor AdamW, EMA and global grad norm of optim_fused.h)
// against the CPU kernels run in f64 on the same (dtype-rounded) inputs, outputs poisoned with
// NaN, every element compared by the relative norm error ||out - ref|| / ||ref||: under 1e-5 in
// f32, 1e-12 in f64, 1e-2 in bf16 (NaN never passes; an all-zero reference needs exact zeros).
//
// Beyond the values: every reduction is run twice and must give the same bits, and again on views
// offset by one element (the scalar-load path) and must still give the same bits (the reduction
// order does not depend on alignment); the fused KL must equal the two KL ops bit for bit; the
// multi-tensor AdamW and EMA must equal the per-tensor CUDA ops bit for bit; bad inputs throw
// naming the op. Sizes 1, 7, 1000 and 2^20 + 3 (a partial last pack and many pass-1 blocks);
// cross-entropy with C = 1, 10, 1000, 32000, 32001. Skipped without a CUDA device.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common/cuda_compare.h"
#include "common/test_util.h"
#include "kernels/op_table.h"
#include "kernels/ops.h"
#ifdef PSVAE_WITH_CUDA
#include "kernels/cuda/loss_fused.h"
#include "kernels/cuda/optim_fused.h"
#endif

using namespace psvae;
using kernels::Op;
using test::as_dtype;
using test::check_close;
using test::same_bits_flat;
using test::tolerance;
using test::widen;

namespace {

const Device kGpu = Device::cuda(0);
const Device kCpu = Device::cpu();

Tensor rand_u(Generator& g, const Shape& s, double lo, double hi, DType dt) {
  return test::uniform_as(g, s, dt, lo, hi);
}

// A copy of the 1-D tensor t on the GPU that starts one element into its buffer: not 16-byte
// aligned, so the kernels take their scalar-load path.
Tensor offset_copy(const Tensor& t) {
  Tensor big = Tensor::empty(Shape{t.numel() + 1}, t.dtype(), kGpu);
  Tensor view = big.slice0(1, t.numel() + 1);
  view.copy_from(t.reshape(Shape{t.numel()}));
  return view;
}
Tensor offset_empty(int64_t n, DType dt) {
  return Tensor::empty(Shape{n + 1}, dt, kGpu).slice0(1, n + 1);
}

kernels::OpCall call_of(std::vector<Tensor> in, std::vector<Tensor> out, double r0 = 0) {
  return test::op_call(std::move(in), std::move(out), {}, {r0});
}

// Runs op with fresh outputs of the given shapes in dtype dt on device d.
std::vector<Tensor> run(Op op, const std::vector<Tensor>& in, const std::vector<Shape>& shapes,
                        DType dt, Device d, double r0 = 0) {
  return test::run_op(op, in, shapes, dt, d, {}, {r0});
}

// b with every fifth element set equal to a's (l1's ties: a zero gradient there).
Tensor with_ties(const Tensor& a, const Tensor& b, DType dt) {
  std::vector<double> va = test::as_doubles(a), vb = test::as_doubles(b);
  for (size_t i = 0; i < va.size(); i += 5) vb[i] = va[i];
  return as_dtype(Tensor::from_vector(vb, b.shape()), dt);
}

const char* dt_name(DType dt) { return dtype_name(dt); }

const std::vector<int64_t> kSizes = {1, 7, 1000, (int64_t(1) << 20) + 3};

}  // namespace

TEST_CASE("cuda kernels: mse, l1 and KL losses, forward and backward, match the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(41);
  const double norm = 4.0;  // KL normaliser: "per sample" over 4 samples
  for (int64_t n : kSizes) {
    const Shape sh{n};
    for (DType dt : {DType::F32, DType::BF16, DType::F64}) {
      for (Op fwd : {Op::mse_loss, Op::l1_loss, Op::kl_gauss}) {
        const bool kl = fwd == Op::kl_gauss;
        const Op bwd = kl                    ? Op::kl_gauss_bwd
                       : fwd == Op::mse_loss ? Op::mse_loss_bwd
                                             : Op::l1_loss_bwd;
        const int nout = kl ? 2 : 1;
        const double r = kl ? norm : 0.0;
        CAPTURE(std::string(kernels::op_name(fwd)));
        CAPTURE(n);
        CAPTURE(dt_name(dt));
        const Tensor a = kl ? as_dtype(test::normal(g, sh), dt) : rand_u(g, sh, -2, 2, dt);
        Tensor b = rand_u(g, sh, -2, 2, dt);
        if (!kl) b = with_ties(a, b, dt);
        const Tensor ag = a.to(kGpu), bg = b.to(kGpu);

        // Forward: the f64 CPU result of the same inputs.
        const Tensor y_ref = run(fwd, {widen(a), widen(b)}, {Shape{}}, DType::F64, kCpu, r)[0];
        const Tensor y = run(fwd, {ag, bg}, {Shape{}}, dt, kGpu, r)[0];
        check_close(y, y_ref, tolerance(dt));
        // Deterministic: the same call again, and on unaligned views, gives the same bits.
        CHECK(same_bits_flat(run(fwd, {ag, bg}, {Shape{}}, dt, kGpu, r)[0], y));
        const Tensor ao = offset_copy(ag), bo = offset_copy(bg);
        CHECK(same_bits_flat(run(fwd, {ao, bo}, {Shape{}}, dt, kGpu, r)[0], y));

        // Backward with gy on the device.
        const Tensor gy = rand_u(g, Shape{}, 0.5, 2.0, dt);
        const std::vector<Shape> oshapes(static_cast<size_t>(nout), sh);
        const std::vector<Tensor> ref =
            run(bwd, {widen(gy), widen(a), widen(b)}, oshapes, DType::F64, kCpu, r);
        const std::vector<Tensor> got = run(bwd, {gy.to(kGpu), ag, bg}, oshapes, dt, kGpu, r);
        for (int k = 0; k < nout; ++k) check_close(got[k], ref[k], tolerance(dt));
        // Unaligned inputs and outputs: the same bits.
        std::vector<Tensor> outs_off;
        for (int k = 0; k < nout; ++k) outs_off.push_back(offset_empty(n, dt));
        kernels::run(bwd, call_of({gy.to(kGpu), ao, bo}, outs_off, r));
        for (int k = 0; k < nout; ++k) CHECK(same_bits_flat(outs_off[k], got[k]));
      }
    }
  }
}

TEST_CASE("cuda kernels: l1_loss_bwd is 0 where a == b, as on the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  const Tensor a = Tensor::from_vector<float>({1.0f, 2.0f, -3.0f, 0.5f}, Shape{4}).to(kGpu);
  const Tensor b = Tensor::from_vector<float>({1.0f, 1.0f, -1.0f, 0.5f}, Shape{4}).to(kGpu);
  const Tensor gy = Tensor::scalar(2.0, DType::F32, kGpu);
  const Tensor ga = run(Op::l1_loss_bwd, {gy, a, b}, {Shape{4}}, DType::F32, kGpu)[0];
  CHECK(ga.to_vector<float>() == std::vector<float>{0.0f, 0.5f, -0.5f, 0.0f});
}

TEST_CASE("cuda kernels: cross_entropy forward and backward match the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(43);
  struct Case {
    int64_t N, C;
    DType tdt;
  };
  // C = 1 (loss and gradient exactly 0), a short unaligned row, an aligned row of 1000, a
  // vocabulary-sized aligned row (32000) and an unaligned one (32001), i32 and i64 ids.
  const std::vector<Case> cases = {{5, 1, DType::I64},     {7, 10, DType::I32},
                                   {7, 10, DType::I64},    {33, 1000, DType::I64},
                                   {4, 32000, DType::I32}, {3, 32001, DType::I64}};
  for (const Case& k : cases) {
    for (DType dt : {DType::F32, DType::BF16, DType::F64}) {
      CAPTURE(k.N);
      CAPTURE(k.C);
      CAPTURE(dt_name(dt));
      CAPTURE(dt_name(k.tdt));
      // Logits of +-30: e^x would overflow f32 without the max shift.
      const Tensor x = rand_u(g, Shape{k.N, k.C}, -30, 30, dt);
      const std::vector<double> u = test::as_doubles(test::uniform(g, Shape{k.N}, 0, 1));
      std::vector<int64_t> ids(static_cast<size_t>(k.N));
      for (size_t i = 0; i < ids.size(); ++i)
        ids[i] = std::min<int64_t>(k.C - 1, static_cast<int64_t>(u[i] * static_cast<double>(k.C)));
      Tensor target;
      if (k.tdt == DType::I64) {
        target = Tensor::from_vector(ids, Shape{k.N});
      } else {
        std::vector<int32_t> ids32(ids.begin(), ids.end());
        target = Tensor::from_vector(ids32, Shape{k.N});
      }
      const Tensor xg = x.to(kGpu), tg = target.to(kGpu);

      kernels::OpCall cref = call_of({widen(x), target}, {Tensor::empty(Shape{}, DType::F64),
                                                          Tensor::empty(Shape{k.N}, DType::F64)});
      kernels::run(Op::cross_entropy, cref);
      kernels::OpCall cg = call_of(
          {xg, tg}, {Tensor::empty(Shape{}, dt, kGpu), Tensor::empty(Shape{k.N}, dt, kGpu)});
      kernels::run(Op::cross_entropy, cg);
      check_close(cg.out[0], cref.out[0], tolerance(dt));
      check_close(cg.out[1], cref.out[1], tolerance(dt));
      // The same bits the second time.
      kernels::OpCall cg2 = call_of(
          {xg, tg}, {Tensor::empty(Shape{}, dt, kGpu), Tensor::empty(Shape{k.N}, dt, kGpu)});
      kernels::run(Op::cross_entropy, cg2);
      CHECK(same_bits_flat(cg2.out[0], cg.out[0]));
      CHECK(same_bits_flat(cg2.out[1], cg.out[1]));

      // Backward, fed the reference lse rounded to the dtype on both sides.
      const Tensor gy = rand_u(g, Shape{}, 0.5, 2.0, dt);
      const Tensor lse_d = as_dtype(cref.out[1], dt);
      const Tensor gx_ref = run(Op::cross_entropy_bwd, {widen(gy), widen(x), target, widen(lse_d)},
                                {Shape{k.N, k.C}}, DType::F64, kCpu)[0];
      const Tensor gx = run(Op::cross_entropy_bwd, {gy.to(kGpu), xg, tg, lse_d.to(kGpu)},
                            {Shape{k.N, k.C}}, dt, kGpu)[0];
      check_close(gx, gx_ref, tolerance(dt));
    }
  }
}

TEST_CASE("cuda kernels: cross_entropy names a target outside [0, C), as the CPU does") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  const Tensor logits = Tensor::zeros(Shape{2, 3}, DType::F32, kGpu);
  CHECK_THROWS_WITH_AS(
      ops::cross_entropy(logits, Tensor::from_vector<int64_t>({0, 3}, Shape{2}).to(kGpu)),
      "cross_entropy: target[1] = 3 is outside [0, C) with C = 3", std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      ops::cross_entropy(logits, Tensor::from_vector<int32_t>({-1, 0}, Shape{2}).to(kGpu)),
      "cross_entropy: target[0] = -1 is outside [0, C) with C = 3", std::invalid_argument);
  const Tensor gy = Tensor::scalar(1.0, DType::F32, kGpu);
  const Tensor lse = Tensor::zeros(Shape{2}, DType::F32, kGpu);
  CHECK_THROWS_WITH_AS(
      ops::cross_entropy_bwd(gy, logits, Tensor::from_vector<int64_t>({5, -2}, Shape{2}).to(kGpu),
                             lse),
      "cross_entropy_bwd: target[0] = 5 is outside [0, C) with C = 3", std::invalid_argument);
  // Uniform logits: loss and lse are log C.
  auto out = ops::cross_entropy(logits, Tensor::from_vector<int64_t>({0, 2}, Shape{2}).to(kGpu));
  CHECK(out.loss.item() == doctest::Approx(std::log(3.0)).epsilon(1e-6));
  CHECK(out.lse.to_vector<float>()[1] == doctest::Approx(std::log(3.0)).epsilon(1e-6));
}

TEST_CASE("cuda kernels: loss kernels refuse bad input, naming the op") {
  PSVAE_REQUIRE_CUDA();
  const Tensor a = Tensor::zeros(Shape{4}, DType::F32, kGpu);
  const Tensor b = Tensor::zeros(Shape{5}, DType::F32, kGpu);
  const Tensor y = Tensor::empty(Shape{}, DType::F32, kGpu);
  CHECK_THROWS_WITH_AS(kernels::run(Op::mse_loss, call_of({a, b}, {y})),
                       doctest::Contains("mse_loss"), std::exception);
  CHECK_THROWS_WITH_AS(kernels::run(Op::l1_loss_bwd, call_of({y, a, b}, {a.clone()})),
                       doctest::Contains("l1_loss_bwd"), std::exception);
  const Tensor i = Tensor::zeros(Shape{4}, DType::I32, kGpu);
  CHECK_THROWS_WITH_AS(
      kernels::run(Op::kl_gauss, call_of({i, i}, {Tensor::empty(Shape{}, DType::I32, kGpu)}, 1.0)),
      doctest::Contains("kl_gauss"), std::exception);
  CHECK_THROWS_WITH_AS(kernels::run(Op::kl_gauss, call_of({a, a.clone()}, {y}, 0.0)),
                       doctest::Contains("kl_gauss"), std::exception);
  const Tensor x1 = Tensor::zeros(Shape{6}, DType::F32, kGpu);
  const Tensor t = Tensor::zeros(Shape{6}, DType::I64, kGpu);
  CHECK_THROWS_WITH_AS(
      kernels::run(Op::cross_entropy,
                   call_of({x1, t}, {y, Tensor::empty(Shape{6}, DType::F32, kGpu)})),
      doctest::Contains("cross_entropy"), std::exception);
}

TEST_CASE("cuda kernels: adamw_step over several steps matches the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(47);
  for (int64_t n : kSizes) {
    for (DType dt : {DType::F32, DType::F64}) {
      for (double wd : {0.0, 0.05}) {
        CAPTURE(n);
        CAPTURE(dt_name(dt));
        CAPTURE(wd);
        const Shape sh{n};
        // Fresh state (m = v = 0), as on step 1.
        Tensor p = rand_u(g, sh, -1, 1, dt).to(kGpu);
        Tensor m = Tensor::zeros(sh, dt, kGpu), v = Tensor::zeros(sh, dt, kGpu);
        ops::AdamWParams hp;
        hp.lr = 0.05;  // the update is a visible part of the param
        hp.weight_decay = wd;
        // Ten steps at the small sizes (bias correction and state far from its start); three at
        // 2^20 + 3, enough to run the grid-stride loop on a state it wrote itself: that size's ten
        // steps took 12 of this case's 13 s on the emulator.
        const int64_t steps = n > 1000 ? 3 : 10;
        for (int64_t step = 1; step <= steps; ++step) {
          CAPTURE(step);
          hp.step = step;
          const Tensor grad = as_dtype(test::normal(g, sh, 0.0, 0.1), dt);
          // The f64 CPU step from the same (dtype-exact) state.
          Tensor p64 = widen(p), m64 = widen(m), v64 = widen(v);
          ops::adamw_step(p64, widen(grad), m64, v64, hp);
          // Determinism: a second CUDA step on copies of the state gives the same bits.
          Tensor p2 = p.clone(), m2 = m.clone(), v2 = v.clone();
          const Tensor gg = grad.to(kGpu);
          ops::adamw_step(p, gg, m, v, hp);
          ops::adamw_step(p2, gg, m2, v2, hp);
          check_close(p, p64, tolerance(dt));
          check_close(m, m64, tolerance(dt));
          check_close(v, v64, tolerance(dt));
          CHECK(same_bits_flat(p, p2));
          CHECK(same_bits_flat(m, m2));
          CHECK(same_bits_flat(v, v2));
        }
      }
    }
  }
  // bf16 params are refused (the CPU kernel has none either), naming the op.
  Tensor pb = Tensor::zeros(Shape{3}, DType::BF16, kGpu);
  Tensor mb = pb.clone(), vb = pb.clone();
  CHECK_THROWS_WITH_AS(ops::adamw_step(pb, pb.clone(), mb, vb, {}), doctest::Contains("adamw_step"),
                       std::exception);
}

TEST_CASE("cuda kernels: ema_update matches the CPU, exact at decay 0 and 1") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(53);
  for (int64_t n : kSizes) {
    for (DType dt : {DType::F32, DType::F64}) {
      for (double decay : {0.9999, 0.5, 0.0, 1.0}) {
        CAPTURE(n);
        CAPTURE(dt_name(dt));
        CAPTURE(decay);
        const Tensor e0 = rand_u(g, Shape{n}, -1, 1, dt), p = rand_u(g, Shape{n}, -1, 1, dt);
        Tensor e64 = widen(e0);
        ops::ema_update(e64, widen(p), decay);
        Tensor e = e0.to(kGpu);
        ops::ema_update(e, p.to(kGpu), decay);
        check_close(e, e64, tolerance(dt));
        if (decay == 1.0) CHECK(same_bits_flat(e, e0));
        if (decay == 0.0) CHECK(same_bits_flat(e, p));
      }
    }
  }
}

#ifdef PSVAE_WITH_CUDA

TEST_CASE("cuda kernels: kl_gauss_fused equals kl_gauss and kl_gauss_bwd, in one pass") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(59);
  const double norm = 3.0, gscale = 0.75;  // 0.75 is exact in every dtype
  for (int64_t n : kSizes) {
    for (DType dt : {DType::F32, DType::BF16, DType::F64}) {
      CAPTURE(n);
      CAPTURE(dt_name(dt));
      const Shape sh{n};
      const Tensor mu = as_dtype(test::normal(g, sh), dt), lv = rand_u(g, sh, -2, 2, dt);
      const Tensor mug = mu.to(kGpu), lvg = lv.to(kGpu);
      Tensor loss = Tensor::empty(Shape{}, dt, kGpu);
      Tensor gmu = Tensor::empty(sh, dt, kGpu), glv = Tensor::empty(sh, dt, kGpu);
      kernels::cuda::kl_gauss_fused(mug, lvg, norm, gscale, loss, gmu, glv);
      // Against the f64 CPU ops.
      const Tensor loss_ref =
          run(Op::kl_gauss, {widen(mu), widen(lv)}, {Shape{}}, DType::F64, kCpu, norm)[0];
      const std::vector<Tensor> gref =
          run(Op::kl_gauss_bwd, {Tensor::scalar(gscale, DType::F64), widen(mu), widen(lv)},
              {sh, sh}, DType::F64, kCpu, norm);
      check_close(loss, loss_ref, tolerance(dt));
      check_close(gmu, gref[0], tolerance(dt));
      check_close(glv, gref[1], tolerance(dt));
      // Bit for bit the unfused CUDA ops.
      CHECK(same_bits_flat(loss, run(Op::kl_gauss, {mug, lvg}, {Shape{}}, dt, kGpu, norm)[0]));
      const std::vector<Tensor> gops = run(
          Op::kl_gauss_bwd, {Tensor::scalar(gscale, dt, kGpu), mug, lvg}, {sh, sh}, dt, kGpu, norm);
      CHECK(same_bits_flat(gmu, gops[0]));
      CHECK(same_bits_flat(glv, gops[1]));
      // An f32 loss from bf16 inputs keeps f32 accuracy.
      if (dt == DType::BF16) {
        Tensor loss32 = Tensor::empty(Shape{}, DType::F32, kGpu);
        kernels::cuda::kl_gauss_fused(mug, lvg, norm, gscale, loss32, gmu, glv);
        check_close(loss32, loss_ref, 1e-5);
      }
    }
  }
  const Tensor a = Tensor::zeros(Shape{4}, DType::F32, kGpu);
  const Tensor y = Tensor::empty(Shape{}, DType::F32, kGpu);
  CHECK_THROWS_WITH_AS(kernels::cuda::kl_gauss_fused(a, a, 0.0, 1.0, y, a.clone(), a.clone()),
                       doctest::Contains("kl_gauss_fused"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(kernels::cuda::kl_gauss_fused(a, Tensor::zeros(Shape{5}, DType::F32, kGpu),
                                                     1.0, 1.0, y, a.clone(), a.clone()),
                       doctest::Contains("kl_gauss_fused"), std::invalid_argument);
}

namespace {

// The parameter list of the multi-tensor tests: odd sizes, one tensor of several chunks of 65536
// (with a partial last one), an empty one, and one starting one element into its buffer
// (unaligned: the scalar path).
std::vector<Tensor> mt_params(Generator& g, DType dt) {
  std::vector<Tensor> ps;
  for (const Shape& s : {Shape{1}, Shape{7}, Shape{1000}, Shape{65536 + 5}, Shape{3, 70001},
                         Shape{0}, Shape{(int64_t(1) << 20) + 3}})
    ps.push_back(rand_u(g, s, -1, 1, dt).to(kGpu));
  ps.push_back(offset_copy(rand_u(g, Shape{999}, -1, 1, dt)));
  return ps;
}

std::vector<Tensor> clones(const std::vector<Tensor>& ts) {
  std::vector<Tensor> r;
  for (const Tensor& t : ts) r.push_back(t.clone());
  return r;
}

// f32(g) * f32(scale) on the host, one IEEE product as the kernel forms it.
Tensor scaled_f32(const Tensor& grad, float scale) {
  std::vector<double> v = test::as_doubles(grad);
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = static_cast<float>(v[i]) * scale;
  return Tensor::from_vector(f, grad.shape());
}

}  // namespace

TEST_CASE("cuda kernels: adamw_multi_tensor equals adamw_step on each tensor") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(61);
  struct Case {
    DType gdt;
    bool copies;
    double host_scale;
    double dev_scale;  // < 0: none
    bool per_tensor_wd;
  };
  const std::vector<Case> cases = {{DType::F32, false, 1.0, -1, false},
                                   {DType::BF16, true, 0.5, -1, true},
                                   {DType::F32, true, 1.0, 0.37, false},
                                   {DType::BF16, false, 1.0, 0.8125, true}};
  for (const Case& k : cases) {
    CAPTURE(dt_name(k.gdt));
    CAPTURE(k.copies);
    CAPTURE(k.host_scale);
    CAPTURE(k.dev_scale);
    std::vector<Tensor> params = mt_params(g, DType::F32);
    std::vector<Tensor> m, v, copies;
    std::vector<double> wds;
    for (size_t i = 0; i < params.size(); ++i) {
      m.push_back(Tensor::zeros(params[i].shape(), DType::F32, kGpu));
      v.push_back(Tensor::zeros(params[i].shape(), DType::F32, kGpu));
      if (k.copies) copies.push_back(Tensor::empty(params[i].shape(), DType::BF16, kGpu));
      wds.push_back(i % 2 ? 0.0 : 0.05);  // as biases without decay
    }
    kernels::cuda::AdamWHyper hp;
    hp.lr = 0.05;
    hp.weight_decay = 0.05;
    const Tensor scale_dev =
        k.dev_scale >= 0 ? Tensor::scalar(k.dev_scale, DType::F32, kGpu) : Tensor();
    const float scale = static_cast<float>(k.dev_scale >= 0 ? k.dev_scale : k.host_scale);
    for (int64_t step : {int64_t(1), int64_t(10)}) {  // fresh state, then step 10 on the result
      CAPTURE(step);
      std::vector<Tensor> grads;
      for (const Tensor& p : params)
        grads.push_back(as_dtype(test::normal(g, p.shape(), 0.0, 0.1), k.gdt).to(kGpu));
      // References: the per-tensor CUDA op on the scaled grad (bitwise), the f64 CPU op (close).
      std::vector<Tensor> p1 = clones(params), m1 = clones(m), v1 = clones(v);
      std::vector<Tensor> p64, m64, v64;
      for (size_t i = 0; i < params.size(); ++i) {
        ops::AdamWParams op_hp;
        op_hp.lr = hp.lr;
        op_hp.weight_decay = k.per_tensor_wd ? wds[i] : hp.weight_decay;
        op_hp.step = step;
        const Tensor gs = scaled_f32(grads[i], scale);
        ops::adamw_step(p1[i], gs.to(kGpu), m1[i], v1[i], op_hp);
        p64.push_back(widen(params[i]));
        m64.push_back(widen(m[i]));
        v64.push_back(widen(v[i]));
        ops::adamw_step(p64[i], widen(gs), m64[i], v64[i], op_hp);
      }
      kernels::cuda::adamw_multi_tensor(params, grads, m, v, copies, hp, step, k.host_scale,
                                        scale_dev, k.per_tensor_wd ? wds : std::vector<double>{});
      for (size_t i = 0; i < params.size(); ++i) {
        CAPTURE(i);
        CHECK(same_bits_flat(params[i], p1[i]));
        CHECK(same_bits_flat(m[i], m1[i]));
        CHECK(same_bits_flat(v[i], v1[i]));
        check_close(params[i], p64[i], 1e-5);
        check_close(m[i], m64[i], 1e-5);
        check_close(v[i], v64[i], 1e-5);
        if (k.copies) CHECK(same_bits_flat(copies[i], as_dtype(params[i], DType::BF16)));
      }
    }
  }
  // Bad input names the function.
  std::vector<Tensor> ps = {Tensor::zeros(Shape{3}, DType::F32, kGpu)};
  std::vector<Tensor> none;
  CHECK_THROWS_WITH_AS(kernels::cuda::adamw_multi_tensor(ps, none, ps, ps, none, {}, 1),
                       doctest::Contains("adamw_multi_tensor"), std::invalid_argument);
  std::vector<Tensor> gs = {Tensor::zeros(Shape{3}, DType::F32, kGpu)};
  std::vector<Tensor> ms = {Tensor::zeros(Shape{3}, DType::F32, kGpu)};
  CHECK_THROWS_WITH_AS(kernels::cuda::adamw_multi_tensor(ps, gs, ms, ms, none, {}, 1),
                       doctest::Contains("adamw_multi_tensor"), std::invalid_argument);
  std::vector<Tensor> vs = {Tensor::zeros(Shape{3}, DType::F32, kGpu)};
  CHECK_THROWS_WITH_AS(kernels::cuda::adamw_multi_tensor(ps, gs, ms, vs, none, {}, 0),
                       doctest::Contains("adamw_multi_tensor"), std::invalid_argument);
}

TEST_CASE("cuda kernels: ema_multi_tensor equals ema_update on each tensor") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(67);
  for (DType dt : {DType::F32, DType::F64}) {
    CAPTURE(dt_name(dt));
    const std::vector<Tensor> params = mt_params(g, dt);
    std::vector<Tensor> ema = mt_params(g, dt);
    std::vector<Tensor> ref = clones(ema);
    std::vector<Tensor> ref64;
    for (size_t i = 0; i < params.size(); ++i) {
      ops::ema_update(ref[i], params[i], 0.9999);
      ref64.push_back(widen(ema[i]));
      ops::ema_update(ref64[i], widen(params[i]), 0.9999);
    }
    kernels::cuda::ema_multi_tensor(ema, params, 0.9999);
    for (size_t i = 0; i < params.size(); ++i) {
      CAPTURE(i);
      CHECK(same_bits_flat(ema[i], ref[i]));
      check_close(ema[i], ref64[i], tolerance(dt));
    }
  }
  std::vector<Tensor> e = {Tensor::zeros(Shape{3}, DType::F32, kGpu)};
  std::vector<Tensor> p = {Tensor::zeros(Shape{3}, DType::F32, kGpu)};
  CHECK_THROWS_WITH_AS(kernels::cuda::ema_multi_tensor(e, p, 1.5),
                       doctest::Contains("ema_multi_tensor"), std::invalid_argument);
  std::vector<Tensor> p4 = {Tensor::zeros(Shape{4}, DType::F32, kGpu)};
  CHECK_THROWS_WITH_AS(kernels::cuda::ema_multi_tensor(e, p4, 0.5),
                       doctest::Contains("ema_multi_tensor"), std::invalid_argument);
}

TEST_CASE("cuda kernels: global_grad_norm over mixed dtypes, deterministic, with the clip factor") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(71);
  std::vector<Tensor> grads = {rand_u(g, Shape{1000}, -1, 1, DType::F32).to(kGpu),
                               rand_u(g, Shape{65536 + 5}, -1, 1, DType::BF16).to(kGpu),
                               rand_u(g, Shape{7}, -1, 1, DType::F64).to(kGpu),
                               Tensor(),  // undefined: no gradient for this parameter
                               Tensor::empty(Shape{0}, DType::F32, kGpu),
                               rand_u(g, Shape{(int64_t(1) << 20) + 3}, -1, 1, DType::F32).to(kGpu),
                               rand_u(g, Shape{1}, -1, 1, DType::F32).to(kGpu),
                               offset_copy(rand_u(g, Shape{4099}, -1, 1, DType::F32)),
                               offset_copy(rand_u(g, Shape{333}, -1, 1, DType::BF16))};
  long double ss = 0;
  for (const Tensor& t : grads) {
    if (!t.defined()) continue;
    for (double x : test::as_doubles(t)) ss += static_cast<long double>(x) * x;
  }
  const double ref = static_cast<double>(std::sqrt(ss));
  const double norm = kernels::cuda::global_grad_norm(grads);
  CHECK(std::fabs(norm - ref) <= 1e-12 * ref);
  CHECK(kernels::cuda::global_grad_norm(grads) == norm);  // bit-identical the second time
  // Device form: an f64 norm equal to the host form's, an f32 norm and the clip factor.
  Tensor n64 = Tensor::empty(Shape{}, DType::F64, kGpu);
  kernels::cuda::global_grad_norm(grads, n64);
  CHECK(n64.item() == norm);
  Tensor n32 = Tensor::empty(Shape{}, DType::F32, kGpu);
  Tensor clip = Tensor::empty(Shape{}, DType::F32, kGpu);
  kernels::cuda::global_grad_norm(grads, n32, ref / 2, clip);
  CHECK(n32.item() == static_cast<double>(static_cast<float>(norm)));
  CHECK(clip.item() == doctest::Approx((ref / 2) / (ref + 1e-6)).epsilon(1e-6));
  kernels::cuda::global_grad_norm(grads, n32, ref * 10, clip);
  CHECK(clip.item() == 1.0);
  // Nothing to sum: 0.
  CHECK(kernels::cuda::global_grad_norm(std::vector<Tensor>{}) == 0.0);
  kernels::cuda::global_grad_norm({Tensor::empty(Shape{0}, DType::F32, kGpu)}, n32);
  CHECK(n32.item() == 0.0);
  // Bad input names the function.
  CHECK_THROWS_WITH_AS(kernels::cuda::global_grad_norm({Tensor::zeros(Shape{3}, DType::I32, kGpu)}),
                       doctest::Contains("global_grad_norm"), std::exception);
  CHECK_THROWS_WITH_AS(kernels::cuda::global_grad_norm(grads, n32, 0.0, clip),
                       doctest::Contains("global_grad_norm"), std::invalid_argument);
}

#endif  // PSVAE_WITH_CUDA
