// CPU kernels: linalg family (matmul, linear). The GEMMs are Eigen's; the threading is ours.
//
// Determinism: Eigen is built single-threaded (kernels/cpu/eigen_util.h says why) and we split
// the output ourselves into fixed blocks of kRowBlock rows per batch entry. Each block is one
// serial Eigen GEMM whose blocking depends only on the block's shape, so the bits are the same for
// any thread count (tested in spec_linalg.cpp).
//
// f32 GEMMs accumulate in f32 (Eigen's packed kernels): with K = 4608 (the DiT MLP) the relative
// error stays near sqrt(K) * 6e-8 ~ 4e-6, well inside what the GPU kernels are compared with.
#include <algorithm>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/eigen_util.h"

namespace psvae::kernels::cpu {

namespace {

// 64 rows x N columns per task: with N = 1152 a block of C is 295 KB in f32, and the B panel is
// packed once per block (K*N copies against 64*K*N multiply-adds, under 2% overhead).
constexpr int64_t kRowBlock = 64;

// C[m0:m0+mb, :] = op(A)[m0:m0+mb, :] op(B) for one batch entry.
template <class T>
void gemm_block(const T* a, const T* b, T* c, int64_t M, int64_t N, int64_t K, bool ta, bool tb,
                int64_t m0, int64_t mb) {
  MutMap<T> C(c, M, N);
  auto out = C.middleRows(m0, mb);
  if (K == 0) {  // an empty sum; Eigen's product would leave nothing to read
    out.setZero();
    return;
  }
  auto with_b = [&](const auto& opa) {
    if (tb)
      out.noalias() = opa * ConstMap<T>(b, N, K).transpose();
    else
      out.noalias() = opa * ConstMap<T>(b, K, N);
  };
  if (ta)
    with_b(ConstMap<T>(a, K, M).middleCols(m0, mb).transpose());
  else
    with_b(ConstMap<T>(a, M, K).middleRows(m0, mb));
}

// Runs fn(batch, m0, mb) over every (batch entry, row block) pair, in parallel once the product
// has 2^17 multiply-adds (~30 us on one core), enough to pay for the fork and join.
template <class Fn>
void for_row_blocks(int64_t batch, int64_t M, int64_t flops, Fn&& fn) {
  int64_t nblk = (M + kRowBlock - 1) / kRowBlock;
  int64_t tasks = batch * nblk;
#pragma omp parallel for schedule(static) if (flops > kParallelGrain * 8 && tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    int64_t bi = t / nblk, m0 = (t % nblk) * kRowBlock;
    fn(bi, m0, std::min(kRowBlock, M - m0));
  }
}

// in: A (..., M, K) or (..., K, M) with trans_a; B (..., K, N) or (..., N, K) with trans_b, or B
// of rank 2 shared by every batch entry. out: C (..., M, N). ints: trans_a, trans_b.
void matmul_cpu(const OpCall& c) {
  const Tensor &A = c.in[0], &B = c.in[1], &C = c.out[0];
  bool ta = c.ints[0] != 0, tb = c.ints[1] != 0;
  int64_t M = C.size(-2), N = C.size(-1);
  int64_t K = ta ? A.size(-2) : A.size(-1);
  int64_t batch = C.shape().prod(0, C.rank() - 2);
  int64_t b_stride = B.rank() == 2 ? 0 : K * N;
  dispatch_float(C.dtype(), "matmul", [&](auto tag) {
    using T = decltype(tag);
    const T* pa = A.data<T>();
    const T* pb = B.data<T>();
    T* pc = C.data<T>();
    for_row_blocks(batch, M, batch * M * N * K, [&](int64_t bi, int64_t m0, int64_t mb) {
      gemm_block<T>(pa + bi * M * K, pb + bi * b_stride, pc + bi * M * N, M, N, K, ta, tb, m0, mb);
    });
  });
}

// in: x (R, K) (any leading dims, flattened to rows), W (N, K), optional b (N). out: y (R, N).
void linear_cpu(const OpCall& c) {
  const Tensor &X = c.in[0], &W = c.in[1], &Y = c.out[0];
  bool has_bias = c.in.size() > 2;
  int64_t N = W.size(0), K = W.size(1);
  int64_t R = Y.numel() / (N > 0 ? N : 1);
  if (N == 0) return;
  dispatch_float(Y.dtype(), "linear", [&](auto tag) {
    using T = decltype(tag);
    const T* px = X.data<T>();
    const T* pw = W.data<T>();
    const T* pb = has_bias ? c.in[2].data<T>() : nullptr;
    T* py = Y.data<T>();
    for_row_blocks(1, R, R * N * K, [&](int64_t, int64_t m0, int64_t mb) {
      // y = x W^T: W (N,K) row-major is the (K,N) operand transposed.
      gemm_block<T>(px, pw, py, R, N, K, false, true, m0, mb);
      if (pb)
        for (int64_t r = m0; r < m0 + mb; ++r)
          for (int64_t n = 0; n < N; ++n) py[r * N + n] += pb[n];
    });
  });
}

// in: x (R, K), W (N, K), b (N). out: y = gelu_tanh(p), p = x W^T + b (R, N). Composed here (the
// GEMM, then the activation over p); on CUDA it is one GEMM with the bias+GELU epilogue.
void linear_gelu_cpu(const OpCall& c) {
  OpCall lin;
  lin.in = c.in;
  lin.out = {c.out[1]};
  linear_cpu(lin);
  gelu_tanh_into(c.out[1], c.out[0]);
}

// in: g (R, N), W (N, H), p (R, H). out: gp = (g W) * gelu_tanh'(p) (R, H), gb (H) = the column
// sums of gp, each column added in row order in double (the bits do not depend on the threads).
void linear_gelu_bwd_cpu(const OpCall& c) {
  const Tensor &G = c.in[0], &W = c.in[1], &P = c.in[2], &GP = c.out[0], &GB = c.out[1];
  const int64_t N = W.size(0), H = W.size(1), R = P.shape().prod(0, P.rank() - 1);
  OpCall mm;  // g W, before the slope: rows of g times the shared W
  mm.in = {G.reshape(Shape{R, N}), W};
  mm.out = {Tensor::empty(Shape{R, H}, P.dtype(), P.device())};
  matmul_cpu(mm);
  gelu_tanh_grad_into(P, mm.out[0].reshape(P.shape()), GP);
  sum_rows_into(GP.reshape(Shape{R, H}), GB);
}

}  // namespace

void register_linalg(OpTable& t) {
  t[Op::matmul].cpu = &matmul_cpu;
  t[Op::linear].cpu = &linear_cpu;
  t[Op::linear_gelu].cpu = &linear_gelu_cpu;
  t[Op::linear_gelu_bwd].cpu = &linear_gelu_bwd_cpu;
}

}  // namespace psvae::kernels::cpu
