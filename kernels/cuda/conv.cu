// CUDA conv2d and conv2d_bwd (NCHW, cross-correlation as kernels/cpu/spatial.cpp: no dilation, no
// groups): the op-table kernels. They check the call, pick the path (kernels/cuda/conv.h: cuDNN or
// our own implicit GEMM, PSVAE_CONV=auto|cudnn|own) and hold the two small kernels both paths
// share:
//   add_bias    y[n, o, :] += b[o]  (the cuDNN path; ours adds the bias in its GEMM epilogue);
//   bias_grad   gb[o] = sum over n, p of gy[n, o, p], deterministic: a block per (o, n, slice of P)
//               reduces by a fixed shuffle tree into a partial, then one thread per o adds its
//               partials in a fixed order (no atomics, so a rerun is bit-identical).
// Both are memory-bound: add_bias moves 2 N O P elements, bias_grad reads N O P once.
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <stdexcept>
#include <string>

#include "kernels/cuda/conv.h"
#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/env_choice.h"
#include "kernels/op_table.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda {

// ---- path switch -------------------------------------------------------------------------------

namespace {
// -1: follow PSVAE_CONV; otherwise a ConvPath forced by set_conv_path.
std::atomic<int> g_forced_path{-1};
}  // namespace

void set_conv_path(ConvPath path) { g_forced_path = static_cast<int>(path); }
void reset_conv_path() { g_forced_path = -1; }

ConvPath conv_path() {
  const int forced = g_forced_path.load();
  if (forced >= 0) return static_cast<ConvPath>(forced);
  const ConvPath paths[] = {ConvPath::kAuto, ConvPath::kCudnn, ConvPath::kOwn};
  return paths[env_choice("PSVAE_CONV", {"auto", "cudnn", "own"})];
}

const char* conv_path_name(ConvPath path) {
  switch (path) {
    case ConvPath::kAuto: return "auto";
    case ConvPath::kCudnn: return "cudnn";
    case ConvPath::kOwn: return "own";
  }
  return "?";
}

bool conv_has_cudnn() {
#ifdef PSVAE_WITH_CUDNN
  return true;
#else
  return false;
#endif
}

namespace conv {

namespace {

namespace rt = ::psvae::cuda;
using detail::dispatch_float;
using detail::launch_on;
using detail::Math;

constexpr int kThreads = 256;  // 8 warps

// y rows (n, o) of P elements, row r = n O + o: y[r, :] += b[r mod O]. A block per row (grid-stride
// over rows), threads across the row, so the bias is one load per row and the accesses coalesce.
template <class T>
__global__ void __launch_bounds__(kThreads)
    add_bias_kernel(T* y, const T* b, int64_t rows, int64_t O, int64_t P) {
  using M = Math<T>;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const auto bv = M::load(b[r % O]);
    T* row = y + r * P;
    for (int64_t p = threadIdx.x; p < P; p += blockDim.x) row[p] = M::store(M::load(row[p]) + bv);
  }
}

// Elements of one bias-gradient slice: 16 per thread.
constexpr int64_t kBiasSlice = 16 * kThreads;

// Block b = (o N + n) S + s sums gy[n, o, s L : min(P, (s + 1) L)] into part[b].
template <class T, class A>
__global__ void __launch_bounds__(kThreads)
    bias_grad_partial_kernel(const T* gy, A* part, int64_t N, int64_t O, int64_t P, int64_t S) {
  using M = Math<T>;
  __shared__ A sh[32];
  const int64_t b = blockIdx.x;
  const int64_t s = b % S, on = b / S;  // on = o N + n
  const int64_t n = on % N, o = on / N;
  const T* row = gy + (n * O + o) * P;
  const int64_t p1 = (s + 1) * kBiasSlice < P ? (s + 1) * kBiasSlice : P;
  A acc = 0;
  for (int64_t p = s * kBiasSlice + threadIdx.x; p < p1; p += blockDim.x) acc += M::load(row[p]);
  acc = detail::block_sum_to_thread0(acc, sh);
  if (threadIdx.x == 0) part[b] = acc;
}

// gb[o] = part[o J] + part[o J + 1] + ... + part[o J + J - 1], J = N S, in that order.
template <class T, class A>
__global__ void __launch_bounds__(kThreads)
    bias_grad_final_kernel(const A* part, T* gb, int64_t O, int64_t J) {
  for (int64_t o = rt::grid_index(); o < O; o += rt::grid_stride()) {
    A acc = 0;
    for (int64_t j = 0; j < J; ++j) acc += part[o * J + j];
    gb[o] = Math<T>::store(acc);
  }
}

}  // namespace

void add_bias(const Dims& d, const Tensor& b, const Tensor& y) {
  const int64_t rows = d.N * d.O, P = d.Ho * d.Wo;
  if (rows == 0 || P == 0) return;
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(y.dtype(), "conv2d", [&](auto tag) {
      using T = decltype(tag);
      const auto grid = static_cast<unsigned>(
          std::min<int64_t>(rows, static_cast<int64_t>(rt::sm_count(dev)) * 8));
      PSVAE_LAUNCH(grid, kThreads, 0, s, add_bias_kernel<T>)
      (static_cast<T*>(y.raw_data()), static_cast<const T*>(b.raw_data()), rows, d.O, P);
    });
  });
}

void bias_grad(const Dims& d, const Tensor& gy, const Tensor& gb) {
  if (d.O == 0) return;
  const int64_t P = d.Ho * d.Wo;
  launch_on(gb.device(), [&](cudaStream_t s, int dev) {
    if (d.N == 0 || P == 0) {  // an empty sum: zeros (all-zero bits in every float type)
      PSVAE_CUDA_CHECK(cudaMemsetAsync(gb.raw_data(), 0, gb.nbytes(), s));
      return;
    }
    const int64_t S = (P + kBiasSlice - 1) / kBiasSlice;
    const int64_t blocks = d.O * d.N * S;
    if (blocks > INT_MAX)
      throw std::invalid_argument("conv2d_bwd: bias gradient of " + gy.str() + " is too large");
    dispatch_float(gb.dtype(), "conv2d_bwd", [&](auto tag) {
      using T = decltype(tag);
      using A = typename Math<T>::Acc;
      const DType acc_dt = sizeof(A) == 8 ? DType::F64 : DType::F32;
      Tensor part = Tensor::empty(Shape{blocks}, acc_dt, gb.device());
      A* pp = static_cast<A*>(part.raw_data());
      PSVAE_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, s, bias_grad_partial_kernel<T, A>)
      (static_cast<const T*>(gy.raw_data()), pp, d.N, d.O, P, S);
      PSVAE_LAUNCH(rt::grid_for(d.O, dev), kThreads, 0, s, bias_grad_final_kernel<T, A>)
      (pp, static_cast<T*>(gb.raw_data()), d.O, d.N * S);
    });
  });
}

}  // namespace conv

// ---- the op-table kernels ----------------------------------------------------------------------

namespace {

using conv::Dims;

[[noreturn]] void bad(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

void check_nchw(const char* op, const char* what, const Tensor& t) {
  if (t.rank() != 4) bad(op, std::string(what) + " must be (N, C, H, W), got " + t.str());
}

// Geometry of the call from x, w and ints (stride_h, stride_w, pad_h, pad_w), checked as the
// wrapper in kernels/ops_spatial.cpp does, since kernels::run may be called directly.
Dims dims_of(const char* op, const Tensor& x, const Tensor& w, const OpCall& c) {
  check_nchw(op, "x", x);
  check_nchw(op, "w", w);
  if (x.dtype() != w.dtype()) bad(op, "x " + x.str() + " and w " + w.str() + " differ in dtype");
  if (x.dtype() != DType::F32 && x.dtype() != DType::BF16 && x.dtype() != DType::F64)
    bad(op, std::string("dtype ") + dtype_name(x.dtype()) + " not supported (f32, bf16, f64)");
  if (w.size(1) != x.size(1))
    bad(op, "x " + x.str() + " has " + std::to_string(x.size(1)) + " channels but w " + w.str() +
                " expects " + std::to_string(w.size(1)));
  Dims d{};
  d.N = x.size(0);
  d.C = x.size(1);
  d.H = x.size(2);
  d.W = x.size(3);
  d.O = w.size(0);
  d.kh = w.size(2);
  d.kw = w.size(3);
  d.sh = c.ints[0];
  d.sw = c.ints[1];
  d.ph = c.ints[2];
  d.pw = c.ints[3];
  if (d.kh < 1 || d.kw < 1 || d.sh < 1 || d.sw < 1 || d.ph < 0 || d.pw < 0)
    bad(op, "needs kernel >= 1, stride >= 1, pad >= 0, got w " + w.str() + " stride (" +
                std::to_string(d.sh) + ", " + std::to_string(d.sw) + ") pad (" +
                std::to_string(d.ph) + ", " + std::to_string(d.pw) + ")");
  if (d.H + 2 * d.ph < d.kh || d.W + 2 * d.pw < d.kw)
    bad(op, "x " + x.str() + " padded by (" + std::to_string(d.ph) + ", " + std::to_string(d.pw) +
                ") is smaller than the kernel of w " + w.str());
  d.Ho = (d.H + 2 * d.ph - d.kh) / d.sh + 1;
  d.Wo = (d.W + 2 * d.pw - d.kw) / d.sw + 1;
  return d;
}

void expect_shape(const char* op, const char* what, const Tensor& t, const Shape& s, DType dt) {
  if (t.shape() != s || t.dtype() != dt)
    bad(op, std::string(what) + " is " + t.str() + ", expected " + s.str() + " " + dtype_name(dt));
}

// The path for this call's dtype: f64 always runs our own kernels.
ConvPath path_of(const char* op, DType dt) {
  ConvPath p = ConvPath::kAuto;
  try {
    p = conv_path();
  } catch (const std::invalid_argument& e) {
    bad(op, e.what());
  }
  if (dt == DType::F64) return ConvPath::kOwn;
  if (p == ConvPath::kCudnn && !conv_has_cudnn())
    throw std::runtime_error(std::string(op) +
                             ": PSVAE_CONV=cudnn but this build has no cuDNN (set CUDNN_ROOT)");
  return p;
}

#ifdef PSVAE_WITH_CUDNN
[[noreturn]] void no_algo(const char* op, const char* pass, const Tensor& x, const Tensor& w) {
  throw std::runtime_error(std::string(op) + ": PSVAE_CONV=cudnn but cuDNN offers no " +
                           "deterministic, non-TF32 " + pass + " algorithm for x " + x.str() +
                           " and w " + w.str());
}
#endif

void conv2d_cuda(const OpCall& c) {
  const char* op = "conv2d";
  const Tensor &x = c.in.at(0), &w = c.in.at(1), &y = c.out.at(0);
  const Tensor* b = c.in.size() > 2 && c.in[2].defined() ? &c.in[2] : nullptr;
  const Dims d = dims_of(op, x, w, c);
  expect_shape(op, "y", y, Shape{d.N, d.O, d.Ho, d.Wo}, x.dtype());
  if (b) expect_shape(op, "bias", *b, Shape{d.O}, x.dtype());
  if (y.numel() == 0) return;
  const ConvPath path = path_of(op, x.dtype());
#ifdef PSVAE_WITH_CUDNN
  // cuDNN never sees an empty x or w (C == 0, or H == 0 with padding): ours writes bias or zeros.
  if (path != ConvPath::kOwn && x.numel() > 0 && w.numel() > 0) {
    if (conv::cudnn_forward(d, x, w, y)) {
      if (b) conv::add_bias(d, *b, y);
      return;
    }
    if (path == ConvPath::kCudnn) no_algo(op, "forward", x, w);
  }
#else
  (void)path;
#endif
  conv::own_forward(d, x, w, b, y);
}

void conv2d_bwd_cuda(const OpCall& c) {
  const char* op = "conv2d_bwd";
  const Tensor &gy = c.in.at(0), &x = c.in.at(1), &w = c.in.at(2);
  const Tensor &gx = c.out.at(0), &gw = c.out.at(1);
  const Tensor* gb = c.out.size() > 2 && c.out[2].defined() ? &c.out[2] : nullptr;
  const Dims d = dims_of(op, x, w, c);
  expect_shape(op, "gy", gy, Shape{d.N, d.O, d.Ho, d.Wo}, x.dtype());
  expect_shape(op, "gx", gx, x.shape(), x.dtype());
  expect_shape(op, "gw", gw, w.shape(), x.dtype());
  if (gb) expect_shape(op, "gb", *gb, Shape{d.O}, x.dtype());
  const ConvPath path = path_of(op, x.dtype());
  const bool cudnn_ok = path != ConvPath::kOwn && gy.numel() > 0 && x.numel() > 0 && w.numel() > 0;
  if (gx.numel() > 0) {
    bool done = false;
#ifdef PSVAE_WITH_CUDNN
    if (cudnn_ok) {
      done = conv::cudnn_data_grad(d, gy, w, gx);
      if (!done && path == ConvPath::kCudnn) no_algo(op, "data-gradient", x, w);
    }
#endif
    if (!done) conv::own_data_grad(d, gy, w, gx);
  }
  if (gw.numel() > 0) {
    bool done = false;
#ifdef PSVAE_WITH_CUDNN
    if (cudnn_ok) {
      done = conv::cudnn_filter_grad(d, gy, x, gw);
      if (!done && path == ConvPath::kCudnn) no_algo(op, "filter-gradient", x, w);
    }
#endif
    if (!done) conv::own_filter_grad(d, gy, x, gw);
  }
  (void)cudnn_ok;
  if (gb) conv::bias_grad(d, gy, *gb);
}

}  // namespace

void register_conv(OpTable& t) {
  t[Op::conv2d].cuda = &conv2d_cuda;
  t[Op::conv2d_bwd].cuda = &conv2d_bwd_cuda;
}

}  // namespace psvae::kernels::cuda
