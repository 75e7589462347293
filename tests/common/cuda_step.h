// A whole training step on CUDA against the same step on the CPU: the model is cloned to the GPU,
// both take `steps` AdamW steps on the same batch, and after each step the loss, every parameter's
// gradient and every updated parameter must match (relative norm error, f32 on both sides: the
// GPU only sums in another order). A second CUDA copy takes the same steps and must end with
// bit-identical weights: the backend has no floating-point atomics in any reduction (issue 6's
// deterministic mode is the only mode). Used by the DiT and PS-VAE suites' test_cuda_step.cpp.
#pragma once
#include <doctest/doctest.h>

#include <functional>
#include <memory>
#include <string>

#include "autograd/var.h"
#include "common/test_util.h"
#include "nn/module.h"
#include "nn/optim.h"

namespace psvae::test {

// loss_of(model, device) builds the batch on `device` from fixed host tensors and returns the
// scalar loss of `model` on it.
template <class M>
void check_cuda_step(M& cpu, const std::function<ag::Var(M&, Device)>& loss_of, int steps,
                     double tol) {
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
    ag::Var l_cpu = loss_of(cpu, Device::cpu());
    ag::Var l_gpu = loss_of(*dev, gpu);
    ag::Var l_twin = loss_of(*twin, gpu);
    REQUIRE(l_gpu.data().device() == gpu);
    const Comparison loss = compare(l_gpu.data(), l_cpu.data(), tol);
    MESSAGE("step ", s, ": loss ", as_doubles(l_cpu.data())[0], " rel err ", loss.rel_err);
    CHECK(loss.ok);
    l_cpu.backward();
    l_gpu.backward();
    l_twin.backward();
    auto pc = cpu.named_parameters(), pg = dev->named_parameters();
    REQUIRE(pc.size() == pg.size());
    double worst = 0;
    std::string worst_name;
    for (size_t i = 0; i < pc.size(); ++i) {
      const ag::Var &a = pc[i].second, &b = pg[i].second;
      REQUIRE(a.grad().defined() == b.grad().defined());
      if (!a.grad().defined()) continue;
      const Comparison c = compare(b.grad(), a.grad(), tol);
      CAPTURE(pc[i].first);
      CAPTURE(c.why);
      CHECK(c.ok);
      if (c.rel_err > worst) worst = c.rel_err, worst_name = pc[i].first;
    }
    MESSAGE("step ", s, ": worst gradient rel err ", worst, " (", worst_name, ")");
    opt_cpu.step();
    opt_gpu.step();
    opt_twin.step();
    opt_cpu.zero_grad();
    opt_gpu.zero_grad();
    opt_twin.zero_grad();
    for (size_t i = 0; i < pc.size(); ++i) {
      CAPTURE(pc[i].first);
      CHECK(compare(pg[i].second.data(), pc[i].second.data(), tol).ok);
    }
    auto pt = twin->named_parameters();
    for (size_t i = 0; i < pg.size(); ++i) {
      CAPTURE(pg[i].first);
      CHECK(bit_mismatches_host(pt[i].second.data().to(Device::cpu()),
                                pg[i].second.data().to(Device::cpu())) == 0);
    }
  }
}

}  // namespace psvae::test
