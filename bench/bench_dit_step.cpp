// A whole DiT training step on the GPU through the engine (forward, MSE loss, backward, AdamW),
// the row that bench/torch_baselines.py's "DiT training step" sets beside PyTorch. DiT-S/B/L/XL in
// the 16x16x96 latent with patch 1 (256 tokens), in f32 and in bf16 mixed precision
// (ag::AutocastGuard, what train.bf16 runs: GEMMs and attention in bf16, f32 weights, norms and
// loss), the same split as torch.autocast in torch_baselines.py (--step-dtype bf16 | f32).
//   bench_dit_step [--arch XL] [--batch 256] [--steps 10] [--precision both|bf16|f32] [--depth N]
//                  [--profile]
// --profile runs one more step per variant with the op profiler on (kernels/profile.h) and prints
// its table: where the step's time goes, op by op, with each op's GB/s.
// --depth keeps the arch's width and heads with N blocks: peak memory is fixed + batch x
// (blocks x per-block + the rest), so runs at two depths and two batches separate the terms
// (docs/kernels.md, "DiT-XL step memory", which also builds this program on the emulator, where
// the allocator counts the same bytes and the times mean nothing).
// Prints step time (median over the timed steps after 2 warm-up steps), images/s, achieved
// TFLOP/s (6 flops per parameter per token + attention 12 * depth * T^2 * D per image), MFU
// against the H200's 989 TFLOP/s dense bf16 datasheet peak (bench_gemm measures the cuBLAS
// ceiling in the same session), and the allocator's peak memory. A variant that runs out of
// memory prints its error in its row.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "autograd/autocast.h"
#include "autograd/functions.h"
#include "dit/dit.h"
#include "kernels/profile.h"
#include "nn/optim.h"
#include "tensor/cuda_runtime.h"
#include "tensor/random.h"

using namespace psvae;

int main(int argc, char** argv) {
  std::string arch = "XL";
  int64_t batch = 256;
  std::string precision = "both";
  int steps = 10;
  int depth = 0;  // 0: the arch's
  bool profile = false;
  for (int i = 1; i < argc; ++i) {
    auto next = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) {
        fmt::print(stderr, "bench_dit_step: {} needs a value\n", flag);
        std::exit(2);
      }
      return argv[++i];
    };
    if (!std::strcmp(argv[i], "--arch")) {
      arch = next("--arch");
    } else if (!std::strcmp(argv[i], "--batch")) {
      batch = std::atoll(next("--batch"));
    } else if (!std::strcmp(argv[i], "--steps")) {
      steps = std::max(1, std::atoi(next("--steps")));
    } else if (!std::strcmp(argv[i], "--precision")) {
      precision = next("--precision");
      if (precision != "both" && precision != "bf16" && precision != "f32") {
        fmt::print(stderr, "bench_dit_step: --precision must be both, bf16 or f32, got '{}'\n",
                   precision);
        return 2;
      }
    } else if (!std::strcmp(argv[i], "--depth")) {
      depth = std::atoi(next("--depth"));
      if (depth < 1) {
        fmt::print(stderr, "bench_dit_step: --depth must be at least 1\n");
        return 2;
      }
    } else if (!std::strcmp(argv[i], "--profile")) {
      profile = true;
    } else if (!std::strcmp(argv[i], "--quick")) {
      arch = "S", batch = 4, steps = 3;
    } else {
      fmt::print(stderr,
                 "bench_dit_step: unknown argument '{}' (--arch, --batch, --steps, --precision, "
                 "--depth, --profile, --quick)\n",
                 argv[i]);
      return 2;
    }
  }
  if (!cuda_available()) {
    fmt::print(stderr, "bench_dit_step: no CUDA device\n");
    return 1;
  }
  const Device gpu = Device::cuda(0);
  dit::DiTConfig c = dit::dit_arch("DiT-" + arch + "/2");
  c.patch = 1, c.input_size = 16, c.in_channels = 96, c.learn_sigma = false, c.num_classes = 1000;
  if (depth > 0) c.depth = depth;
  Generator g(0);
  dit::DiT model(c, g);
  model.to(gpu);
  nn::AdamWOptions o;
  o.lr = 1e-4;
  nn::AdamW opt(model.named_parameters(), o);
  const int64_t params = model.num_parameters();
  const int64_t T = c.tokens();

  Tensor x = Tensor::empty({batch, 96, 16, 16}, DType::F32, gpu);
  Tensor target = Tensor::empty({batch, 96, 16, 16}, DType::F32, gpu);
  g.normal_(x);
  g.normal_(target);
  std::vector<float> tv(static_cast<size_t>(batch));
  std::vector<int64_t> yv(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) {
    tv[static_cast<size_t>(i)] = static_cast<float>((i * 37) % 1000);
    yv[static_cast<size_t>(i)] = (i * 13) % 1000;
  }
  const Tensor t = Tensor::from_vector(tv, Shape{batch}, gpu);
  const Tensor y = Tensor::from_vector(yv, Shape{batch}, gpu);

  const double flops =
      static_cast<double>(batch) *
      (6.0 * static_cast<double>(params) * static_cast<double>(T) +
       12.0 * c.depth * static_cast<double>(T * T) * static_cast<double>(c.hidden));
  fmt::print(
      "# bench_dit_step: DiT-{} patch 1 ({} blocks), 16x16x96 latent ({} tokens), {:.1f} M "
      "parameters, {:.2f} TFLOP per step\n\n",
      arch, c.depth, T, static_cast<double>(params) / 1e6, flops / 1e12);
  fmt::print(
      "| variant | batch | step (ms) | images/s | TFLOP/s | MFU (989 bf16) | peak memory (MiB) "
      "|\n");
  fmt::print("|---|---|---|---|---|---|---|\n");

  std::vector<std::pair<std::string, std::string>> profiles;  // (variant, op profile table)
  for (const DType compute : {DType::BF16, DType::F32}) {
    if (precision != "both" && precision != dtype_name(compute)) continue;
    const std::string label = compute == DType::BF16 ? "psvae bf16 autocast" : "psvae f32";
    auto step = [&] {
      ag::Var loss;
      {
        ag::AutocastGuard autocast(compute);
        loss = ag::mse_loss(model.forward(ag::Var(x), t, y), ag::Var(target));
      }
      loss.backward();
      opt.step();
      opt.zero_grad();
    };
    try {
      for (int i = 0; i < 2; ++i) step();
      cuda::synchronize(0);
      cuda::reset_peak_stats(0);
      std::vector<double> ms;
      for (int i = 0; i < steps; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        step();
        cuda::synchronize(0);
        ms.push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count());
      }
      std::nth_element(ms.begin(), ms.begin() + static_cast<long>(ms.size() / 2), ms.end());
      const double med = ms[ms.size() / 2];
      const double tflops = flops / (med * 1e-3) / 1e12;
      fmt::print("| {} | {} | {:.1f} | {:.0f} | {:.1f} | {:.1f}% | {:.2f} |\n", label, batch, med,
                 static_cast<double>(batch) / (med * 1e-3), tflops, 100.0 * tflops / 989.0,
                 static_cast<double>(cuda::allocator_stats(0).peak_in_use) / (1 << 20));
      if (profile) {  // one more step, op by op; printed after the table
        kernels::profile_reset();
        kernels::profile_enable(true);
        step();
        cuda::synchronize(0);
        kernels::profile_enable(false);
        profiles.emplace_back(label, kernels::profile_report());
        kernels::profile_reset();
      }
    } catch (const std::exception& e) {
      kernels::profile_enable(false);
      opt.zero_grad();
      fmt::print("| {} | {} | failed: {} | - | - | - | - |\n", label, batch, e.what());
    }
    std::fflush(stdout);
  }
  for (const auto& [label, report] : profiles)
    fmt::print("\n## One step of {} (batch {}), op by op\n\n{}", label, batch, report);
  return 0;
}
