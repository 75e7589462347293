// conv2d through cuDNN's legacy convolution API (libcudnn_cnn; cuDNN 8 and 9): forward,
// data gradient and filter gradient, f32 and bf16. Compiled to nothing without PSVAE_WITH_CUDNN
// (cmake/cudnn.cmake defines it when cuDNN is found); conv.cu then runs our own kernels.
//
//   handle        one per device, created on first use, bound to the project's stream of that
//                 device before every call (so cuDNN's work is ordered with ours);
//   plan          per (device, dtype, shape, stride, padding): the four descriptors and, per pass,
//                 the algorithm chosen on the first call (cached for the process);
//   algorithm     cudnnGet*_v7 lists the candidates and their workspace; cudnnFind*AlgorithmEx
//                 times them on the call's own tensors with a workspace of the largest acceptable
//                 candidate (at most kWorkspaceCap) and the fastest acceptable one is kept.
//                 Acceptable: status success, deterministic (cuDNN's flag, and never the
//                 documented non-deterministic BWD_DATA_ALGO_0, BWD_FILTER_ALGO_0 / _3), and for
//                 f32 no tensor-op math (TF32 rounds inputs to 10 mantissa bits: the f32 tests ask
//                 for 1e-5 relative error);
//   math          f32: CUDNN_FMA_MATH always (never DEFAULT, which lets cuDNN pick TF32 on
//                 sm_80+); bf16: CUDNN_TENSOR_OP_MATH for the search, then the chosen algorithm's
//                 own math type, as cuDNN's documentation asks; compute type f32 for both;
//   workspace     Tensor::empty on the device (the engine's caching, stream-ordered allocator),
//                 freed when the call returns.
// cuDNN calls are serialised by one mutex (a handle is not thread-safe, and the plan cache is
// shared).
#ifdef PSVAE_WITH_CUDNN
#include <cudnn.h>

#include <algorithm>
#include <array>
#include <climits>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/conv.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda::conv {

namespace {

namespace rt = ::psvae::cuda;

// Largest workspace an algorithm may ask for: 1 GiB (FFT algorithms on the PS-VAE decoder's
// 128x128 layers want a few hundred MB; a GEMM-based one always needs far less).
constexpr size_t kWorkspaceCap = size_t(1) << 30;

void check(cudnnStatus_t st, const char* what) {
  if (st != CUDNN_STATUS_SUCCESS)
    throw std::runtime_error(std::string("conv2d (cuDNN): ") + what +
                             " failed: " + cudnnGetErrorString(st));
}
#define PSVAE_CUDNN(call) check((call), #call)

std::mutex& cudnn_mutex() {
  static std::mutex mu;
  return mu;
}

// The handle of `dev` bound to the project's stream; the caller holds cudnn_mutex and has made
// `dev` current. Handles live for the process (no destruction-order trouble at exit).
cudnnHandle_t handle_for(int dev) {
  static std::map<int, cudnnHandle_t> handles;
  auto it = handles.find(dev);
  if (it == handles.end()) {
    cudnnHandle_t h = nullptr;
    PSVAE_CUDNN(cudnnCreate(&h));
    it = handles.emplace(dev, h).first;
  }
  PSVAE_CUDNN(cudnnSetStream(it->second, rt::stream(dev)));
  return it->second;
}

struct Choice {
  bool searched = false;  // the search ran (whatever it found)
  bool ok = false;        // an acceptable algorithm was found
  int algo = 0;
  size_t workspace = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

struct Plan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  DType dtype = DType::F32;
  Choice fwd, data, filter;
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (x) cudnnDestroyTensorDescriptor(x);
  }
  // The math type searches start from.
  cudnnMathType_t base_math() const {
    return dtype == DType::F32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
  }
  // The math type to run `c` with: f32 always FMA (whatever cuDNN reported), bf16 the algorithm's.
  cudnnMathType_t run_math(const Choice& c) const {
    return dtype == DType::F32 ? CUDNN_FMA_MATH : c.math;
  }
};

using Key = std::array<int64_t, 13>;  // device, dtype, N, C, H, W, O, kh, kw, sh, sw, ph, pw

// Every size fits cuDNN's 32-bit descriptors, and every tensor has fewer than 2^31 elements
// (the callers pass only non-empty tensors, so each factor is at least 1).
bool fits_cudnn(const Dims& d) {
  const int64_t lim = INT_MAX;
  return d.N * d.C * d.H * d.W < lim && d.O * d.C * d.kh * d.kw < lim &&
         d.N * d.O * d.Ho * d.Wo < lim && d.sh < lim && d.sw < lim && d.ph < lim && d.pw < lim;
}

cudnnDataType_t cudnn_type(DType dt) {
  return dt == DType::F32 ? CUDNN_DATA_FLOAT : CUDNN_DATA_BFLOAT16;
}

// The plan of (device, dtype, shape); the caller holds cudnn_mutex.
Plan& plan_for(const Dims& d, DType dt, int dev) {
  static std::map<Key, std::unique_ptr<Plan>> plans;
  const Key key{
      dev, static_cast<int64_t>(dt), d.N, d.C, d.H, d.W, d.O, d.kh, d.kw, d.sh, d.sw, d.ph, d.pw};
  auto it = plans.find(key);
  if (it != plans.end()) return *it->second;
  auto p = std::make_unique<Plan>();
  p->dtype = dt;
  const cudnnDataType_t t = cudnn_type(dt);
  auto i = [](int64_t v) { return static_cast<int>(v); };
  PSVAE_CUDNN(cudnnCreateTensorDescriptor(&p->x));
  PSVAE_CUDNN(cudnnCreateTensorDescriptor(&p->y));
  PSVAE_CUDNN(cudnnCreateFilterDescriptor(&p->w));
  PSVAE_CUDNN(cudnnCreateConvolutionDescriptor(&p->conv));
  PSVAE_CUDNN(
      cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NCHW, t, i(d.N), i(d.C), i(d.H), i(d.W)));
  PSVAE_CUDNN(
      cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NCHW, t, i(d.N), i(d.O), i(d.Ho), i(d.Wo)));
  PSVAE_CUDNN(
      cudnnSetFilter4dDescriptor(p->w, t, CUDNN_TENSOR_NCHW, i(d.O), i(d.C), i(d.kh), i(d.kw)));
  // Cross-correlation (no kernel flip) with f32 accumulation, as the CPU kernel.
  PSVAE_CUDNN(cudnnSetConvolution2dDescriptor(p->conv, i(d.ph), i(d.pw), i(d.sh), i(d.sw), 1, 1,
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  // cuDNN must agree with the wrapper's output size.
  int n = 0, c = 0, h = 0, w = 0;
  PSVAE_CUDNN(cudnnGetConvolution2dForwardOutputDim(p->conv, p->x, p->w, &n, &c, &h, &w));
  if (n != d.N || c != d.O || h != d.Ho || w != d.Wo)
    throw std::logic_error("conv2d (cuDNN): output size disagrees with the wrapper's");
  return *plans.emplace(key, std::move(p)).first->second;
}

// Workspace of `bytes` on the device (null for 0): an i32 tensor from the caching allocator.
Tensor workspace(size_t bytes, Device dev) {
  if (bytes == 0) return Tensor();
  return Tensor::empty(Shape{static_cast<int64_t>((bytes + 3) / 4)}, DType::I32, dev);
}
void* ptr(const Tensor& t) { return t.defined() ? t.raw_data() : nullptr; }

enum class Pass { kForward, kData, kFilter };

template <class Perf>
bool acceptable(const Perf& p, Pass pass, DType dt, size_t cap) {
  if (p.status != CUDNN_STATUS_SUCCESS || p.memory > cap) return false;
  if (p.determinism != CUDNN_DETERMINISTIC) return false;
  const int a = static_cast<int>(p.algo);
  if (pass == Pass::kData && a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0) return false;
  if (pass == Pass::kFilter &&
      (a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3))
    return false;
  if (dt == DType::F32 &&
      (p.mathType == CUDNN_TENSOR_OP_MATH || p.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
    return false;
  return true;
}

// The search shared by the three passes: `list(perf, count)` runs cudnnGet*_v7, `find(perf,
// count, ws, bytes)` cudnnFind*AlgorithmEx. NOT_SUPPORTED from either means no algorithm.
template <class Perf, class List, class Find>
Choice search(const Plan& plan, Pass pass, int max_count, Device dev, List list, Find find) {
  Choice ch;
  ch.searched = true;
  std::vector<Perf> perf(static_cast<size_t>(std::max(max_count, 1)));
  int n = 0;
  cudnnStatus_t st = list(perf.data(), static_cast<int>(perf.size()), &n);
  if (st == CUDNN_STATUS_NOT_SUPPORTED) return ch;
  check(st, "cudnnGetConvolution*Algorithm_v7");
  size_t bytes = 0;
  bool any = false;
  for (int k = 0; k < n; ++k)
    if (acceptable(perf[static_cast<size_t>(k)], pass, plan.dtype, kWorkspaceCap)) {
      any = true;
      bytes = std::max(bytes, perf[static_cast<size_t>(k)].memory);
    }
  if (!any) return ch;
  const Tensor ws = workspace(bytes, dev);
  n = 0;
  st = find(perf.data(), static_cast<int>(perf.size()), &n, ptr(ws), bytes);
  if (st == CUDNN_STATUS_NOT_SUPPORTED) return ch;
  check(st, "cudnnFindConvolution*AlgorithmEx");
  for (int k = 0; k < n; ++k) {  // sorted fastest first
    const Perf& p = perf[static_cast<size_t>(k)];
    if (!acceptable(p, pass, plan.dtype, bytes)) continue;
    ch.ok = true;
    ch.algo = static_cast<int>(p.algo);
    ch.workspace = p.memory;
    ch.math = p.mathType;
    break;
  }
  return ch;
}

// Runs `body(handle, plan)` with the mutex held, the device current and the handle on its stream.
template <class Body>
bool with_plan(const Dims& d, DType dt, Device dev, Body body) {
  if ((dt != DType::F32 && dt != DType::BF16) || !fits_cudnn(d)) return false;
  std::lock_guard<std::mutex> lock(cudnn_mutex());
  rt::DeviceGuard guard(dev.index);
  cudnnHandle_t h = handle_for(dev.index);
  return body(h, plan_for(d, dt, dev.index));
}

}  // namespace

bool cudnn_forward(const Dims& d, const Tensor& x, const Tensor& w, const Tensor& y) {
  return with_plan(d, x.dtype(), y.device(), [&](cudnnHandle_t h, Plan& p) {
    const float one = 1.f, zero = 0.f;
    if (!p.fwd.searched) {
      PSVAE_CUDNN(cudnnSetConvolutionMathType(p.conv, p.base_math()));
      int count = 0;
      PSVAE_CUDNN(cudnnGetConvolutionForwardAlgorithmMaxCount(h, &count));
      p.fwd = search<cudnnConvolutionFwdAlgoPerf_t>(
          p, Pass::kForward, count, y.device(),
          [&](cudnnConvolutionFwdAlgoPerf_t* perf, int req, int* n) {
            return cudnnGetConvolutionForwardAlgorithm_v7(h, p.x, p.w, p.conv, p.y, req, n, perf);
          },
          [&](cudnnConvolutionFwdAlgoPerf_t* perf, int req, int* n, void* ws, size_t bytes) {
            return cudnnFindConvolutionForwardAlgorithmEx(h, p.x, x.raw_data(), p.w, w.raw_data(),
                                                          p.conv, p.y, y.raw_data(), req, n, perf,
                                                          ws, bytes);
          });
    }
    if (!p.fwd.ok) return false;
    PSVAE_CUDNN(cudnnSetConvolutionMathType(p.conv, p.run_math(p.fwd)));
    const Tensor ws = workspace(p.fwd.workspace, y.device());
    PSVAE_CUDNN(cudnnConvolutionForward(h, &one, p.x, x.raw_data(), p.w, w.raw_data(), p.conv,
                                        static_cast<cudnnConvolutionFwdAlgo_t>(p.fwd.algo), ptr(ws),
                                        p.fwd.workspace, &zero, p.y, y.raw_data()));
    return true;
  });
}

bool cudnn_data_grad(const Dims& d, const Tensor& gy, const Tensor& w, const Tensor& gx) {
  return with_plan(d, gx.dtype(), gx.device(), [&](cudnnHandle_t h, Plan& p) {
    const float one = 1.f, zero = 0.f;
    if (!p.data.searched) {
      PSVAE_CUDNN(cudnnSetConvolutionMathType(p.conv, p.base_math()));
      int count = 0;
      PSVAE_CUDNN(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, &count));
      p.data = search<cudnnConvolutionBwdDataAlgoPerf_t>(
          p, Pass::kData, count, gx.device(),
          [&](cudnnConvolutionBwdDataAlgoPerf_t* perf, int req, int* n) {
            return cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p.w, p.y, p.conv, p.x, req, n,
                                                               perf);
          },
          [&](cudnnConvolutionBwdDataAlgoPerf_t* perf, int req, int* n, void* ws, size_t bytes) {
            return cudnnFindConvolutionBackwardDataAlgorithmEx(
                h, p.w, w.raw_data(), p.y, gy.raw_data(), p.conv, p.x, gx.raw_data(), req, n, perf,
                ws, bytes);
          });
    }
    if (!p.data.ok) return false;
    PSVAE_CUDNN(cudnnSetConvolutionMathType(p.conv, p.run_math(p.data)));
    const Tensor ws = workspace(p.data.workspace, gx.device());
    PSVAE_CUDNN(
        cudnnConvolutionBackwardData(h, &one, p.w, w.raw_data(), p.y, gy.raw_data(), p.conv,
                                     static_cast<cudnnConvolutionBwdDataAlgo_t>(p.data.algo),
                                     ptr(ws), p.data.workspace, &zero, p.x, gx.raw_data()));
    return true;
  });
}

bool cudnn_filter_grad(const Dims& d, const Tensor& gy, const Tensor& x, const Tensor& gw) {
  return with_plan(d, gw.dtype(), gw.device(), [&](cudnnHandle_t h, Plan& p) {
    const float one = 1.f, zero = 0.f;
    if (!p.filter.searched) {
      PSVAE_CUDNN(cudnnSetConvolutionMathType(p.conv, p.base_math()));
      int count = 0;
      PSVAE_CUDNN(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &count));
      p.filter = search<cudnnConvolutionBwdFilterAlgoPerf_t>(
          p, Pass::kFilter, count, gw.device(),
          [&](cudnnConvolutionBwdFilterAlgoPerf_t* perf, int req, int* n) {
            return cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p.x, p.y, p.conv, p.w, req, n,
                                                                 perf);
          },
          [&](cudnnConvolutionBwdFilterAlgoPerf_t* perf, int req, int* n, void* ws, size_t bytes) {
            return cudnnFindConvolutionBackwardFilterAlgorithmEx(
                h, p.x, x.raw_data(), p.y, gy.raw_data(), p.conv, p.w, gw.raw_data(), req, n, perf,
                ws, bytes);
          });
    }
    if (!p.filter.ok) return false;
    PSVAE_CUDNN(cudnnSetConvolutionMathType(p.conv, p.run_math(p.filter)));
    const Tensor ws = workspace(p.filter.workspace, gw.device());
    PSVAE_CUDNN(
        cudnnConvolutionBackwardFilter(h, &one, p.x, x.raw_data(), p.y, gy.raw_data(), p.conv,
                                       static_cast<cudnnConvolutionBwdFilterAlgo_t>(p.filter.algo),
                                       ptr(ws), p.filter.workspace, &zero, p.w, gw.raw_data()));
    return true;
  });
}

}  // namespace psvae::kernels::cuda::conv

#endif  // PSVAE_WITH_CUDNN
