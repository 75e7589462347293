// The GEMM dispatch against the libraries, on the GEMMs of a DiT training step.
//
// Shapes: DiT-S/B/L/XL (width D = 384/768/1024/1152, MLP 4D) at 256 tokens x batch 256 = 65536
// rows; for each of the four linears of a block (qkv: D -> 3D, proj: D -> D, fc1: D -> 4D,
// fc2: 4D -> D) the forward GEMM and its two backward GEMMs:
//   fwd  Y = X W^T     M = rows, N = out, K = in     (A = X, B = W stored (out, in): trans_b)
//   dX   dX = dY W     M = rows, N = in,  K = out    (A = dY, B = W)
//   dW   dW = dY^T X   M = out,  N = in,  K = rows   (A = dY stored (rows, out): trans_a, B = X)
// plus DiT-XL at 1024 tokens x batch 16 and 4096 tokens x batch 8 (16384 and 32768 rows), a few
// fused-epilogue GEMMs (bias+GELU forward, dgelu+bias-gradient and bias-gradient backward), and one
// f32 shape. bf16 in, bf16 out, fp32 accumulation.
//
// Rows per shape:
//   cuBLASLt best   the fastest of up to 8 heuristic candidates, each timed (the "best cuBLASLt");
//   cuBLAS          cublasGemmEx, CUBLAS_GEMM_DEFAULT;
//   own             our kernel (kernels/cuda/gemm_mma.cu), forced with set_gemm_backend(Own);
//   own wgmma       our sm_90a wgmma kernel (kernels/cuda/gemm_wgmma_sm90a.cu: cp.async, 128 x 128
//                   tiles), forced with set_gemm_backend(Wgmma); bf16 only, and only where the
//                   device can run it;
//   own wgmma_tma   our sm_90a TMA + warp-specialised kernel (gemm_wgmma_tma_sm90a.cu, 128 x 256
//                   tiles), forced with set_gemm_backend(WgmmaTma); the same conditions; its
//                   persistent grid (one block per SM, PSVAE_GEMM_TMA_GRID=persistent);
//   own wgmma_tma tiles  the same kernel launched one block per tile (PSVAE_GEMM_TMA_GRID=tiles):
//                   what the persistent grid gains;
//   own wgmma_tma pingpong  the same kernel, persistent, with its consumers on separate 128 x 128
//                   tiles taking turns (PSVAE_GEMM_TMA_SCHEDULE=pingpong): what hiding the
//                   epilogue under the other consumer's MMAs gains over the cooperative 128 x 256;
//   dispatch        gemm() with the Auto rule, as the engine calls it.
// Columns: time (median, L2 flushed), TFLOP/s (2 M N K per product), % of the cuBLAS bf16 8192^3
// ceiling measured in this run, and the ratio the issue's targets are about: own / cuBLAS and
// dispatch / best cuBLASLt (> 1 means faster). A summary at the end gives the geometric means
// and the worst case over the DiT shapes, against the targets (dispatch >= 0.98x best cuBLASLt,
// own >= 0.7x cuBLAS), for each of our bf16 kernel rows.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/bench_common.cuh"
#include "kernels/cuda/gemm.h"
#include "tensor/cuda/launch.cuh"
#include "tensor/random.h"
#include "tensor/tensor.h"

using namespace psvae;
namespace kc = psvae::kernels::cuda;

namespace {

#define LT_CHECK(call) PSVAE_BENCH_CUBLAS(call)

constexpr size_t kWorkspace = size_t(32) << 20;
constexpr int kMaxAlgos = 8;

struct Gemm {
  std::string model, name;
  int64_t M, N, K;
  bool ta, tb;
  kc::Epilogue epi = kc::Epilogue::None;
  bool dit = true;  // counts for the summary against the targets
};

// Forward and backward GEMMs of one linear in -> out over `rows` rows.
void add_linear(std::vector<Gemm>& v, const std::string& model, const std::string& name,
                int64_t rows, int64_t in, int64_t out, bool dit) {
  v.push_back({model, name + " fwd", rows, out, in, false, true, kc::Epilogue::None, dit});
  v.push_back({model, name + " dX", rows, in, out, false, false, kc::Epilogue::None, dit});
  v.push_back({model, name + " dW", out, in, rows, true, false, kc::Epilogue::None, dit});
}

void add_block(std::vector<Gemm>& v, const std::string& model, int64_t rows, int64_t D, bool dit) {
  add_linear(v, model, "qkv", rows, D, 3 * D, dit);
  add_linear(v, model, "proj", rows, D, D, dit);
  add_linear(v, model, "fc1", rows, D, 4 * D, dit);
  add_linear(v, model, "fc2", rows, 4 * D, D, dit);
}

// Device buffers of one problem, filled with uniform values in [-1, 1].
struct Operands {
  Tensor A, B, C, bias, aux, grad;
  kc::GemmDesc desc;
};

Operands make_operands(const Gemm& g, DType dt, Generator& gen) {
  const Device gpu = Device::cuda(0);
  Operands o;
  o.A = Tensor::empty({g.ta ? g.K : g.M, g.ta ? g.M : g.K}, dt, gpu);
  o.B = Tensor::empty({g.tb ? g.N : g.K, g.tb ? g.K : g.N}, dt, gpu);
  o.C = Tensor::empty({g.M, g.N}, dt, gpu);
  o.bias = Tensor::empty({g.N}, dt, gpu);
  o.aux = Tensor::empty({g.M, g.N}, dt, gpu);
  o.grad = Tensor::empty({std::max(g.M, g.N)}, dt, gpu);
  gen.uniform_(o.A, -1, 1);
  gen.uniform_(o.B, -1, 1);
  gen.uniform_(o.bias, -1, 1);
  gen.uniform_(o.aux, -3, 3);
  kc::GemmDesc& d = o.desc;
  d.dtype = dt;
  d.trans_a = g.ta;
  d.trans_b = g.tb;
  d.M = g.M;
  d.N = g.N;
  d.K = g.K;
  d.lda = g.ta ? g.M : g.K;
  d.ldb = g.tb ? g.K : g.N;
  d.ldc = g.N;
  d.A = o.A.raw_data();
  d.B = o.B.raw_data();
  d.C = o.C.raw_data();
  d.epilogue = g.epi;
  if (g.epi == kc::Epilogue::Bias || g.epi == kc::Epilogue::BiasGelu) d.bias = o.bias.raw_data();
  if (g.epi == kc::Epilogue::BiasGelu || g.epi == kc::Epilogue::DGelu ||
      g.epi == kc::Epilogue::DGeluBGrad)
    d.aux = o.aux.raw_data();
  if (g.epi == kc::Epilogue::DGeluBGrad || g.epi == kc::Epilogue::BGradA ||
      g.epi == kc::Epilogue::BGradB)
    d.bias_grad = o.grad.raw_data();
  return o;
}

cublasLtEpilogue_t lt_epilogue(const kc::GemmDesc& d) {
  switch (d.epilogue) {
    case kc::Epilogue::Bias: return CUBLASLT_EPILOGUE_BIAS;
    case kc::Epilogue::BiasGelu: return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    case kc::Epilogue::DGelu: return CUBLASLT_EPILOGUE_DGELU;
    case kc::Epilogue::DGeluBGrad: return CUBLASLT_EPILOGUE_DGELU_BGRAD;
    case kc::Epilogue::BGradA: return CUBLASLT_EPILOGUE_BGRADB;  // row-major swap: our A is its B
    case kc::Epilogue::BGradB: return CUBLASLT_EPILOGUE_BGRADA;
    default: return CUBLASLT_EPILOGUE_DEFAULT;
  }
}

// The best of up to kMaxAlgos cuBLASLt heuristic candidates for d (row-major through the swap, as
// kernels/cuda/gemm_cublaslt.cu does), each timed. Returns the best time, or a negative value
// when cuBLASLt has no candidate.
struct LtResult {
  double best_ms = -1;
  int best_index = -1;
  int candidates = 0;
};
LtResult cublaslt_best(cublasLtHandle_t h, void* ws, const kc::GemmDesc& d, bench::Timer& timer,
                       cudaStream_t s) {
  LtResult r;
  const cudaDataType_t t = d.dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
  cublasLtMatmulDesc_t op;
  LT_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_a = d.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = d.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  const cublasLtEpilogue_t epi = lt_epilogue(d);
  LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  const void* bias = d.bias ? d.bias : d.bias_grad;
  if (bias)
    LT_CHECK(
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  if (d.aux) {
    const int64_t ld = d.ldc;
    LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &d.aux,
                                            sizeof(d.aux)));
    LT_CHECK(
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
  }
  cublasLtMatrixLayout_t la, lb, lc;
  // Column-major views of the row-major stored matrices: (cols, rows, ld).
  LT_CHECK(cublasLtMatrixLayoutCreate(&la, t, d.trans_b ? d.K : d.N, d.trans_b ? d.N : d.K, d.ldb));
  LT_CHECK(cublasLtMatrixLayoutCreate(&lb, t, d.trans_a ? d.M : d.K, d.trans_a ? d.K : d.M, d.lda));
  LT_CHECK(cublasLtMatrixLayoutCreate(&lc, t, d.N, d.M, d.ldc));
  cublasLtMatmulPreference_t pref;
  LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t wsb = kWorkspace;
  LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &wsb, sizeof(wsb)));
  cublasLtMatmulHeuristicResult_t res[kMaxAlgos];
  int found = 0;
  if (cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, lc, lc, pref, kMaxAlgos, res, &found) !=
      CUBLAS_STATUS_SUCCESS)
    found = 0;
  const float alpha = d.alpha, beta = d.beta;
  for (int i = 0; i < found; ++i) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
    // A candidate that fails to launch is skipped (checked once before timing).
    if (cublasLtMatmul(h, op, &alpha, d.B, la, d.A, lb, &beta, d.C, lc, d.C, lc, &res[i].algo, ws,
                       kWorkspace, s) != CUBLAS_STATUS_SUCCESS)
      continue;
    ++r.candidates;
    const double ms = timer.median_ms([&] {
      LT_CHECK(cublasLtMatmul(h, op, &alpha, d.B, la, d.A, lb, &beta, d.C, lc, d.C, lc,
                              &res[i].algo, ws, kWorkspace, s));
    });
    if (r.best_ms < 0 || ms < r.best_ms) {
      r.best_ms = ms;
      r.best_index = i;
    }
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(op);
  return r;
}

double cublas_ms(cublasHandle_t h, const kc::GemmDesc& d, bench::Timer& timer) {
  const cudaDataType_t t = d.dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
  const float alpha = d.alpha, beta = d.beta;
  return timer.median_ms([&] {
    PSVAE_BENCH_CUBLAS(cublasGemmEx(
        h, d.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, d.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
        static_cast<int>(d.N), static_cast<int>(d.M), static_cast<int>(d.K), &alpha, d.B, t,
        static_cast<int>(d.ldb), d.A, t, static_cast<int>(d.lda), &beta, d.C, t,
        static_cast<int>(d.ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  });
}

double backend_ms(kc::GemmBackend be, const kc::GemmDesc& d, bench::Timer& timer,
                  kc::GemmBackend* ran) {
  kc::set_gemm_backend(be);
  const double ms = timer.median_ms([&] { kc::gemm(d, 0); });
  *ran = kc::gemm_last_backend();
  return ms;
}

// Our two sm_90a kernels, the TMA one under both of its grids and both of its consumer
// schedules, each a row of its own.
struct Sm90Variant {
  kc::GemmBackend backend;
  const char* row;
  const char* tma_grid;      // PSVAE_GEMM_TMA_GRID for the run
  const char* tma_schedule;  // PSVAE_GEMM_TMA_SCHEDULE for the run
};
constexpr Sm90Variant kSm90[] = {
    {kc::GemmBackend::Wgmma, "own wgmma", "persistent", "cooperative"},
    {kc::GemmBackend::WgmmaTma, "own wgmma_tma", "persistent", "cooperative"},
    {kc::GemmBackend::WgmmaTma, "own wgmma_tma tiles", "tiles", "cooperative"},
    {kc::GemmBackend::WgmmaTma, "own wgmma_tma pingpong", "persistent", "pingpong"}};
constexpr int kNumSm90 = sizeof(kSm90) / sizeof(kSm90[0]);

struct Summary {
  std::vector<double> own_vs_cublas, dispatch_vs_lt;
  std::vector<double> sm90_vs_cublas[kNumSm90];
  static double geomean(const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += std::log(x);
    return v.empty() ? 0 : std::exp(s / static_cast<double>(v.size()));
  }
  static double worst(const std::vector<double>& v) {
    return v.empty() ? 0 : *std::min_element(v.begin(), v.end());
  }
};

}  // namespace

int main(int argc, char** argv) {
  const bench::Options opt = bench::Options::parse(argc, argv);
  cudaStream_t s = ::psvae::cuda::stream(0);
  bench::Timer timer(s, opt);
  const bench::Ceilings ceil = bench::print_header("bench_gemm", timer, s, true);

  cublasHandle_t blas;
  PSVAE_BENCH_CUBLAS(cublasCreate(&blas));
  PSVAE_BENCH_CUBLAS(cublasSetStream(blas, s));
  cublasLtHandle_t lt;
  PSVAE_BENCH_CUBLAS(cublasLtCreate(&lt));
  void* ws = nullptr;
  PSVAE_BENCH_CHECK(cudaMalloc(&ws, kWorkspace));

  // DiT widths; --quick keeps DiT-B and the f32 shape only.
  struct Model {
    const char* name;
    int64_t D;
  };
  const std::vector<Model> models =
      opt.quick
          ? std::vector<Model>{{"DiT-B", 768}}
          : std::vector<Model>{{"DiT-S", 384}, {"DiT-B", 768}, {"DiT-L", 1024}, {"DiT-XL", 1152}};
  std::vector<Gemm> gemms;
  for (const Model& m : models)
    add_block(gemms, std::string(m.name) + " 256x256", 65536, m.D, true);
  if (!opt.quick) {
    add_block(gemms, "DiT-XL 1024x16", 16384, 1152, true);
    add_block(gemms, "DiT-XL 4096x8", 32768, 1152, true);
    // Fused epilogues (DiT-XL, 65536 rows): fc1 forward with bias+GELU (pre-activation saved),
    // fc2's dX with the GELU backward and fc1's bias gradient, fc1's dW with the bias gradient.
    gemms.push_back({"DiT-XL 256x256", "fc1 fwd +bias+gelu", 65536, 4608, 1152, false, true,
                     kc::Epilogue::BiasGelu, false});
    gemms.push_back({"DiT-XL 256x256", "fc2 dX +dgelu+bgrad", 65536, 4608, 1152, false, false,
                     kc::Epilogue::DGeluBGrad, false});
    gemms.push_back({"DiT-XL 256x256", "fc1 dW +bgrad", 4608, 1152, 65536, true, false,
                     kc::Epilogue::BGradA, false});
  }

  bench::Table table({"model", "GEMM", "M x N x K", "dtype", "variant", "time (us)", "TFLOP/s",
                      "% of cuBLAS 8192^3", "ratio"});
  Summary sum;
  Generator gen(7);
  const kc::GemmBackend configured = kc::gemm_backend();
  auto run_one = [&](const Gemm& g, DType dt) {
    Operands o = make_operands(g, dt, gen);
    const kc::GemmDesc& d = o.desc;
    const double flop =
        2.0 * static_cast<double>(g.M) * static_cast<double>(g.N) * static_cast<double>(g.K);
    const std::string shape =
        std::to_string(g.M) + " x " + std::to_string(g.N) + " x " + std::to_string(g.K);
    auto row = [&](const std::string& variant, double ms, const std::string& ratio) {
      const double tf = flop / (ms * 1e-3) / 1e12;
      table.row({g.model, g.name, shape, dtype_name(dt), variant, bench::fmt(ms * 1e3, 1),
                 bench::fmt(tf, 1), bench::pct(tf, ceil.gemm_tflops), ratio});
    };
    const LtResult best = cublaslt_best(lt, ws, d, timer, s);
    const bool plain = g.epi == kc::Epilogue::None;
    const double blas_ms = plain ? cublas_ms(blas, d, timer) : -1;
    kc::GemmBackend ran_own, ran_auto;
    const double own_ms = backend_ms(kc::GemmBackend::Own, d, timer, &ran_own);
    kc::GemmBackend ran_sm90[kNumSm90];
    double sm90_ms[kNumSm90];
    for (int v = 0; v < kNumSm90; ++v) {
      const bool can = kSm90[v].backend == kc::GemmBackend::WgmmaTma
                           ? kc::detail::gemm_wgmma_tma_available(0)
                           : kc::detail::gemm_wgmma_available(0);
      ran_sm90[v] = kc::GemmBackend::Own;
      setenv("PSVAE_GEMM_TMA_GRID", kSm90[v].tma_grid, 1);  // both read at every call
      setenv("PSVAE_GEMM_TMA_SCHEDULE", kSm90[v].tma_schedule, 1);
      sm90_ms[v] =
          dt == DType::BF16 && can ? backend_ms(kSm90[v].backend, d, timer, &ran_sm90[v]) : -1;
      unsetenv("PSVAE_GEMM_TMA_GRID");
      unsetenv("PSVAE_GEMM_TMA_SCHEDULE");
    }
    const double auto_ms = backend_ms(kc::GemmBackend::Auto, d, timer, &ran_auto);
    if (best.best_ms > 0)
      row("cuBLASLt best", best.best_ms,
          "candidate " + std::to_string(best.best_index) + " of " +
              std::to_string(best.candidates));
    else
      table.row(
          {g.model, g.name, shape, dtype_name(dt), "cuBLASLt best", "no algorithm", "-", "-", "-"});
    if (plain) row("cuBLAS", blas_ms, "-");
    row("own", own_ms, plain ? bench::fmt(blas_ms / own_ms, 2) + "x cuBLAS" : "-");
    for (int v = 0; v < kNumSm90; ++v)
      if (sm90_ms[v] > 0)  // "(ran ...)": the kernel asked for could not take the operands
        row(kSm90[v].row, sm90_ms[v],
            (plain ? bench::fmt(blas_ms / sm90_ms[v], 2) + "x cuBLAS" : std::string("-")) +
                (ran_sm90[v] == kSm90[v].backend
                     ? ""
                     : std::string(" (ran ") + kc::gemm_backend_name(ran_sm90[v]) + ")"));
    const std::string via = std::string(" (ran ") + kc::gemm_backend_name(ran_auto) + ")";
    row("dispatch", auto_ms,
        best.best_ms > 0 ? bench::fmt(best.best_ms / auto_ms, 3) + "x best cuBLASLt" + via : via);
    if (g.dit && dt == DType::BF16) {
      sum.own_vs_cublas.push_back(blas_ms / own_ms);
      for (int v = 0; v < kNumSm90; ++v)
        if (sm90_ms[v] > 0) sum.sm90_vs_cublas[v].push_back(blas_ms / sm90_ms[v]);
      if (best.best_ms > 0) sum.dispatch_vs_lt.push_back(best.best_ms / auto_ms);
    }
  };
  for (const Gemm& g : gemms) run_one(g, DType::BF16);
  // f32 (no TF32, as the engine's f32 path): DiT-B fc1 forward.
  run_one({"DiT-B 256x256", "fc1 fwd", 65536, 3072, 768, false, true, kc::Epilogue::None, false},
          DType::F32);
  kc::set_gemm_backend(configured);

  std::printf("\nsummary over the %zu bf16 DiT GEMMs (no epilogue):\n", sum.own_vs_cublas.size());
  std::printf("  %-34s geomean %.3f, worst %.3f (target >= 0.98: %s)\n",
              "dispatch / best cuBLASLt:", Summary::geomean(sum.dispatch_vs_lt),
              Summary::worst(sum.dispatch_vs_lt),
              Summary::worst(sum.dispatch_vs_lt) >= 0.98 ? "met" : "not met");
  std::printf("  %-34s geomean %.3f, worst %.3f (target >= 0.7: %s)\n",
              "own / cuBLAS:", Summary::geomean(sum.own_vs_cublas),
              Summary::worst(sum.own_vs_cublas),
              Summary::geomean(sum.own_vs_cublas) >= 0.7 ? "met on the geomean" : "not met");
  for (int v = 0; v < kNumSm90; ++v) {
    const std::vector<double>& r = sum.sm90_vs_cublas[v];
    const std::string label = std::string(kSm90[v].row) + " / cuBLAS:";
    if (r.empty())
      std::printf("  %-34s not run (this device cannot run the sm_90a kernel)\n", label.c_str());
    else
      std::printf("  %-34s geomean %.3f, worst %.3f (target >= 0.7: %s)\n", label.c_str(),
                  Summary::geomean(r), Summary::worst(r),
                  Summary::geomean(r) >= 0.7 ? "met on the geomean" : "not met");
  }

  cudaFree(ws);
  cublasLtDestroy(lt);
  cublasDestroy(blas);
  return 0;
}
