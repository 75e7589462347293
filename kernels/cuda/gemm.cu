// CUDA kernels of the linalg family, matmul and linear, and the GEMM dispatch behind them
// (kernels/cuda/gemm.h): one entry point that validates a GemmDesc and runs it on cuBLASLt
// (gemm_cublaslt.cu) or on our own kernels (gemm_mma.cu).
//
// The Auto rule: cuBLASLt first, ours when cuBLASLt has no algorithm (or for K == 0 and empty
// problems, which it does not take). Why: on sm_90 cuBLASLt runs wgmma/TMA kernels, while our
// kernel is an mma.sync design (the instruction path sm_80 has), which on an H100-class GPU peaks
// well below wgmma; the issue's own target for it is 0.7x cuBLAS. Until bench/bench_gemm.cu shows
// a shape class where ours wins (small or skinny problems are the candidates: no heuristic or
// workspace overhead), every shape goes to cuBLASLt. PSVAE_GEMM=own|wgmma|wgmma_tma|cublaslt (or
// set_gemm_backend) forces a path so each can be studied and tested: own is our mma.sync kernel,
// wgmma and wgmma_tma our sm_90a kernels (gemm_wgmma_sm90a.cu: cp.async, 128 x 128 tiles;
// gemm_wgmma_tma_sm90a.cu: TMA, warp-specialised, persistent, 128 x 256 tiles or ping-pong
// 128 x 128; neither has run on a GPU yet, so neither is in Auto's rule).
// Exceptions decided in gemm_cublaslt.cu, which then fall back to ours even when cuBLASLt is
// forced: f32 with a GELU epilogue (cuBLASLt's GELU accuracy is undocumented; the f32 path promises
// 1e-5), and a GELU aux whose ldc is not a multiple of 8 (cuBLASLt's requirement).
//
// Ops (semantics of kernels/cpu/linalg.cpp):
//   matmul (A (..., M, K), B (..., K, N) or rank 2 shared) -> C (..., M, N), ints trans_a,
//     trans_b swap the last two dims of that input. A shared B with A not transposed folds the
//     batch into M (one GEMM of batch*M rows); else a strided batch (B's stride 0 when shared).
//   linear (x (..., K), W (N, K), [b (N)]) -> x W^T + b: one GEMM with trans_b and the fused bias
//     epilogue.
// dtypes f32 and bf16 (fp32 accumulation); f64 throws "not yet supported on CUDA".
#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/cuda/gemm.h"
#include "kernels/op_table.h"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda {

const char* epilogue_name(Epilogue e) {
  switch (e) {
    case Epilogue::None: return "none";
    case Epilogue::Bias: return "bias";
    case Epilogue::BiasGelu: return "bias+gelu";
    case Epilogue::DGelu: return "dgelu";
    case Epilogue::DGeluBGrad: return "dgelu+bgrad";
    case Epilogue::BGradA: return "bgrad_a";
    case Epilogue::BGradB: return "bgrad_b";
  }
  return "?";
}

const char* gemm_backend_name(GemmBackend b) {
  switch (b) {
    case GemmBackend::Auto: return "auto";
    case GemmBackend::CublasLt: return "cublaslt";
    case GemmBackend::Own: return "own";
    case GemmBackend::Wgmma: return "wgmma";
    case GemmBackend::WgmmaTma: return "wgmma_tma";
  }
  return "?";
}

namespace {

std::atomic<int> g_backend{-1};  // -1: PSVAE_GEMM not read yet
thread_local GemmBackend t_last = GemmBackend::Auto;

std::string describe(const GemmDesc& d) {
  return std::string(dtype_name(d.dtype)) + " M=" + std::to_string(d.M) +
         " N=" + std::to_string(d.N) + " K=" + std::to_string(d.K) + (d.trans_a ? " A^T" : "") +
         (d.trans_b ? " B^T" : "") + " lda=" + std::to_string(d.lda) +
         " ldb=" + std::to_string(d.ldb) + " ldc=" + std::to_string(d.ldc) +
         " batch=" + std::to_string(d.batch) + " epilogue " + epilogue_name(d.epilogue);
}

void validate(const GemmDesc& d) {
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument("gemm: " + why + " (" + describe(d) + ")");
  };
  if (d.dtype != DType::F32 && d.dtype != DType::BF16)
    fail(std::string("dtype ") + dtype_name(d.dtype) + " not supported (f32 or bf16)");
  if (d.M < 0 || d.N < 0 || d.K < 0 || d.batch < 0) fail("negative size");
  // Row strides of the stored matrices: at least their row length (and 1 when empty).
  const int64_t a_row = d.trans_a ? d.M : d.K, b_row = d.trans_b ? d.K : d.N;
  if (d.lda < std::max<int64_t>(1, a_row)) fail("lda below the stored row length");
  if (d.ldb < std::max<int64_t>(1, b_row)) fail("ldb below the stored row length");
  if (d.ldc < std::max<int64_t>(1, d.N)) fail("ldc below N");
  if (d.stride_a < 0 || d.stride_b < 0 || d.stride_c < 0) fail("negative batch stride");
  if (d.batch > 1 && d.M > 0 && d.N > 0 && d.stride_c < (d.M - 1) * d.ldc + d.N)
    fail("batch entries of C overlap (stride_c too small)");
  const Epilogue e = d.epilogue;
  const bool grad = e == Epilogue::DGeluBGrad || e == Epilogue::BGradA || e == Epilogue::BGradB;
  if (grad && d.batch != 1) fail("bias-gradient epilogues need batch == 1");
  if (d.beta != 0.f && e != Epilogue::None && e != Epilogue::Bias)
    fail("beta != 0 is supported with the none and bias epilogues only");
  // Pointers last, so that the checks above can be exercised without memory.
  const bool work = d.batch > 0;
  if (work && d.M * d.K > 0 && !d.A) fail("A is null");
  if (work && d.K * d.N > 0 && !d.B) fail("B is null");
  if (work && d.M * d.N > 0 && !d.C) fail("C is null");
  if ((e == Epilogue::Bias || e == Epilogue::BiasGelu) && d.N > 0 && !d.bias)
    fail("the bias epilogue needs a bias");
  if ((e == Epilogue::DGelu || e == Epilogue::DGeluBGrad) && d.M * d.N > 0 && !d.aux)
    fail("the dgelu epilogue needs aux (the pre-activation)");
  if (grad && (e == Epilogue::BGradA ? d.M : d.N) > 0 && !d.bias_grad)
    fail("bias-gradient epilogues need bias_grad");
}

}  // namespace

GemmBackend parse_gemm_backend(const char* value) {
  if (!value || !*value) return GemmBackend::Auto;
  std::string s(value);
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  if (s == "auto") return GemmBackend::Auto;
  if (s == "cublaslt") return GemmBackend::CublasLt;
  if (s == "own") return GemmBackend::Own;
  if (s == "wgmma") return GemmBackend::Wgmma;
  if (s == "wgmma_tma") return GemmBackend::WgmmaTma;
  throw std::invalid_argument(std::string("PSVAE_GEMM: unknown value '") + value +
                              "' (expected auto, cublaslt, own, wgmma or wgmma_tma)");
}

GemmBackend gemm_backend() {
  int b = g_backend.load();
  if (b < 0) {
    int expected = -1;
    g_backend.compare_exchange_strong(
        expected, static_cast<int>(parse_gemm_backend(std::getenv("PSVAE_GEMM"))));
    b = g_backend.load();
  }
  return static_cast<GemmBackend>(b);
}

void set_gemm_backend(GemmBackend b) { g_backend.store(static_cast<int>(b)); }

GemmBackend gemm_last_backend() { return t_last; }

void gemm(const GemmDesc& d, int device, void* stream) {
  validate(d);
  ::psvae::cuda::check_device(device);
  if (d.batch == 0) return;
  const GemmBackend b = gemm_backend();
  const bool ours = b == GemmBackend::Own || b == GemmBackend::Wgmma || b == GemmBackend::WgmmaTma;
  if (!ours && detail::gemm_cublaslt(d, device, stream)) {
    t_last = GemmBackend::CublasLt;
    return;
  }
  t_last = detail::gemm_own(d, device, stream, ours ? b : GemmBackend::Own);
}

namespace {

using detail::unsupported;

void check_dtypes(const char* op, const OpCall& c) {
  const DType dt = c.out[0].dtype();
  if (dt != DType::F32 && dt != DType::BF16)
    unsupported(op, std::string("dtype ") + dtype_name(dt));
  for (const Tensor& t : c.in)
    if (t.dtype() != dt)
      throw std::invalid_argument(std::string(op) + ": input " + t.str() +
                                  " does not match output " + c.out[0].str());
}

// in: A (..., M, K) or with trans_a (..., K, M); B (..., K, N) or with trans_b (..., N, K), or B
// of rank 2 shared by every batch entry. out: C (..., M, N).
void matmul_cuda(const OpCall& c) {
  check_dtypes("matmul", c);
  const Tensor &A = c.in[0], &B = c.in[1], &C = c.out[0];
  const bool ta = c.ints[0] != 0, tb = c.ints[1] != 0;
  auto fail = [&] {
    throw std::invalid_argument("matmul: shapes a " + A.shape().str() + (ta ? "^T" : "") + ", b " +
                                B.shape().str() + (tb ? "^T" : "") + " and out " + C.shape().str() +
                                " do not match");
  };
  const int r = C.rank();
  if (r < 2 || A.rank() != r || (B.rank() != 2 && B.rank() != r)) fail();
  const int64_t M = C.size(-2), N = C.size(-1), K = ta ? A.size(-2) : A.size(-1);
  if ((ta ? A.size(-1) : A.size(-2)) != M) fail();
  if ((tb ? B.size(-1) : B.size(-2)) != K || (tb ? B.size(-2) : B.size(-1)) != N) fail();
  for (int dim = 0; dim < r - 2; ++dim)
    if (A.size(dim) != C.size(dim) || (B.rank() == r && B.size(dim) != C.size(dim))) fail();
  const bool shared = B.rank() == 2;
  const int64_t batch = C.shape().prod(0, r - 2);

  GemmDesc d;
  d.dtype = C.dtype();
  d.trans_a = ta;
  d.trans_b = tb;
  d.M = M;
  d.N = N;
  d.K = K;
  d.lda = std::max<int64_t>(1, ta ? M : K);
  d.ldb = std::max<int64_t>(1, tb ? K : N);
  d.ldc = std::max<int64_t>(1, N);
  d.batch = batch;
  d.stride_a = M * K;
  d.stride_b = shared ? 0 : K * N;
  d.stride_c = M * N;
  if (shared && !ta && batch > 1) {  // (batch, M, K) rows are one (batch M, K) matrix
    d.M = batch * M;
    d.batch = 1;
  }
  d.A = A.raw_data();
  d.B = B.raw_data();
  d.C = C.raw_data();
  gemm(d, C.device().index);
}

// y = x W^T as a descriptor: x (..., K) as rows, W (N, K) row-major as op(B) stored transposed,
// y (..., N). Shapes already checked.
GemmDesc linear_desc(const Tensor& X, const Tensor& W, const Tensor& Y) {
  const int64_t N = W.size(0), K = W.size(1);
  GemmDesc d;
  d.dtype = Y.dtype();
  d.trans_b = true;
  d.M = X.shape().prod(0, X.rank() - 1);
  d.N = N;
  d.K = K;
  d.lda = std::max<int64_t>(1, K);
  d.ldb = std::max<int64_t>(1, K);
  d.ldc = std::max<int64_t>(1, N);
  d.A = X.raw_data();
  d.B = W.raw_data();
  d.C = Y.raw_data();
  return d;
}

// The operands of linear and linear_gelu: x (..., K), W (N, K), b (N) when given, y (..., N) with
// x's leading dims (compared by product, not numel / last: with K == 0, x has no elements but
// still M rows).
void check_linear_call(const char* op, const Tensor& X, const Tensor& W, const Tensor* B,
                       const Tensor& Y) {
  if (W.rank() != 2 || X.rank() < 1 || X.size(-1) != W.size(1) || Y.rank() != X.rank() ||
      Y.size(-1) != W.size(0) ||
      Y.shape().prod(0, Y.rank() - 1) != X.shape().prod(0, X.rank() - 1) ||
      (B && (B->rank() != 1 || B->size(0) != W.size(0))))
    throw std::invalid_argument(std::string(op) + ": x " + X.shape().str() + ", W " +
                                W.shape().str() + (B ? ", b " + B->shape().str() : std::string()) +
                                " and out " + Y.shape().str() + " do not match");
}

// in: x (..., K), W (N, K), optional b (N). out: y (..., N).
void linear_cuda(const OpCall& c) {
  check_dtypes("linear", c);
  const Tensor &X = c.in[0], &W = c.in[1], &Y = c.out[0];
  const Tensor* B = c.in.size() > 2 ? &c.in[2] : nullptr;
  check_linear_call("linear", X, W, B, Y);
  GemmDesc d = linear_desc(X, W, Y);
  if (B) {
    d.epilogue = Epilogue::Bias;
    d.bias = B->raw_data();
  }
  gemm(d, Y.device().index);
}

// in: x (..., K), W (N, K), b (N). out: y = gelu_tanh(p), p = x W^T + b, both (..., N). One GEMM
// with the bias+GELU epilogue, p stored as its aux output.
void linear_gelu_cuda(const OpCall& c) {
  check_dtypes("linear_gelu", c);
  const Tensor &X = c.in[0], &W = c.in[1], &B = c.in[2], &Y = c.out[0], &P = c.out[1];
  check_linear_call("linear_gelu", X, W, &B, Y);
  if (P.shape() != Y.shape())
    throw std::invalid_argument("linear_gelu: pre " + P.shape().str() + " and out " +
                                Y.shape().str() + " differ");
  GemmDesc d = linear_desc(X, W, Y);
  d.epilogue = Epilogue::BiasGelu;
  d.bias = B.raw_data();
  d.aux = P.raw_data();
  gemm(d, Y.device().index);
}

// in: g (..., N), W (N, H), p (..., H). out: gp = (g W) * gelu_tanh'(p) (..., H), gb (H) = column
// sums of gp. One GEMM with the dGELU + bias-gradient epilogue.
void linear_gelu_bwd_cuda(const OpCall& c) {
  check_dtypes("linear_gelu_bwd", c);
  const Tensor &G = c.in[0], &W = c.in[1], &P = c.in[2], &GP = c.out[0], &GB = c.out[1];
  const int64_t rows = P.rank() >= 1 ? P.shape().prod(0, P.rank() - 1) : 0;
  if (W.rank() != 2 || G.rank() < 1 || G.size(-1) != W.size(0) || P.rank() < 1 ||
      P.size(-1) != W.size(1) || G.shape().prod(0, G.rank() - 1) != rows ||
      GP.shape() != P.shape() || GB.rank() != 1 || GB.size(0) != W.size(1))
    throw std::invalid_argument("linear_gelu_bwd: g " + G.shape().str() + ", W " + W.shape().str() +
                                ", pre " + P.shape().str() + " and outputs " + GP.shape().str() +
                                ", " + GB.shape().str() + " do not match");
  const int64_t N = W.size(0), H = W.size(1);
  GemmDesc d;
  d.dtype = GP.dtype();
  d.M = rows;
  d.N = H;
  d.K = N;
  d.lda = std::max<int64_t>(1, N);
  d.ldb = std::max<int64_t>(1, H);
  d.ldc = std::max<int64_t>(1, H);
  d.A = G.raw_data();
  d.B = W.raw_data();
  d.C = GP.raw_data();
  d.epilogue = Epilogue::DGeluBGrad;
  d.aux = P.raw_data();
  d.bias_grad = GB.raw_data();
  gemm(d, GP.device().index);
}

}  // namespace

void register_gemm(OpTable& t) {
  t[Op::matmul].cuda = &matmul_cuda;
  t[Op::linear].cuda = &linear_cuda;
  t[Op::linear_gelu].cuda = &linear_gelu_cuda;
  t[Op::linear_gelu_bwd].cuda = &linear_gelu_bwd_cuda;
}

}  // namespace psvae::kernels::cuda
