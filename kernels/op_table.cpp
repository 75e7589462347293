#include "kernels/op_table.h"

#include <fmt/format.h>

#include <stdexcept>

#include "kernels/profile.h"

namespace psvae::kernels {

OpTable::OpTable() {
  int i = 0;
#define PSVAE_OP_DEF(name_, family_, doc_)                                                    \
  defs_[static_cast<size_t>(i)] = OpDef{Op::name_, #name_, #family_, doc_, nullptr, nullptr}; \
  ++i;
  PSVAE_ALL_OPS(PSVAE_OP_DEF)
#undef PSVAE_OP_DEF
}

const OpTable& op_table() {
  static const OpTable table = [] {
    OpTable t;
    cpu::register_elementwise(t);
    cpu::register_reduce(t);
    cpu::register_linalg(t);
    cpu::register_norm(t);
    cpu::register_spatial(t);
    cpu::register_layout(t);
    cpu::register_attention(t);
    cpu::register_loss(t);
    cpu::register_optim(t);
    cpu::register_lpips(t);
    cpu::register_adaln(t);
#ifdef PSVAE_WITH_CUDA
    cuda::register_all(t);
#endif
    return t;
  }();
  return table;
}

const OpDef& op_def(Op op) { return op_table()[op]; }
const char* op_name(Op op) { return op_def(op).name; }

Op op_by_name(const std::string& name) {
  for (const OpDef& d : op_table().all())
    if (name == d.name) return d.op;
  throw std::invalid_argument(fmt::format("unknown op '{}'", name));
}

namespace {

bool has_bf16(const OpCall& call) {
  auto any = [](const std::vector<Tensor>& ts) {
    for (const Tensor& t : ts)
      if (t.defined() && t.dtype() == DType::BF16) return true;
    return false;
  };
  return any(call.in) || any(call.out);
}

// bf16 on the CPU. The CPU kernels compute in f32 and f64 only; a call with bf16 tensors runs
// the f32 kernel on widened copies: every bf16 input and output is converted to f32 (exact), the
// kernel runs, and every bf16 output is rounded back to nearest even. That is the contract of the
// CUDA bf16 kernels too (f32 arithmetic inside, bf16 only where a tensor is stored), so the CPU
// is a reference for mixed-precision runs (train.bf16) and can run them, slowly.
// Outputs are widened with their contents because some ops update them in place (adamw_step's
// param, m and v; ema_update's ema).
void run_widened(KernelFn fn, const OpCall& call) {
  auto cast_into = [cast = op_def(Op::cast).cpu](const Tensor& src, const Tensor& dst) {
    OpCall c;
    c.in = {src};
    c.out = {dst};
    cast(c);
  };
  OpCall wide = call;
  for (std::vector<Tensor>* ts : {&wide.in, &wide.out})
    for (Tensor& t : *ts) {
      if (t.dtype() != DType::BF16) continue;
      Tensor f32 = Tensor::empty(t.shape(), DType::F32);
      cast_into(t, f32);
      t = f32;
    }
  fn(wide);
  for (size_t i = 0; i < call.out.size(); ++i)
    if (call.out[i].dtype() == DType::BF16) cast_into(wide.out[i], call.out[i]);
}

}  // namespace

void run(Op op, const OpCall& call) {
  const OpDef& def = op_def(op);
  const Tensor* first =
      !call.in.empty() ? &call.in[0] : (!call.out.empty() ? &call.out[0] : nullptr);
  if (!first || !first->defined())
    throw std::invalid_argument(fmt::format("{}: first tensor is undefined", def.name));
  Device dev = first->device();
  auto check_dev = [&](const std::vector<Tensor>& ts, const char* what) {
    for (size_t i = 0; i < ts.size(); ++i) {
      if (!ts[i].defined())
        throw std::invalid_argument(fmt::format("{}: {}[{}] is undefined", def.name, what, i));
      if (ts[i].device() != dev)
        throw std::invalid_argument(fmt::format("{}: {}[{}] is on {}, expected {}", def.name, what,
                                                i, ts[i].device().str(), dev.str()));
    }
  };
  check_dev(call.in, "input");
  check_dev(call.out, "output");
  KernelFn fn = dev.is_cpu() ? def.cpu : def.cuda;
  if (!fn)
    throw std::runtime_error(
        fmt::format("{}: no {} kernel", def.name, dev.is_cpu() ? "CPU" : "CUDA"));
  // The profiler's row for this call (kernels/profile.h). No kernel runs other ops through the
  // table, so rows never nest; the bytes are the caller's tensors (bf16 on the CPU stays bf16).
  const bool profiled = profile_enabled();
  double bytes = 0;
  if (profiled) {
    for (const Tensor& t : call.in) bytes += static_cast<double>(t.nbytes());
    for (const Tensor& t : call.out) bytes += static_cast<double>(t.nbytes());
  }
  const ProfileScope scope(profiled ? def.name : nullptr, dev, bytes);
  if (dev.is_cpu() && op != Op::cast && has_bf16(call)) {
    run_widened(fn, call);
    return;
  }
  fn(call);
}

}  // namespace psvae::kernels
