// Loss and optimiser kernels against the copy ceiling (all memory-bound):
//   mse / l1 / KL forward (2 tensors read) and backward (2 read + 1 or 2 written), the fused KL
//   (2 read + 2 written, against the kl_gauss + kl_gauss_bwd pair it replaces) on VAE latents of
//   256x96x16x16 and 256x96x32x32; cross-entropy (4096, 32000) forward (1 read; its time includes
//   the target check's device-to-host readback) and backward (1 read + 1 written);
//   AdamW on a DiT-XL's parameter list (28 blocks x qkv, proj, fc1, fc2, adaLN weights and biases,
//   ~670M parameters, 280 tensors): the per-tensor op in a loop against the one-launch multi-tensor
//   kernel (f32 grads; bf16 grads with the bf16 model copy and a device-side clip factor), 28 bytes
//   per parameter either way; the EMA (12 bytes) per tensor and multi-tensor; the global grad norm
//   (4 or 2 bytes) with its host readback and in its device form.
// --quick: the smaller latent only and 4 DiT blocks instead of 28.
#include <cuda_runtime.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_common.cuh"
#include "kernels/cuda/loss_fused.h"
#include "kernels/cuda/optim_fused.h"
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
  // Times fn and prints a row; bytes: what the op must move at least.
  void row(const std::string& op, const std::string& shape, const std::string& dtype,
           const std::string& variant, double bytes, const std::function<void()>& fn) {
    table.row({op, shape, dtype, variant},
              bench::bandwidth_cells(bytes, timer.median_ms(fn), copy_gbs));
  }
};

kernels::OpCall call_of(std::vector<Tensor> in, std::vector<Tensor> out, double r0 = 0) {
  kernels::OpCall c;
  c.in = std::move(in);
  c.out = std::move(out);
  c.reals[0] = r0;
  return c;
}

void bench_losses(Bench& b, Generator& g, bool quick) {
  const Device gpu = Device::cuda(0);
  std::vector<Shape> shapes = {{256, 96, 16, 16}};
  if (!quick) shapes.push_back({256, 96, 32, 32});
  for (const Shape& s : shapes) {
    for (DType dt : {DType::F32, DType::BF16}) {
      const double n = static_cast<double>(s.numel()), es = static_cast<double>(dtype_size(dt));
      const Tensor a = bench::uniform_gpu(g, s, dt, -2, 2), c = bench::uniform_gpu(g, s, dt, -2, 2);
      const Tensor y = Tensor::empty(Shape{}, dt, gpu), gy = Tensor::full(Shape{}, 1.0, dt, gpu);
      const Tensor ga = Tensor::empty(s, dt, gpu), gb = Tensor::empty(s, dt, gpu);
      const std::string sh = s.str(), dn = dtype_name(dt);
      for (Op op : {Op::mse_loss, Op::l1_loss, Op::kl_gauss}) {
        const double r = op == Op::kl_gauss ? 256.0 : 0.0;
        const kernels::OpCall fwd = call_of({a, c}, {y}, r);
        b.row(kernels::op_name(op), sh, dn, "two-pass reduction", 2 * n * es,
              [&] { kernels::run(op, fwd); });
      }
      const kernels::OpCall mse_b = call_of({gy, a, c}, {ga});
      b.row("mse_loss_bwd", sh, dn, "", 3 * n * es, [&] { kernels::run(Op::mse_loss_bwd, mse_b); });
      const kernels::OpCall l1_b = call_of({gy, a, c}, {ga});
      b.row("l1_loss_bwd", sh, dn, "", 3 * n * es, [&] { kernels::run(Op::l1_loss_bwd, l1_b); });
      const kernels::OpCall kl_f = call_of({a, c}, {y}, 256.0);
      const kernels::OpCall kl_b = call_of({gy, a, c}, {ga, gb}, 256.0);
      b.row("kl_gauss_bwd", sh, dn, "gmu and glogvar in one pass", 4 * n * es,
            [&] { kernels::run(Op::kl_gauss_bwd, kl_b); });
      // The fused KL moves 4 tensors; the op pair 6 (mu and logvar read twice). GB/s counts the
      // fused kernel's 4 for both rows, so the pair's row shows what fusing gains.
      b.row("kl_gauss_fused", sh, dn, "loss + both gradients, one pass", 4 * n * es,
            [&] { kernels::cuda::kl_gauss_fused(a, c, 256.0, 1.0, y, ga, gb); });
      b.row("kl_gauss_fused", sh, dn, "baseline: kl_gauss + kl_gauss_bwd", 4 * n * es, [&] {
        kernels::run(Op::kl_gauss, kl_f);
        kernels::run(Op::kl_gauss_bwd, kl_b);
      });
    }
  }
  // Cross-entropy over a 32000-word vocabulary.
  const Shape xs{4096, 32000};
  for (DType dt : {DType::F32, DType::BF16}) {
    const double n = static_cast<double>(xs.numel()), es = static_cast<double>(dtype_size(dt));
    const Tensor x = bench::uniform_gpu(g, xs, dt, -10, 10);
    std::vector<int64_t> ids(4096);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>((i * 7919) % 32000);
    const Tensor t = Tensor::from_vector(ids, Shape{4096}, gpu);
    const Tensor y = Tensor::empty(Shape{}, dt, gpu), gy = Tensor::full(Shape{}, 1.0, dt, gpu);
    const Tensor lse = Tensor::empty(Shape{4096}, dt, gpu), gx = Tensor::empty(xs, dt, gpu);
    const kernels::OpCall f = call_of({x, t}, {y, lse});
    b.row("cross_entropy", xs.str(), dtype_name(dt), "block per row, online lse; incl. sync",
          n * es, [&] { kernels::run(Op::cross_entropy, f); });
    const kernels::OpCall bw = call_of({gy, x, t, lse}, {gx});
    b.row("cross_entropy_bwd", xs.str(), dtype_name(dt), "block per row; incl. sync", 2 * n * es,
          [&] { kernels::run(Op::cross_entropy_bwd, bw); });
  }
}

// A DiT-XL's trainable tensors (hidden 1152, MLP 4608, adaLN 6 x 1152), weights and biases.
std::vector<Shape> dit_xl_shapes(int blocks) {
  const int64_t h = 1152;
  std::vector<Shape> out;
  for (int i = 0; i < blocks; ++i) {
    for (const Shape& w :
         {Shape{h, 3 * h}, Shape{h, h}, Shape{h, 4 * h}, Shape{4 * h, h}, Shape{h, 6 * h}}) {
      out.push_back(w);
      out.push_back(Shape{w[1]});
    }
  }
  return out;
}

void bench_optim(Bench& b, Generator& g, bool quick) {
  const Device gpu = Device::cuda(0);
  const int blocks = quick ? 4 : 28;
  const std::vector<Shape> shapes = dit_xl_shapes(blocks);
  std::vector<Tensor> p, gf, gh, m, v, copy, ema;
  double numel = 0;
  for (const Shape& s : shapes) {
    p.push_back(bench::uniform_gpu(g, s, DType::F32, -0.05, 0.05));
    gf.push_back(bench::uniform_gpu(g, s, DType::F32, -0.01, 0.01));
    gh.push_back(bench::uniform_gpu(g, s, DType::BF16, -0.01, 0.01));
    m.push_back(Tensor::zeros(s, DType::F32, gpu));
    v.push_back(Tensor::zeros(s, DType::F32, gpu));
    copy.push_back(Tensor::empty(s, DType::BF16, gpu));
    ema.push_back(p.back().clone());
    numel += static_cast<double>(s.numel());
  }
  const std::string what = "DiT-XL x" + std::to_string(blocks) +
                           " blocks: " + std::to_string(shapes.size()) + " tensors, " +
                           bench::fmt(numel / 1e6, 1) + "M";
  // AdamW: p, m, v read and written, g read: 28 bytes per parameter with f32 grads; with bf16
  // grads 26 + 2 for the bf16 copy.
  std::vector<kernels::OpCall> per;
  for (size_t i = 0; i < p.size(); ++i) {
    kernels::OpCall c = call_of({gf[i]}, {p[i], m[i], v[i]}, 1e-4);
    c.reals[1] = 0.9;
    c.reals[2] = 0.999;
    c.reals[3] = 1e-8;
    c.reals[4] = 0.0;
    c.ints[0] = 10;
    per.push_back(c);
  }
  b.row("adamw_step", what, "f32", "per-tensor op, one launch per tensor", 28 * numel, [&] {
    for (const kernels::OpCall& c : per) kernels::run(Op::adamw_step, c);
  });
  kernels::cuda::AdamWHyper hp;
  b.row("adamw_multi_tensor", what, "f32", "one launch, f32 grads", 28 * numel,
        [&] { kernels::cuda::adamw_multi_tensor(p, gf, m, v, {}, hp, 10); });
  const Tensor clip = Tensor::full(Shape{}, 0.5, DType::F32, gpu);
  b.row("adamw_multi_tensor", what, "f32 + bf16", "bf16 grads, bf16 copy, device clip scale",
        28 * numel,
        [&] { kernels::cuda::adamw_multi_tensor(p, gh, m, v, copy, hp, 10, 1.0, clip); });
  // EMA: ema read and written, param read.
  std::vector<kernels::OpCall> per_ema;
  for (size_t i = 0; i < p.size(); ++i) per_ema.push_back(call_of({p[i]}, {ema[i]}, 0.9999));
  b.row("ema_update", what, "f32", "per-tensor op", 12 * numel, [&] {
    for (const kernels::OpCall& c : per_ema) kernels::run(Op::ema_update, c);
  });
  b.row("ema_multi_tensor", what, "f32", "one launch", 12 * numel,
        [&] { kernels::cuda::ema_multi_tensor(ema, p, 0.9999); });
  // Global grad norm: every gradient read once.
  b.row("global_grad_norm", what, "f32", "returns to host (sync)", 4 * numel,
        [&] { (void)kernels::cuda::global_grad_norm(gf); });
  const Tensor norm = Tensor::empty(Shape{}, DType::F32, gpu);
  const Tensor scale = Tensor::empty(Shape{}, DType::F32, gpu);
  b.row("global_grad_norm", what, "f32", "device norm + clip factor, no sync", 4 * numel,
        [&] { kernels::cuda::global_grad_norm(gf, norm, 1.0, scale); });
  b.row("global_grad_norm", what, "bf16", "device norm + clip factor, no sync", 2 * numel,
        [&] { kernels::cuda::global_grad_norm(gh, norm, 1.0, scale); });
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options opt = bench::Options::parse(argc, argv);
  cudaStream_t s = ::psvae::cuda::stream(0);
  bench::Timer timer(s, opt);
  const bench::Ceilings ceil = bench::print_header("bench_loss_optim", timer, s, false);
  bench::Table table({"op", "shape", "dtype", "variant", "time (us)", "GB/s", "% of copy"});
  Bench b{timer, table, ceil.copy_gbs};
  Generator g(1);
  bench_losses(b, g, opt.quick);
  bench_optim(b, g, opt.quick);
  return 0;
}
