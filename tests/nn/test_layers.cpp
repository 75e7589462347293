// Layer forwards against naive f64 loops: the head layout of the fused qkv / kv projections
// (timm's (B, T, 3, H, hd)), the SwiGLU split, LayerScale, and the pre-norm block composition.
#include <doctest/doctest.h>

#include <cmath>

#include "../common/test_util.h"
#include "nn/attention.h"
#include "nn/transformer_block.h"

using namespace psvae;
using namespace psvae::nn;

namespace {
using Mat = std::vector<std::vector<double>>;  // rows of a (T, features) matrix

Mat rows_of(const Tensor& t, int64_t b) {  // t (B, T, F) f64 -> batch b
  const int64_t T = t.size(1), F = t.size(2);
  const double* p = t.data<double>() + b * T * F;
  Mat m(static_cast<size_t>(T), std::vector<double>(static_cast<size_t>(F)));
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < F; ++j) m[size_t(i)][size_t(j)] = p[i * F + j];
  return m;
}

Mat linear_ref(const Mat& x, const Linear& l) {
  const Tensor& w = l.weight().data();
  const int64_t O = w.size(0), I = w.size(1);
  Mat y(x.size(), std::vector<double>(static_cast<size_t>(O)));
  for (size_t t = 0; t < x.size(); ++t)
    for (int64_t o = 0; o < O; ++o) {
      double s = l.bias() ? l.bias()->data().data<double>()[o] : 0.0;
      for (int64_t i = 0; i < I; ++i) s += x[t][size_t(i)] * w.data<double>()[o * I + i];
      y[t][size_t(o)] = s;
    }
  return y;
}

// q from columns [qo, qo + D) of qr, k and v from [ko, ...) and [vo, ...) of kvr; head h uses
// columns h * hd ... (h + 1) * hd - 1 of each block.
Mat attention_ref(const Mat& qr, size_t qo, const Mat& kvr, size_t ko, size_t vo, int H, size_t hd,
                  const std::vector<int>& mask) {
  Mat out(qr.size(), std::vector<double>(size_t(H) * hd, 0.0));
  for (int h = 0; h < H; ++h)
    for (size_t i = 0; i < qr.size(); ++i) {
      std::vector<double> s(kvr.size());
      double mx = -INFINITY;
      for (size_t j = 0; j < kvr.size(); ++j) {
        double d = 0;
        for (size_t e = 0; e < hd; ++e) d += qr[i][qo + h * hd + e] * kvr[j][ko + h * hd + e];
        s[j] = mask.empty() || mask[j] ? d / std::sqrt(double(hd)) : -INFINITY;
        mx = std::max(mx, s[j]);
      }
      double z = 0;
      for (double& x : s) z += (x = std::exp(x - mx));
      for (size_t j = 0; j < kvr.size(); ++j)
        for (size_t e = 0; e < hd; ++e) out[i][h * hd + e] += s[j] / z * kvr[j][vo + h * hd + e];
    }
  return out;
}

void check_rows(const Tensor& y, int64_t b, const Mat& ref) {
  Mat got = rows_of(y, b);
  REQUIRE(got.size() == ref.size());
  for (size_t i = 0; i < ref.size(); ++i)
    for (size_t j = 0; j < ref[i].size(); ++j)
      CHECK(got[i][j] == doctest::Approx(ref[i][j]).epsilon(1e-12));
}

Tensor randn(uint64_t seed, const Shape& s) {
  Generator g(seed);
  return psvae::test::normal(g, s);
}
}  // namespace

TEST_CASE("self-attention splits the fused qkv as (B, T, 3, H, hd)") {
  Generator g(1);
  Attention a({12, 3, true}, g);
  a.to(DType::F64);
  Tensor x = randn(2, {2, 5, 12});
  Tensor mask =
      Tensor::from_vector(std::vector<int32_t>{1, 1, 1, 1, 1, 1, 0, 1, 0, 1}, Shape{2, 5});
  Tensor y = a.forward(Var(x), mask).data();
  for (int64_t b = 0; b < 2; ++b) {
    std::vector<int> m(5);
    for (int j = 0; j < 5; ++j) m[size_t(j)] = mask.data<int32_t>()[b * 5 + j];
    Mat qkv = linear_ref(rows_of(x, b), *a.qkv);
    check_rows(y, b, linear_ref(attention_ref(qkv, 0, qkv, 12, 24, 3, 4, m), *a.proj));
  }
}

TEST_CASE("cross-attention: q from x, fused kv (B, S, 2, H, hd) from the context") {
  Generator g(3);
  CrossAttention a({8, 6, 2, true}, g);
  a.to(DType::F64);
  Tensor x = randn(4, {1, 3, 8}), ctx = randn(5, {1, 4, 6});
  Tensor y = a.forward(Var(x), Var(ctx)).data();
  Mat q = linear_ref(rows_of(x, 0), *a.q), kv = linear_ref(rows_of(ctx, 0), *a.kv);
  check_rows(y, 0, linear_ref(attention_ref(q, 0, kv, 0, 8, 2, 4, {}), *a.proj));
}

TEST_CASE("DINOv2 block: SwiGLU halves, LayerScale, pre-norm residuals") {
  Generator g(6);
  TransformerBlock::Config c;
  c.dim = 8;
  c.heads = 2;
  c.swiglu = true;
  c.layerscale = 0.3;
  TransformerBlock blk(c, g);
  blk.to(DType::F64);
  // Non-trivial LayerNorm affine and LayerScale values, so a mix-up would show.
  for (auto& [n, p] : blk.named_parameters())
    if (n.find("norm") != std::string::npos || n.find("gamma") != std::string::npos) {
      Tensor d = p.data();
      d.copy_from(randn(std::hash<std::string>{}(n), d.shape()));
    }
  Tensor x = randn(7, {1, 4, 8});
  Tensor y = blk.forward(Var(x)).data();

  auto ln = [&](const Mat& m, const LayerNorm& l) {
    auto ps = l.named_parameters();
    const double* w = ps[0].second.data().data<double>();
    const double* bb = ps[1].second.data().data<double>();
    Mat r = m;
    for (auto& row : r) {
      double mu = 0, var = 0;
      for (double v : row) mu += v;
      mu /= double(row.size());
      for (double v : row) var += (v - mu) * (v - mu);
      var /= double(row.size());
      for (size_t j = 0; j < row.size(); ++j)
        row[j] = (row[j] - mu) / std::sqrt(var + 1e-6) * w[j] + bb[j];
    }
    return r;
  };
  auto scale_add = [](const Mat& base, const Mat& m, const LayerScale& ls) {
    const double* gm = ls.named_parameters()[0].second.data().data<double>();
    Mat r = base;
    for (size_t i = 0; i < r.size(); ++i)
      for (size_t j = 0; j < r[i].size(); ++j) r[i][j] += m[i][j] * gm[j];
    return r;
  };
  Mat x0 = rows_of(x, 0);
  Mat qkv = linear_ref(ln(x0, *blk.norm1), *blk.attn->qkv);
  Mat h = scale_add(x0, linear_ref(attention_ref(qkv, 0, qkv, 8, 16, 2, 4, {}), *blk.attn->proj),
                    *blk.ls1);
  const int64_t H = blk.mlp_hidden();
  Mat u = linear_ref(ln(h, *blk.norm2), *blk.swiglu->w12);
  Mat act(u.size(), std::vector<double>(size_t(H)));
  for (size_t i = 0; i < u.size(); ++i)
    for (int64_t j = 0; j < H; ++j) {
      double x1 = u[i][size_t(j)], x2 = u[i][size_t(H + j)];
      act[i][size_t(j)] = x1 / (1 + std::exp(-x1)) * x2;
    }
  check_rows(y, 0, scale_add(h, linear_ref(act, *blk.swiglu->w3), *blk.ls2));
}

TEST_CASE("Conv2d (patch embedding) and GroupNorm against loops") {
  Generator g(8);
  Conv2d conv({3, 5, 2, 2, 0, true}, g);  // DiT's x_embedder.proj: kernel = stride = patch
  GroupNorm gn({1, 5, 1e-5, true}, g);
  conv.to(DType::F64);
  gn.to(DType::F64);
  Tensor x = randn(9, {2, 3, 4, 6});
  Tensor y = conv.forward(Var(x)).data();
  REQUIRE(y.shape() == Shape{2, 5, 2, 3});
  const double* w = conv.weight().data().data<double>();
  const double* b = conv.bias()->data().data<double>();
  const double* xp = x.data<double>();
  std::vector<double> ref(static_cast<size_t>(y.numel()));
  for (int n = 0; n < 2; ++n)
    for (int o = 0; o < 5; ++o)
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j) {
          double s = b[o];
          for (int c = 0; c < 3; ++c)
            for (int ki = 0; ki < 2; ++ki)
              for (int kj = 0; kj < 2; ++kj)
                s += w[((o * 3 + c) * 2 + ki) * 2 + kj] *
                     xp[((n * 3 + c) * 4 + 2 * i + ki) * 6 + 2 * j + kj];
          ref[size_t(((n * 5 + o) * 2 + i) * 3 + j)] = s;
        }
  auto c1 = psvae::test::compare(y, Tensor::from_vector(ref, y.shape()), 1e-12);
  CHECK_MESSAGE(c1.ok, c1.why);

  // One group: each sample normalised over all of (C, H, W); weight 1, bias 0 at init.
  Tensor z = gn.forward(Var(y)).data();
  for (int n = 0; n < 2; ++n) {
    double mu = 0, var = 0;
    for (int k = 0; k < 30; ++k) mu += ref[size_t(n * 30 + k)];
    mu /= 30;
    for (int k = 0; k < 30; ++k)
      var += (ref[size_t(n * 30 + k)] - mu) * (ref[size_t(n * 30 + k)] - mu);
    var /= 30;
    for (int k = 0; k < 30; ++k)
      CHECK(z.data<double>()[n * 30 + k] ==
            doctest::Approx((ref[size_t(n * 30 + k)] - mu) / std::sqrt(var + 1e-5)).epsilon(1e-10));
  }
}
