// The CUDA unary kernels (kernels/cuda/unary.cu: exp ... clamp and their backwards) and the
// softmax family (kernels/cuda/softmax.cu) against the CPU kernels in f64 on the same inputs,
// outputs poisoned with NaN, every element compared through the relative norm error ||out - ref|| /
// ||ref||: under 1e-5 in f32, 1e-12 in f64 and 1e-2 in bf16 (a NaN anywhere fails; an all-zero
// reference needs exact zeros). Unary shapes: 37x129 (the one-element path), 64x64 (16-byte
// packs), a 0-d tensor; softmax rows of 1 to 4097 elements. Skipped without a CUDA device.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "common/cuda_compare.h"
#include "common/test_util.h"
#include "kernels/op_table.h"

using namespace psvae;
using kernels::Op;
using test::as_dtype;
using test::rel_norm_error;
using test::tolerance;
using test::widen;

namespace {

const Device kGpu = Device::cuda(0);

// One output shaped like the first input; reals p, q.
Tensor run(Op op, const std::vector<Tensor>& in, DType dt, Device d, double p = 0, double q = 0) {
  return test::run_op(op, in, {in[0].shape()}, dt, d, {}, {p, q})[0];
}

struct Case {
  Op fwd, bwd;
  double lo, hi;  // input range
  double p = 0, q = 0;
};

}  // namespace

TEST_CASE("cuda kernels: unary functions and their backwards match the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(31);
  const std::vector<Case> cases = {
      {Op::exp, Op::exp_bwd, -4, 4},
      {Op::log, Op::log_bwd, 0.05, 5},
      {Op::sqrt, Op::sqrt_bwd, 0.05, 5},
      {Op::rsqrt, Op::rsqrt_bwd, 0.05, 5},
      {Op::tanh, Op::tanh_bwd, -4, 4},
      {Op::sigmoid, Op::sigmoid_bwd, -30, 30},  // both branches, no overflow
      {Op::relu, Op::relu_bwd, -2, 2},
      {Op::silu, Op::silu_bwd, -6, 6},
      {Op::gelu_tanh, Op::gelu_tanh_bwd, -5, 5},
      {Op::gelu_erf, Op::gelu_erf_bwd, -5, 5},
      {Op::abs, Op::abs_bwd, -2, 2},
      {Op::pow_scalar, Op::pow_scalar_bwd, 0.1, 3, 2.5},
      {Op::pow_scalar, Op::pow_scalar_bwd, 0.1, 3, 0.0},
      {Op::clamp, Op::clamp_bwd, -2, 2, -0.5, 0.7},
  };
  for (const Case& k : cases) {
    for (const Shape& s : {Shape{37, 129}, Shape{64, 64}, Shape{}}) {
      for (DType dt : {DType::F32, DType::BF16, DType::F64}) {
        CAPTURE(std::string(kernels::op_name(k.fwd)));
        CAPTURE(k.p);
        CAPTURE(s.str());
        CAPTURE(std::string(dtype_name(dt)));
        const Tensor x = as_dtype(test::uniform(g, s, k.lo, k.hi), dt);
        const Tensor gy = as_dtype(test::uniform(g, s, -1, 1), dt);
        // Forward: the f64 CPU result of the same (dtype-exact) inputs.
        const Tensor y_ref = run(k.fwd, {widen(x)}, DType::F64, Device::cpu(), k.p, k.q);
        const Tensor y = run(k.fwd, {x.to(kGpu)}, dt, kGpu, k.p, k.q);
        CHECK(rel_norm_error(y, y_ref) < tolerance(dt));
        // Backward, fed y rounded to the dtype on both sides.
        const Tensor yd = as_dtype(y_ref, dt);
        const Tensor gx_ref =
            run(k.bwd, {widen(x), widen(yd), widen(gy)}, DType::F64, Device::cpu(), k.p, k.q);
        const Tensor gx = run(k.bwd, {x.to(kGpu), yd.to(kGpu), gy.to(kGpu)}, dt, kGpu, k.p, k.q);
        if (s.rank() > 0) {
          CHECK(rel_norm_error(gx, gx_ref) < tolerance(dt));
        } else {
          // One element: gy f'(x) at a single point, whose relative error is unbounded where f'
          // crosses zero (gelu_tanh's derivative has a root at x = -0.752, where its two O(1)
          // terms cancel and a one-ulp difference in either, e.g. an fma contraction on one
          // side, is all that is left). The error is measured against the terms' scale, |gy|.
          const double err = std::fabs(test::as_doubles(gx)[0] - test::as_doubles(gx_ref)[0]);
          CHECK(err <= tolerance(dt) * std::fabs(test::as_doubles(gy)[0]));
        }
      }
    }
  }
  // Mismatched shapes are refused, naming the op.
  Tensor a = Tensor::zeros({4}, DType::F32, kGpu), b = Tensor::zeros({5}, DType::F32, kGpu);
  kernels::OpCall c;
  c.in = {a};
  c.out = {b};
  CHECK_THROWS_WITH_AS(kernels::run(Op::exp, c), doctest::Contains("exp"), std::exception);
}

TEST_CASE("cuda kernels: softmax and log_softmax, forward and backward, match the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(37);
  // Rows shorter than a warp, odd, one block wide, and longer than a block (several strides).
  const std::vector<Shape> shapes = {{3, 1}, {37, 129}, {5, 256}, {2, 3, 77}, {1, 4097}, {7}};
  for (bool log : {false, true}) {
    const Op fwd = log ? Op::log_softmax : Op::softmax;
    const Op bwd = log ? Op::log_softmax_bwd : Op::softmax_bwd;
    for (const Shape& s : shapes) {
      for (DType dt : {DType::F32, DType::BF16, DType::F64}) {
        CAPTURE(std::string(kernels::op_name(fwd)));
        CAPTURE(s.str());
        CAPTURE(std::string(dtype_name(dt)));
        // Logits up to +-20: exp without the max shift would lose f32 precision.
        const Tensor x = as_dtype(test::uniform(g, s, -20, 20), dt);
        const Tensor gy = as_dtype(test::uniform(g, s, -1, 1), dt);
        const Tensor y_ref = run(fwd, {widen(x)}, DType::F64, Device::cpu());
        CHECK(rel_norm_error(run(fwd, {x.to(kGpu)}, dt, kGpu), y_ref) < tolerance(dt));
        const Tensor yd = as_dtype(y_ref, dt);
        const Tensor gx_ref = run(bwd, {widen(yd), widen(gy)}, DType::F64, Device::cpu());
        const Tensor gx = run(bwd, {yd.to(kGpu), gy.to(kGpu)}, dt, kGpu);
        CHECK(rel_norm_error(gx, gx_ref) < tolerance(dt));
      }
    }
  }
}
