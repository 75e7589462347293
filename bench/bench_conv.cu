// conv2d on the PS-VAE decoder's and LPIPS's (VGG / AlexNet) layer shapes: forward, data gradient
// and filter gradient, cuDNN (kernels/cuda/conv_cudnn.cu: deterministic algorithms, no TF32)
// against our own implicit-GEMM kernels (conv_implicit_gemm.cu), in f32 and bf16, in the same
// program. Each pass is timed through its entry point in kernels/cuda/conv.h, so the data and
// filter gradients are measured apart (conv2d_bwd runs both, plus the bias gradient).
//
// TFLOP/s counts 2 N O Ho Wo C kh kw flops per pass (the convolution's multiply-adds, zero padding
// included as the definition has it); "% GEMM" is the share of the cuBLAS bf16 GEMM throughput
// measured in this run, the ceiling of any tensor-core kernel; "own/cuDNN" is cuDNN's time over
// ours (1.00x = as fast as cuDNN). cuDNN's first call per shape searches its algorithms
// (cudnnFind*AlgorithmEx); the warm-up runs absorb it.
#include <cuda_runtime.h>

#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_common.cuh"
#include "kernels/cuda/conv.h"
#include "tensor/cuda/launch.cuh"
#include "tensor/random.h"

using namespace psvae;
namespace conv = psvae::kernels::cuda::conv;

namespace {

struct Layer {
  const char* name;
  int64_t N, C, H, W, O, k, s, p;
};

conv::Dims dims_of(const Layer& l) {
  conv::Dims d{};
  d.N = l.N, d.C = l.C, d.H = l.H, d.W = l.W, d.O = l.O, d.kh = l.k, d.kw = l.k;
  d.sh = d.sw = l.s;
  d.ph = d.pw = l.p;
  d.Ho = (l.H + 2 * l.p - l.k) / l.s + 1;
  d.Wo = (l.W + 2 * l.p - l.k) / l.s + 1;
  return d;
}

// Median time in ms of fn, or a negative value when fn reports it cannot run (returns false) or
// throws (the message is printed).
double time_or_fail(bench::Timer& timer, const std::function<bool()>& fn) {
  try {
    if (!fn()) return -1;  // cuDNN declined: no acceptable algorithm
    return timer.median_ms([&] { fn(); });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return -2;
  }
}

std::string cell_us(double ms) { return ms > 0 ? bench::fmt(ms * 1e3, 1) : "n/a"; }
std::string cell_tflops(double flops, double ms) {
  return ms > 0 ? bench::fmt(flops / (ms * 1e-3) / 1e12, 1) : "n/a";
}
std::string cell_pct(double flops, double ms, double ceiling) {
  return ms > 0 ? bench::pct(flops / (ms * 1e-3) / 1e12, ceiling) : "n/a";
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options opt = bench::Options::parse(argc, argv);
  const Device gpu = Device::cuda(0);
  cudaStream_t s = ::psvae::cuda::stream(0);
  bench::Timer timer(s, opt);
  const bench::Ceilings ceil = bench::print_header("bench_conv", timer, s, true);
  std::printf("cuDNN in this build: %s\n\n", kernels::cuda::conv_has_cudnn() ? "yes" : "no");
  bench::Table table({"layer", "x", "w", "pass", "dtype", "cuDNN (us)", "cuDNN TFLOP/s",
                      "cuDNN % GEMM", "own (us)", "own TFLOP/s", "own % GEMM", "own/cuDNN"});

  const std::vector<Layer> layers = {
      {"PS-VAE decoder 128ch", 16, 128, 64, 64, 128, 3, 1, 1},
      {"PS-VAE decoder 256ch", 16, 256, 32, 32, 256, 3, 1, 1},
      {"PS-VAE decoder 64ch / VGG", 16, 64, 128, 128, 64, 3, 1, 1},
      {"AlexNet conv1 (LPIPS)", 16, 3, 224, 224, 64, 11, 4, 2},
  };
  Generator g(3);
  for (const Layer& l : layers) {
    const conv::Dims d = dims_of(l);
    const double flops =
        2.0 * static_cast<double>(d.N * d.O * d.Ho * d.Wo) * static_cast<double>(d.C * d.kh * d.kw);
    const std::string xs = Shape{d.N, d.C, d.H, d.W}.str();
    const std::string wstr =
        Shape{d.O, d.C, d.kh, d.kw}.str() + " s" + std::to_string(l.s) + " p" + std::to_string(l.p);
    for (DType dt : {DType::F32, DType::BF16}) {
      Tensor x = Tensor::empty(Shape{d.N, d.C, d.H, d.W}, dt, gpu);
      Tensor w = Tensor::empty(Shape{d.O, d.C, d.kh, d.kw}, dt, gpu);
      Tensor gy = Tensor::empty(Shape{d.N, d.O, d.Ho, d.Wo}, dt, gpu);
      g.uniform_(x, -1, 1);
      g.uniform_(w, -0.05, 0.05);
      g.uniform_(gy, -1, 1);
      Tensor y = Tensor::empty(gy.shape(), dt, gpu);
      Tensor gx = Tensor::empty(x.shape(), dt, gpu);
      Tensor gw = Tensor::empty(w.shape(), dt, gpu);

      struct Pass {
        const char* name;
        std::function<bool()> cudnn, own;
      };
      const std::vector<Pass> passes = {
          {"forward",
#ifdef PSVAE_WITH_CUDNN
           [&] { return conv::cudnn_forward(d, x, w, y); },
#else
           [] { return false; },
#endif
           [&] {
             conv::own_forward(d, x, w, nullptr, y);
             return true;
           }},
          {"data grad",
#ifdef PSVAE_WITH_CUDNN
           [&] { return conv::cudnn_data_grad(d, gy, w, gx); },
#else
           [] { return false; },
#endif
           [&] {
             conv::own_data_grad(d, gy, w, gx);
             return true;
           }},
          {"filter grad",
#ifdef PSVAE_WITH_CUDNN
           [&] { return conv::cudnn_filter_grad(d, gy, x, gw); },
#else
           [] { return false; },
#endif
           [&] {
             conv::own_filter_grad(d, gy, x, gw);
             return true;
           }},
      };
      for (const Pass& p : passes) {
        const double t_cudnn = time_or_fail(timer, p.cudnn);
        const double t_own = time_or_fail(timer, p.own);
        const std::string ratio =
            t_cudnn > 0 && t_own > 0 ? bench::fmt(t_cudnn / t_own, 2) + "x" : "n/a";
        table.row({l.name, xs, wstr, p.name, dtype_name(dt), cell_us(t_cudnn),
                   cell_tflops(flops, t_cudnn), cell_pct(flops, t_cudnn, ceil.gemm_tflops),
                   cell_us(t_own), cell_tflops(flops, t_own),
                   cell_pct(flops, t_own, ceil.gemm_tflops), ratio});
      }
    }
  }
  return 0;
}
