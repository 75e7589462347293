// The GEMM dispatch (kernels/cuda/gemm.h) and the CUDA matmul and linear kernels, both backends
// (cuBLASLt and our own kernels, forced through set_gemm_backend), against float64 references on
// the same dtype-rounded inputs: relative norm error under 1e-5 in f32 and 1e-2 in bf16, every
// element checked, outputs poisoned with NaN (and a NaN never passes).
//   - matmul and linear through kernels::run against the CPU kernels in f64: every transpose
//     combination; sizes from {1, 7, 33, 129, 1000}, K = 1, 0-size dims, batch 3 and 2 x 3, a
//     rank-2 B shared by the batch, and shapes whose leading dims are multiples of 8 (the cp.async
//     path of the bf16 kernel) next to odd ones (its element-load path).
//   - gemm() directly against a reference computed here: alpha, beta, padded leading dims, batch
//     strides with gaps, a shared operand, every epilogue (bias, bias+GELU with and without the
//     pre-activation output, dgelu, dgelu+bias-gradient, the bias gradients of A and of B), K = 0.
//     Padding and gaps of every buffer hold NaN: reading one poisons the result; writing one is
//     caught since the padding of C and aux must still be NaN afterwards.
//     Deep K with few output tiles exercises the split-K path of our bf16 kernel.
//   - determinism: the same call twice gives bitwise-equal outputs (C and bias gradients).
//   - errors: bad descriptors, mismatched op shapes, f64, a bad PSVAE_GEMM value.
// Skipped without a CUDA device (the descriptor and PSVAE_GEMM checks need none).
#include <doctest/doctest.h>

#ifdef PSVAE_WITH_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "common/cuda_compare.h"
#include "common/test_util.h"
#include "kernels/cuda/gemm.h"
#include "kernels/op_table.h"

using namespace psvae;
using kernels::Op;
using kernels::cuda::Epilogue;
using kernels::cuda::GemmBackend;
using kernels::cuda::GemmDesc;
using test::as_dtype;
using test::check_close;
using test::rel_norm_error;
using test::tolerance;
using test::widen;

namespace {

const Device kGpu = Device::cuda(0);
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Sets the backend for a scope and restores the previous one.
struct BackendScope {
  GemmBackend prev = kernels::cuda::gemm_backend();
  explicit BackendScope(GemmBackend b) { kernels::cuda::set_gemm_backend(b); }
  ~BackendScope() { kernels::cuda::set_gemm_backend(prev); }
};

// cuBLASLt cannot run on the CUDA emulator (cuda_emu/): there the dispatch always takes our
// kernels, which the Own pass covers.
#ifdef PSVAE_CUDA_EMULATION
const std::vector<GemmBackend> kBackends = {GemmBackend::Own, GemmBackend::Wgmma,
                                            GemmBackend::WgmmaTma};
#else
const std::vector<GemmBackend> kBackends = {GemmBackend::Own, GemmBackend::Wgmma,
                                            GemmBackend::WgmmaTma, GemmBackend::CublasLt};
#endif

// The path a forced backend `be` must take for a non-empty product. Wgmma and WgmmaTma run an
// sm_90a kernel for bf16 whose every 16-byte chunk of A and B is aligned (leading dims and batch
// strides in multiples of 8 elements; the test's buffers are allocator-aligned) on a device that
// can load it, and Own otherwise. WgmmaTma runs the TMA kernel where its tensor maps describe the
// operands (every case here but a batch that shares A or B: stride 0), else the Wgmma kernel. The
// others are themselves. This mirrors gemm_mma.cu's choose_tile_kernel on purpose: the test fails
// when the two disagree.
GemmBackend expected_ours(GemmBackend be, DType dt, int64_t lda, int64_t ldb, int64_t batch,
                          int64_t stride_a, int64_t stride_b) {
  if (be != GemmBackend::Wgmma && be != GemmBackend::WgmmaTma) return be;
  const bool aligned =
      lda % 8 == 0 && ldb % 8 == 0 && (batch <= 1 || (stride_a % 8 == 0 && stride_b % 8 == 0));
  if (dt != DType::BF16 || !aligned || !kernels::cuda::detail::gemm_wgmma_available(0))
    return GemmBackend::Own;
  const bool shared = batch > 1 && (stride_a == 0 || stride_b == 0);
  return be == GemmBackend::WgmmaTma && !shared &&
                 kernels::cuda::detail::gemm_wgmma_tma_available(0)
             ? GemmBackend::WgmmaTma
             : GemmBackend::Wgmma;
}

// ---- matmul / linear through the op table ----------------------------------------------------
struct MatmulCase {
  std::vector<int64_t> batch;
  int64_t M, K, N;
  bool shared;
};

Tensor run_matmul(const Tensor& a, const Tensor& b, bool ta, bool tb, const Shape& out, DType dt,
                  Device dev) {
  return test::run_op(Op::matmul, {a, b}, {out}, dt, dev, {ta, tb})[0];
}

Tensor run_linear(const std::vector<Tensor>& in, const Shape& out, DType dt, Device dev) {
  return test::run_op(Op::linear, in, {out}, dt, dev)[0];
}

// ---- gemm() directly ---------------------------------------------------------------------------
// A scenario: sizes, padding of each leading dim, batch and gaps between entries, scalars and
// epilogue; the transposes come from the loop around it.
struct Scenario {
  const char* what;
  int64_t M, N, K;
  int64_t pad_a, pad_b, pad_c;  // leading dim = stored row length + pad (then rounded, see below)
  int64_t batch = 1;
  int64_t gap = 0;        // extra elements between batch entries
  bool shared_b = false;  // stride_b = 0
  bool round8 = false;    // leading dims rounded up to a multiple of 8 (cp.async path; aux ld)
  float alpha = 1.f, beta = 0.f;
  Epilogue epi = Epilogue::None;
  bool with_aux = true;  // BiasGelu: store the pre-activation
};

// A device buffer of n elements holding v (rounded to dt) where `valid`, NaN elsewhere; host
// copy of the rounded values kept for the reference.
struct Buf {
  std::vector<double> v;
  Tensor t;
};
Buf make_buf(std::vector<double> v, DType dt) {
  if (v.empty()) v.push_back(kNaN);  // never a 0-element buffer: its pointer may be null
  const Tensor r = as_dtype(Tensor::from_vector(v, {static_cast<int64_t>(v.size())}), dt);
  return {test::as_doubles(r), r.to(kGpu)};
}

double gelu(double x) {
  const double t = std::tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x));
  return 0.5 * x * (1 + t);
}
double dgelu(double x) {
  const double k = 0.79788456080286535588;
  const double t = std::tanh(k * (x + 0.044715 * x * x * x));
  const double du = k * (1 + 3 * 0.044715 * x * x);
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du;
}

struct Outcome {
  bool ran_lt = false;
  GemmBackend ran = GemmBackend::Auto;
  GemmBackend ours = GemmBackend::Own;  // what expected_ours says for this descriptor
};

// Runs one scenario with the given transposes and dtype on the current backend and checks C,
// aux and bias_grad against the reference; returns which path ran.
Outcome check_scenario(const Scenario& s, bool ta, bool tb, DType dt, Generator& g) {
  CAPTURE(s.what);
  CAPTURE(ta);
  CAPTURE(tb);
  CAPTURE(std::string(dtype_name(dt)));
  const int64_t M = s.M, N = s.N, K = s.K, nb = s.batch;
  auto ld = [&](int64_t row, int64_t pad) {
    int64_t l = std::max<int64_t>(1, row + pad);
    return s.round8 ? (l + 7) / 8 * 8 : l;
  };
  GemmDesc d;
  d.dtype = dt;
  d.trans_a = ta;
  d.trans_b = tb;
  d.M = M;
  d.N = N;
  d.K = K;
  d.lda = ld(ta ? M : K, s.pad_a);
  d.ldb = ld(tb ? K : N, s.pad_b);
  d.ldc = ld(N, s.pad_c);
  const int64_t rows_a = ta ? K : M, rows_b = tb ? N : K;
  d.batch = nb;
  d.stride_a = rows_a * d.lda + s.gap;
  d.stride_b = s.shared_b ? 0 : rows_b * d.ldb + s.gap;
  d.stride_c = M * d.ldc + s.gap;
  d.alpha = s.alpha;
  d.beta = s.beta;
  d.epilogue = s.epi;

  // Inputs: values at valid positions, NaN in the padding and the gaps.
  auto fill = [&](int64_t entries, int64_t stride, int64_t rows, int64_t row_len, int64_t ldx,
                  double lo, double hi) {
    const int64_t n = entries > 0 ? (entries - 1) * stride + rows * ldx : 0;
    std::vector<double> v(static_cast<size_t>(n), kNaN);
    const std::vector<double> r =
        test::as_doubles(test::uniform(g, {std::max<int64_t>(1, n)}, lo, hi));
    for (int64_t e = 0; e < entries; ++e)
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < row_len; ++j) {
          const size_t at = static_cast<size_t>(e * stride + i * ldx + j);
          v[at] = r[at];
        }
    return v;
  };
  const Buf A = make_buf(fill(nb, d.stride_a, rows_a, ta ? M : K, d.lda, -1, 1), dt);
  const Buf B =
      make_buf(fill(s.shared_b ? 1 : nb, d.stride_b, rows_b, tb ? K : N, d.ldb, -1, 1), dt);
  const std::vector<double> c_init =
      s.beta != 0.f
          ? fill(nb, d.stride_c, M, N, d.ldc, -1, 1)
          : std::vector<double>(static_cast<size_t>((nb - 1) * d.stride_c + M * d.ldc), kNaN);
  const Buf C = make_buf(c_init, dt);
  const Buf bias =
      make_buf(test::as_doubles(test::uniform(g, {std::max<int64_t>(1, N)}, -1, 1)), dt);
  const bool aux_in = s.epi == Epilogue::DGelu || s.epi == Epilogue::DGeluBGrad;
  const bool aux_out = s.epi == Epilogue::BiasGelu && s.with_aux;
  // aux has C's layout: pre-activations in (dgelu) or NaN to be overwritten (bias+gelu) or left.
  const Buf aux = make_buf(
      aux_in ? fill(nb, d.stride_c, M, N, d.ldc, -3, 3) : std::vector<double>(c_init.size(), kNaN),
      dt);
  const int64_t grad_len = s.epi == Epilogue::BGradA ? M : N;
  const Tensor grad = Tensor::empty({std::max<int64_t>(1, grad_len)}, dt, kGpu);  // poisoned
  d.A = A.t.raw_data();
  d.B = B.t.raw_data();
  d.C = C.t.raw_data();
  if (s.epi == Epilogue::Bias || s.epi == Epilogue::BiasGelu) d.bias = bias.t.raw_data();
  if (aux_in || aux_out) d.aux = aux.t.raw_data();
  if (s.epi == Epilogue::DGeluBGrad || s.epi == Epilogue::BGradA || s.epi == Epilogue::BGradB)
    d.bias_grad = grad.raw_data();

  kernels::cuda::gemm(d, 0);
  const GemmBackend ran = kernels::cuda::gemm_last_backend();
  const Outcome out{ran == GemmBackend::CublasLt, ran,
                    expected_ours(kernels::cuda::gemm_backend(), dt, d.lda, d.ldb, d.batch,
                                  d.stride_a, d.stride_b)};
  CAPTURE(out.ran_lt);

  // Reference in f64.
  auto opa = [&](int64_t e, int64_t m, int64_t k) {
    return A.v[static_cast<size_t>(e * d.stride_a + (ta ? k * d.lda + m : m * d.lda + k))];
  };
  auto opb = [&](int64_t e, int64_t k, int64_t n) {
    return B.v[static_cast<size_t>(e * d.stride_b + (tb ? n * d.ldb + k : k * d.ldb + n))];
  };
  std::vector<double> c_ref, aux_ref, c_got_valid, aux_got_valid;
  std::vector<double> grad_ref(static_cast<size_t>(std::max<int64_t>(0, grad_len)), 0.0);
  const std::vector<double> c_got = test::as_doubles(C.t), aux_got = test::as_doubles(aux.t);
  std::vector<bool> inside(c_got.size(), false);
  for (int64_t e = 0; e < nb; ++e)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        const size_t at = static_cast<size_t>(e * d.stride_c + m * d.ldc + n);
        inside[at] = true;
        double t = 0;
        for (int64_t k = 0; k < K; ++k) t += opa(e, m, k) * opb(e, k, n);
        t *= s.alpha;
        if (s.beta != 0.f) t += s.beta * C.v[at];
        switch (s.epi) {
          case Epilogue::Bias: t += bias.v[static_cast<size_t>(n)]; break;
          case Epilogue::BiasGelu:
            t += bias.v[static_cast<size_t>(n)];
            if (aux_out) {
              aux_ref.push_back(t);
              aux_got_valid.push_back(aux_got[at]);
            }
            t = gelu(t);
            break;
          case Epilogue::DGelu:
          case Epilogue::DGeluBGrad: t *= dgelu(aux.v[at]); break;
          default: break;
        }
        if (s.epi == Epilogue::DGeluBGrad) grad_ref[static_cast<size_t>(n)] += t;
        c_ref.push_back(t);
        c_got_valid.push_back(c_got[at]);
      }
  if (s.epi == Epilogue::BGradA)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) grad_ref[static_cast<size_t>(m)] += opa(0, m, k);
  if (s.epi == Epilogue::BGradB)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) grad_ref[static_cast<size_t>(n)] += opb(0, k, n);

  CHECK(rel_norm_error(c_got_valid, c_ref) < tolerance(dt));
  if (aux_out) CHECK(rel_norm_error(aux_got_valid, aux_ref) < tolerance(dt));
  // Nothing outside C's (and aux's) valid elements was written: the padding is still NaN.
  int64_t stray = 0;
  for (size_t i = 0; i < c_got.size(); ++i)
    if (!inside[i]) stray += !std::isnan(c_got[i]) || (!aux_in && !std::isnan(aux_got[i]));
  CHECK(stray == 0);
  if (d.bias_grad && grad_len > 0) {
    std::vector<double> got = test::as_doubles(grad);
    got.resize(static_cast<size_t>(grad_len));
    CHECK(rel_norm_error(got, grad_ref) < tolerance(dt));
  }
  return out;
}

}  // namespace

TEST_CASE("cuda gemm: matmul matches the CPU for every transpose, both backends") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(61);
  const std::vector<MatmulCase> cases = {
      {{}, 1, 1, 1, false},     {{}, 7, 33, 129, false},     {{}, 129, 7, 33, false},
      {{}, 33, 129, 7, false},  {{}, 1000, 33, 7, false},    {{}, 33, 1, 129, false},
      {{}, 7, 1000, 33, false}, {{}, 129, 129, 1000, false}, {{}, 200, 1000, 136, false},
      {{3}, 33, 7, 129, false}, {{3}, 129, 33, 7, true},     {{3}, 128, 64, 136, false},
      {{3}, 64, 40, 136, true}, {{2, 3}, 7, 33, 1, false},   {{}, 0, 5, 7, false},
      {{}, 5, 0, 7, false},     {{2}, 5, 7, 0, true},
  };
  for (const MatmulCase& m : cases)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        Shape sa(m.batch), sb(m.shared ? std::vector<int64_t>{} : m.batch), sc(m.batch);
        sa.push_back(ta ? m.K : m.M);
        sa.push_back(ta ? m.M : m.K);
        sb.push_back(tb ? m.N : m.K);
        sb.push_back(tb ? m.K : m.N);
        sc.push_back(m.M);
        sc.push_back(m.N);
        for (DType dt : {DType::F32, DType::BF16}) {
          const Tensor a = as_dtype(test::uniform(g, sa), dt),
                       b = as_dtype(test::uniform(g, sb), dt);
          const Tensor ref = run_matmul(widen(a), widen(b), ta, tb, sc, DType::F64, Device::cpu());
          for (GemmBackend be : kBackends) {
            CAPTURE(sa.str());
            CAPTURE(sb.str());
            CAPTURE(ta);
            CAPTURE(tb);
            CAPTURE(std::string(dtype_name(dt)));
            CAPTURE(std::string(kernels::cuda::gemm_backend_name(be)));
            BackendScope scope(be);
            const Tensor c = run_matmul(a.to(kGpu), b.to(kGpu), ta, tb, sc, dt, kGpu);
            check_close(c, ref, dt);
            // The forced backend is the one that ran: cuBLASLt takes every plain non-empty
            // product (empty ones always go to our kernel); a shared B under a transposed A is a
            // batch with B's stride 0, which cuBLASLt may decline (then ours runs, correctly).
            // Ours: Wgmma where it applies (the descriptor matmul_cuda builds: a shared B under
            // an untransposed A folds the batch into M).
            const int64_t nb = sc.prod(0, sc.rank() - 2);
            const bool folded = m.shared && !ta && nb > 1;
            const GemmBackend want = expected_ours(
                be, dt, std::max<int64_t>(1, ta ? m.M : m.K), std::max<int64_t>(1, tb ? m.K : m.N),
                folded ? 1 : nb, m.M * m.K, m.shared ? 0 : m.K * m.N);
            if (m.M * m.N * m.K > 0 && !(m.shared && ta && !m.batch.empty()))
              CHECK(std::string(
                        kernels::cuda::gemm_backend_name(kernels::cuda::gemm_last_backend())) ==
                    kernels::cuda::gemm_backend_name(want));
          }
        }
      }
}

TEST_CASE("cuda gemm: linear (x W^T + b) matches the CPU, both backends") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(67);
  struct LinearCase {
    Shape x;
    int64_t N;
    bool bias;
  };
  const std::vector<LinearCase> cases = {
      {{7, 33}, 129, true}, {{2, 3, 129}, 7, false}, {{1000, 1}, 33, true}, {{5, 64}, 1000, true},
      {{33}, 1, true},      {{3, 128}, 136, true},   {{4, 0}, 5, true},     {{0, 8}, 5, true},
  };
  for (const LinearCase& lc : cases) {
    const int64_t K = lc.x[-1];
    Shape so = lc.x;
    so[-1] = lc.N;
    for (DType dt : {DType::F32, DType::BF16}) {
      const Tensor x = as_dtype(test::uniform(g, lc.x), dt);
      const Tensor w = as_dtype(test::uniform(g, {lc.N, K}), dt);
      const Tensor b = as_dtype(test::uniform(g, {lc.N}), dt);
      std::vector<Tensor> cpu_in = {widen(x), widen(w)}, gpu_in = {x.to(kGpu), w.to(kGpu)};
      if (lc.bias) {
        cpu_in.push_back(widen(b));
        gpu_in.push_back(b.to(kGpu));
      }
      const Tensor ref = run_linear(cpu_in, so, DType::F64, Device::cpu());
      for (GemmBackend be : kBackends) {
        CAPTURE(lc.x.str());
        CAPTURE(lc.N);
        CAPTURE(lc.bias);
        CAPTURE(std::string(dtype_name(dt)));
        CAPTURE(std::string(kernels::cuda::gemm_backend_name(be)));
        BackendScope scope(be);
        check_close(run_linear(gpu_in, so, dt, kGpu), ref, dt);
      }
    }
  }
}

TEST_CASE("cuda gemm: the fused MLP ops (linear_gelu and its backward) match the CPU") {
  // linear_gelu: y = gelu_tanh(p), p = x W1^T + b1 (the bias+GELU epilogue, p as its aux);
  // linear_gelu_bwd: gp = (g W2) gelu'(p) and its column sums (the dGELU + bias-gradient epilogue).
  // Both outputs of each, poisoned, every backend; widths odd (element-load paths), multiples of 8
  // (cp.async, wgmma and TMA) and 0 rows (the bias gradient is all zeros).
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(71);
  struct MlpCase {
    Shape x;       // (..., K)
    int64_t H, N;  // hidden and output widths
  };
  const std::vector<MlpCase> cases = {{{7, 33}, 129, 5},
                                      {{2, 3, 128}, 136, 64},
                                      {{130, 64}, 256, 72},
                                      {{1, 1}, 1, 1},
                                      {{0, 8}, 16, 8}};
  for (const MlpCase& mc : cases) {
    const int64_t K = mc.x[-1];
    Shape sh = mc.x, sg = mc.x;
    sh[-1] = mc.H;
    sg[-1] = mc.N;
    for (DType dt : {DType::F32, DType::BF16}) {
      const Tensor x = as_dtype(test::uniform(g, mc.x), dt);
      const Tensor w1 = as_dtype(test::uniform(g, {mc.H, K}), dt);
      const Tensor b1 = as_dtype(test::uniform(g, {mc.H}), dt);
      const Tensor gy = as_dtype(test::uniform(g, sg), dt);
      const Tensor w2 = as_dtype(test::uniform(g, {mc.N, mc.H}), dt);
      // Pre-activations over [-3, 3], where the GELU's slope runs from about 0 to about 1.
      const Tensor pre = as_dtype(test::uniform(g, sh, -3.0, 3.0), dt);
      const std::vector<Tensor> ref_fwd = test::run_op(
          Op::linear_gelu, {widen(x), widen(w1), widen(b1)}, {sh, sh}, DType::F64, Device::cpu());
      const std::vector<Tensor> ref_bwd =
          test::run_op(Op::linear_gelu_bwd, {widen(gy), widen(w2), widen(pre)}, {sh, Shape{mc.H}},
                       DType::F64, Device::cpu());
      for (GemmBackend be : kBackends) {
        CAPTURE(mc.x.str());
        CAPTURE(mc.H);
        CAPTURE(std::string(dtype_name(dt)));
        CAPTURE(std::string(kernels::cuda::gemm_backend_name(be)));
        BackendScope scope(be);
        const std::vector<Tensor> fwd = test::run_op(
            Op::linear_gelu, {x.to(kGpu), w1.to(kGpu), b1.to(kGpu)}, {sh, sh}, dt, kGpu);
        check_close(fwd[0], ref_fwd[0], dt);  // y
        check_close(fwd[1], ref_fwd[1], dt);  // p
        const std::vector<Tensor> bwd =
            test::run_op(Op::linear_gelu_bwd, {gy.to(kGpu), w2.to(kGpu), pre.to(kGpu)},
                         {sh, Shape{mc.H}}, dt, kGpu);
        check_close(bwd[0], ref_bwd[0], dt);  // gp
        check_close(bwd[1], ref_bwd[1], dt);  // its column sums
      }
    }
  }
}

TEST_CASE("cuda gemm: alpha, beta, strides, padding and every epilogue through gemm()") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(71);
  std::vector<Scenario> scenarios;
  auto add = [&](Scenario s) { scenarios.push_back(s); };
  {
    Scenario s{"alpha, odd padding", 37, 45, 29, 3, 5, 2};
    s.alpha = 0.5f;
    add(s);
    s.what = "alpha and beta";
    s.alpha = 1.5f;
    s.beta = -0.75f;
    add(s);
  }
  {
    Scenario s{"batch 3 with gaps, beta, bias", 19, 23, 17, 1, 2, 3};
    s.batch = 3;
    s.gap = 11;
    s.beta = 0.5f;
    s.epi = Epilogue::Bias;
    add(s);
    s.what = "batch 3, B shared";
    s.shared_b = true;
    s.beta = 0.f;
    s.epi = Epilogue::None;
    add(s);
    s.what = "batch 3, aligned strides";
    s.shared_b = false;
    s.round8 = true;
    s.gap = 16;
    add(s);
  }
  {
    Scenario s{"bias, aligned, two M tiles", 130, 136, 64, 0, 0, 0};
    s.round8 = true;
    s.epi = Epilogue::Bias;
    add(s);
  }
  {
    // Leading dims rounded to 8 with K = 37: the cp.async path with a partly valid chunk.
    Scenario s{"bias+gelu with aux, K tail", 37, 45, 37, 0, 0, 0};
    s.round8 = true;
    s.epi = Epilogue::BiasGelu;
    add(s);
    s.what = "bias+gelu, no aux, odd ldc";
    s.round8 = false;
    s.with_aux = false;
    add(s);
    s.what = "dgelu";
    s.round8 = true;
    s.epi = Epilogue::DGelu;
    add(s);
    s.what = "dgelu + bias gradient, three row chunks";
    s.M = 150;
    s.epi = Epilogue::DGeluBGrad;
    add(s);
    s.what = "bias gradient of A";
    s.M = 37;
    s.K = 150;
    s.epi = Epilogue::BGradA;
    add(s);
    s.what = "bias gradient of B";
    s.epi = Epilogue::BGradB;
    add(s);
  }
  {
    Scenario s{"K = 0: C = beta C + bias", 5, 6, 0, 0, 0, 0};
    s.beta = 0.5f;
    s.epi = Epilogue::Bias;
    add(s);
    s.what = "K = 0: bias gradient of A is zero";
    s.beta = 0.f;
    s.epi = Epilogue::BGradA;
    add(s);
  }
  {
    // Few output tiles and a deep K: our bf16 kernel splits K (fp32 partials, ordered reduce).
    Scenario s{"split-K, beta", 37, 45, 1500, 0, 0, 0};
    s.round8 = true;
    s.beta = 0.25f;
    add(s);
    s.what = "split-K, odd leading dims, bias+gelu";
    s.round8 = false;
    s.pad_a = 1;
    s.beta = 0.f;
    s.epi = Epilogue::BiasGelu;
    s.with_aux = false;
    add(s);
    s.what = "split-K, dgelu + bias gradient";
    s.round8 = true;
    s.pad_a = 0;
    s.K = 600;
    s.epi = Epilogue::DGeluBGrad;
    add(s);
  }
  add(Scenario{"1 x 1 x 1", 1, 1, 1, 0, 0, 0});

  for (GemmBackend be : kBackends) {
    BackendScope scope(be);
    int ran_lt = 0, total = 0;
    for (DType dt : {DType::F32, DType::BF16})
      for (const Scenario& s : scenarios)
        for (int ta = 0; ta < 2; ++ta)
          for (int tb = 0; tb < 2; ++tb) {
            CAPTURE(std::string(kernels::cuda::gemm_backend_name(be)));
            const Outcome o = check_scenario(s, ta != 0, tb != 0, dt, g);
            ran_lt += o.ran_lt;
            ++total;
            // Ours ran, and the kernel asked for (wgmma only where it can run).
            if (be != GemmBackend::CublasLt && s.M * s.N > 0)
              CHECK(std::string(kernels::cuda::gemm_backend_name(o.ran)) ==
                    kernels::cuda::gemm_backend_name(o.ours));
          }
    if (be == GemmBackend::CublasLt)  // which epilogue/layout combinations cuBLASLt took
      MESSAGE("forced cuBLASLt ran " << ran_lt << " of " << total
                                     << " gemm() cases; the others fell back to our kernels");
  }
}

TEST_CASE("cuda gemm: the wgmma kernels wrap their rings, split K and fill partial tiles") {
  PSVAE_REQUIRE_CUDA();
  if (!kernels::cuda::detail::gemm_wgmma_available(0)) {
    MESSAGE("skipped: this device cannot run the sm_90a wgmma kernels");
    return;
  }
  test::PoisonScope poison;
  Generator g(79);
  std::vector<Scenario> scenarios;
  {
    // No split (batch 2): 9 slabs of 64 through the 3- and 4-stage rings (each wraps twice),
    // partial M and N tiles, a K tail of 8 (zero-filled by cp.async or by the TMA), the bias
    // epilogue.
    Scenario s{"ring wrap, batch 2, partial tiles", 136, 200, 520, 0, 0, 0};
    s.round8 = true;
    s.batch = 2;
    s.gap = 8;
    s.epi = Epilogue::Bias;
    scenarios.push_back(s);
  }
  {
    // Two column tiles of the TMA kernel's 256 (the second 8 wide), three of the others' 128.
    Scenario s{"N 264: a partial 256-wide tile", 72, 264, 136, 0, 0, 0};
    s.round8 = true;
    s.epi = Epilogue::BiasGelu;
    scenarios.push_back(s);
  }
  {
    // One output tile and K = 2040: split-K (in multiples of 64, so no slab straddles two
    // splits), each split 4 or more slabs, beta and a partial last split.
    Scenario s{"split-K, beta", 64, 72, 2040, 0, 0, 0};
    s.round8 = true;
    s.beta = -0.5f;
    scenarios.push_back(s);
  }
  {
    // K = 0 with aligned operands: no slab at all (the TMA kernel's maps still encode), C =
    // beta C + bias.
    Scenario s{"K = 0, aligned", 40, 48, 0, 0, 0, 0};
    s.round8 = true;
    s.beta = 0.5f;
    s.epi = Epilogue::Bias;
    scenarios.push_back(s);
  }
  {
    // K below one slab (a single partly valid slab) and 8-element rows.
    Scenario s{"K 24 in one slab, 8 x 8", 8, 8, 24, 0, 0, 0};
    s.round8 = true;
    scenarios.push_back(s);
  }
  {
    // 5 x 3 = 15 tiles of the TMA kernel's 128 x 256 (partial on both edges), more than a
    // persistent grid has blocks (one per SM: 4 on the emulator), so each block takes 3 or 4
    // tiles; 4 slabs a tile (the last 8 deep), so the ring's stages and phases run on across tile
    // boundaries, and the next tile's copies land while the last one's epilogue stores.
    Scenario s{"15 tiles: persistent blocks take several", 520, 600, 200, 0, 0, 0};
    s.round8 = true;
    s.epi = Epilogue::BiasGelu;
    scenarios.push_back(s);
  }
  // The TMA kernel under both of its grids (PSVAE_GEMM_TMA_GRID: one block per SM, or per tile)
  // and both of its consumer schedules (PSVAE_GEMM_TMA_SCHEDULE). Ping-pong tiles are 128 x 128:
  // the 15-tile scenario becomes 25 tiles, 7 for the emulator's first persistent block (an odd
  // count: consumer 1 takes an empty last turn) and 6 for the others; its `tiles` grid runs 13
  // blocks of a pair each, the last with one tile only.
  struct Run {
    GemmBackend be;
    const char* grid;
    const char* schedule;
  };
  for (const Run r : {Run{GemmBackend::Wgmma, "persistent", "cooperative"},
                      Run{GemmBackend::WgmmaTma, "persistent", "cooperative"},
                      Run{GemmBackend::WgmmaTma, "tiles", "cooperative"},
                      Run{GemmBackend::WgmmaTma, "persistent", "pingpong"},
                      Run{GemmBackend::WgmmaTma, "tiles", "pingpong"}}) {
    if (r.be == GemmBackend::WgmmaTma && !kernels::cuda::detail::gemm_wgmma_tma_available(0)) {
      MESSAGE("skipped wgmma_tma: the driver has no cuTensorMapEncodeTiled");
      continue;
    }
    BackendScope scope(r.be);
    test::EnvScope grid("PSVAE_GEMM_TMA_GRID", r.grid);
    test::EnvScope schedule("PSVAE_GEMM_TMA_SCHEDULE", r.schedule);
    for (const Scenario& s : scenarios)
      for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb) {
          CAPTURE(std::string(s.what));
          CAPTURE(std::string(kernels::cuda::gemm_backend_name(r.be)) + " grid " + r.grid +
                  " schedule " + r.schedule);
          const Outcome o = check_scenario(s, ta != 0, tb != 0, DType::BF16, g);
          CHECK(o.ran == r.be);
        }
  }
}

TEST_CASE("cuda gemm: the same call twice gives bitwise-equal results") {
  PSVAE_REQUIRE_CUDA();
  Generator g(73);
  // A skinny, deep product (where cuBLASLt likes split-K) with the bias gradient of A (the two-pass
  // column sum of ours, the fused BGRAD of cuBLASLt).
  const int64_t M = 384, N = 256, K = 4608;
  for (DType dt : {DType::F32, DType::BF16})
    for (GemmBackend be : kBackends) {
      CAPTURE(std::string(dtype_name(dt)));
      CAPTURE(std::string(kernels::cuda::gemm_backend_name(be)));
      BackendScope scope(be);
      const Tensor a = as_dtype(test::uniform(g, {K, M}), dt).to(kGpu);  // stored (K, M): A^T
      const Tensor b = as_dtype(test::uniform(g, {K, N}), dt).to(kGpu);
      Tensor out[2], grad[2];
      for (int r = 0; r < 2; ++r) {
        out[r] = Tensor::zeros({M, N}, dt, kGpu);
        grad[r] = Tensor::zeros({M}, dt, kGpu);
        GemmDesc d;
        d.dtype = dt;
        d.trans_a = true;
        d.M = M;
        d.N = N;
        d.K = K;
        d.lda = M;
        d.ldb = N;
        d.ldc = N;
        d.A = a.raw_data();
        d.B = b.raw_data();
        d.C = out[r].raw_data();
        d.epilogue = Epilogue::BGradA;
        d.bias_grad = grad[r].raw_data();
        kernels::cuda::gemm(d, 0);
      }
      CHECK(test::bit_mismatches_host(out[0].to(Device::cpu()), out[1].to(Device::cpu())) == 0);
      CHECK(test::bit_mismatches_host(grad[0].to(Device::cpu()), grad[1].to(Device::cpu())) == 0);
    }
}

TEST_CASE("cuda gemm: bad descriptors, shapes, dtypes and PSVAE_GEMM values are refused") {
  // PSVAE_GEMM parsing and descriptor validation need no device.
  using kernels::cuda::parse_gemm_backend;
  CHECK(parse_gemm_backend(nullptr) == GemmBackend::Auto);
  CHECK(parse_gemm_backend("") == GemmBackend::Auto);
  CHECK(parse_gemm_backend("own") == GemmBackend::Own);
  CHECK(parse_gemm_backend("WGMMA") == GemmBackend::Wgmma);
  CHECK(parse_gemm_backend("wgmma_TMA") == GemmBackend::WgmmaTma);
  CHECK(parse_gemm_backend("cuBLASLt") == GemmBackend::CublasLt);
  CHECK(parse_gemm_backend("AUTO") == GemmBackend::Auto);
  CHECK_THROWS_WITH_AS(parse_gemm_backend("fast"), doctest::Contains("PSVAE_GEMM"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_gemm_backend("fast"), doctest::Contains("'fast'"),
                       std::invalid_argument);
  GemmDesc d;
  d.M = d.N = d.K = 4;
  d.lda = 3;  // < K
  d.ldb = d.ldc = 4;
  CHECK_THROWS_WITH_AS(kernels::cuda::gemm(d, 0), doctest::Contains("gemm: lda"),
                       std::invalid_argument);
  d.lda = 4;  // now the null pointers
  CHECK_THROWS_WITH_AS(kernels::cuda::gemm(d, 0), doctest::Contains("A is null"),
                       std::invalid_argument);
  d.dtype = DType::F64;
  CHECK_THROWS_WITH_AS(kernels::cuda::gemm(d, 0), doctest::Contains("f64"), std::invalid_argument);
  d.dtype = DType::F32;
  d.batch = 2;
  d.stride_c = 16;  // entries apart, so that the epilogue rule is what fails
  d.epilogue = Epilogue::BGradA;
  CHECK_THROWS_WITH_AS(kernels::cuda::gemm(d, 0), doctest::Contains("batch == 1"),
                       std::invalid_argument);
  d.batch = 1;
  d.epilogue = Epilogue::BiasGelu;
  d.beta = 1.f;
  CHECK_THROWS_WITH_AS(kernels::cuda::gemm(d, 0), doctest::Contains("beta"), std::invalid_argument);

  PSVAE_REQUIRE_CUDA();
  const Tensor a = Tensor::zeros({4, 5}, DType::F32, kGpu),
               b = Tensor::zeros({6, 7}, DType::F32, kGpu);
  CHECK_THROWS_WITH_AS(run_matmul(a, b, false, false, {4, 7}, DType::F32, kGpu),
                       doctest::Contains("matmul"), std::exception);
  CHECK_THROWS_WITH_AS(run_linear({a, b}, {4, 6}, DType::F32, kGpu), doctest::Contains("linear"),
                       std::exception);
  const Tensor a64 = Tensor::zeros({4, 5}, DType::F64, kGpu),
               b64 = Tensor::zeros({5, 7}, DType::F64, kGpu);
  CHECK_THROWS_WITH_AS(run_matmul(a64, b64, false, false, {4, 7}, DType::F64, kGpu),
                       doctest::Contains("not yet supported"), std::exception);
  if (kernels::cuda::detail::gemm_wgmma_tma_available(0)) {
    BackendScope scope(GemmBackend::WgmmaTma);
    test::EnvScope grid("PSVAE_GEMM_TMA_GRID", "fastest");
    const Tensor x = Tensor::zeros({8, 64}, DType::BF16, kGpu),
                 y = Tensor::zeros({64, 8}, DType::BF16, kGpu);
    CHECK_THROWS_WITH_AS(run_matmul(x, y, false, false, {8, 8}, DType::BF16, kGpu),
                         doctest::Contains("gemm: PSVAE_GEMM_TMA_GRID must be persistent or tiles, "
                                           "got 'fastest'"),
                         std::exception);
    test::EnvScope grid_ok("PSVAE_GEMM_TMA_GRID", "persistent");
    test::EnvScope schedule("PSVAE_GEMM_TMA_SCHEDULE", "ping-pong");
    CHECK_THROWS_WITH_AS(run_matmul(x, y, false, false, {8, 8}, DType::BF16, kGpu),
                         doctest::Contains("gemm: PSVAE_GEMM_TMA_SCHEDULE must be cooperative or "
                                           "pingpong, got 'ping-pong'"),
                         std::exception);
  }
}

#endif  // PSVAE_WITH_CUDA
