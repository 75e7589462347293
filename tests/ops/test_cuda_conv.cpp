// The CUDA conv2d and conv2d_bwd (kernels/cuda/conv*.cu) against the CPU kernels in f64 on the
// same (dtype-rounded) inputs, through both paths: our own implicit-GEMM kernels and, when the
// build has it, cuDNN (forced with set_conv_path, so auto's silent fallback cannot hide a cuDNN
// failure). Every output is poisoned with NaN first and every element is compared by the relative
// norm error: under 1e-5 in f32, 1e-2 in bf16, 1e-12 in f64 (own kernels only; cuDNN is never asked
// for f64). Covered: y, gx, gw and gb; with and without bias; kernels 1x1 (also at stride 2, where
// a stride phase of the data gradient has no taps), 3x3 pad 1, 3x3 stride 2, 4x4 stride 4
// (patchify, with leftover rows), 7x7, 3x5 with unequal strides and pads; odd H x W (13 x 17);
// C and O of 3 and 5 (the narrow tile) and 20 / 37 (the wide one, several k tiles); N = 1 and 3;
// a reduction long enough for several split-K chunks in the filter gradient. Determinism: each
// backward (and forward) is run twice and must agree bit for bit. Errors: a bad PSVAE_CONV value,
// a channel mismatch and a wrong output shape are refused naming the op or the variable.
// Skipped without a CUDA device.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/cuda_compare.h"
#include "common/test_util.h"
#include "kernels/op_table.h"
#include "kernels/ops.h"

#ifdef PSVAE_WITH_CUDA
#include "kernels/cuda/conv.h"

using namespace psvae;
using kernels::cuda::ConvPath;
using test::as_dtype;
using test::check_bitwise_equal;
using test::check_close;
using test::on_gpu;
using test::widen;

namespace {

const Device kGpu = Device::cuda(0);

struct ConvCase {
  Shape x;  // (N, C, H, W)
  int64_t O, kh, kw;
  ops::Conv2dParams p;
  const char* what;
};

int64_t out_extent(int64_t in, int64_t k, int s, int pad) { return (in + 2 * pad - k) / s + 1; }

// Sets the conv path for a scope and returns to PSVAE_CONV after.
struct PathScope {
  explicit PathScope(ConvPath p) { kernels::cuda::set_conv_path(p); }
  ~PathScope() { kernels::cuda::reset_conv_path(); }
  PathScope(const PathScope&) = delete;
  PathScope& operator=(const PathScope&) = delete;
};

std::vector<ConvCase> conv_cases() {
  auto P = [](int sh, int sw, int ph, int pw) {
    ops::Conv2dParams p;
    p.stride_h = sh, p.stride_w = sw, p.pad_h = ph, p.pad_w = pw;
    return p;
  };
  return {
      {Shape{1, 3, 13, 17}, 5, 1, 1, P(1, 1, 0, 0), "1x1"},
      {Shape{2, 4, 9, 9}, 6, 1, 1, P(2, 2, 0, 0), "1x1 stride 2 (tapless phases)"},
      {Shape{3, 5, 13, 17}, 3, 3, 3, P(1, 1, 1, 1), "3x3 pad 1"},
      {Shape{3, 5, 13, 17}, 5, 3, 3, P(2, 2, 1, 1), "3x3 stride 2 pad 1"},
      {Shape{1, 3, 16, 20}, 5, 4, 4, P(4, 4, 0, 0), "4x4 stride 4 (patchify)"},
      {Shape{3, 3, 13, 17}, 5, 4, 4, P(4, 4, 0, 0), "4x4 stride 4, leftover rows"},
      {Shape{3, 3, 13, 17}, 5, 7, 7, P(1, 1, 3, 3), "7x7 pad 3"},
      {Shape{1, 5, 13, 17}, 3, 7, 7, P(2, 2, 3, 3), "7x7 stride 2 pad 3"},
      {Shape{2, 5, 13, 17}, 7, 3, 5, P(2, 1, 1, 2), "3x5 stride (2, 1) pad (1, 2)"},
      {Shape{3, 20, 9, 11}, 37, 3, 3, P(1, 1, 1, 1), "wide tiles, C 20 -> O 37"},
      {Shape{3, 5, 32, 33}, 20, 3, 3, P(1, 1, 1, 1), "split-K filter gradient"},
      {Shape{1, 3, 19, 23}, 4, 11, 11, P(4, 4, 2, 2), "11x11 stride 4 pad 2 (AlexNet conv1)"},
  };
}

}  // namespace

TEST_CASE("cuda kernels: conv2d and conv2d_bwd match the CPU, own kernels and cuDNN") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(43);
  std::vector<ConvPath> paths = {ConvPath::kOwn};
  if (kernels::cuda::conv_has_cudnn())
    paths.push_back(ConvPath::kCudnn);
  else
    MESSAGE("this build has no cuDNN: own kernels only");

  for (const ConvCase& k : conv_cases()) {
    const int64_t N = k.x[0], C = k.x[1];
    const Shape ws{k.O, C, k.kh, k.kw};
    const Shape ys{N, k.O, out_extent(k.x[2], k.kh, k.p.stride_h, k.p.pad_h),
                   out_extent(k.x[3], k.kw, k.p.stride_w, k.p.pad_w)};
    for (DType dt : {DType::F32, DType::BF16, DType::F64}) {
      // Weights scaled by 1/sqrt(fan-in) keep y and gx of order 1 whatever the kernel size.
      const double wscale = 1.0 / std::sqrt(static_cast<double>(C * k.kh * k.kw));
      const Tensor x = as_dtype(test::uniform(g, k.x, -1, 1), dt);
      const Tensor w = as_dtype(test::uniform(g, ws, -wscale, wscale), dt);
      const Tensor b = as_dtype(test::uniform(g, Shape{k.O}, -1, 1), dt);
      const Tensor gy = as_dtype(test::uniform(g, ys, -1, 1), dt);
      for (bool with_bias : {true, false}) {
        const Tensor bias = with_bias ? b : Tensor();
        // The f64 CPU result of the same inputs.
        const Tensor y_ref =
            ops::conv2d(widen(x), widen(w), bias.defined() ? widen(bias) : Tensor(), k.p);
        const ops::Conv2dGrads g_ref =
            ops::conv2d_bwd(widen(gy), widen(x), widen(w), k.p, with_bias);
        for (ConvPath path : paths) {
          if (path == ConvPath::kCudnn && dt == DType::F64) continue;  // f64 runs ours anyway
          CAPTURE(k.what);
          CAPTURE(k.x.str());
          CAPTURE(ws.str());
          CAPTURE(std::string(dtype_name(dt)));
          CAPTURE(with_bias);
          CAPTURE(kernels::cuda::conv_path_name(path));
          PathScope scope(path);
          const Tensor xg = on_gpu(x), wg = on_gpu(w), bg = on_gpu(bias), gyg = on_gpu(gy);

          const Tensor y = ops::conv2d(xg, wg, bg, k.p);
          check_close(y, y_ref, dt, "y");
          check_bitwise_equal(y, ops::conv2d(xg, wg, bg, k.p), "y, second run");

          const ops::Conv2dGrads gr = ops::conv2d_bwd(gyg, xg, wg, k.p, with_bias);
          check_close(gr.gx, g_ref.gx, dt, "gx");
          check_close(gr.gw, g_ref.gw, dt, "gw");
          if (with_bias) check_close(gr.gb, g_ref.gb, dt, "gb");
          // Determinism: the same call again gives the same bits.
          const ops::Conv2dGrads g2 = ops::conv2d_bwd(gyg, xg, wg, k.p, with_bias);
          check_bitwise_equal(gr.gx, g2.gx, "gx, second run");
          check_bitwise_equal(gr.gw, g2.gw, "gw, second run");
          if (with_bias) check_bitwise_equal(gr.gb, g2.gb, "gb, second run");
        }
      }
    }
  }
}

TEST_CASE("cuda kernels: conv2d path switch and bad input") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(47);
  ops::Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  const Tensor x = as_dtype(test::uniform(g, Shape{2, 3, 7, 9}), DType::F32);
  const Tensor w = as_dtype(test::uniform(g, Shape{4, 3, 3, 3}, -0.3, 0.3), DType::F32);
  const Tensor y_ref = ops::conv2d(widen(x), widen(w), Tensor(), p);
  kernels::cuda::reset_conv_path();

  SUBCASE("PSVAE_CONV selects the path; auto is the default") {
    for (const char* v : {"own", "auto", ""}) {
      CAPTURE(v);
      test::EnvScope env("PSVAE_CONV", v);
      CHECK(kernels::cuda::conv_path() ==
            (std::string(v) == "own" ? ConvPath::kOwn : ConvPath::kAuto));
      check_close(ops::conv2d(x.to(kGpu), w.to(kGpu), Tensor(), p), y_ref, DType::F32, "y");
    }
    {
      test::EnvScope env("PSVAE_CONV", "cudnn");
      if (kernels::cuda::conv_has_cudnn()) {
        check_close(ops::conv2d(x.to(kGpu), w.to(kGpu), Tensor(), p), y_ref, DType::F32, "y");
      } else {
        CHECK_THROWS_WITH_AS(ops::conv2d(x.to(kGpu), w.to(kGpu), Tensor(), p),
                             doctest::Contains("no cuDNN"), std::exception);
      }
    }
  }

  SUBCASE("a bad PSVAE_CONV value is refused, naming the variable and the op") {
    test::EnvScope env("PSVAE_CONV", "fastest");
    CHECK_THROWS_WITH_AS(kernels::cuda::conv_path(), doctest::Contains("PSVAE_CONV"),
                         std::invalid_argument);
    CHECK_THROWS_WITH_AS(ops::conv2d(x.to(kGpu), w.to(kGpu), Tensor(), p),
                         doctest::Contains("conv2d: PSVAE_CONV"), std::exception);
    // The setter overrides the environment.
    PathScope scope(ConvPath::kOwn);
    check_close(ops::conv2d(x.to(kGpu), w.to(kGpu), Tensor(), p), y_ref, DType::F32, "y");
  }

  SUBCASE("shape errors name the op") {
    // Channel mismatch, straight through the op table (the wrapper would catch it first).
    const Tensor w5 = Tensor::zeros(Shape{4, 5, 3, 3}, DType::F32, kGpu);
    kernels::OpCall c;
    c.in = {x.to(kGpu), w5};
    c.out = {Tensor::empty(Shape{2, 4, 7, 9}, DType::F32, kGpu)};
    c.ints[0] = c.ints[1] = 1;
    c.ints[2] = c.ints[3] = 1;
    CHECK_THROWS_WITH_AS(kernels::run(kernels::Op::conv2d, c), doctest::Contains("conv2d"),
                         std::exception);
    // Wrong output shape.
    c.in = {x.to(kGpu), w.to(kGpu)};
    c.out = {Tensor::empty(Shape{2, 4, 7, 8}, DType::F32, kGpu)};
    CHECK_THROWS_WITH_AS(kernels::run(kernels::Op::conv2d, c), doctest::Contains("conv2d"),
                         std::exception);
    // Wrong gradient shape in the backward.
    kernels::OpCall cb;
    cb.in = {Tensor::zeros(Shape{2, 4, 7, 9}, DType::F32, kGpu), x.to(kGpu), w.to(kGpu)};
    cb.out = {Tensor::empty(Shape{2, 3, 7, 9}, DType::F32, kGpu),
              Tensor::empty(Shape{4, 3, 3, 2}, DType::F32, kGpu)};
    cb.ints[0] = cb.ints[1] = 1;
    cb.ints[2] = cb.ints[3] = 1;
    CHECK_THROWS_WITH_AS(kernels::run(kernels::Op::conv2d_bwd, cb), doctest::Contains("conv2d_bwd"),
                         std::exception);
  }
}

#endif  // PSVAE_WITH_CUDA
