// Norm-family kernels against the copy ceiling on DiT shapes: layernorm forward and backward
// (without affine weights, as the DiT's adaLN-Zero blocks, and with them), modulate forward and
// backward, the fused layernorm + modulate of kernels/cuda/norm_fused.h (and, for comparison, the
// two ops run one after the other), the gated residual add, and groupnorm on a VAE-sized
// activation. f32 and bf16, and the fused pair's bf16-autocast form (f32+bf16: the GEMM side,
// y / gy / h / gh, in bf16 beside the f32 stream).
//
// GB/s counts the bytes each call must move at least: every input read once and every output
// written once, statistics (mean, rstd) and per-sample operands (shift, scale, gate) included.
// The unfused layernorm-then-modulate row is charged the fused op's bytes, so its percentage shows
// what fusion saves. Shapes: DiT-B and DiT-XL at batch 256 x 256 tokens (D = 768, 1152) and
// batch 32 x 1024 tokens (D = 1152); groupnorm (16, 128, 64, 64) in 32 groups.
#include <cuda_runtime.h>

#include <functional>
#include <string>
#include <vector>

#include "bench/bench_common.cuh"
#include "kernels/cuda/norm_fused.h"
#include "kernels/op_table.h"
#include "tensor/cuda/launch.cuh"
#include "tensor/random.h"

using namespace psvae;
using kernels::Op;

namespace {

struct Bench {
  bench::Timer& timer;
  bench::Table& table;
  double copy_gbs;

  // Times fn and prints a row; bytes is the least the call must move.
  void row(const std::string& what, const std::string& shape, DType dt, double bytes,
           const std::function<void()>& fn) {
    row(what, shape, dtype_name(dt), bytes, fn);
  }
  void row(const std::string& what, const std::string& shape, const std::string& dt, double bytes,
           const std::function<void()>& fn) {
    table.row({what, shape, dt}, bench::bandwidth_cells(bytes, timer.median_ms(fn), copy_gbs));
  }
};

kernels::OpCall call(std::vector<Tensor> in, std::vector<Tensor> out, int64_t groups = 0) {
  kernels::OpCall c;
  c.in = std::move(in);
  c.out = std::move(out);
  c.ints[0] = groups;
  c.reals[0] = 1e-6;
  return c;
}

// The DiT block's norm path at x (N, T, D).
void dit_rows(Bench& b, Generator& g, int64_t N, int64_t T, int64_t D, DType dt) {
  const Device gpu = Device::cuda(0);
  const Shape xs{N, T, D}, nd{N, D}, nt{N, T}, d1{D};
  const std::string shape = xs.str();
  const double es = static_cast<double>(dtype_size(dt));
  const double big = static_cast<double>(N * T * D) * es;  // one (N, T, D) tensor
  const double rows = static_cast<double>(N * T) * es;     // one statistic per row
  const double per_n = static_cast<double>(N * D) * es;    // one (N, D) operand
  const double vec = static_cast<double>(D) * es;          // one (D) parameter

  Tensor x = bench::uniform_gpu(g, xs, dt, 2.0, 4.0), gy = bench::uniform_gpu(g, xs, dt);
  Tensor h = bench::uniform_gpu(g, xs, dt), y = Tensor::empty(xs, dt, gpu),
         gx = Tensor::empty(xs, dt, gpu);
  Tensor shift = bench::uniform_gpu(g, nd, dt), scale = bench::uniform_gpu(g, nd, dt);
  Tensor gshift = Tensor::empty(nd, dt, gpu), gscale = Tensor::empty(nd, dt, gpu);
  Tensor w = bench::uniform_gpu(g, d1, dt, 0.5, 1.5), bias = bench::uniform_gpu(g, d1, dt);
  Tensor gw = Tensor::empty(d1, dt, gpu), gb = Tensor::empty(d1, dt, gpu);
  Tensor mean = Tensor::empty(nt, dt, gpu), rstd = Tensor::empty(nt, dt, gpu);
  Tensor xhat = Tensor::empty(xs, dt, gpu);

  const kernels::OpCall ln = call({x}, {y, mean, rstd});
  b.row("layernorm", shape, dt, 2 * big + 2 * rows, [&] { kernels::run(Op::layernorm, ln); });
  const kernels::OpCall lna = call({x, w, bias}, {y, mean, rstd});
  b.row("layernorm (affine)", shape, dt, 2 * big + 2 * rows + 2 * vec,
        [&] { kernels::run(Op::layernorm, lna); });
  const kernels::OpCall lnb = call({gy, x, mean, rstd}, {gx});
  b.row("layernorm_bwd", shape, dt, 3 * big + 2 * rows,
        [&] { kernels::run(Op::layernorm_bwd, lnb); });
  const kernels::OpCall lnba = call({gy, x, mean, rstd, w}, {gx, gw, gb});
  b.row("layernorm_bwd (affine)", shape, dt, 3 * big + 2 * rows + 3 * vec,
        [&] { kernels::run(Op::layernorm_bwd, lnba); });

  const kernels::OpCall mod = call({x, shift, scale}, {y});
  b.row("modulate", shape, dt, 2 * big + 2 * per_n, [&] { kernels::run(Op::modulate, mod); });
  const kernels::OpCall modb = call({gy, x, scale}, {gx, gshift, gscale});
  b.row("modulate_bwd", shape, dt, 3 * big + 3 * per_n,
        [&] { kernels::run(Op::modulate_bwd, modb); });

  const double fused_fwd = 2 * big + 2 * per_n + 2 * rows;
  b.row("layernorm_modulate_fwd (fused)", shape, dt, fused_fwd,
        [&] { kernels::cuda::layernorm_modulate_fwd(x, shift, scale, 1e-6, y, mean, rstd); });
  const kernels::OpCall ln_plain = call({x}, {xhat, mean, rstd});
  const kernels::OpCall mod_xhat = call({xhat, shift, scale}, {y});
  b.row("layernorm then modulate (unfused)", shape, dt, fused_fwd, [&] {
    kernels::run(Op::layernorm, ln_plain);
    kernels::run(Op::modulate, mod_xhat);
  });
  b.row("layernorm_modulate_bwd (fused)", shape, dt, 3 * big + 2 * rows + 3 * per_n, [&] {
    kernels::cuda::layernorm_modulate_bwd(gy, x, mean, rstd, scale, gx, gshift, gscale);
  });

  b.row("gated_residual_fwd", shape, dt, 3 * big + per_n,
        [&] { kernels::cuda::gated_residual_fwd(x, scale, h, y); });
  b.row("gated_residual_bwd", shape, dt, 3 * big + 2 * per_n,
        [&] { kernels::cuda::gated_residual_bwd(gy, scale, h, gx, gscale); });
  if (dt != DType::F32) return;

  // bf16 autocast's form: the GEMM side (y, gy; h, gh) in bf16 beside the f32 stream. Against
  // the f32 rows above these save the cast passes they replace (docs/kernels.md, "DiT block
  // memory traffic"); the bytes are this form's own.
  const std::string mixed = "f32+bf16";
  const double half = big / 2;  // one (N, T, D) bf16 tensor
  Tensor y16 = Tensor::empty(xs, DType::BF16, gpu), gy16 = bench::uniform_gpu(g, xs, DType::BF16);
  Tensor h16 = bench::uniform_gpu(g, xs, DType::BF16), gh16 = Tensor::empty(xs, DType::BF16, gpu);
  b.row("layernorm_modulate_fwd (fused, bf16 y)", shape, mixed, big + half + 2 * per_n + 2 * rows,
        [&] { kernels::cuda::layernorm_modulate_fwd(x, shift, scale, 1e-6, y16, mean, rstd); });
  b.row("layernorm_modulate_bwd (fused, bf16 gy)", shape, mixed,
        2 * big + half + 2 * rows + 3 * per_n, [&] {
          kernels::cuda::layernorm_modulate_bwd(gy16, x, mean, rstd, scale, gx, gshift, gscale);
        });
  b.row("gated_residual_fwd (bf16 h)", shape, mixed, 2 * big + half + per_n,
        [&] { kernels::cuda::gated_residual_fwd(x, scale, h16, y); });
  b.row("gated_residual_bwd (bf16 h, gh)", shape, mixed, big + 2 * half + 2 * per_n,
        [&] { kernels::cuda::gated_residual_bwd(gy, scale, h16, gh16, gscale); });
}

void groupnorm_rows(Bench& b, Generator& g, const Shape& xs, int64_t groups, DType dt) {
  const Device gpu = Device::cuda(0);
  const Shape c1{xs[1]}, ng{xs[0], groups};
  const double es = static_cast<double>(dtype_size(dt));
  const double big = static_cast<double>(xs.numel()) * es;
  const double stats = static_cast<double>(ng.numel()) * es;
  const double ch = static_cast<double>(xs[1]) * es;
  Tensor x = bench::uniform_gpu(g, xs, dt, 2.0, 4.0), gy = bench::uniform_gpu(g, xs, dt);
  Tensor y = Tensor::empty(xs, dt, gpu), gx = Tensor::empty(xs, dt, gpu);
  Tensor w = bench::uniform_gpu(g, c1, dt, 0.5, 1.5), bias = bench::uniform_gpu(g, c1, dt);
  Tensor gw = Tensor::empty(c1, dt, gpu), gb = Tensor::empty(c1, dt, gpu);
  Tensor mean = Tensor::empty(ng, dt, gpu), rstd = Tensor::empty(ng, dt, gpu);
  const std::string shape = xs.str() + " G=" + std::to_string(groups);
  const kernels::OpCall f = call({x, w, bias}, {y, mean, rstd}, groups);
  b.row("groupnorm (affine)", shape, dt, 2 * big + 2 * ch + 2 * stats,
        [&] { kernels::run(Op::groupnorm, f); });
  const kernels::OpCall bw = call({gy, x, mean, rstd, w}, {gx, gw, gb}, groups);
  b.row("groupnorm_bwd (affine)", shape, dt, 3 * big + 2 * stats + 3 * ch,
        [&] { kernels::run(Op::groupnorm_bwd, bw); });
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options opt = bench::Options::parse(argc, argv);
  cudaStream_t s = ::psvae::cuda::stream(0);
  bench::Timer timer(s, opt);
  const bench::Ceilings ceil = bench::print_header("bench_norm", timer, s, false);
  bench::Table table({"op", "shape", "dtype", "time (us)", "GB/s", "% of copy"});
  Bench b{timer, table, ceil.copy_gbs};
  Generator g(1);
  struct Dit {
    int64_t N, T, D;
  };
  const std::vector<Dit> dits =
      opt.quick ? std::vector<Dit>{{256, 256, 1152}}
                : std::vector<Dit>{{256, 256, 768}, {256, 256, 1152}, {32, 1024, 1152}};
  for (const Dit& d : dits)
    for (DType dt : {DType::F32, DType::BF16}) dit_rows(b, g, d.N, d.T, d.D, dt);
  for (DType dt : {DType::F32, DType::BF16}) groupnorm_rows(b, g, Shape{16, 128, 64, 64}, 32, dt);
  return 0;
}
