// Op specs of the spatial family (NCHW): conv2d, upsample_nearest, upsample_bilinear, avg_pool2d,
// max_pool2d. The references are direct nested loops in double (a conv as the 7-deep sum, not
// im2col), written from PyTorch's documented semantics.
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "common/test_util.h"
#include "kernels/ops.h"
#include "op_harness.h"

namespace psvae::test {

namespace {

using kernels::Op;

Shape nchw(int64_t n, int64_t c, int64_t h, int64_t w) { return Shape{n, c, h, w}; }

// Distinct values (a random permutation of 0.05 * k, centred), so no pooling window has a tie and
// a +-1e-6 gradcheck step never changes the argmax.
Tensor distinct(Generator& g, const Shape& s) {
  Tensor u = uniform(g, s);
  const double* pu = u.data<double>();
  std::vector<int64_t> order(static_cast<size_t>(s.numel()));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return pu[a] < pu[b]; });
  Tensor t = Tensor::empty(s, DType::F64);
  double* pt = t.data<double>();
  for (size_t r = 0; r < order.size(); ++r)
    pt[order[r]] = 0.05 * (static_cast<double>(r) - 0.5 * static_cast<double>(order.size()));
  return t;
}

// ---- conv2d
// -------------------------------------------------------------------------------------- ints:
// stride_h, stride_w, pad_h, pad_w; inputs (x, w) or (x, w, b).

OpCase conv_case(Generator& g, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t kh,
                 int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool bias) {
  OpCase c;
  c.label =
      fmt::format("x {} w ({}, {}, {}, {}) stride ({}, {}) pad ({}, {}){}", nchw(N, C, H, W).str(),
                  O, C, kh, kw, sh, sw, ph, pw, bias ? " + bias" : "");
  c.inputs = {uniform(g, nchw(N, C, H, W)), uniform(g, nchw(O, C, kh, kw), -0.5, 0.5)};
  if (bias) c.inputs.push_back(uniform(g, Shape{O}));
  c.ints = {sh, sw, ph, pw};
  return c;
}

std::vector<Tensor> conv_reference(const std::vector<Tensor>& in, const OpCase& c) {
  const Tensor &x = in[0], &w = in[1];
  int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  int64_t O = w.size(0), kh = w.size(2), kw = w.size(3);
  int64_t sh = c.ints[0], sw = c.ints[1], ph = c.ints[2], pw = c.ints[3];
  int64_t Ho = (H + 2 * ph - kh) / sh + 1, Wo = (W + 2 * pw - kw) / sw + 1;
  Tensor y = Tensor::empty(nchw(N, O, Ho, Wo), DType::F64);
  const double *px = x.data<double>(), *pw_ = w.data<double>();
  const double* pb = in.size() > 2 ? in[2].data<double>() : nullptr;
  double* py = y.data<double>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          double s = pb ? pb[o] : 0.0;
          for (int64_t ci = 0; ci < C; ++ci)
            for (int64_t i = 0; i < kh; ++i)
              for (int64_t j = 0; j < kw; ++j) {
                int64_t ih = oh * sh - ph + i, iw = ow * sw - pw + j;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                s += px[((n * C + ci) * H + ih) * W + iw] * pw_[((o * C + ci) * kh + i) * kw + j];
              }
          py[((n * O + o) * Ho + oh) * Wo + ow] = s;
        }
  return {y};
}

PSVAE_OP_SPEC(conv2d) {
  OpSpec s;
  s.name = "conv2d";
  s.covers = {Op::conv2d, Op::conv2d_bwd};
  s.cases = [](Generator& g) {
    std::vector<OpCase> v;
    //                 N  C  H  W  O kh kw sh sw ph pw bias
    v.push_back(conv_case(g, 2, 3, 7, 7, 5, 3, 3, 1, 1, 1, 1, true));   // 3x3 "same"
    v.push_back(conv_case(g, 1, 1, 9, 9, 3, 3, 3, 2, 2, 0, 0, false));  // stride 2, no pad
    v.push_back(conv_case(g, 2, 3, 9, 7, 3, 3, 3, 2, 2, 1, 1, true));   // stride 2 downsample
    v.push_back(conv_case(g, 1, 2, 5, 5, 3, 3, 3, 1, 1, 2, 2, false));  // pad 2: output grows
    v.push_back(conv_case(g, 2, 5, 5, 7, 3, 1, 1, 1, 1, 0, 0, true));   // 1x1: the no-im2col path
    v.push_back(conv_case(g, 2, 5, 5, 7, 3, 1, 1, 1, 1, 0, 0, false));
    v.push_back(conv_case(g, 1, 3, 7, 9, 5, 1, 1, 2, 2, 0, 0, true));   // 1x1 stride 2: im2col
    v.push_back(conv_case(g, 1, 3, 8, 8, 5, 4, 4, 4, 4, 0, 0, true));   // patchify
    v.push_back(conv_case(g, 1, 3, 7, 9, 1, 2, 3, 1, 2, 1, 1, true));   // non-square everything
    v.push_back(conv_case(g, 1, 1, 9, 7, 1, 3, 1, 1, 1, 1, 0, false));  // 3x1, O = C = 1
    // More samples than the 8-sample chunks of the weight-gradient partials.
    v.push_back(conv_case(g, 11, 2, 3, 3, 2, 2, 2, 1, 1, 0, 0, true));
    OpCase big = conv_case(g, 4, 16, 17, 13, 24, 3, 3, 1, 1, 1, 1, true);  // parallel over n
    big.gradcheck = false;
    v.push_back(big);
    OpCase patch = conv_case(g, 3, 4, 32, 32, 40, 2, 2, 2, 2, 0, 0, true);
    patch.gradcheck = false;
    v.push_back(patch);
    return v;
  };
  s.apply = single([](const std::vector<ag::Var>& in, const OpCase& c) {
    ops::Conv2dParams p;
    p.stride_h = static_cast<int>(c.ints[0]);
    p.stride_w = static_cast<int>(c.ints[1]);
    p.pad_h = static_cast<int>(c.ints[2]);
    p.pad_w = static_cast<int>(c.ints[3]);
    return ag::conv2d(in[0], in[1], in.size() > 2 ? in[2] : ag::Var(), p);
  });
  s.reference = conv_reference;
  return s;
}

// ---- upsampling
// ---------------------------------------------------------------------------------- ints: out_h,
// out_w, align_corners (bilinear only).

OpCase resize_case(Generator& g, const Shape& x, int64_t oh, int64_t ow, int64_t align = 0) {
  OpCase c;
  c.label = fmt::format("{} -> ({}, {}){}", x.str(), oh, ow, align ? " align_corners" : "");
  c.inputs = {uniform(g, x)};
  c.ints = {oh, ow, align};
  return c;
}

// PyTorch 'nearest' given an output size: scale = in / out held in a float, src = floor(dst *
// scale) in float, clamped to in - 1.
int64_t nearest_src_ref(int64_t dst, int64_t in, int64_t out) {
  float scale = static_cast<float>(in) / static_cast<float>(out);
  return std::min(static_cast<int64_t>(std::floor(static_cast<float>(dst) * scale)), in - 1);
}

PSVAE_OP_SPEC(upsample_nearest) {
  OpSpec s;
  s.name = "upsample_nearest";
  s.covers = {Op::upsample_nearest, Op::upsample_nearest_bwd};
  s.cases = [](Generator& g) {
    std::vector<OpCase> v;
    v.push_back(resize_case(g, nchw(1, 2, 3, 4), 6, 8));  // 2x
    v.push_back(resize_case(g, nchw(2, 1, 5, 5), 7, 7));  // 5 -> 7
    v.push_back(resize_case(g, nchw(1, 2, 7, 7), 3, 3));  // 7 -> 3 (downsampling)
    v.push_back(resize_case(g, nchw(1, 1, 5, 7), 7, 3));  // mixed
    v.push_back(resize_case(g, nchw(2, 2, 1, 3), 4, 9));  // from size 1, 3x
    v.push_back(resize_case(g, nchw(1, 3, 4, 6), 4, 6));  // identity
    // 2 -> 82: the float scale 2/82 rounds down, so dst 41 reads source 0 where exact
    // arithmetic (41 * 2 / 82 = 1) reads 1; PyTorch gives 0, and so must we.
    v.push_back(resize_case(g, nchw(1, 1, 2, 3), 82, 5));
    OpCase big = resize_case(g, nchw(2, 3, 13, 11), 29, 17);
    big.gradcheck = false;
    v.push_back(big);
    return v;
  };
  s.apply = single([](const std::vector<ag::Var>& in, const OpCase& c) {
    return ag::upsample_nearest(in[0], c.ints[0], c.ints[1]);
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const Tensor& x = in[0];
    int64_t NC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
    int64_t Ho = c.ints[0], Wo = c.ints[1];
    Tensor y = Tensor::empty(nchw(x.size(0), x.size(1), Ho, Wo), DType::F64);
    for (int64_t p = 0; p < NC; ++p)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow)
          y.data<double>()[(p * Ho + oh) * Wo + ow] =
              x.data<double>()[(p * H + nearest_src_ref(oh, H, Ho)) * W +
                               nearest_src_ref(ow, W, Wo)];
    return std::vector<Tensor>{y};
  };
  return s;
}

// Bilinear source coordinate along one axis (PyTorch upsample_bilinear2d), in double.
struct Tap {
  int64_t i0, i1;
  double lambda;
};
Tap bilinear_tap_ref(int64_t dst, int64_t in, int64_t out, bool align) {
  double src;
  if (align)
    src = out > 1 ? static_cast<double>(dst) * static_cast<double>(in - 1) /
                        static_cast<double>(out - 1)
                  : 0.0;
  else
    src = std::max(
        (static_cast<double>(dst) + 0.5) * static_cast<double>(in) / static_cast<double>(out) - 0.5,
        0.0);
  int64_t i0 = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
  return {i0, std::min(i0 + 1, in - 1), src - static_cast<double>(i0)};
}

PSVAE_OP_SPEC(upsample_bilinear) {
  OpSpec s;
  s.name = "upsample_bilinear";
  s.covers = {Op::upsample_bilinear, Op::upsample_bilinear_bwd};
  s.cases = [](Generator& g) {
    std::vector<OpCase> v;
    for (int64_t a = 0; a < 2; ++a) {
      v.push_back(resize_case(g, nchw(1, 2, 4, 5), 8, 10, a));  // 2x
      v.push_back(resize_case(g, nchw(2, 1, 5, 5), 7, 7, a));   // 5 -> 7
      v.push_back(resize_case(g, nchw(1, 2, 7, 9), 3, 4, a));   // downsampling
      v.push_back(resize_case(g, nchw(1, 2, 4, 5), 1, 1, a));   // output size 1
      v.push_back(resize_case(g, nchw(1, 1, 3, 4), 1, 5, a));   // one output row
      v.push_back(resize_case(g, nchw(1, 1, 1, 3), 4, 5, a));   // input size 1
      v.push_back(resize_case(g, nchw(1, 3, 4, 6), 4, 6, a));   // identity size
      OpCase big = resize_case(g, nchw(2, 3, 13, 11), 29, 17, a);
      big.gradcheck = false;
      v.push_back(big);
    }
    return v;
  };
  s.apply = single([](const std::vector<ag::Var>& in, const OpCase& c) {
    return ag::upsample_bilinear(in[0], c.ints[0], c.ints[1], c.ints[2] != 0);
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    const Tensor& x = in[0];
    int64_t NC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
    int64_t Ho = c.ints[0], Wo = c.ints[1];
    bool align = c.ints[2] != 0;
    Tensor y = Tensor::empty(nchw(x.size(0), x.size(1), Ho, Wo), DType::F64);
    const double* px = x.data<double>();
    for (int64_t p = 0; p < NC; ++p)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          Tap a = bilinear_tap_ref(oh, H, Ho, align), b = bilinear_tap_ref(ow, W, Wo, align);
          auto at = [&](int64_t h, int64_t w) { return px[(p * H + h) * W + w]; };
          y.data<double>()[(p * Ho + oh) * Wo + ow] =
              (1 - a.lambda) * ((1 - b.lambda) * at(a.i0, b.i0) + b.lambda * at(a.i0, b.i1)) +
              a.lambda * ((1 - b.lambda) * at(a.i1, b.i0) + b.lambda * at(a.i1, b.i1));
        }
    return std::vector<Tensor>{y};
  };
  return s;
}

// ---- pooling
// ------------------------------------------------------------------------------------- ints: kh,
// kw, sh, sw, ph, pw.

OpCase pool_case(Generator& g, const Shape& x, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                 int64_t ph, int64_t pw) {
  OpCase c;
  c.label =
      fmt::format("{} k ({}, {}) stride ({}, {}) pad ({}, {})", x.str(), kh, kw, sh, sw, ph, pw);
  c.inputs = {distinct(g, x)};
  c.ints = {kh, kw, sh, sw, ph, pw};
  return c;
}

std::vector<OpCase> pool_cases(Generator& g) {
  std::vector<OpCase> v;
  v.push_back(pool_case(g, nchw(1, 3, 6, 8), 2, 2, 2, 2, 0, 0));  // the usual 2x2
  v.push_back(pool_case(g, nchw(2, 2, 7, 9), 3, 3, 2, 2, 1, 1));  // ResNet stem style
  v.push_back(pool_case(g, nchw(1, 2, 7, 5), 2, 2, 2, 2, 0, 0));  // odd sizes: last row dropped
  v.push_back(pool_case(g, nchw(2, 1, 5, 6), 3, 3, 1, 1, 1, 1));  // overlapping windows
  v.push_back(pool_case(g, nchw(1, 2, 6, 7), 2, 3, 1, 2, 1, 1));  // non-square
  v.push_back(pool_case(g, nchw(1, 1, 1, 9), 1, 3, 1, 3, 0, 0));  // size-1 dim
  OpCase big = pool_case(g, nchw(3, 8, 33, 31), 3, 3, 2, 2, 1, 1);
  big.gradcheck = false;
  v.push_back(big);
  return v;
}

ops::Pool2dParams pool_params(const OpCase& c) {
  ops::Pool2dParams p;
  p.kh = static_cast<int>(c.ints[0]);
  p.kw = static_cast<int>(c.ints[1]);
  p.stride_h = static_cast<int>(c.ints[2]);
  p.stride_w = static_cast<int>(c.ints[3]);
  p.pad_h = static_cast<int>(c.ints[4]);
  p.pad_w = static_cast<int>(c.ints[5]);
  return p;
}

// Pooling reference: y = mean over the window with padding counted as zeros, or max with padding
// as -inf and argmax = first maximum's h * W + w.
std::vector<Tensor> pool_reference(const Tensor& x, const OpCase& c, bool max) {
  int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  int64_t kh = c.ints[0], kw = c.ints[1], sh = c.ints[2], sw = c.ints[3], ph = c.ints[4],
          pw = c.ints[5];
  int64_t Ho = (H + 2 * ph - kh) / sh + 1, Wo = (W + 2 * pw - kw) / sw + 1;
  Tensor y = Tensor::empty(nchw(N, C, Ho, Wo), DType::F64);
  Tensor am = Tensor::empty(nchw(N, C, Ho, Wo), DType::I64);
  for (int64_t p = 0; p < N * C; ++p)
    for (int64_t oh = 0; oh < Ho; ++oh)
      for (int64_t ow = 0; ow < Wo; ++ow) {
        double sum = 0, best = -INFINITY;
        int64_t arg = -1;
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j) {
            int64_t ih = oh * sh - ph + i, iw = ow * sw - pw + j;
            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
            double v = x.data<double>()[(p * H + ih) * W + iw];
            sum += v;
            if (v > best) {
              best = v;
              arg = ih * W + iw;
            }
          }
        int64_t o = (p * Ho + oh) * Wo + ow;
        y.data<double>()[o] = max ? best : sum / static_cast<double>(kh * kw);
        am.data<int64_t>()[o] = arg;
      }
  if (max) return {y, am};
  return {y};
}

PSVAE_OP_SPEC(avg_pool2d) {
  OpSpec s;
  s.name = "avg_pool2d";
  s.covers = {Op::avg_pool2d, Op::avg_pool2d_bwd};
  s.cases = pool_cases;
  s.apply = single([](const std::vector<ag::Var>& in, const OpCase& c) {
    return ag::avg_pool2d(in[0], pool_params(c));
  });
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    return pool_reference(in[0], c, false);
  };
  return s;
}

PSVAE_OP_SPEC(max_pool2d) {
  OpSpec s;
  s.name = "max_pool2d";
  s.covers = {Op::max_pool2d, Op::max_pool2d_bwd};
  s.cases = pool_cases;  // distinct values: no ties, argmax stable under the gradcheck step
  // The autograd function returns y only; the argmax output is checked through the table op.
  s.apply = [](const std::vector<ag::Var>& in, const OpCase& c) {
    ag::Var y = ag::max_pool2d(in[0], pool_params(c));
    Tensor am = ops::max_pool2d(in[0].data(), pool_params(c)).second;
    return std::vector<ag::Var>{y, ag::Var(am)};
  };
  s.reference = [](const std::vector<Tensor>& in, const OpCase& c) {
    return pool_reference(in[0], c, true);
  };
  return s;
}

// Runs f with `threads` OpenMP threads, restoring the previous setting.
template <class F>
auto with_threads(int threads, F&& f) {
  int prev = omp_get_max_threads();
  omp_set_num_threads(threads);
  auto r = f();
  omp_set_num_threads(prev);
  return r;
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

}  // namespace

TEST_CASE("upsample_nearest follows PyTorch's float scale (2 -> 82 reads source 0 at dst 41)") {
  Tensor x = Tensor::from_vector(std::vector<double>{10.0, 20.0}, nchw(1, 1, 2, 1));
  std::vector<double> y = ops::upsample_nearest(x, 82, 1).to_vector<double>();
  CHECK(y[40] == 10.0);
  CHECK(y[41] == 10.0);  // exact arithmetic would give 20
  CHECK(y[42] == 20.0);
}

// The weight and bias gradients sum over the batch; the threading rule says the bits must not
// depend on the thread count (exact resume, CPU vs multi-rank comparisons).
TEST_CASE("conv2d and its backward are bit-identical for 1 and 3 threads") {
  Generator g(77);
  Tensor x = ops::cast(uniform(g, nchw(10, 6, 15, 13)), DType::F32);
  Tensor w = ops::cast(uniform(g, nchw(12, 6, 3, 3)), DType::F32);
  Tensor b = ops::cast(uniform(g, Shape{12}), DType::F32);
  ops::Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  auto run = [&] {
    Tensor y = ops::conv2d(x, w, b, p);
    ops::Conv2dGrads d = ops::conv2d_bwd(y, x, w, p, true);
    return std::vector<Tensor>{y, d.gx, d.gw, d.gb};
  };
  std::vector<Tensor> one = with_threads(1, run), three = with_threads(3, run);
  for (size_t i = 0; i < one.size(); ++i) CHECK(bit_equal(one[i], three[i]));
}

}  // namespace psvae::test
