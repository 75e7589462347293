// CPU kernels: elementwise family. Binary ops with NumPy broadcasting, where, scalar ops, expand,
// sum_to, cast, and the unary functions with their backward entries.
//
// Broadcasting (kernels/broadcast_layout.h, shared with the CUDA kernels): every operand is
// addressed through its own strides over the output's index space, 0 on broadcast dims. Adjacent
// dims are then merged wherever every operand stays contiguous across them, so the common cases
// collapse to one or two loops:
//   equal shapes       (N, D) + (N, D) -> one loop of N*D, all strides 1
//   trailing suffix    (N, D) + (D)    -> N rows of D, the bias stride 0 on rows, 1 inside
//   scalar operand     (N, D) + ()     -> one loop, scalar stride 0
// and the inner loop is specialised on strides 0/1 so the compiler vectorises it.
#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/broadcast_layout.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/eigen_util.h"

namespace psvae::kernels::cpu {

namespace {

using kernels::Broadcast;
using kernels::kMaxOperands;
using kernels::make_broadcast;

// out[i] = f(a[i], b[i]) over the broadcast index space. Parallel over rows, or over chunks of
// the single row when there is only one.
template <class T, class F>
void binary_loop(const Broadcast& bc, T* out, const T* a, const T* b, F f) {
  const int64_t rows = bc.rows(), cols = bc.cols();
  const int64_t sa = bc.stride[1][bc.rank - 1], sb = bc.stride[2][bc.rank - 1];
  auto row = [&](T* o, const T* pa, const T* pb, int64_t n) {
    if (sa == 1 && sb == 1) {
      for (int64_t j = 0; j < n; ++j) o[j] = f(pa[j], pb[j]);
    } else if (sa == 1 && sb == 0) {
      const T vb = pb[0];
      for (int64_t j = 0; j < n; ++j) o[j] = f(pa[j], vb);
    } else if (sa == 0 && sb == 1) {
      const T va = pa[0];
      for (int64_t j = 0; j < n; ++j) o[j] = f(va, pb[j]);
    } else {
      for (int64_t j = 0; j < n; ++j) o[j] = f(pa[j * sa], pb[j * sb]);
    }
  };
  if (rows == 1) {
    constexpr int64_t kChunk = 4096;
    const int64_t chunks = (cols + kChunk - 1) / kChunk;
#pragma omp parallel for if (cols > kParallelGrain)
    for (int64_t c = 0; c < chunks; ++c) {
      int64_t j0 = c * kChunk, n = std::min(kChunk, cols - j0);
      row(out + j0, a + j0 * sa, b + j0 * sb, n);
    }
    return;
  }
#pragma omp parallel for if (rows * cols > kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t off[kMaxOperands];
    bc.row_offsets(r, off);
    row(out + off[0], a + off[1], b + off[2], cols);
  }
}

template <class F>
void binary_kernel(const OpCall& c, const char* name, F f) {
  const Tensor &a = c.in[0], &b = c.in[1], &y = c.out[0];
  // NumPy broadcasting, checked as the CUDA kernels check it (make_broadcast alone would take a
  // (1, 1) operand for a (5) output).
  for (const Tensor* in : {&a, &b})
    if (!kernels::broadcasts_to(in->shape(), y.shape()))
      throw std::invalid_argument(std::string(name) + ": input " + in->shape().str() +
                                  " does not broadcast to the output " + y.shape().str());
  Broadcast bc = make_broadcast(y.shape(), {a.shape(), b.shape()});
  dispatch_float(y.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    binary_loop<T>(bc, y.data<T>(), a.data<T>(), b.data<T>(), f);
  });
}

void add_cpu(const OpCall& c) {
  binary_kernel(c, "add", [](auto x, auto y) { return x + y; });
}
void sub_cpu(const OpCall& c) {
  binary_kernel(c, "sub", [](auto x, auto y) { return x - y; });
}
void mul_cpu(const OpCall& c) {
  binary_kernel(c, "mul", [](auto x, auto y) { return x * y; });
}
void div_cpu(const OpCall& c) {
  binary_kernel(c, "div", [](auto x, auto y) { return x / y; });
}

// Any dtype as a truth value; bf16 by its bits so that -0 counts as zero.
template <class C>
bool nonzero(C v) {
  return v != C(0);
}
template <>
bool nonzero<bf16>(bf16 v) {
  return (v.bits & 0x7fffu) != 0;
}

// Calls fn(C{}) with C the element type of `dt` (all five dtypes).
template <class Fn>
void dispatch_any(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::F32: fn(float{}); return;
    case DType::F64: fn(double{}); return;
    case DType::BF16: fn(bf16{}); return;
    case DType::I32: fn(int32_t{}); return;
    case DType::I64: fn(int64_t{}); return;
  }
}

void where_cpu(const OpCall& c) {
  const Tensor &cond = c.in[0], &a = c.in[1], &b = c.in[2], &y = c.out[0];
  Broadcast bc = make_broadcast(y.shape(), {cond.shape(), a.shape(), b.shape()});
  const int64_t rows = bc.rows(), cols = bc.cols();
  const int last = bc.rank - 1;
  const int64_t sc = bc.stride[1][last], sa = bc.stride[2][last], sb = bc.stride[3][last];
  dispatch_any(cond.dtype(), [&](auto ctag) {
    using C = decltype(ctag);
    dispatch_float(y.dtype(), "where", [&](auto tag) {
      using T = decltype(tag);
      const C* pc = cond.data<C>();
      const T *pa = a.data<T>(), *pb = b.data<T>();
      T* py = y.data<T>();
#pragma omp parallel for if (rows * cols > kParallelGrain)
      for (int64_t r = 0; r < rows; ++r) {
        int64_t off[kMaxOperands];
        bc.row_offsets(r, off);
        for (int64_t j = 0; j < cols; ++j)
          py[off[0] + j] = nonzero(pc[off[1] + j * sc]) ? pa[off[2] + j * sa] : pb[off[3] + j * sb];
      }
    });
  });
}

template <class F>
void scalar_kernel(const OpCall& c, const char* name, F f) {
  const Tensor &x = c.in[0], &y = c.out[0];
  const int64_t n = x.numel();
  dispatch_float(x.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    const T s = static_cast<T>(c.reals[0]);
    const T* px = x.data<T>();
    T* py = y.data<T>();
#pragma omp parallel for if (n > kParallelGrain)
    for (int64_t i = 0; i < n; ++i) py[i] = f(px[i], s);
  });
}
void add_scalar_cpu(const OpCall& c) {
  scalar_kernel(c, "add_scalar", [](auto x, auto s) { return x + s; });
}
void mul_scalar_cpu(const OpCall& c) {
  scalar_kernel(c, "mul_scalar", [](auto x, auto s) { return x * s; });
}

// expand copies elements, so it works for every dtype by moving raw words of the element size.
void expand_cpu(const OpCall& c) {
  const Tensor &x = c.in[0], &y = c.out[0];
  Broadcast bc = make_broadcast(y.shape(), {x.shape()});
  const int64_t rows = bc.rows(), cols = bc.cols(), sx = bc.stride[1][bc.rank - 1];
  auto run = [&](auto word) {
    using W = decltype(word);
    const W* px = static_cast<const W*>(x.raw_data());
    W* py = static_cast<W*>(y.raw_data());
#pragma omp parallel for if (rows * cols > kParallelGrain)
    for (int64_t r = 0; r < rows; ++r) {
      int64_t off[kMaxOperands];
      bc.row_offsets(r, off);
      for (int64_t j = 0; j < cols; ++j) py[off[0] + j] = px[off[1] + j * sx];
    }
  };
  switch (dtype_size(x.dtype())) {
    case 2: run(uint16_t{}); break;
    case 4: run(uint32_t{}); break;
    default: run(uint64_t{}); break;
  }
}

// sum_to: each output element sums, in a fixed order (increasing input index) and in double,
// every input element that broadcasting would have copied from it. Parallel over outputs only.
// The input's dims (size-1 dims dropped) are classed as kept or summed, and adjacent dims of one
// class merged (x is contiguous), e.g. (16, 288, 32, 32) -> (288, 1, 1) becomes summed 16,
// kept 288, summed 1024.
//
// One summed group, x = (outer, n, inner) -> (outer, inner), is the common case (a bias gradient
// (B*T, D) -> (D)): tiles of kTile columns walk the n rows contiguously with a double accumulator
// per column, instead of striding down each column. Same order per element, so the same bits.
constexpr int64_t kTile = 256;

void sum_to_cpu(const OpCall& c) {
  const Tensor &x = c.in[0], &y = c.out[0];
  const Shape &xs = x.shape(), &ys = y.shape();
  std::array<int64_t, kMaxRank> xst = xs.strides();
  int64_t keep_size[kMaxRank], keep_st[kMaxRank], sum_size[kMaxRank], sum_st[kMaxRank];
  int nk = 0, ns = 0, prev = -1;  // prev: class of the last dim kept (0) or summed (1)
  const int lead = xs.rank() - ys.rank();
  for (int d = 0; d < xs.rank(); ++d) {
    if (xs[d] == 1) continue;
    const int cls = d >= lead && ys[d - lead] == xs[d] ? 0 : 1;
    int64_t* size = cls == 0 ? keep_size : sum_size;
    int64_t* st = cls == 0 ? keep_st : sum_st;
    int& n = cls == 0 ? nk : ns;
    if (cls == prev) {
      size[n - 1] *= xs[d];
      st[n - 1] = xst[static_cast<size_t>(d)];
    } else {
      size[n] = xs[d];
      st[n++] = xst[static_cast<size_t>(d)];
    }
    prev = cls;
  }
  const int64_t n_out = y.numel();
  const int64_t n_last = ns ? sum_size[ns - 1] : 1, st_last = ns ? sum_st[ns - 1] : 0;
  int64_t n_rest = 1;  // combinations of the summed groups before the last
  for (int k = 0; k + 1 < ns; ++k) n_rest *= sum_size[k];
  dispatch_float(x.dtype(), "sum_to", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    if (ns == 1) {
      const int64_t n = n_last, inner = st_last, outer = n_out / inner;
      const int64_t per = (inner + kTile - 1) / kTile, tiles = outer * per;
#pragma omp parallel for if (n_out * n > kParallelGrain)
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t o = t / per, i0 = (t % per) * kTile, w = std::min(kTile, inner - i0);
        double acc[kTile] = {};
        for (int64_t j = 0; j < n; ++j) {
          const T* row = px + (o * n + j) * inner + i0;
          for (int64_t k = 0; k < w; ++k) acc[k] += static_cast<double>(row[k]);
        }
        for (int64_t k = 0; k < w; ++k) py[o * inner + i0 + k] = static_cast<T>(acc[k]);
      }
      return;
    }
#pragma omp parallel for if (n_out * n_rest * n_last > kParallelGrain)
    for (int64_t o = 0; o < n_out; ++o) {
      int64_t base = 0, rem = o;
      for (int k = nk - 1; k >= 0; --k) {
        base += (rem % keep_size[k]) * keep_st[k];
        rem /= keep_size[k];
      }
      double acc = 0;
      for (int64_t s = 0; s < n_rest; ++s) {
        int64_t off = base, r = s;
        for (int k = ns - 2; k >= 0; --k) {
          off += (r % sum_size[k]) * sum_st[k];
          r /= sum_size[k];
        }
        for (int64_t j = 0; j < n_last; ++j) acc += static_cast<double>(px[off + j * st_last]);
      }
      py[o] = static_cast<T>(acc);
    }
  });
}

// cast: bf16 goes through float (its constructor rounds to nearest even); everything else is a
// static_cast, so float -> int truncates toward zero as in C and PyTorch.
template <class D, class S>
D convert(S s) {
  if constexpr (std::is_same_v<D, bf16>) {
    if constexpr (std::is_same_v<S, bf16>)
      return s;
    else
      return bf16(static_cast<float>(s));
  } else if constexpr (std::is_same_v<S, bf16>) {
    return static_cast<D>(static_cast<float>(s));
  } else {
    return static_cast<D>(s);
  }
}

void cast_cpu(const OpCall& c) {
  const Tensor &x = c.in[0], &y = c.out[0];
  const int64_t n = x.numel();
  dispatch_any(x.dtype(), [&](auto stag) {
    using S = decltype(stag);
    dispatch_any(y.dtype(), [&](auto dtag) {
      using D = decltype(dtag);
      const S* px = static_cast<const S*>(x.raw_data());
      D* py = static_cast<D*>(y.raw_data());
#pragma omp parallel for if (n > kParallelGrain)
      for (int64_t i = 0; i < n; ++i) py[i] = convert<D>(px[i]);
    });
  });
}

// ---- unary functions: one functor per op holds f(x) and f'(x) (given y = f(x)) side by side ----
// p, q are the op's reals[0], reals[1].

template <class T>
T sigmoid_of(T x) {
  // exp of a negative argument only, so neither branch overflows for large |x|.
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  T e = std::exp(x);
  return e / (T(1) + e);
}

struct Exp {
  template <class T>
  static T f(T x, double, double) {
    return std::exp(x);
  }
  template <class T>
  static T df(T, T y, double, double) {
    return y;
  }
};
struct Log {
  template <class T>
  static T f(T x, double, double) {
    return std::log(x);
  }
  template <class T>
  static T df(T x, T, double, double) {
    return T(1) / x;
  }
};
struct Sqrt {
  template <class T>
  static T f(T x, double, double) {
    return std::sqrt(x);
  }
  template <class T>
  static T df(T, T y, double, double) {
    return T(0.5) / y;
  }
};
struct Rsqrt {
  template <class T>
  static T f(T x, double, double) {
    return T(1) / std::sqrt(x);
  }
  template <class T>
  static T df(T x, T y, double, double) {
    return T(-0.5) * y / x;
  }  // -x^-1.5/2
};
struct Tanh {
  template <class T>
  static T f(T x, double, double) {
    return std::tanh(x);
  }
  template <class T>
  static T df(T, T y, double, double) {
    return T(1) - y * y;
  }
};
struct Sigmoid {
  template <class T>
  static T f(T x, double, double) {
    return sigmoid_of(x);
  }
  template <class T>
  static T df(T, T y, double, double) {
    return y * (T(1) - y);
  }
};
struct Relu {
  template <class T>
  static T f(T x, double, double) {
    return x > T(0) ? x : T(0);
  }
  template <class T>
  static T df(T x, T, double, double) {
    return x > T(0) ? T(1) : T(0);
  }
};
struct Silu {
  template <class T>
  static T f(T x, double, double) {
    return x * sigmoid_of(x);
  }
  template <class T>
  static T df(T x, T, double, double) {
    T s = sigmoid_of(x);
    return s * (T(1) + x * (T(1) - s));
  }
};
// PyTorch gelu(approximate='tanh'): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
struct GeluTanh {
  static constexpr double kA = 0.044715;
  static constexpr double kS = 0.79788456080286535588;  // sqrt(2/pi)
  template <class T>
  static T f(T x, double, double) {
    T t = std::tanh(T(kS) * (x + T(kA) * x * x * x));
    return T(0.5) * x * (T(1) + t);
  }
  template <class T>
  static T df(T x, T, double, double) {
    T t = std::tanh(T(kS) * (x + T(kA) * x * x * x));
    T du = T(kS) * (T(1) + T(3 * kA) * x * x);
    return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
  }
};
// Exact GELU: x Phi(x) with Phi the normal CDF; f' = Phi(x) + x phi(x).
struct GeluErf {
  static constexpr double kInvSqrt2 = 0.70710678118654752440;
  static constexpr double kInvSqrt2Pi = 0.39894228040143267794;
  template <class T>
  static T f(T x, double, double) {
    return T(0.5) * x * (T(1) + std::erf(x * T(kInvSqrt2)));
  }
  template <class T>
  static T df(T x, T, double, double) {
    return T(0.5) * (T(1) + std::erf(x * T(kInvSqrt2))) +
           x * T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
  }
};
struct Abs {
  template <class T>
  static T f(T x, double, double) {
    return std::abs(x);
  }
  template <class T>
  static T df(T x, T, double, double) {
    return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
  }
};
struct Pow {
  template <class T>
  static T f(T x, double p, double) {
    return std::pow(x, static_cast<T>(p));
  }
  template <class T>
  static T df(T x, T, double p, double) {
    if (p == 0) return T(0);  // d/dx x^0 = 0, also at x = 0 where p * x^-1 would give NaN
    return static_cast<T>(p) * std::pow(x, static_cast<T>(p - 1));
  }
};
// PyTorch passes the gradient where lo <= x <= hi, edges included.
struct Clamp {
  template <class T>
  static T f(T x, double lo, double hi) {
    return std::min(std::max(x, static_cast<T>(lo)), static_cast<T>(hi));
  }
  template <class T>
  static T df(T x, T, double lo, double hi) {
    return (x >= static_cast<T>(lo) && x <= static_cast<T>(hi)) ? T(1) : T(0);
  }
};

template <class F>
void unary_fwd(const OpCall& c) {
  const Tensor &x = c.in[0], &y = c.out[0];
  const int64_t n = x.numel();
  const double p = c.reals[0], q = c.reals[1];
  dispatch_float(x.dtype(), "unary", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
#pragma omp parallel for if (n > kParallelGrain)
    for (int64_t i = 0; i < n; ++i) py[i] = F::f(px[i], p, q);
  });
}

template <class F>
void unary_bwd(const OpCall& c) {
  const Tensor &x = c.in[0], &y = c.in[1], &gy = c.in[2], &gx = c.out[0];
  const int64_t n = x.numel();
  const double p = c.reals[0], q = c.reals[1];
  dispatch_float(x.dtype(), "unary_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *py = y.data<T>(), *pg = gy.data<T>();
    T* pgx = gx.data<T>();
#pragma omp parallel for if (n > kParallelGrain)
    for (int64_t i = 0; i < n; ++i) pgx[i] = pg[i] * F::df(px[i], py[i], p, q);
  });
}

// GELU-tanh in f32 through Eigen's vectorised tanh (a rational approximation, a few ulp from
// std::tanh): the scalar std::tanh loop took 32-40% of a demo DiT training step (perf). Elements
// go in fixed blocks of kGeluBlock, so which code path (packet or tail) computes an element
// depends only on its index, never on the thread count: results stay bit-identical across
// thread counts. f64 keeps the scalar path (reference precision).
constexpr int64_t kGeluBlock = 1024;

// GCC 12 reports a false -Wmaybe-uninitialized inside Eigen's AVX-512 tanh (see eigen_util.h).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

void gelu_tanh_f32_fwd(const float* x, float* y, int64_t n) {
  const int64_t blocks = (n + kGeluBlock - 1) / kGeluBlock;
#pragma omp parallel for if (n > kParallelGrain)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t lo = b * kGeluBlock, len = std::min(kGeluBlock, n - lo);
    Eigen::Map<const Eigen::ArrayXf> xa(x + lo, len);
    Eigen::Map<Eigen::ArrayXf> ya(y + lo, len);
    const float s = static_cast<float>(GeluTanh::kS), a = static_cast<float>(GeluTanh::kA);
    ya = (s * (xa + a * xa * xa * xa)).tanh();
    ya = 0.5f * xa * (1.0f + ya);
  }
}

void gelu_tanh_f32_bwd(const float* x, const float* gy, float* gx, int64_t n) {
  const int64_t blocks = (n + kGeluBlock - 1) / kGeluBlock;
#pragma omp parallel for if (n > kParallelGrain)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t lo = b * kGeluBlock, len = std::min(kGeluBlock, n - lo);
    Eigen::Map<const Eigen::ArrayXf> xa(x + lo, len), ga(gy + lo, len);
    Eigen::Map<Eigen::ArrayXf> out(gx + lo, len);
    const float s = static_cast<float>(GeluTanh::kS), a = static_cast<float>(GeluTanh::kA);
    out = (s * (xa + a * xa * xa * xa)).tanh();  // t
    out = ga * (0.5f * (1.0f + out) +
                0.5f * xa * (1.0f - out * out) * (s * (1.0f + 3.0f * a * xa * xa)));
  }
}

#pragma GCC diagnostic pop

void gelu_tanh_fwd_cpu(const OpCall& c) {
  if (c.in[0].dtype() != DType::F32) return unary_fwd<GeluTanh>(c);
  gelu_tanh_f32_fwd(c.in[0].data<float>(), c.out[0].data<float>(), c.in[0].numel());
}

void gelu_tanh_bwd_cpu(const OpCall& c) {
  if (c.in[0].dtype() != DType::F32) return unary_bwd<GeluTanh>(c);
  gelu_tanh_f32_bwd(c.in[0].data<float>(), c.in[2].data<float>(), c.out[0].data<float>(),
                    c.in[0].numel());
}

}  // namespace

void gelu_tanh_into(const Tensor& x, const Tensor& y) {
  OpCall c;
  c.in = {x};
  c.out = {y};
  gelu_tanh_fwd_cpu(c);
}

void gelu_tanh_grad_into(const Tensor& x, const Tensor& gy, const Tensor& gx) {
  OpCall c;
  c.in = {x, x, gy};  // (x, y, gy): the tanh form's slope needs x alone
  c.out = {gx};
  gelu_tanh_bwd_cpu(c);
}

void sum_rows_into(const Tensor& x, const Tensor& out) {
  if (out.numel() == 0) return;  // no columns: nothing to write (sum_to's tiles assume some)
  OpCall c;
  c.in = {x};
  c.out = {out};
  sum_to_cpu(c);
}

void register_elementwise(OpTable& t) {
  t[Op::add].cpu = &add_cpu;
  t[Op::sub].cpu = &sub_cpu;
  t[Op::mul].cpu = &mul_cpu;
  t[Op::div].cpu = &div_cpu;
  t[Op::where].cpu = &where_cpu;
  t[Op::add_scalar].cpu = &add_scalar_cpu;
  t[Op::mul_scalar].cpu = &mul_scalar_cpu;
  t[Op::expand].cpu = &expand_cpu;
  t[Op::sum_to].cpu = &sum_to_cpu;
  t[Op::cast].cpu = &cast_cpu;
#define PSVAE_REG_UNARY(op, F)   \
  t[Op::op].cpu = &unary_fwd<F>; \
  t[Op::op##_bwd].cpu = &unary_bwd<F>;
  PSVAE_REG_UNARY(exp, Exp)
  PSVAE_REG_UNARY(log, Log)
  PSVAE_REG_UNARY(sqrt, Sqrt)
  PSVAE_REG_UNARY(rsqrt, Rsqrt)
  PSVAE_REG_UNARY(tanh, Tanh)
  PSVAE_REG_UNARY(sigmoid, Sigmoid)
  PSVAE_REG_UNARY(relu, Relu)
  PSVAE_REG_UNARY(silu, Silu)
  PSVAE_REG_UNARY(gelu_tanh, GeluTanh)
  PSVAE_REG_UNARY(gelu_erf, GeluErf)
  t[Op::gelu_tanh].cpu = &gelu_tanh_fwd_cpu;  // vectorised f32 path, see above
  t[Op::gelu_tanh_bwd].cpu = &gelu_tanh_bwd_cpu;
  PSVAE_REG_UNARY(abs, Abs)
  PSVAE_REG_UNARY(pow_scalar, Pow)
  PSVAE_REG_UNARY(clamp, Clamp)
#undef PSVAE_REG_UNARY
}

}  // namespace psvae::kernels::cpu
