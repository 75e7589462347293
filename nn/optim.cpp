#include "nn/optim.h"

#include <fmt/format.h>

#include <cmath>
#include <map>
#include <stdexcept>

#include "autograd/grad_mode.h"
#include "kernels/ops.h"
#include "kernels/profile.h"
#ifdef PSVAE_WITH_CUDA
#include "kernels/cuda/optim_fused.h"
#endif

namespace psvae::nn {

namespace {
#ifdef PSVAE_WITH_CUDA
// Bytes of a tensor list, for the profiler's counts of the multi-tensor kernels.
double nbytes(const std::vector<Tensor>& ts) {
  double n = 0;
  for (const Tensor& t : ts) n += static_cast<double>(t.nbytes());
  return n;
}
#endif
// Validates that every expected key is in sd with the expected shape; throws listing all problems.
std::map<std::string, const Tensor*> index_checked(
    const char* who, const NamedTensors& sd,
    const std::vector<std::pair<std::string, Shape>>& expected) {
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [n, t] : sd) by_name[n] = &t;
  std::string problems;
  for (const auto& [n, s] : expected) {
    auto it = by_name.find(n);
    if (it == by_name.end())
      problems += fmt::format(" missing key '{}';", n);
    else if (it->second->shape() != s)
      problems += fmt::format(" key '{}': expected shape {}, got {};", n, s.str(),
                              it->second->shape().str());
  }
  if (!problems.empty()) {
    problems.pop_back();
    throw std::runtime_error(fmt::format("{}:{}", who, problems));
  }
  return by_name;
}
}  // namespace

// ---- AdamW
// ---------------------------------------------------------------------------------------
AdamW::AdamW(NamedVars params, const AdamWOptions& opt) : opt_(opt) {
  for (auto& [name, p] : params) {
    check(p.defined(), fmt::format("AdamW: parameter '{}' is undefined", name));
    // ops::adamw_step wants the state in the parameter's dtype; our parameters are f32 master
    // weights (bf16 is only a compute type), so the state is f32.
    Tensor m = Tensor::zeros(p.shape(), p.dtype(), p.device());
    Tensor v = Tensor::zeros(p.shape(), p.dtype(), p.device());
    slots_.push_back({name, p, m, v});
  }
}

void AdamW::step(double grad_scale) {
  ag::NoGradGuard no_grad;
  ++step_;
  ops::AdamWParams hp;
  hp.lr = opt_.lr;
  hp.beta1 = opt_.beta1;
  hp.beta2 = opt_.beta2;
  hp.eps = opt_.eps;
  hp.weight_decay = opt_.weight_decay;
  hp.step = step_;
#ifdef PSVAE_WITH_CUDA
  // On a GPU every parameter is updated in one launch (kernels/cuda/optim_fused.h): the same
  // arithmetic as ops::adamw_step per tensor, bit for bit, without a launch per parameter (a
  // DiT-XL has 400 of them).
  std::vector<Tensor> ps, gs, ms, vs;
  bool fused = true;
  for (Slot& s : slots_) {
    if (!s.param.grad().defined()) continue;
    const Tensor& p = s.param.data();
    ps.push_back(p);
    fused = fused && p.device().is_cuda() && p.device() == ps.front().device() &&
            p.dtype() == DType::F32 && s.param.grad().dtype() == DType::F32;
    gs.push_back(s.param.grad());
    ms.push_back(s.m);
    vs.push_back(s.v);
  }
  if (fused && !ps.empty()) {
    kernels::cuda::AdamWHyper h;
    h.lr = hp.lr;
    h.beta1 = hp.beta1;
    h.beta2 = hp.beta2;
    h.eps = hp.eps;
    h.weight_decay = hp.weight_decay;
    // Profiled bytes: p, m, v read and written, g read.
    const kernels::ProfileScope scope("adamw_multi_tensor", ps.front().device(),
                                      2 * (nbytes(ps) + nbytes(ms) + nbytes(vs)) + nbytes(gs));
    kernels::cuda::adamw_multi_tensor(ps, gs, ms, vs, {}, h, step_, grad_scale);
    return;
  }
#endif
  for (Slot& s : slots_) {
    if (!s.param.grad().defined()) continue;
    Tensor p = s.param.data();  // shares storage: updated in place
    const Tensor& g = s.param.grad();
    ops::adamw_step(p, grad_scale == 1.0 ? g : ops::mul_scalar(g, grad_scale), s.m, s.v, hp);
  }
}

void AdamW::zero_grad() {
  for (Slot& s : slots_) s.param.zero_grad();
}

NamedTensors AdamW::state_dict() const {
  NamedTensors sd;
  for (const Slot& s : slots_) {
    sd.emplace_back("optim." + s.name + ".m", s.m);
    sd.emplace_back("optim." + s.name + ".v", s.v);
  }
  sd.emplace_back("optim.step", Tensor::from_vector(std::vector<int64_t>{step_}, Shape{}));
  return sd;
}

void AdamW::load_state_dict(const NamedTensors& sd) {
  std::vector<std::pair<std::string, Shape>> expected;
  for (const Slot& s : slots_) {
    expected.emplace_back("optim." + s.name + ".m", s.m.shape());
    expected.emplace_back("optim." + s.name + ".v", s.v.shape());
  }
  expected.emplace_back("optim.step", Shape{});
  auto by_name = index_checked("AdamW::load_state_dict", sd, expected);
  for (Slot& s : slots_) {
    s.m.copy_from(convert_float(*by_name["optim." + s.name + ".m"], s.m.dtype()));
    s.v.copy_from(convert_float(*by_name["optim." + s.name + ".v"], s.v.dtype()));
  }
  step_ = static_cast<int64_t>(by_name["optim.step"]->item());
}

// ---- gradient clipping
// ---------------------------------------------------------------------------
namespace {
// sqrt of the sum of squares of every gradient, accumulated in f64 and deterministic.
double global_norm(const std::vector<Var>& params) {
  std::vector<Tensor> grads;
  for (const Var& p : params)
    if (p.defined() && p.grad().defined()) grads.push_back(p.grad());
#ifdef PSVAE_WITH_CUDA
  // On a GPU: one pass over all gradients and one read-back (kernels/cuda/optim_fused.h), instead
  // of three ops and a read-back per parameter.
  bool all_cuda = !grads.empty();
  for (const Tensor& g : grads)
    all_cuda = all_cuda && g.device().is_cuda() && g.device() == grads.front().device();
  if (all_cuda) {
    const kernels::ProfileScope scope("global_grad_norm", grads.front().device(),
                                      nbytes(grads));  // read once
    return kernels::cuda::global_grad_norm(grads);
  }
#endif
  // Per gradient in f64 with ops, combined on the host in parameter order.
  double total_sq = 0;
  for (const Tensor& g : grads) {
    Tensor d = ops::cast(g, DType::F64);
    total_sq += ops::sum_all(ops::mul(d, d)).item();
  }
  return std::sqrt(total_sq);
}
}  // namespace

double grad_norm(const std::vector<Var>& params) {
  ag::NoGradGuard no_grad;
  return global_norm(params);
}

double clip_coefficient(double norm, double max_norm) {
  const double coef = max_norm / (norm + 1e-6);
  return coef < 1.0 ? coef : 1.0;
}

double clip_grad_norm(const std::vector<Var>& params, double max_norm) {
  ag::NoGradGuard no_grad;
  const double norm = global_norm(params);
  const double coef = clip_coefficient(norm, max_norm);
  if (coef < 1.0) {
    for (const Var& p : params) {
      if (!p.defined() || !p.grad().defined()) continue;
      Var handle = p;  // Var is a handle: set_grad changes the shared parameter
      handle.set_grad(ops::mul_scalar(p.grad(), coef));
    }
  }
  return norm;
}

double clip_grad_norm(const NamedVars& params, double max_norm) {
  std::vector<Var> v;
  for (const auto& [n, p] : params) v.push_back(p);
  return clip_grad_norm(v, max_norm);
}

// ---- schedules
// -----------------------------------------------------------------------------------
double warmup_cosine(int64_t step, double base_lr, int64_t warmup_steps, int64_t total_steps,
                     double min_lr) {
  if (step < warmup_steps)
    return base_lr * static_cast<double>(step) / static_cast<double>(warmup_steps);
  if (step >= total_steps) return min_lr;
  const double pi = 3.14159265358979323846;
  double p =
      static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
  return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + std::cos(pi * p));
}

// ---- EMA
// -----------------------------------------------------------------------------------------
EMA::EMA(const Module& model) : params_(model.named_parameters()) {
  for (const auto& [n, p] : params_) shadows_.emplace_back(n, p.data().clone());
}

void EMA::update(double decay) {
  ag::NoGradGuard no_grad;
#ifdef PSVAE_WITH_CUDA
  // One launch for every shadow on a GPU (the same bits as ops::ema_update per tensor).
  std::vector<Tensor> shadows, params;
  bool fused = !params_.empty();
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i].second.data();
    fused = fused && p.device().is_cuda() && p.device() == params_.front().second.device() &&
            (p.dtype() == DType::F32 || p.dtype() == DType::F64) &&
            p.dtype() == params_.front().second.dtype();
    shadows.push_back(shadows_[i].second);
    params.push_back(p);
  }
  if (fused) {
    // Profiled bytes: the shadow read and written, the parameter read.
    const kernels::ProfileScope scope("ema_multi_tensor", params.front().device(),
                                      2 * nbytes(shadows) + nbytes(params));
    kernels::cuda::ema_multi_tensor(shadows, params, decay);
    return;
  }
#endif
  for (size_t i = 0; i < params_.size(); ++i)
    ops::ema_update(shadows_[i].second, params_[i].second.data(), decay);
}

void EMA::copy_to(Module& target) const {
  std::map<std::string, Var> by_name;
  for (auto& [n, p] : target.named_parameters()) by_name.emplace(n, p);
  std::string problems;
  for (const auto& [n, s] : shadows_) {
    auto it = by_name.find(n);
    if (it == by_name.end())
      problems += fmt::format(" missing key '{}';", n);
    else if (it->second.shape() != s.shape())
      problems += fmt::format(" key '{}': expected shape {}, got {};", n, it->second.shape().str(),
                              s.shape().str());
  }
  if (!problems.empty()) {
    problems.pop_back();
    throw std::runtime_error("EMA::copy_to:" + problems);
  }
  for (const auto& [n, s] : shadows_) {
    Tensor d = by_name[n].data();
    d.copy_from(convert_float(s, d.dtype()));
  }
}

NamedTensors EMA::state_dict() const {
  NamedTensors sd;
  for (const auto& [n, s] : shadows_) sd.emplace_back("ema." + n, s);
  return sd;
}

void EMA::load_state_dict(const NamedTensors& sd) {
  std::vector<std::pair<std::string, Shape>> expected;
  for (const auto& [n, s] : shadows_) expected.emplace_back("ema." + n, s.shape());
  auto by_name = index_checked("EMA::load_state_dict", sd, expected);
  for (auto& [n, s] : shadows_) s.copy_from(convert_float(*by_name["ema." + n], s.dtype()));
}

}  // namespace psvae::nn
