// CUDA kernels of the unary functions y = f(x) and their backwards gx = gy * f'(x) (the
// PSVAE_UNARY_OPS family of kernels/op_list.h, plus add_scalar and mul_scalar, forward only), one
// functor per function holding f and f' side by side, as kernels/cpu/elementwise.cpp does, with the
// same formulas and edge conventions: relu and abs have slope 0 at 0, clamp passes the gradient on
// its edges (PyTorch), pow with exponent 0 has slope 0 everywhere, sigmoid only ever exponentiates
// a negative argument.
//
// Types: f32 and bf16 computed in f32, f64 in f64. CUDA's transcendental functions are within a
// few ulp of glibc's (CUDA C Programming Guide, "Mathematical Functions"), so the results match
// the CPU kernels to rounding, not bit for bit (tests/ops/test_cuda_unary.cpp checks the relative
// norm error against the f64 CPU result). Memory-bound: 8 (f32) or 16 bytes per element forward,
// 16 or 32 backward; 16-byte packs when every pointer is aligned and the size divides.
#include <cmath>
#include <string>

#include "kernels/cuda/elementwise_common.cuh"
#include "kernels/op_table.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"

namespace psvae::kernels::cuda {

namespace {

namespace rt = ::psvae::cuda;
using namespace detail;  // the shared helpers of elementwise_common.cuh

template <class A>
__device__ __forceinline__ A sigmoid_of(A x) {
  if (x >= A(0)) return A(1) / (A(1) + exp(-x));
  const A e = exp(x);
  return e / (A(1) + e);
}

struct Exp {
  template <class A>
  static __device__ A f(A x, A, A) {
    return exp(x);
  }
  template <class A>
  static __device__ A df(A, A y, A, A) {
    return y;
  }
};
struct Log {
  template <class A>
  static __device__ A f(A x, A, A) {
    return log(x);
  }
  template <class A>
  static __device__ A df(A x, A, A, A) {
    return A(1) / x;
  }
};
struct Sqrt {
  template <class A>
  static __device__ A f(A x, A, A) {
    return sqrt(x);
  }
  template <class A>
  static __device__ A df(A, A y, A, A) {
    return A(0.5) / y;
  }
};
struct Rsqrt {
  template <class A>
  static __device__ A f(A x, A, A) {
    return A(1) / sqrt(x);
  }
  template <class A>
  static __device__ A df(A x, A y, A, A) {
    return A(-0.5) * y / x;
  }
};
struct Tanh {
  template <class A>
  static __device__ A f(A x, A, A) {
    return tanh(x);
  }
  template <class A>
  static __device__ A df(A, A y, A, A) {
    return A(1) - y * y;
  }
};
struct Sigmoid {
  template <class A>
  static __device__ A f(A x, A, A) {
    return sigmoid_of(x);
  }
  template <class A>
  static __device__ A df(A, A y, A, A) {
    return y * (A(1) - y);
  }
};
struct Relu {
  template <class A>
  static __device__ A f(A x, A, A) {
    return x > A(0) ? x : A(0);
  }
  template <class A>
  static __device__ A df(A x, A, A, A) {
    return x > A(0) ? A(1) : A(0);
  }
};
struct Silu {
  template <class A>
  static __device__ A f(A x, A, A) {
    return x * sigmoid_of(x);
  }
  template <class A>
  static __device__ A df(A x, A, A, A) {
    const A s = sigmoid_of(x);
    return s * (A(1) + x * (A(1) - s));
  }
};
// PyTorch gelu(approximate='tanh'): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
struct GeluTanh {
  template <class A>
  static __device__ A f(A x, A, A) {
    const A t = tanh(A(0.79788456080286535588) * (x + A(0.044715) * x * x * x));
    return A(0.5) * x * (A(1) + t);
  }
  template <class A>
  static __device__ A df(A x, A, A, A) {
    const A k = A(0.79788456080286535588);
    const A t = tanh(k * (x + A(0.044715) * x * x * x));
    const A du = k * (A(1) + A(3 * 0.044715) * x * x);
    return A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * du;
  }
};
// Exact GELU: x Phi(x); f' = Phi(x) + x phi(x).
struct GeluErf {
  template <class A>
  static __device__ A f(A x, A, A) {
    return A(0.5) * x * (A(1) + erf(x * A(0.70710678118654752440)));
  }
  template <class A>
  static __device__ A df(A x, A, A, A) {
    return A(0.5) * (A(1) + erf(x * A(0.70710678118654752440))) +
           x * A(0.39894228040143267794) * exp(A(-0.5) * x * x);
  }
};
struct Abs {
  template <class A>
  static __device__ A f(A x, A, A) {
    return fabs(x);
  }
  template <class A>
  static __device__ A df(A x, A, A, A) {
    return x > A(0) ? A(1) : (x < A(0) ? A(-1) : A(0));
  }
};
struct Pow {
  template <class A>
  static __device__ A f(A x, A p, A) {
    return pow(x, p);
  }
  template <class A>
  static __device__ A df(A x, A, A p, A) {
    if (p == A(0)) return A(0);
    return p * pow(x, p - A(1));
  }
};
struct Clamp {
  template <class A>
  static __device__ A f(A x, A lo, A hi) {
    return fmin(fmax(x, lo), hi);
  }
  template <class A>
  static __device__ A df(A x, A, A lo, A hi) {
    return (x >= lo && x <= hi) ? A(1) : A(0);
  }
};

// y = x + s and y = x * s with s = reals[0], rounded to f32 for f32/bf16 tensors (the tensor's
// precision, as the CPU kernels do for f32), kept in f64 for f64 ones. One IEEE operation per
// element: f32 results equal the CPU's bit for bit (tests/ops/test_cuda_elementwise.cpp).
struct AddScalar {
  template <class A>
  static __device__ A f(A x, A s, A) {
    return x + s;
  }
};
struct MulScalar {
  template <class A>
  static __device__ A f(A x, A s, A) {
    return x * s;
  }
};

template <class T, int V, class F>
__global__ void fwd_kernel(const T* x, T* y, int64_t n_packs, typename Math<T>::Acc p,
                           typename Math<T>::Acc q) {
  using M = Math<T>;
  using P = Pack<T, V>;
  for (int64_t i = rt::grid_index(); i < n_packs; i += rt::grid_stride()) {
    const P px = reinterpret_cast<const P*>(x)[i];
    P py;
#pragma unroll
    for (int k = 0; k < V; ++k) py.v[k] = M::store(F::f(M::load(px.v[k]), p, q));
    reinterpret_cast<P*>(y)[i] = py;
  }
}

template <class T, int V, class F>
__global__ void bwd_kernel(const T* x, const T* y, const T* gy, T* gx, int64_t n_packs,
                           typename Math<T>::Acc p, typename Math<T>::Acc q) {
  using M = Math<T>;
  using P = Pack<T, V>;
  for (int64_t i = rt::grid_index(); i < n_packs; i += rt::grid_stride()) {
    const P px = reinterpret_cast<const P*>(x)[i], py = reinterpret_cast<const P*>(y)[i],
            pg = reinterpret_cast<const P*>(gy)[i];
    P pgx;
#pragma unroll
    for (int k = 0; k < V; ++k)
      pgx.v[k] = M::store(M::load(pg.v[k]) * F::df(M::load(px.v[k]), M::load(py.v[k]), p, q));
    reinterpret_cast<P*>(gx)[i] = pgx;
  }
}

// in: x -> out: y
template <class F>
void unary_fwd(const OpCall& c, const char* op) {
  const Tensor &x = c.in.at(0), &y = c.out.at(0);
  check_same(op, x, y);
  const int64_t n = y.numel();
  if (n == 0) return;
  launch_on(y.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(y.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      using A = typename Math<T>::Acc;
      constexpr int V = kVec<T>;
      const A p = static_cast<A>(c.reals[0]), q = static_cast<A>(c.reals[1]);
      const T* px = static_cast<const T*>(x.raw_data());
      T* py = static_cast<T*>(y.raw_data());
      if (n % V == 0 && aligned16(px) && aligned16(py)) {
        PSVAE_LAUNCH(rt::grid_for(n / V, dev), rt::kBlockThreads, 0, s, fwd_kernel<T, V, F>)
        (px, py, n / V, p, q);
      } else {
        PSVAE_LAUNCH(rt::grid_for(n, dev), rt::kBlockThreads, 0, s, fwd_kernel<T, 1, F>)
        (px, py, n, p, q);
      }
    });
  });
}

// in: x, y, gy -> out: gx
template <class F>
void unary_bwd(const OpCall& c, const char* op) {
  const Tensor &x = c.in.at(0), &y = c.in.at(1), &gy = c.in.at(2), &gx = c.out.at(0);
  check_same(op, x, y);
  check_same(op, x, gy);
  check_same(op, x, gx);
  const int64_t n = gx.numel();
  if (n == 0) return;
  launch_on(gx.device(), [&](cudaStream_t s, int dev) {
    dispatch_float(gx.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      using A = typename Math<T>::Acc;
      constexpr int V = kVec<T>;
      const A p = static_cast<A>(c.reals[0]), q = static_cast<A>(c.reals[1]);
      const T* px = static_cast<const T*>(x.raw_data());
      const T* py = static_cast<const T*>(y.raw_data());
      const T* pg = static_cast<const T*>(gy.raw_data());
      T* pgx = static_cast<T*>(gx.raw_data());
      if (n % V == 0 && aligned16(px) && aligned16(py) && aligned16(pg) && aligned16(pgx)) {
        PSVAE_LAUNCH(rt::grid_for(n / V, dev), rt::kBlockThreads, 0, s, bwd_kernel<T, V, F>)
        (px, py, pg, pgx, n / V, p, q);
      } else {
        PSVAE_LAUNCH(rt::grid_for(n, dev), rt::kBlockThreads, 0, s, bwd_kernel<T, 1, F>)
        (px, py, pg, pgx, n, p, q);
      }
    });
  });
}

}  // namespace

void register_unary(OpTable& t) {
#define PSVAE_CUDA_UNARY(name, F)                                     \
  t[Op::name].cuda = [](const OpCall& c) { unary_fwd<F>(c, #name); }; \
  t[Op::name##_bwd].cuda = [](const OpCall& c) { unary_bwd<F>(c, #name "_bwd"); };
  PSVAE_CUDA_UNARY(exp, Exp)
  PSVAE_CUDA_UNARY(log, Log)
  PSVAE_CUDA_UNARY(sqrt, Sqrt)
  PSVAE_CUDA_UNARY(rsqrt, Rsqrt)
  PSVAE_CUDA_UNARY(tanh, Tanh)
  PSVAE_CUDA_UNARY(sigmoid, Sigmoid)
  PSVAE_CUDA_UNARY(relu, Relu)
  PSVAE_CUDA_UNARY(silu, Silu)
  PSVAE_CUDA_UNARY(gelu_tanh, GeluTanh)
  PSVAE_CUDA_UNARY(gelu_erf, GeluErf)
  PSVAE_CUDA_UNARY(abs, Abs)
  PSVAE_CUDA_UNARY(pow_scalar, Pow)
  PSVAE_CUDA_UNARY(clamp, Clamp)
#undef PSVAE_CUDA_UNARY
  t[Op::add_scalar].cuda = [](const OpCall& c) { unary_fwd<AddScalar>(c, "add_scalar"); };
  t[Op::mul_scalar].cuda = [](const OpCall& c) { unary_fwd<MulScalar>(c, "mul_scalar"); };
}

}  // namespace psvae::kernels::cuda
