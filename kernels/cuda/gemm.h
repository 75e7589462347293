// The GEMM dispatch of the CUDA backend: one entry point for every matrix product of the engine,
// choosing between cuBLASLt (heuristic algorithm, 32 MiB workspace, fused epilogues) and our own
// tensor-core kernel (kernels/cuda/gemm_mma.cu). A plain C++ header (no CUDA types, streams as
// void*), so g++-compiled tests and other .cu files can both call it.
//
// Convention: row-major, as the engine. C (M, N) = alpha op(A) op(B) + beta C, then the epilogue,
// for each of `batch` entries (pointers advanced by stride_a/b/c elements; a stride of 0 shares an
// operand between entries). op(A) is (M, K): A is stored (M, K) with row stride lda >= K, or with
// trans_a stored (K, M) with lda >= M. op(B) is (K, N): B stored (K, N) with ldb >= N, or with
// trans_b stored (N, K) with ldb >= K. C is (M, N) with ldc >= N. All counts are in elements.
//
// Which path runs: gemm_backend() (env PSVAE_GEMM=auto|cublaslt|own|wgmma|wgmma_tma, read once;
// set_gemm_backend overrides it for configs, tests and benchmarks). Auto takes cuBLASLt (see
// gemm.cu for the rule and the data behind it); both Auto and CublasLt fall back to our kernels
// when cuBLASLt has no algorithm for the problem (or K == 0, which cuBLASLt does not take). Own is
// our kernels with the mma.sync bf16 tile kernel (gemm_mma.cu); Wgmma is our kernels with the
// sm_90a wgmma tile kernel for bf16 (gemm_wgmma_sm90a.cu) where it can run (an sm_90 device,
// every 16-byte chunk of A and B aligned), else exactly Own. WgmmaTma is our kernels with the
// sm_90a TMA + warp-specialised kernel (gemm_wgmma_tma_sm90a.cu, persistent: env
// PSVAE_GEMM_TMA_GRID=persistent|tiles; its consumers on one 128 x 256 tile or each on its own
// 128 x 128 tile: env PSVAE_GEMM_TMA_SCHEDULE=cooperative|pingpong) where it can run, else
// Wgmma's choice.
// gemm_last_backend() says which path ran the last call on this thread
// (Wgmma / WgmmaTma only when that kernel did).
#pragma once
#include <cstdint>

#include "tensor/dtype.h"

namespace psvae::kernels::cuda {

// What is applied to t = alpha op(A) op(B) + beta C before it is stored in C. The GELU is the tanh
// approximation (the engine's gelu_tanh, and cuBLASLt's): gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi)
// (x + 0.044715 x^3))). `aux` has C's layout (ldc, stride_c) and dtype.
enum class Epilogue : int {
  None,        // C = t
  Bias,        // C = t + bias[n]                                  (bias: N elements)
  BiasGelu,    // pre = t + bias[n]; C = gelu(pre); aux = pre      (aux may be null: not stored)
  DGelu,       // C = t * gelu'(aux)                               (aux: the saved pre-activation)
  DGeluBGrad,  // C = t * gelu'(aux); bias_grad[n] = sum_m C[m, n] (the MLP's fc1 backward)
  BGradA,      // C = t; bias_grad[m] = sum_k op(A)[m, k]          (linear's dW = dY^T X: db)
  BGradB,      // C = t; bias_grad[n] = sum_k op(B)[k, n]          (dW^T = X^T dY: db)
};
const char* epilogue_name(Epilogue e);

struct GemmDesc {
  DType dtype = DType::F32;  // of A, B, C, bias, aux and bias_grad: F32 or BF16 (fp32 accumulation)
  bool trans_a = false, trans_b = false;
  int64_t M = 0, N = 0, K = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;  // elements between batch entries
  float alpha = 1.f, beta = 0.f;                     // beta == 0: C is not read (it may hold NaN)
  const void* A = nullptr;
  const void* B = nullptr;
  void* C = nullptr;
  Epilogue epilogue = Epilogue::None;
  const void* bias = nullptr;  // Bias, BiasGelu: N elements
  void* aux = nullptr;         // BiasGelu: output (optional); DGelu, DGeluBGrad: input
  void* bias_grad = nullptr;   // DGeluBGrad, BGradB: N elements; BGradA: M elements (written)
};

enum class GemmBackend : int { Auto, CublasLt, Own, Wgmma, WgmmaTma };
const char* gemm_backend_name(GemmBackend b);

// The configured backend: the last set_gemm_backend value, else env PSVAE_GEMM (auto, cublaslt,
// own, wgmma or wgmma_tma; unset or empty means auto), read on the first call. A bad value throws
// std::invalid_argument naming PSVAE_GEMM and the value.
GemmBackend gemm_backend();
void set_gemm_backend(GemmBackend b);
// The parser behind it: "auto", "cublaslt", "own", "wgmma", "wgmma_tma" (any case; null or
// empty: auto); anything else throws std::invalid_argument("PSVAE_GEMM: unknown value '<v>'
// (expected auto, cublaslt, own, wgmma or wgmma_tma)").
GemmBackend parse_gemm_backend(const char* value);
// The path that ran the last gemm() of this thread: CublasLt, Own, Wgmma or WgmmaTma (Auto
// before any call).
GemmBackend gemm_last_backend();

// Runs the product on `device`, on `stream` (a cudaStream_t; null means the project's stream of
// that device, psvae::cuda::stream(device)). Asynchronous. Throws std::invalid_argument, message
// starting with "gemm:", on a bad descriptor (sizes, leading dims, missing pointers, a bias-grad
// epilogue with batch > 1, beta != 0 with an epilogue other than None/Bias, a dtype other than
// F32/BF16).
void gemm(const GemmDesc& d, int device, void* stream = nullptr);

namespace detail {
// The two paths, for the dispatch and the benchmark; the descriptor is already validated.
// cuBLASLt: returns false (having launched nothing) when it has no algorithm for the problem.
bool gemm_cublaslt(const GemmDesc& d, int device, void* stream);
// Ours: bf16 on tensor cores (mma.sync; with `want` Wgmma or WgmmaTma the sm_90a kernel of that
// name where it can run), f32 on a register-blocked SIMT kernel; every epilogue. Returns the
// kernel that ran: Own, Wgmma or WgmmaTma (WgmmaTma falls back to Wgmma where its tensor maps
// cannot describe the operands, e.g. a batch stride of 0; both fall back to Own for f32,
// unaligned operands and devices without sm_90a).
GemmBackend gemm_own(const GemmDesc& d, int device, void* stream,
                     GemmBackend want = GemmBackend::Own);
// Whether the wgmma kernels can run on `device` (this binary has their sm_90a code and the device
// can load it; always in the emulator); the TMA one also needs the driver's
// cuTensorMapEncodeTiled.
bool gemm_wgmma_available(int device);
bool gemm_wgmma_tma_available(int device);
// Frees the cached cuBLASLt descriptors (tests and benchmarks; the workspace stays).
void gemm_cublaslt_clear_cache();
}  // namespace detail

}  // namespace psvae::kernels::cuda
