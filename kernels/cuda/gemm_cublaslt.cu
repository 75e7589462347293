// The cuBLASLt path of the GEMM dispatch (kernels/cuda/gemm.h).
//
// Row-major through the usual swap: cuBLASLt is column-major, and a row-major (R, C) matrix with
// row stride ld is the column-major (C, R) matrix with the same ld. So the row-major product
// C (M, N) = op(A) op(B) is computed as the column-major C^T (N, M) = op(B)^T op(A)^T: cuBLASLt's
// "A" is our B (transposed iff trans_b), its "B" is our A (transposed iff trans_a), m = N, n = M.
// Consequences for the epilogues: cuBLASLt's bias runs along D's rows = our columns (N) as
// wanted; its BGRADB (sum over k of its B = our op(A)) is our BGradA and its BGRADA our BGradB;
// DGELU_BGRAD sums D over its columns = over our rows, giving N values.
//
// Numerics: CUBLAS_COMPUTE_32F with fp32 scale for f32 and bf16 (no TF32: the f32 path must
// match the CPU to 1e-5). cuBLAS is bitwise reproducible run to run for a fixed algorithm and
// toolkit/GPU (its split-K reductions are ordered: CUBLASLT_REDUCTION_SCHEME_INPLACE uses
// counters "to guarantee the sequentiality"), which the determinism test checks.
//
// Per problem shape a Plan (matmul descriptor, three layouts, the heuristic's first algorithm)
// is built once and cached (keyed by everything the heuristic sees, including the alignment of
// every pointer, since the heuristic picks kernels by it); at most kMaxPlans are kept, then the
// cache is cleared (a training step has a few dozen shapes). A 32 MiB workspace per device is
// allocated once; it assumes one stream per device (the engine's), since two streams running
// cuBLASLt kernels at once would share it.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include "kernels/cuda/gemm.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda::detail {

namespace {

namespace rt = ::psvae::cuda;

constexpr size_t kWorkspaceBytes = size_t(32) << 20;
constexpr size_t kMaxPlans = 256;

void lt_check(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("gemm: ") + what + " failed: " +
                             cublasLtGetStatusName(st) + " (" + cublasLtGetStatusString(st) + ")");
}

// One cuBLASLt handle and one workspace per device, made on first use and kept for the process
// (released by the driver at exit; destroying them from a static destructor could run after the
// CUDA runtime has shut down).
struct DeviceState {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
};

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr;  // cuBLASLt's A: our B
  cublasLtMatrixLayout_t lb = nullptr;  // cuBLASLt's B: our A
  cublasLtMatrixLayout_t lc = nullptr;  // C and D: our C
  cublasLtMatmulAlgo_t algo{};
  bool has_algo = false;
  void destroy() {
    if (op) cublasLtMatmulDescDestroy(op);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    op = nullptr;
    la = lb = lc = nullptr;
  }
};

using Key = std::array<int64_t, 20>;

// Everything below is guarded by state_mutex(); the function-local statics avoid any static
// initialisation order question.
std::mutex& state_mutex() {
  static std::mutex m;
  return m;
}
std::map<int, DeviceState>& devices() {
  static std::map<int, DeviceState> d;
  return d;
}
std::map<Key, Plan>& plans() {
  static std::map<Key, Plan> p;
  return p;
}

DeviceState& device_state(int device) {
  DeviceState& s = devices()[device];
  if (!s.handle) {
    rt::DeviceGuard guard(device);
    lt_check(cublasLtCreate(&s.handle), "cublasLtCreate");
    PSVAE_CUDA_CHECK(cudaMalloc(&s.workspace, kWorkspaceBytes));
  }
  return s;
}

// Largest power of two (up to 256, cuBLASLt's default assumption) dividing the address; 256 for
// null (no constraint).
uint32_t alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

bool uses_bias_pointer(Epilogue e) {
  return e == Epilogue::Bias || e == Epilogue::BiasGelu || e == Epilogue::DGeluBGrad ||
         e == Epilogue::BGradA || e == Epilogue::BGradB;
}
bool uses_aux(const GemmDesc& d) {
  return (d.epilogue == Epilogue::BiasGelu && d.aux) || d.epilogue == Epilogue::DGelu ||
         d.epilogue == Epilogue::DGeluBGrad;
}
const void* bias_pointer(const GemmDesc& d) {
  return (d.epilogue == Epilogue::Bias || d.epilogue == Epilogue::BiasGelu) ? d.bias : d.bias_grad;
}

cublasLtEpilogue_t lt_epilogue(const GemmDesc& d) {
  switch (d.epilogue) {
    case Epilogue::Bias: return CUBLASLT_EPILOGUE_BIAS;
    case Epilogue::BiasGelu:
      return d.aux ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_BIAS;
    case Epilogue::DGelu: return CUBLASLT_EPILOGUE_DGELU;
    case Epilogue::DGeluBGrad: return CUBLASLT_EPILOGUE_DGELU_BGRAD;
    case Epilogue::BGradA: return CUBLASLT_EPILOGUE_BGRADB;  // the swap: our A is its B
    case Epilogue::BGradB: return CUBLASLT_EPILOGUE_BGRADA;
    default: return CUBLASLT_EPILOGUE_DEFAULT;
  }
}

Key make_key(const GemmDesc& d, int device) {
  return Key{device,
             static_cast<int64_t>(d.dtype),
             d.trans_a,
             d.trans_b,
             d.M,
             d.N,
             d.K,
             d.lda,
             d.ldb,
             d.ldc,
             d.batch,
             d.batch > 1 ? d.stride_a : 0,
             d.batch > 1 ? d.stride_b : 0,
             d.batch > 1 ? d.stride_c : 0,
             static_cast<int64_t>(lt_epilogue(d)),
             alignment(d.A),
             alignment(d.B),
             alignment(d.C),
             alignment(uses_bias_pointer(d.epilogue) ? bias_pointer(d) : nullptr),
             alignment(uses_aux(d) ? d.aux : nullptr)};
}

template <class V>
void set_desc(cublasLtMatmulDesc_t op, cublasLtMatmulDescAttributes_t attr, const V& v) {
  lt_check(cublasLtMatmulDescSetAttribute(op, attr, &v, sizeof(v)),
           "cublasLtMatmulDescSetAttribute");
}

// The epilogue's pointers: set on the cached descriptor before each call (host-side state, copied
// into the launch by cublasLtMatmul).
void set_pointers(const Plan& p, const GemmDesc& d) {
  if (uses_bias_pointer(d.epilogue))
    set_desc(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias_pointer(d));
  if (uses_aux(d))
    set_desc(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<const void*>(d.aux));
}

// Column-major layout of a row-major (rows, cols) matrix with row stride ld: (cols, rows, ld).
cublasLtMatrixLayout_t layout(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld,
                              int64_t batch, int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  lt_check(cublasLtMatrixLayoutCreate(&l, t, static_cast<uint64_t>(cols),
                                      static_cast<uint64_t>(rows), ld),
           "cublasLtMatrixLayoutCreate");
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    lt_check(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                              sizeof(count)),
             "cublasLtMatrixLayoutSetAttribute");
    lt_check(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                              &stride, sizeof(stride)),
             "cublasLtMatrixLayoutSetAttribute");
  }
  return l;
}

// Builds the descriptors of d and asks the heuristic for its best algorithm within the workspace
// and the actual pointer alignments.
Plan make_plan(const GemmDesc& d, cublasLtHandle_t handle) {
  Plan p;
  const cudaDataType_t t = d.dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
  try {
    lt_check(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F),
             "cublasLtMatmulDescCreate");
    const cublasOperation_t op_a = d.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // its A = our B
    const cublasOperation_t op_b = d.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // its B = our A
    set_desc(p.op, CUBLASLT_MATMUL_DESC_TRANSA, op_a);
    set_desc(p.op, CUBLASLT_MATMUL_DESC_TRANSB, op_b);
    set_desc(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, lt_epilogue(d));
    if (uses_aux(d)) {
      // The pre-activation has C's layout: column-major (N, M) with ld = ldc.
      set_desc(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, static_cast<int64_t>(d.ldc));
      if (d.batch > 1)
        set_desc(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE,
                 static_cast<int64_t>(d.stride_c));
    }
    set_pointers(p, d);
    // Stored shapes (row-major): B is (K, N) or (N, K); A is (M, K) or (K, M); C is (M, N).
    p.la = layout(t, d.trans_b ? d.N : d.K, d.trans_b ? d.K : d.N, d.ldb, d.batch, d.stride_b);
    p.lb = layout(t, d.trans_a ? d.K : d.M, d.trans_a ? d.M : d.K, d.lda, d.batch, d.stride_a);
    p.lc = layout(t, d.M, d.N, d.ldc, d.batch, d.stride_c);

    cublasLtMatmulPreference_t pref = nullptr;
    lt_check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    const uint64_t ws = kWorkspaceBytes;
    const uint32_t al_a = alignment(d.B), al_b = alignment(d.A), al_c = alignment(d.C);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                         sizeof(ws));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a,
                                         sizeof(al_a));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b,
                                         sizeof(al_b));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c,
                                         sizeof(al_c));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c,
                                         sizeof(al_c));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(handle, p.op, p.la, p.lb, p.lc, p.lc, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    // No algorithm (NOT_SUPPORTED, or an epilogue/type/alignment combination it rejects as an
    // invalid value): the dispatch falls back to our kernel.
    p.has_algo = st == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS;
    if (p.has_algo) p.algo = res.algo;
  } catch (...) {
    p.destroy();
    throw;
  }
  return p;
}

// Problems this path never takes (checked before any descriptor is made).
bool lt_can_take(const GemmDesc& d) {
  if (d.M <= 0 || d.N <= 0 || d.K <= 0 || d.batch <= 0) return false;  // cuBLASLt wants k >= 1
  if (d.batch > INT32_MAX) return false;
  // f32 GELU epilogues stay on our kernel: cuBLASLt does not document the accuracy of its GELU,
  // and fast tanh approximations (tanh.approx.f32: ~2^-11 relative) would break the f32 path's
  // 1e-5 agreement with the CPU. In bf16 such an error is far below the bf16 rounding.
  if (d.dtype == DType::F32 && (d.epilogue == Epilogue::BiasGelu || d.epilogue == Epilogue::DGelu ||
                                d.epilogue == Epilogue::DGeluBGrad))
    return false;
  // The GELU input matrix: "ld divisible by 8", batch stride too (cublasLt.h, EPILOGUE_AUX_LD).
  if (uses_aux(d) && (d.ldc % 8 != 0 || (d.batch > 1 && d.stride_c % 8 != 0))) return false;
  return true;
}

}  // namespace

bool gemm_cublaslt(const GemmDesc& d, int device, void* stream) {
  if (!lt_can_take(d)) return false;
  std::lock_guard<std::mutex> lock(state_mutex());
  rt::DeviceGuard guard(device);  // the heuristic looks at the current device too
  DeviceState& ds = device_state(device);
  const Key key = make_key(d, device);
  auto& cache = plans();
  auto it = cache.find(key);
  if (it == cache.end()) {
    if (cache.size() >= kMaxPlans) {
      for (auto& kv : cache) kv.second.destroy();
      cache.clear();
    }
    it = cache.emplace(key, make_plan(d, ds.handle)).first;
  }
  Plan& p = it->second;
  if (!p.has_algo) return false;
  set_pointers(p, d);
  cudaStream_t s = stream ? static_cast<cudaStream_t>(stream) : rt::stream(device);
  const float alpha = d.alpha, beta = d.beta;
  const cublasStatus_t st =
      cublasLtMatmul(ds.handle, p.op, &alpha, d.B, p.la, d.A, p.lb, &beta, d.C, p.lc, d.C, p.lc,
                     &p.algo, ds.workspace, kWorkspaceBytes, s);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {  // the algorithm refuses at run time: ours from now on
    p.has_algo = false;
    return false;
  }
  lt_check(st, "cublasLtMatmul");
  return true;
}

void gemm_cublaslt_clear_cache() {
  std::lock_guard<std::mutex> lock(state_mutex());
  for (auto& kv : plans()) kv.second.destroy();
  plans().clear();
}

}  // namespace psvae::kernels::cuda::detail
