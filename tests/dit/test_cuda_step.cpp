// A whole DiT training step on CUDA (forward, MSE loss, backward, AdamW) against the same step on
// the CPU: two steps, so the second runs with the adaLN-Zero gates and the final layer no longer
// zero and every parameter's gradient is non-trivial. Skipped without a CUDA device.
#include <doctest/doctest.h>

#include "autograd/autocast.h"
#include "autograd/functions.h"
#include "common/cuda_step.h"
#include "dit/dit.h"

using namespace psvae;

namespace {
// f32 (tol 1e-4: only the summation order differs) or bf16 mixed precision (train.bf16: both sides
// round every GEMM and attention output to bf16, the CPU after f32 arithmetic; an element whose
// f32 value lands near a rounding boundary may round the other way on the GPU, 2^-8 relative,
// and the bf16 attention also rounds P). In bf16 the GPU's gradient errors against the f32 step
// may be 1.5x the CPU bf16 step's in RMS and 4x per gradient, plus tol 1e-2, the bf16
// tolerance (common/cuda_step.h).
void dit_step(DType compute, double tol) {
  PSVAE_REQUIRE_CUDA();
  dit::DiTConfig c;
  c.input_size = 8, c.patch = 2, c.in_channels = 4, c.hidden = 64, c.depth = 2, c.heads = 4;
  c.num_classes = 10, c.learn_sigma = false;
  Generator g(11);
  dit::DiT model(c, g);
  const Tensor x = nn::convert_float(test::normal(g, {3, 4, 8, 8}), DType::F32);
  const Tensor target = nn::convert_float(test::normal(g, {3, 4, 8, 8}), DType::F32);
  const Tensor t = Tensor::from_vector(std::vector<float>{3.f, 250.f, 999.f}, Shape{3});
  const Tensor y = Tensor::from_vector(std::vector<int64_t>{0, 7, 10}, Shape{3});  // 10: null
  test::check_cuda_step<dit::DiT>(
      model,
      [&](dit::DiT& m, Device d, DType dt) {
        ag::AutocastGuard autocast(dt);
        return ag::mse_loss(m.forward(ag::Var(x.to(d)), t.to(d), y.to(d)), ag::Var(target.to(d)));
      },
      compute, /*steps=*/2, tol);
}
}  // namespace

TEST_CASE("cuda training step: a small DiT matches the CPU step") { dit_step(DType::F32, 1e-4); }

TEST_CASE("cuda training step: a small DiT in bf16 mixed precision matches the CPU bf16 step") {
  dit_step(DType::BF16, 1e-2);
}
