// A whole PS-VAE stage-2 training step on CUDA (encoder, S-VAE with a fixed eps, pixel decoder,
// the loss with semantic MSE, L1 + MSE, LPIPS on a narrow seeded VGG, and KL; backward; AdamW)
// against the same step on the CPU, for two steps. Skipped without a CUDA device.
#include <doctest/doctest.h>

#include "autograd/autocast.h"
#include "common/cuda_step.h"
#include "psvae/losses.h"
#include "psvae/lpips.h"
#include "psvae/psvae.h"

using namespace psvae;

namespace {
// f32 (tol 1e-4) or bf16 mixed precision (tol 1e-2; see tests/dit/test_cuda_step.cpp).
void psvae_step(DType compute, double tol) {
  PSVAE_REQUIRE_CUDA();
  // 16x16 images -> 4x4 tokens of width 16 -> latent 4 -> two upsamples -> 16x16 pixels.
  PSVAEConfig c;
  c.encoder.dim = 16, c.encoder.depth = 1, c.encoder.heads = 2, c.encoder.patch = 4;
  c.encoder.grid = 4;
  c.svae.enc_dim = 16, c.svae.latent_dim = 4, c.svae.width = 16, c.svae.depth = 2;
  c.svae.heads = 2;
  c.pix.latent_dim = 4, c.pix.channels = {16, 8, 8}, c.pix.res_blocks = 2;
  c.pix.out_h = c.pix.out_w = 16;
  Generator g(5);
  PSVAE model(c, g);
  LPIPS::Config lc;
  lc.width_div = 8;
  LPIPS lpips_cpu(lc, g);
  auto lpips_gpu = std::static_pointer_cast<LPIPS>(lpips_cpu.clone());
  lpips_gpu->to(Device::cuda(0));
  const Tensor image = nn::convert_float(test::uniform(g, {2, 3, 16, 16}), DType::F32);
  const Tensor eps = nn::convert_float(test::normal(g, {2, 4, 4, 4}), DType::F32);
  test::check_cuda_step<PSVAE>(
      model,
      [&](PSVAE& m, Device d, DType dt) {
        ag::AutocastGuard autocast(dt);
        ag::Var img(image.to(d));
        PSVAEOutput o = m.forward_eps(img, eps.to(d));
        const LPIPS* lp = d.is_cpu() ? &lpips_cpu : lpips_gpu.get();
        return psvae_loss(o, img, PsvaeLossWeights{}, lp).total;
      },
      compute, /*steps=*/2, tol);
}
}  // namespace

TEST_CASE("cuda training step: a small PS-VAE (stage 2, with LPIPS) matches the CPU step") {
  psvae_step(DType::F32, 1e-4);
}

TEST_CASE("cuda training step: a small PS-VAE in bf16 mixed precision matches the CPU bf16 step") {
  psvae_step(DType::BF16, 1e-2);
}
