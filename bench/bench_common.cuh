// What every benchmark in bench/ shares: timing by device events with L2 flushed between runs,
// the two ceilings measured in the same process (device-to-device copy bandwidth, cuBLAS bf16
// GEMM throughput), and a markdown table printer, so each bench_<family>.cu prints rows that go
// into docs/kernels.md as they are.
//
// Method (see docs/kernels.md, "How the numbers are taken"):
//   - each timed run is preceded by a write of a buffer twice the L2 size (50 MiB on an H200), so
//     every run starts with a cold L2, as a kernel inside a training step usually does;
//   - one event pair per run; the figure is the median of `iters` runs after `warmup` runs;
//   - GB/s counts the bytes the op must move at least (each input read once, each output written
//     once), so 100% of the copy ceiling is the best a memory-bound kernel can do;
//   - TFLOP/s counts 2 flops per multiply-add of the op's mathematical definition.
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace psvae::bench {

#define PSVAE_BENCH_CHECK(call)                                                       \
  do {                                                                                \
    cudaError_t err_ = (call);                                                        \
    if (err_ != cudaSuccess)                                                          \
      throw std::runtime_error(std::string(#call) + ": " + cudaGetErrorString(err_)); \
  } while (0)

#define PSVAE_BENCH_CUBLAS(call)                                                               \
  do {                                                                                         \
    cublasStatus_t st_ = (call);                                                               \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                          \
      throw std::runtime_error(std::string(#call) + ": cuBLAS status " + std::to_string(st_)); \
  } while (0)

// Command-line options every bench understands: --quick (fewer runs, for a smoke check) and
// --iters N.
struct Options {
  int warmup = 5;
  int iters = 50;
  bool quick = false;
  static Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
      if (!std::strcmp(argv[i], "--quick")) {
        o.quick = true;
        o.warmup = 2;
        o.iters = 5;
      } else if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) {
        o.iters = std::max(1, std::atoi(argv[++i]));
      } else {
        std::fprintf(stderr, "%s: unknown argument '%s' (known: --quick, --iters N)\n", argv[0],
                     argv[i]);
        std::exit(2);
      }
    }
    return o;
  }
};

// Median time in milliseconds of fn() on `stream`, L2 flushed before each run.
class Timer {
 public:
  explicit Timer(cudaStream_t stream, Options opt) : stream_(stream), opt_(opt) {
    int dev = 0;
    PSVAE_BENCH_CHECK(cudaGetDevice(&dev));
    int l2 = 0;
    PSVAE_BENCH_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    flush_bytes_ = std::max<size_t>(2 * static_cast<size_t>(l2), size_t(8) << 20);
    PSVAE_BENCH_CHECK(cudaMalloc(&flush_, flush_bytes_));
    PSVAE_BENCH_CHECK(cudaEventCreate(&start_));
    PSVAE_BENCH_CHECK(cudaEventCreate(&stop_));
  }
  ~Timer() {
    cudaFree(flush_);
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  double median_ms(const std::function<void()>& fn) {
    for (int i = 0; i < opt_.warmup; ++i) fn();
    std::vector<float> ms(static_cast<size_t>(opt_.iters));
    for (float& m : ms) {
      PSVAE_BENCH_CHECK(cudaMemsetAsync(flush_, 0, flush_bytes_, stream_));
      PSVAE_BENCH_CHECK(cudaEventRecord(start_, stream_));
      fn();
      PSVAE_BENCH_CHECK(cudaEventRecord(stop_, stream_));
      PSVAE_BENCH_CHECK(cudaEventSynchronize(stop_));
      PSVAE_BENCH_CHECK(cudaEventElapsedTime(&m, start_, stop_));
    }
    PSVAE_BENCH_CHECK(cudaGetLastError());
    std::nth_element(ms.begin(), ms.begin() + static_cast<long>(ms.size() / 2), ms.end());
    return ms[ms.size() / 2];
  }

 private:
  cudaStream_t stream_;
  Options opt_;
  void* flush_ = nullptr;
  size_t flush_bytes_ = 0;
  cudaEvent_t start_{}, stop_{};
};

// Device-to-device copy bandwidth in GB/s (1e9 bytes/s), counting read + write: the ceiling of a
// memory-bound kernel, measured on a 1 GiB buffer.
inline double copy_ceiling_gbs(Timer& timer, cudaStream_t stream) {
  const size_t bytes = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  PSVAE_BENCH_CHECK(cudaMalloc(&a, bytes));
  PSVAE_BENCH_CHECK(cudaMalloc(&b, bytes));
  PSVAE_BENCH_CHECK(cudaMemsetAsync(a, 0, bytes, stream));
  const double ms = timer.median_ms(
      [&] { PSVAE_BENCH_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream)); });
  cudaFree(a);
  cudaFree(b);
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
}

// cuBLAS bf16 GEMM throughput in TFLOP/s (fp32 accumulation, 8192^3, tensor cores): the ceiling of
// a compute-bound kernel.
inline double gemm_ceiling_tflops(Timer& timer, cudaStream_t stream, int n = 8192) {
  cublasHandle_t h;
  PSVAE_BENCH_CUBLAS(cublasCreate(&h));
  PSVAE_BENCH_CUBLAS(cublasSetStream(h, stream));
  const size_t elems = static_cast<size_t>(n) * n;
  __nv_bfloat16 *a = nullptr, *b = nullptr, *c = nullptr;
  PSVAE_BENCH_CHECK(cudaMalloc(&a, elems * sizeof(__nv_bfloat16)));
  PSVAE_BENCH_CHECK(cudaMalloc(&b, elems * sizeof(__nv_bfloat16)));
  PSVAE_BENCH_CHECK(cudaMalloc(&c, elems * sizeof(__nv_bfloat16)));
  PSVAE_BENCH_CHECK(cudaMemsetAsync(a, 0, elems * sizeof(__nv_bfloat16), stream));
  PSVAE_BENCH_CHECK(cudaMemsetAsync(b, 0, elems * sizeof(__nv_bfloat16), stream));
  const float alpha = 1.f, beta = 0.f;
  const double ms = timer.median_ms([&] {
    PSVAE_BENCH_CUBLAS(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n,
                                    b, CUDA_R_16BF, n, &beta, c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
  });
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  cublasDestroy(h);
  return 2.0 * n * static_cast<double>(n) * n / (ms * 1e-3) / 1e12;
}

// Prints the device and the ceilings once, at the top of a bench's output.
struct Ceilings {
  double copy_gbs = 0;
  double gemm_tflops = 0;
};
inline Ceilings print_header(const char* bench, Timer& timer, cudaStream_t stream, bool with_gemm) {
  int dev = 0;
  PSVAE_BENCH_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  PSVAE_BENCH_CHECK(cudaGetDeviceProperties(&p, dev));
  Ceilings c;
  c.copy_gbs = copy_ceiling_gbs(timer, stream);
  if (with_gemm) c.gemm_tflops = gemm_ceiling_tflops(timer, stream);
  std::printf("# %s on %s (sm_%d%d, %d SMs)\n", bench, p.name, p.major, p.minor,
              p.multiProcessorCount);
  std::printf("ceilings measured in this run: copy %.0f GB/s", c.copy_gbs);
  if (with_gemm) std::printf(", cuBLAS bf16 GEMM %.1f TFLOP/s", c.gemm_tflops);
  std::printf("\n\n");
  return c;
}

// A markdown table, printed row by row as results arrive (a crash keeps the rows before it).
class Table {
 public:
  explicit Table(std::vector<std::string> columns) : n_(columns.size()) {
    std::string head = "|", rule = "|";
    for (const std::string& c : columns) {
      head += " " + c + " |";
      rule += "---|";
    }
    std::printf("%s\n%s\n", head.c_str(), rule.c_str());
  }
  // The row's labels followed by its measured cells (e.g. bandwidth_cells).
  void row(std::vector<std::string> labels, const std::vector<std::string>& cells) {
    labels.insert(labels.end(), cells.begin(), cells.end());
    row(labels);
  }
  void row(const std::vector<std::string>& cells) {
    if (cells.size() != n_) throw std::logic_error("bench table: wrong number of cells");
    std::string line = "|";
    for (const std::string& c : cells) line += " " + c + " |";
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }

 private:
  size_t n_;
};

// Number formatting for table cells.
inline std::string fmt(double v, int decimals = 1) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}
inline std::string pct(double part, double whole) { return fmt(100.0 * part / whole, 1) + "%"; }

// An input on CUDA device 0, uniform in [lo, hi), drawn from g (so a bench's inputs are seeded).
inline Tensor uniform_gpu(Generator& g, const Shape& s, DType dt, double lo = -1.0,
                          double hi = 1.0) {
  Tensor t = Tensor::empty(s, dt, Device::cuda(0));
  g.uniform_(t, lo, hi);
  return t;
}

// The cells "time (us) | GB/s | % of copy" of a memory-bound row: `bytes` moved in `ms`.
inline std::vector<std::string> bandwidth_cells(double bytes, double ms, double copy_gbs) {
  const double gbs = bytes / (ms * 1e-3) / 1e9;
  return {fmt(ms * 1e3, 1), fmt(gbs, 0), pct(gbs, copy_gbs)};
}

}  // namespace psvae::bench
