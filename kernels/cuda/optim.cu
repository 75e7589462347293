// CUDA kernels of the optimiser family, as kernels/cpu/optim.cpp, and the multi-tensor entry points
// of kernels/cuda/optim_fused.h:
//   adamw_step         one tensor, in place: PyTorch's single-tensor AdamW, f32 and f64
//   ema_update         one tensor, in place: ema = ema*decay + (1-decay)*param, f32 and f64
//   global_grad_norm   sqrt(sum of squares) over a list of f32/bf16/f64 tensors, deterministic
//   adamw_multi_tensor AdamW over a whole list in one launch: f32 master weights, f32 or bf16
//                      grads times a scale (clip factor, host or device scalar), optional bf16
//                      model copy written in the same pass
//   ema_multi_tensor   the EMA over a list in one launch
//
// Mirror of the CPU formula: the step's scalars are computed on the host in double exactly as the
// CPU kernel computes them and rounded to T once; each element then runs the CPU's T operations in
// its order with __fadd_rn/__fmul_rn/__fdiv_rn/__fsqrt_rn (IEEE-rounded, never contracted into an
// fma). That is bit for bit the CPU kernel as written; the CPU build itself may differ from it by
// an ulp here and there, because GCC contracts a*b + c into fmas under -march=native in C++ mode
// (kernels/cpu/optim.cpp's object has 30 of them), so the tests compare against the f64 CPU result
// by relative error. Every kernel here shares one adam_update and one ema_of, so the multi-tensor
// kernel is bit-identical to the per-tensor op (with grad_scale 1, g * 1 is exact), which the test
// checks.
//
// Memory-bound, per element: adamw reads p, g, m, v and writes p, m, v (28 bytes in f32; 26 with
// bf16 grads, +2 for the bf16 copy); ema 12 bytes; the grad norm 4 (f32) or 2 (bf16).
//
// Multi-tensor launches: a table in device memory lists each tensor (pointers, size, flags) and
// each (tensor, chunk of kChunk elements) pair; block b takes chunk b, 256 threads x 4-element
// packs, so a DiT-XL (675M parameters, ~700 tensors) is one launch of ~10k blocks. Tables are
// uploaded once per distinct content and then reused (TableCache): a training loop stepping the
// same tensors uploads nothing after its first step.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/cuda/optim_fused.h"
#include "kernels/op_table.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda {

namespace {

namespace rt = ::psvae::cuda;
using namespace detail;  // the shared helpers of elementwise_common.cuh

constexpr int kThreads = 256;
// Elements per multi-tensor chunk: 65536 = 256 threads x 64 packs of 4 (256 KiB of f32 param per
// block). Small enough that a 4608x1152 weight is 81 blocks, large enough that a block's fixed cost
// (one table read) is noise.
constexpr int64_t kChunk = 65536;
constexpr int kPack = 4;  // elements per thread-iteration in the multi-tensor kernels

// ---- IEEE-rounded operations, never contracted ------------------------------------------------
template <class T>
struct Rn;
template <>
struct Rn<float> {
  static __device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
  static __device__ __forceinline__ float sub(float a, float b) { return __fadd_rn(a, -b); }
  static __device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
  static __device__ __forceinline__ float div(float a, float b) { return __fdiv_rn(a, b); }
  static __device__ __forceinline__ float sqrt(float a) { return __fsqrt_rn(a); }
};
template <>
struct Rn<double> {
  static __device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
  static __device__ __forceinline__ double sub(double a, double b) { return __dadd_rn(a, -b); }
  static __device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
  static __device__ __forceinline__ double div(double a, double b) { return __ddiv_rn(a, b); }
  static __device__ __forceinline__ double sqrt(double a) { return __dsqrt_rn(a); }
};

// The scalars of one AdamW step, in T, formed on the host exactly as adamw_step_cpu forms them.
template <class T>
struct AdamScalars {
  T w1, one_minus_w1, b2, w2, bc2_sqrt, neg_step_size, eps;
  bool small_w1;  // ATen's lerp form switch at weight 0.5
};

template <class T>
AdamScalars<T> adam_scalars(double lr, double beta1, double beta2, double eps, int64_t step_i) {
  const double step = static_cast<double>(step_i);
  AdamScalars<T> s;
  s.w1 = static_cast<T>(1.0 - beta1);
  s.one_minus_w1 = T(1) - s.w1;
  s.b2 = static_cast<T>(beta2);
  s.w2 = static_cast<T>(1.0 - beta2);
  s.bc2_sqrt = static_cast<T>(std::sqrt(1.0 - std::pow(beta2, step)));
  s.neg_step_size = static_cast<T>(-lr / (1.0 - std::pow(beta1, step)));
  s.eps = static_cast<T>(eps);
  s.small_w1 = std::fabs(s.w1) < T(0.5);
  return s;
}

// The CPU's static_cast<T>(1.0 - lr * wd): product and difference each rounded in double, formed
// on the device by both AdamW kernels (so no host compiler's fma contraction can split them).
template <class T>
__device__ __forceinline__ T decay_of(double lr, double wd) {
  return static_cast<T>(__dadd_rn(1.0, -__dmul_rn(lr, wd)));
}

// One element of adamw_step_cpu, operation by operation:
//   m' = small_w1 ? m + w1 (g - m) : g - (g - m)(1 - w1)
//   v' = v b2 + (w2 g) g
//   p' = p decay + (neg_step_size m') / (sqrt(v') / bc2_sqrt + eps)
template <class T>
__device__ __forceinline__ void adam_update(T& p, T g, T& m, T& v, const AdamScalars<T>& s,
                                            T decay) {
  using R = Rn<T>;
  const T mi = s.small_w1 ? R::add(m, R::mul(s.w1, R::sub(g, m)))
                          : R::sub(g, R::mul(R::sub(g, m), s.one_minus_w1));
  const T vi = R::add(R::mul(v, s.b2), R::mul(R::mul(s.w2, g), g));
  const T denom = R::add(R::div(R::sqrt(vi), s.bc2_sqrt), s.eps);
  p = R::add(R::mul(p, decay), R::div(R::mul(s.neg_step_size, mi), denom));
  m = mi;
  v = vi;
}

// ---- per-tensor kernels (the op table's adamw_step and ema_update) -----------------------------
template <class T>
__global__ void adamw_kernel(T* p, const T* g, T* m, T* v, int64_t n, bool vec, AdamScalars<T> s,
                             double lr, double wd) {
  constexpr int V = kVec<T>;
  const T decay = decay_of<T>(lr, wd);
  const int64_t npacks = (n + V - 1) / V;
  for (int64_t q = rt::grid_index(); q < npacks; q += rt::grid_stride()) {
    const int64_t base = q * V;
    T pp[V], gg[V], mm[V], vv[V];
    const int cnt = load_pack<T, V>(p, base, n, vec, pp);
    load_pack<T, V>(g, base, n, vec, gg);
    load_pack<T, V>(m, base, n, vec, mm);
    load_pack<T, V>(v, base, n, vec, vv);
#pragma unroll
    for (int k = 0; k < V; ++k)
      if (k < cnt) adam_update(pp[k], gg[k], mm[k], vv[k], s, decay);
    store_pack<T, V>(p, base, n, vec, pp);
    store_pack<T, V>(m, base, n, vec, mm);
    store_pack<T, V>(v, base, n, vec, vv);
  }
}

// e' = e d + w p, w = 1 - decay rounded once (the CPU's two products and one sum).
template <class T>
__device__ __forceinline__ T ema_of(T e, T p, T d, T w) {
  return Rn<T>::add(Rn<T>::mul(e, d), Rn<T>::mul(w, p));
}

template <class T>
__global__ void ema_kernel(T* e, const T* p, int64_t n, bool vec, T d, T w) {
  constexpr int V = kVec<T>;
  const int64_t npacks = (n + V - 1) / V;
  for (int64_t q = rt::grid_index(); q < npacks; q += rt::grid_stride()) {
    T ee[V], pp[V];
    load_pack<T, V>(e, q * V, n, vec, ee);
    load_pack<T, V>(p, q * V, n, vec, pp);
#pragma unroll
    for (int k = 0; k < V; ++k) ee[k] = ema_of(ee[k], pp[k], d, w);
    store_pack<T, V>(e, q * V, n, vec, ee);
  }
}

// ---- multi-tensor tables -----------------------------------------------------------------------
// Plain structs shared by host and device; each a multiple of 8 bytes so the table is an int64
// array: [entries][chunks].
struct AdamEntry {
  float* param;
  float* m;
  float* v;
  const void* grad;     // f32 or bf16, per the launch
  __nv_bfloat16* copy;  // null: no model copy for this tensor
  int64_t numel;
  double weight_decay;
  int64_t vec;  // every pointer aligned to its 4-element pack (16 B f32, 8 B bf16)
};
struct EmaEntry {
  void* ema;
  const void* param;
  int64_t numel;
  int64_t vec;
};
struct NormEntry {
  const void* x;
  int64_t numel;
  int32_t dtype;  // 0 f32, 1 bf16, 2 f64
  int32_t vec;
};
struct ChunkRef {
  int32_t tensor;
  int32_t chunk;  // elements [chunk * kChunk, min(numel, (chunk + 1) * kChunk))
};
static_assert(sizeof(AdamEntry) % 8 == 0 && sizeof(EmaEntry) % 8 == 0 &&
                  sizeof(NormEntry) % 8 == 0 && sizeof(ChunkRef) == 8,
              "table structs must tile an int64 array");

// The (tensor, chunk) list of tensors of the given sizes, in tensor then chunk order.
std::vector<ChunkRef> chunks_of(const std::vector<int64_t>& numels, const char* op) {
  std::vector<ChunkRef> out;
  for (size_t i = 0; i < numels.size(); ++i) {
    const int64_t nc = (numels[i] + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < nc; ++c)
      out.push_back({static_cast<int32_t>(i), static_cast<int32_t>(c)});
  }
  if (out.size() > static_cast<size_t>(INT32_MAX))
    throw std::invalid_argument(std::string(op) + ": too many chunks for one launch");
  return out;
}

template <class E>
std::vector<int64_t> table_words(const std::vector<E>& entries,
                                 const std::vector<ChunkRef>& chunks) {
  const size_t eb = entries.size() * sizeof(E), cb = chunks.size() * sizeof(ChunkRef);
  std::vector<int64_t> w((eb + cb) / 8);
  if (eb) std::memcpy(w.data(), entries.data(), eb);
  if (cb) std::memcpy(reinterpret_cast<char*>(w.data()) + eb, chunks.data(), cb);
  return w;
}

// Device copies of tables, looked up by content. The tables hold device pointers and sizes only
// (never per-step values), so a training loop finds its table here every step after the first.
// Entries are handed out as Tensors: a caller keeps its table alive through its launch even if
// another thread evicts it meanwhile (the allocator frees stream-ordered).
class TableCache {
 public:
  Tensor get(int device, std::vector<int64_t> words) {
    std::lock_guard<std::mutex> lock(mu_);
    ++clock_;
    for (Entry& e : entries_) {
      if (e.device == device && e.words == words) {
        e.used = clock_;
        return e.dev;
      }
    }
    Tensor dev =
        Tensor::from_vector(words, Shape{static_cast<int64_t>(words.size())}, Device::cuda(device));
    if (entries_.size() >= kMaxEntries) {
      auto lru = std::min_element(entries_.begin(), entries_.end(),
                                  [](const Entry& a, const Entry& b) { return a.used < b.used; });
      entries_.erase(lru);
    }
    entries_.push_back({device, std::move(words), dev, clock_});
    return dev;
  }

 private:
  static constexpr size_t kMaxEntries = 16;  // adamw + ema + norm tables of a few models
  struct Entry {
    int device;
    std::vector<int64_t> words;
    Tensor dev;
    uint64_t used;
  };
  std::mutex mu_;
  std::vector<Entry> entries_;
  uint64_t clock_ = 0;
};

// Never destroyed: its device tensors must not be freed after the CUDA runtime has shut down.
TableCache& table_cache() {
  static TableCache* cache = new TableCache;
  return *cache;
}

// ---- multi-tensor kernels ----------------------------------------------------------------------
// Block b: chunk b of the table. Every thread reads the chunk's entry (a broadcast from L1).
template <class G>
__global__ void __launch_bounds__(kThreads)
    adamw_mt_kernel(const AdamEntry* tensors, const ChunkRef* chunks, AdamScalars<float> s,
                    double lr, float host_scale, const float* dev_scale) {
  const ChunkRef c = chunks[blockIdx.x];
  const AdamEntry t = tensors[c.tensor];
  const int64_t begin = static_cast<int64_t>(c.chunk) * kChunk;
  const int64_t len = t.numel - begin < kChunk ? t.numel - begin : kChunk;
  const float scale = dev_scale ? *dev_scale : host_scale;
  const float decay = decay_of<float>(lr, t.weight_decay);
  const bool vec = t.vec != 0;
  float* p = t.param + begin;
  float* m = t.m + begin;
  float* v = t.v + begin;
  const G* g = static_cast<const G*>(t.grad) + begin;
  __nv_bfloat16* cp = t.copy ? t.copy + begin : nullptr;
  const int64_t npacks = (len + kPack - 1) / kPack;
  for (int64_t q = threadIdx.x; q < npacks; q += blockDim.x) {
    const int64_t base = q * kPack;
    float pp[kPack], gg[kPack], mm[kPack], vv[kPack];
    const int cnt = load_pack<float, kPack>(p, base, len, vec, pp);
    load_pack<G, kPack>(g, base, len, vec, gg);
    load_pack<float, kPack>(m, base, len, vec, mm);
    load_pack<float, kPack>(v, base, len, vec, vv);
#pragma unroll
    for (int k = 0; k < kPack; ++k)
      if (k < cnt) adam_update(pp[k], __fmul_rn(gg[k], scale), mm[k], vv[k], s, decay);
    store_pack<float, kPack>(p, base, len, vec, pp);
    store_pack<float, kPack>(m, base, len, vec, mm);
    store_pack<float, kPack>(v, base, len, vec, vv);
    if (cp) store_pack<__nv_bfloat16, kPack>(cp, base, len, vec, pp);
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    ema_mt_kernel(const EmaEntry* tensors, const ChunkRef* chunks, T d, T w) {
  const ChunkRef c = chunks[blockIdx.x];
  const EmaEntry t = tensors[c.tensor];
  const int64_t begin = static_cast<int64_t>(c.chunk) * kChunk;
  const int64_t len = t.numel - begin < kChunk ? t.numel - begin : kChunk;
  const bool vec = t.vec != 0;
  T* e = static_cast<T*>(t.ema) + begin;
  const T* p = static_cast<const T*>(t.param) + begin;
  const int64_t npacks = (len + kPack - 1) / kPack;
  for (int64_t q = threadIdx.x; q < npacks; q += blockDim.x) {
    T ee[kPack], pp[kPack];
    load_pack<T, kPack>(e, q * kPack, len, vec, ee);
    load_pack<T, kPack>(p, q * kPack, len, vec, pp);
#pragma unroll
    for (int k = 0; k < kPack; ++k) ee[k] = ema_of(ee[k], pp[k], d, w);
    store_pack<T, kPack>(e, q * kPack, len, vec, ee);
  }
}

// Sum of squares of one chunk by one block, in double (an f32 square is exact in double). Thread t
// takes packs t, t + 256, ...: a fixed order.
template <class T>
__device__ double chunk_sumsq(const T* x, int64_t len, bool vec) {
  double acc = 0;
  const int64_t npacks = (len + kPack - 1) / kPack;
  for (int64_t q = threadIdx.x; q < npacks; q += blockDim.x) {
    typename Math<T>::Acc v[kPack];
    const int cnt = load_pack<T, kPack>(x, q * kPack, len, vec, v);
#pragma unroll
    for (int k = 0; k < kPack; ++k) {
      const double d = static_cast<double>(v[k]);
      if (k < cnt) acc = fma(d, d, acc);
    }
  }
  return acc;
}

// Pass 1 of the grad norm: partial[b] = sum of squares of chunk b.
__global__ void __launch_bounds__(kThreads)
    sumsq_mt_kernel(const NormEntry* tensors, const ChunkRef* chunks, double* partial) {
  __shared__ double sh[32];
  const ChunkRef c = chunks[blockIdx.x];
  const NormEntry t = tensors[c.tensor];
  const int64_t begin = static_cast<int64_t>(c.chunk) * kChunk;
  const int64_t len = t.numel - begin < kChunk ? t.numel - begin : kChunk;
  const bool vec = t.vec != 0;
  double acc = 0;
  switch (t.dtype) {  // uniform across the block: no divergence
    case 0: acc = chunk_sumsq(static_cast<const float*>(t.x) + begin, len, vec); break;
    case 1: acc = chunk_sumsq(static_cast<const __nv_bfloat16*>(t.x) + begin, len, vec); break;
    default: acc = chunk_sumsq(static_cast<const double*>(t.x) + begin, len, vec); break;
  }
  acc = block_sum_to_thread0(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Pass 2, one block: the partials in a fixed order (thread t: t, t + 256, ...; then the tree),
// norm = sqrt(total), and optionally the clip factor min(1, max_norm / (norm + 1e-6)).
template <class O>
__global__ void __launch_bounds__(kThreads)
    norm_finish_kernel(const double* partial, int nparts, O* norm_out, float* clip_out,
                       double max_norm) {
  __shared__ double sh[32];
  double acc = 0;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += partial[i];
  acc = block_sum_to_thread0(acc, sh);
  if (threadIdx.x == 0) {
    const double norm = sqrt(acc);
    norm_out[0] = from_double<O>(norm);
    if (clip_out) clip_out[0] = __double2float_rn(fmin(1.0, max_norm / (norm + 1e-6)));
  }
}

// ---- host helpers ------------------------------------------------------------------------------
// Grid of a grid-stride elementwise kernel: one block per 256 packs, capped at what is resident at
// once (the kernel's occupancy times the SMs), so the grid is one wave. adamw_kernel takes 43 (f32)
// to 52 (f64) registers: 5 blocks per SM fit, and rt::grid_for's 8 per SM would leave a tail wave.
// The grid does not change any result (each element is independent).
// The occupancy is queried once per kernel (every device is taken to be the same model).
template <auto Kernel>
unsigned resident_grid(int64_t packs, int dev) {
  static const int per_sm = rt::blocks_per_sm(Kernel, kThreads);
  const int64_t cap = static_cast<int64_t>(per_sm) * rt::sm_count(dev);
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>(cap, (packs + kThreads - 1) / kThreads)));
}

bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

[[noreturn]] void bad_input(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

// f32 or f64 per the dtype; anything else is refused: the CPU kernels have no bf16 optimiser
// state either, and a bf16 master weight would lose most updates to rounding.
template <class Fn>
void dispatch_f32_f64(DType dt, const char* op, Fn&& fn) {
  switch (dt) {
    case DType::F32: fn(float{}); return;
    case DType::F64: fn(double{}); return;
    default: unsupported(op, std::string("dtype ") + dtype_name(dt) + " (f32 and f64 only)");
  }
}

void check_like(const char* op, const char* what, const Tensor& t, const Tensor& ref) {
  if (!t.defined() || t.shape() != ref.shape() || t.dtype() != ref.dtype())
    bad_input(op, std::string(what) + " is " + (t.defined() ? t.str() : "undefined") +
                      " but param is " + ref.str());
}

// adamw_step: in (grad), out (param, m, v); reals lr, beta1, beta2, eps, weight_decay; ints step.
void adamw_step_cuda(const OpCall& c) {
  const char* op = "adamw_step";
  const Tensor& grad = c.in.at(0);
  const Tensor &param = c.out.at(0), &m = c.out.at(1), &v = c.out.at(2);
  check_like(op, "grad", grad, param);
  check_like(op, "m (exp_avg)", m, param);
  check_like(op, "v (exp_avg_sq)", v, param);
  const double lr = c.reals[0], beta1 = c.reals[1], beta2 = c.reals[2], eps = c.reals[3],
               wd = c.reals[4];
  const int64_t n = param.numel();
  if (n == 0) return;
  launch_on(param.device(), [&](cudaStream_t st, int dev) {
    dispatch_f32_f64(param.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      constexpr int V = kVec<T>;
      const AdamScalars<T> s = adam_scalars<T>(lr, beta1, beta2, eps, c.ints[0]);
      const bool vec = aligned16(param.raw_data()) && aligned16(grad.raw_data()) &&
                       aligned16(m.raw_data()) && aligned16(v.raw_data());
      PSVAE_LAUNCH(resident_grid<adamw_kernel<T>>((n + V - 1) / V, dev), kThreads, 0, st,
                   adamw_kernel<T>)
      (static_cast<T*>(param.raw_data()), static_cast<const T*>(grad.raw_data()),
       static_cast<T*>(m.raw_data()), static_cast<T*>(v.raw_data()), n, vec, s, lr, wd);
    });
  });
}

// ema_update: in (param), out (ema); reals decay.
void ema_update_cuda(const OpCall& c) {
  const char* op = "ema_update";
  const Tensor& param = c.in.at(0);
  const Tensor& ema = c.out.at(0);
  check_like(op, "ema", ema, param);
  const double decay = c.reals[0];
  const int64_t n = param.numel();
  if (n == 0) return;
  launch_on(ema.device(), [&](cudaStream_t st, int dev) {
    dispatch_f32_f64(ema.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      constexpr int V = kVec<T>;
      const bool vec = aligned16(param.raw_data()) && aligned16(ema.raw_data());
      PSVAE_LAUNCH(resident_grid<ema_kernel<T>>((n + V - 1) / V, dev), kThreads, 0, st,
                   ema_kernel<T>)
      (static_cast<T*>(ema.raw_data()), static_cast<const T*>(param.raw_data()), n, vec,
       static_cast<T>(decay), static_cast<T>(1.0 - decay));
    });
  });
}

// Device of a multi-tensor call: that of `first`, which must be a CUDA tensor.
int cuda_device_of(const char* op, const Tensor& first) {
  if (!first.defined() || !first.device().is_cuda())
    bad_input(op, "tensors must be on a CUDA device, got " +
                      (first.defined() ? first.str() : std::string("undefined")));
  return first.device().index;
}

void check_on(const char* op, const Tensor& t, int dev, const std::string& what) {
  if (!t.device().is_cuda() || t.device().index != dev)
    bad_input(op, what + " is on " + t.device().str() + ", expected cuda:" + std::to_string(dev));
}

// Launches pass 1 over the table (when there are chunks) and pass 2, writing the norm to norm_out
// and the clip factor to clip_out (may be null).
template <class O>
void grad_norm_launch(const std::vector<Tensor>& grads, int dev, O* norm_out, float* clip_out,
                      double max_norm) {
  const char* op = "global_grad_norm";
  std::vector<NormEntry> entries;
  std::vector<int64_t> numels;
  for (size_t i = 0; i < grads.size(); ++i) {
    const Tensor& g = grads[i];
    if (!g.defined() || g.numel() == 0) continue;
    check_on(op, g, dev, "grads[" + std::to_string(i) + "]");
    int32_t code = 0;
    switch (g.dtype()) {
      case DType::F32: code = 0; break;
      case DType::BF16: code = 1; break;
      case DType::F64: code = 2; break;
      default:
        unsupported(op, "grads[" + std::to_string(i) + "] of dtype " + dtype_name(g.dtype()));
    }
    const int32_t vec = aligned_to(g.raw_data(), kPack * dtype_size(g.dtype())) ? 1 : 0;
    entries.push_back({g.raw_data(), g.numel(), code, vec});
    numels.push_back(g.numel());
  }
  const std::vector<ChunkRef> chunks = chunks_of(numels, op);
  const int nchunks = static_cast<int>(chunks.size());
  launch_on(Device::cuda(dev), [&](cudaStream_t st, int) {
    Tensor partial = Tensor::empty(Shape{std::max(nchunks, 1)}, DType::F64, Device::cuda(dev));
    Tensor table;  // kept alive through the launch
    if (nchunks > 0) {
      table = table_cache().get(dev, table_words(entries, chunks));
      const char* base = static_cast<const char*>(table.raw_data());
      PSVAE_LAUNCH(nchunks, kThreads, 0, st, sumsq_mt_kernel)
      (reinterpret_cast<const NormEntry*>(base),
       reinterpret_cast<const ChunkRef*>(base + entries.size() * sizeof(NormEntry)),
       partial.data<double>());
    }
    PSVAE_LAUNCH(1, kThreads, 0, st, norm_finish_kernel<O>)
    (partial.data<double>(), nchunks, norm_out, clip_out, max_norm);
  });
}

}  // namespace

// ---- optim_fused.h -----------------------------------------------------------------------------
void global_grad_norm(const std::vector<Tensor>& grads, const Tensor& norm_out, double max_norm,
                      const Tensor& clip_scale_out) {
  const char* op = "global_grad_norm";
  const int dev = cuda_device_of(op, norm_out);
  if (norm_out.numel() != 1 || (norm_out.dtype() != DType::F32 && norm_out.dtype() != DType::F64))
    bad_input(op, "norm_out must be one f32 or f64 element, got " + norm_out.str());
  float* clip = nullptr;
  if (clip_scale_out.defined()) {
    check_on(op, clip_scale_out, dev, "clip_scale_out");
    if (clip_scale_out.numel() != 1 || clip_scale_out.dtype() != DType::F32)
      bad_input(op, "clip_scale_out must be one f32 element, got " + clip_scale_out.str());
    if (!(max_norm > 0)) bad_input(op, "max_norm must be > 0, got " + std::to_string(max_norm));
    clip = static_cast<float*>(clip_scale_out.raw_data());
  }
  if (norm_out.dtype() == DType::F32)
    grad_norm_launch(grads, dev, static_cast<float*>(norm_out.raw_data()), clip, max_norm);
  else
    grad_norm_launch(grads, dev, static_cast<double*>(norm_out.raw_data()), clip, max_norm);
}

double global_grad_norm(const std::vector<Tensor>& grads) {
  const Tensor* first = nullptr;
  for (const Tensor& g : grads)
    if (g.defined()) {
      first = &g;
      break;
    }
  if (!first) return 0.0;
  const int dev = cuda_device_of("global_grad_norm", *first);
  Tensor out = Tensor::empty(Shape{}, DType::F64, Device::cuda(dev));
  global_grad_norm(grads, out);
  return out.item();  // synchronises
}

void adamw_multi_tensor(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                        const std::vector<Tensor>& m, const std::vector<Tensor>& v,
                        const std::vector<Tensor>& model_copies, const AdamWHyper& hp, int64_t step,
                        double grad_scale, const Tensor& grad_scale_dev,
                        const std::vector<double>& weight_decay) {
  const char* op = "adamw_multi_tensor";
  const size_t n = params.size();
  if (grads.size() != n || m.size() != n || v.size() != n ||
      (!model_copies.empty() && model_copies.size() != n) ||
      (!weight_decay.empty() && weight_decay.size() != n))
    bad_input(op, "lists differ in length: " + std::to_string(n) + " params, " +
                      std::to_string(grads.size()) + " grads, " + std::to_string(m.size()) +
                      " m, " + std::to_string(v.size()) + " v, " +
                      std::to_string(model_copies.size()) + " model copies, " +
                      std::to_string(weight_decay.size()) + " weight decays");
  if (step < 1) bad_input(op, "step is 1-based, got " + std::to_string(step));
  if (!(hp.beta1 >= 0 && hp.beta1 < 1 && hp.beta2 >= 0 && hp.beta2 < 1))
    bad_input(op, "betas must lie in [0, 1), got (" + std::to_string(hp.beta1) + ", " +
                      std::to_string(hp.beta2) + ")");
  if (!(hp.eps > 0)) bad_input(op, "eps must be > 0, got " + std::to_string(hp.eps));
  if (n == 0) return;
  const int dev = cuda_device_of(op, params[0]);
  const float* dev_scale = nullptr;
  if (grad_scale_dev.defined()) {
    check_on(op, grad_scale_dev, dev, "grad_scale_dev");
    if (grad_scale_dev.numel() != 1 || grad_scale_dev.dtype() != DType::F32)
      bad_input(op, "grad_scale_dev must be one f32 element, got " + grad_scale_dev.str());
    if (grad_scale != 1.0)
      bad_input(op, "give grad_scale or grad_scale_dev, not both (grad_scale is " +
                        std::to_string(grad_scale) + ")");
    dev_scale = static_cast<const float*>(grad_scale_dev.raw_data());
  }
  const DType gdt = grads[0].defined() ? grads[0].dtype() : DType::F32;
  if (gdt != DType::F32 && gdt != DType::BF16)
    bad_input(op, std::string("grads must be f32 or bf16, got ") + dtype_name(gdt));
  std::vector<AdamEntry> entries;
  std::vector<int64_t> numels;
  entries.reserve(n);
  numels.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string at = "[" + std::to_string(i) + "]";
    const Tensor& p = params[i];
    if (!p.defined() || p.dtype() != DType::F32)
      bad_input(op, "params" + at + " must be a defined f32 tensor (the master weights), got " +
                        (p.defined() ? p.str() : std::string("undefined")));
    check_on(op, p, dev, "params" + at);
    const Tensor& g = grads[i];
    if (!g.defined() || g.shape() != p.shape() || g.dtype() != gdt)
      bad_input(op, "grads" + at + " is " + (g.defined() ? g.str() : std::string("undefined")) +
                        " but params" + at + " is " + p.str() + " and grads are " +
                        dtype_name(gdt));
    check_like(op, ("m" + at).c_str(), m[i], p);
    check_like(op, ("v" + at).c_str(), v[i], p);
    check_on(op, g, dev, "grads" + at);
    check_on(op, m[i], dev, "m" + at);
    check_on(op, v[i], dev, "v" + at);
    std::vector<const Tensor*> group = {&p, &g, &m[i], &v[i]};
    __nv_bfloat16* copy = nullptr;
    if (!model_copies.empty() && model_copies[i].defined()) {
      const Tensor& cp = model_copies[i];
      if (cp.shape() != p.shape() || cp.dtype() != DType::BF16)
        bad_input(op, "model_copies" + at + " must be bf16 of params" + at + "'s shape " +
                          p.shape().str() + ", got " + cp.str());
      check_on(op, cp, dev, "model_copies" + at);
      group.push_back(&cp);
      copy = static_cast<__nv_bfloat16*>(cp.raw_data());
    }
    for (size_t a = 0; a < group.size(); ++a)
      for (size_t b = a + 1; b < group.size(); ++b)
        if (group[a]->overlaps(*group[b]))
          bad_input(op, "param, grad, m, v and model copy " + at + " must not share memory");
    const size_t gsz = dtype_size(gdt);
    const bool vec = aligned_to(p.raw_data(), 16) && aligned_to(m[i].raw_data(), 16) &&
                     aligned_to(v[i].raw_data(), 16) && aligned_to(g.raw_data(), kPack * gsz) &&
                     (!copy || aligned_to(copy, kPack * 2));
    entries.push_back({static_cast<float*>(p.raw_data()), static_cast<float*>(m[i].raw_data()),
                       static_cast<float*>(v[i].raw_data()), g.raw_data(), copy, p.numel(),
                       weight_decay.empty() ? hp.weight_decay : weight_decay[i],
                       vec ? int64_t(1) : int64_t(0)});
    numels.push_back(p.numel());
  }
  const std::vector<ChunkRef> chunks = chunks_of(numels, op);
  if (chunks.empty()) return;
  const AdamScalars<float> s = adam_scalars<float>(hp.lr, hp.beta1, hp.beta2, hp.eps, step);
  const float host_scale = static_cast<float>(grad_scale);
  launch_on(Device::cuda(dev), [&](cudaStream_t st, int) {
    Tensor table = table_cache().get(dev, table_words(entries, chunks));
    const char* base = static_cast<const char*>(table.raw_data());
    const AdamEntry* te = reinterpret_cast<const AdamEntry*>(base);
    const ChunkRef* tc =
        reinterpret_cast<const ChunkRef*>(base + entries.size() * sizeof(AdamEntry));
    const unsigned blocks = static_cast<unsigned>(chunks.size());
    if (gdt == DType::F32) PSVAE_LAUNCH(blocks, kThreads, 0, st, adamw_mt_kernel<float>)
    (te, tc, s, hp.lr, host_scale, dev_scale);
    else PSVAE_LAUNCH(blocks, kThreads, 0, st, adamw_mt_kernel<__nv_bfloat16>)(
        te, tc, s, hp.lr, host_scale, dev_scale);
  });
}

void ema_multi_tensor(const std::vector<Tensor>& ema, const std::vector<Tensor>& params,
                      double decay) {
  const char* op = "ema_multi_tensor";
  if (ema.size() != params.size())
    bad_input(op, std::to_string(ema.size()) + " ema tensors for " + std::to_string(params.size()) +
                      " params");
  if (!(decay >= 0 && decay <= 1))
    bad_input(op, "decay must lie in [0, 1], got " + std::to_string(decay));
  if (ema.empty()) return;
  const int dev = cuda_device_of(op, ema[0]);
  const DType dt = ema[0].dtype();
  if (dt != DType::F32 && dt != DType::F64)
    unsupported(op, std::string("dtype ") + dtype_name(dt) + " (f32 and f64 only)");
  std::vector<EmaEntry> entries;
  std::vector<int64_t> numels;
  for (size_t i = 0; i < ema.size(); ++i) {
    const std::string at = "[" + std::to_string(i) + "]";
    const Tensor &e = ema[i], &p = params[i];
    if (!e.defined() || e.dtype() != dt)
      bad_input(op, "ema" + at + " must be a defined " + dtype_name(dt) + " tensor, got " +
                        (e.defined() ? e.str() : std::string("undefined")));
    if (!p.defined() || p.shape() != e.shape() || p.dtype() != dt)
      bad_input(op, "params" + at + " is " + (p.defined() ? p.str() : std::string("undefined")) +
                        " but ema" + at + " is " + e.str());
    check_on(op, e, dev, "ema" + at);
    check_on(op, p, dev, "params" + at);
    if (e.overlaps(p)) bad_input(op, "ema" + at + " and params" + at + " must not share memory");
    const size_t pk = kPack * dtype_size(dt);
    const bool vec = aligned_to(e.raw_data(), pk) && aligned_to(p.raw_data(), pk);
    entries.push_back({e.raw_data(), p.raw_data(), e.numel(), vec ? int64_t(1) : int64_t(0)});
    numels.push_back(e.numel());
  }
  const std::vector<ChunkRef> chunks = chunks_of(numels, op);
  if (chunks.empty()) return;
  launch_on(Device::cuda(dev), [&](cudaStream_t st, int) {
    Tensor table = table_cache().get(dev, table_words(entries, chunks));
    const char* base = static_cast<const char*>(table.raw_data());
    const EmaEntry* te = reinterpret_cast<const EmaEntry*>(base);
    const ChunkRef* tc =
        reinterpret_cast<const ChunkRef*>(base + entries.size() * sizeof(EmaEntry));
    const unsigned blocks = static_cast<unsigned>(chunks.size());
    dispatch_f32_f64(dt, op, [&](auto tag) {
      using T = decltype(tag);
      PSVAE_LAUNCH(blocks, kThreads, 0, st, ema_mt_kernel<T>)
      (te, tc, static_cast<T>(decay), static_cast<T>(1.0 - decay));
    });
  });
}

void register_optim(OpTable& t) {
  t[Op::adamw_step].cuda = &adamw_step_cuda;
  t[Op::ema_update].cuda = &ema_update_cuda;
}

}  // namespace psvae::kernels::cuda
