// A whole training step on CUDA against the same step on the CPU: the model is cloned to the GPU,
// both take `steps` AdamW steps on the same batch, and at each step the loss and every
// parameter's gradient must match, then the updated parameters.
//
// The reference is the CPU step in f32 on the same weights. In f32 the GPU only sums in another
// order, and its relative error must be under tol. In bf16 mixed precision both sides round every
// GEMM, conv and attention output to bf16, and through a deep model two such implementations
// differ by more than bf16's 2^-8: the CPU's own bf16 gradients of the small PS-VAE are 0.4-13%
// from the f32 ones. So the GPU's bf16 step must be about as accurate as the CPU's, both against
// the f32 reference: over all gradients, the RMS of the GPU's relative errors at most 1.5x the
// CPU's plus tol (on the emulator: 0.80x at step 1, 1.17x at step 2), and each gradient's at most
// 4x plus tol (the worst ratio is 2.8x, in an 8-channel GroupNorm weight, where a norm over 8
// noisy elements is itself noisy). A broken kernel is off by O(1), not by a few times the
// rounding. In f32 the CPU step is the reference, its error is 0, and both bounds are tol.
//
// Two more things a plain comparison would get wrong (both seen on the CUDA emulator, cuda_emu/):
// - Some gradients are exactly zero by construction, e.g. a conv bias ahead of a GroupNorm with
//   one channel per group. Each side computes them as rounding noise (1e-9 where the whole
//   gradient is 1), and a relative error compares noises. A gradient whose reference norm is below
//   1e-6 x G (G: the norm of the whole reference gradient; f32 noise is 1e-9 G) is checked
//   absolutely: the GPU's error at most 4x the CPU's plus 1e-2 x tol x G, which a real error (of
//   the size of the neighbouring gradients, 1e-2 G here) does not meet.
// - AdamW's first steps are sign-like (m / sqrt(v) is +-1 for a fresh moment), so a rounding-level
//   difference in a tiny or exactly-zero gradient element (the key third of an attention's qkv
//   bias: softmax ignores a shift common to all keys) flips a whole lr-sized update. After the
//   gradients are compared, both GPU copies are given the CPU's gradients: the updated parameters
//   then compare the optimisers on the same input (under tol), and the next step starts from the
//   same weights.
// A second CUDA copy takes the same steps: its loss and gradients must be bit-identical to the
// first's, as must its weights after the update: the backend has no floating-point atomics in any
// reduction (issue 6's deterministic mode is the only mode). Used by the DiT and PS-VAE suites'
// test_cuda_step.cpp.
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "autograd/var.h"
#include "common/cuda_compare.h"
#include "common/test_util.h"
#include "nn/module.h"
#include "nn/optim.h"

namespace psvae::test {

namespace step_detail {
// Every parameter's gradient (undefined where it has none), in named_parameters() order.
template <class M>
std::vector<Tensor> grads_of(M& m) {
  std::vector<Tensor> g;
  for (const auto& p : m.named_parameters()) g.push_back(p.second.grad());
  return g;
}

// How far the GPU's result `gpu` and the CPU's at the same precision `cpu` are from the reference
// `ref`: relative norm errors, or absolute ones where the reference is zero to rounding.
struct StepError {
  double gpu, cpu;
};
// Checks ||gpu - ref|| <= 4 ||cpu - ref|| + tol ||ref|| (relative), or with `floor` in place of
// tol ||ref|| where the reference is zero to rounding (abs).
inline StepError check_against(const Tensor& gpu, const Tensor& cpu, const Tensor& ref, double tol,
                               bool abs, double floor) {
  const double scale = abs ? 1.0 : l2_norm(ref);
  const StepError e{abs_norm_error(gpu, ref) / scale, abs_norm_error(cpu, ref) / scale};
  const double bound = 4 * e.cpu + (abs ? floor : tol);
  CAPTURE(e.gpu);
  CAPTURE(e.cpu);
  CAPTURE(bound);
  CHECK(std::isfinite(e.gpu));
  CHECK(e.gpu <= bound);
  return e;
}
}  // namespace step_detail

// loss_of(model, device, compute) builds the batch on `device` from fixed host tensors and returns
// the scalar loss of `model` on it under autocast to `compute` (F32 or BF16).
template <class M>
void check_cuda_step(M& cpu, const std::function<ag::Var(M&, Device, DType)>& loss_of,
                     DType compute, int steps, double tol) {
  const Device gpu = Device::cuda(0);
  auto dev = std::static_pointer_cast<M>(cpu.clone());
  dev->to(gpu);
  auto twin = std::static_pointer_cast<M>(dev->clone());
  nn::AdamWOptions o;
  o.lr = 1e-3;
  o.weight_decay = 0.01;
  nn::AdamW opt_cpu(cpu.named_parameters(), o), opt_gpu(dev->named_parameters(), o),
      opt_twin(twin->named_parameters(), o);
  for (int s = 0; s < steps; ++s) {
    CAPTURE(s);
    // The f32 reference on the current weights: the CPU step itself when compute is f32.
    std::shared_ptr<M> truth;
    if (compute != DType::F32) {
      truth = std::static_pointer_cast<M>(cpu.clone());
      truth->zero_grad();
    }
    ag::Var l_cpu = loss_of(cpu, Device::cpu(), compute);
    ag::Var l_ref = truth ? loss_of(*truth, Device::cpu(), DType::F32) : l_cpu;
    ag::Var l_gpu = loss_of(*dev, gpu, compute);
    ag::Var l_twin = loss_of(*twin, gpu, compute);
    REQUIRE(l_gpu.data().device() == gpu);
    {
      INFO("the loss");
      const step_detail::StepError e =
          step_detail::check_against(l_gpu.data(), l_cpu.data(), l_ref.data(), tol, false, 0);
      MESSAGE("step ", s, ": loss ", as_doubles(l_ref.data())[0], " rel err ", e.gpu, " (CPU ",
              e.cpu, ")");
      CHECK(bit_mismatches(l_twin.data(), l_gpu.data()) == 0);
    }
    l_cpu.backward();
    if (truth) l_ref.backward();
    l_gpu.backward();
    l_twin.backward();
    const std::vector<Tensor> gc = step_detail::grads_of(cpu), gg = step_detail::grads_of(*dev),
                              gt = step_detail::grads_of(*twin),
                              gr = truth ? step_detail::grads_of(*truth) : gc;
    const auto names = cpu.named_parameters();
    REQUIRE(gc.size() == gg.size());
    REQUIRE(gc.size() == gt.size());
    REQUIRE(gc.size() == gr.size());
    double g_sq = 0;
    for (const Tensor& g : gr)
      if (g.defined()) g_sq += sum_sq(as_doubles(g));
    const double zero_level = 1e-6 * std::sqrt(g_sq), floor = 1e-2 * tol * std::sqrt(g_sq);
    double worst = 0, sq_gpu = 0, sq_cpu = 0;
    std::string worst_name;
    int zero_grads = 0, compared = 0;
    for (size_t i = 0; i < gc.size(); ++i) {
      CAPTURE(names[i].first);
      REQUIRE(gc[i].defined() == gg[i].defined());
      REQUIRE(gc[i].defined() == gr[i].defined());
      if (!gc[i].defined()) continue;
      CHECK(bit_mismatches(gt[i], gg[i]) == 0);
      const bool zero = l2_norm(gr[i]) <= zero_level;
      const step_detail::StepError e =
          step_detail::check_against(gg[i], gc[i], gr[i], tol, zero, floor);
      if (zero) {
        ++zero_grads;
        continue;
      }
      ++compared, sq_gpu += e.gpu * e.gpu, sq_cpu += e.cpu * e.cpu;
      if (e.gpu > worst) worst = e.gpu, worst_name = names[i].first;
    }
    const double rms_gpu = std::sqrt(sq_gpu / compared), rms_cpu = std::sqrt(sq_cpu / compared);
    MESSAGE("step ", s, ": gradient rel err RMS ", rms_gpu, " (CPU ", rms_cpu, "), worst ", worst,
            " (", worst_name, "); ", zero_grads, " gradients zero to rounding");
    CHECK(rms_gpu <= 1.5 * rms_cpu + tol);
    auto pg = dev->named_parameters(), pt = twin->named_parameters();
    for (size_t i = 0; i < gc.size(); ++i) {
      if (!gc[i].defined()) continue;
      pg[i].second.set_grad(gc[i].to(gpu));
      pt[i].second.set_grad(gc[i].to(gpu));
    }
    opt_cpu.step();
    opt_gpu.step();
    opt_twin.step();
    opt_cpu.zero_grad();
    opt_gpu.zero_grad();
    opt_twin.zero_grad();
    for (size_t i = 0; i < gc.size(); ++i) {
      CAPTURE(names[i].first);
      CHECK(compare(pg[i].second.data(), names[i].second.data(), tol).ok);
      CHECK(bit_mismatches(pt[i].second.data(), pg[i].second.data()) == 0);
    }
  }
}

}  // namespace psvae::test
