#include "nn/module.h"

#include <fmt/format.h>

#include <map>
#include <stdexcept>

namespace psvae::nn {

namespace {
std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

double read_as_double(const Tensor& h, int64_t i) {
  switch (h.dtype()) {
    case DType::F32: return h.data<float>()[i];
    case DType::F64: return h.data<double>()[i];
    case DType::BF16: return static_cast<float>(h.data<bf16>()[i]);
    default: break;
  }
  throw std::invalid_argument("convert_float: not a floating tensor");
}

void write_from_double(Tensor& h, int64_t i, double x) {
  switch (h.dtype()) {
    case DType::F32: h.data<float>()[i] = static_cast<float>(x); return;
    case DType::F64: h.data<double>()[i] = x; return;
    // Via float: bf16 keeps f32's exponent, so rounding the f32 value is the rounding PyTorch does.
    case DType::BF16: h.data<bf16>()[i] = bf16(static_cast<float>(x)); return;
    default: break;
  }
  throw std::invalid_argument("convert_float: not a floating tensor");
}
}  // namespace

Tensor convert_float(const Tensor& t, DType dtype) {
  if (t.dtype() == dtype) return t;
  check(is_floating(t.dtype()) && is_floating(dtype),
        fmt::format("convert_float: {} to {} is not a floating conversion", dtype_name(t.dtype()),
                    dtype_name(dtype)));
  Tensor src = t.to(Device::cpu());
  Tensor dst = Tensor::empty(t.shape(), dtype, Device::cpu());
  for (int64_t i = 0; i < t.numel(); ++i) write_from_double(dst, i, read_as_double(src, i));
  return dst.to(t.device());
}

// ---- registration ------------------------------------------------------------------------------
void Module::check_new_name(const std::string& name) const {
  check(!name.empty() && name.find('.') == std::string::npos,
        fmt::format("Module: bad name '{}' (non-empty, no dots)", name));
  auto taken = [&](const auto& list) {
    for (const auto& e : list)
      if (e.first == name) return true;
    return false;
  };
  check(!taken(params_) && !taken(buffers_) && !taken(children_),
        fmt::format("Module: name '{}' registered twice", name));
}

Var& Module::register_parameter(const std::string& name, const Tensor& t) {
  check_new_name(name);
  check(t.defined() && is_floating(t.dtype()),
        fmt::format("register_parameter '{}': needs a defined floating tensor", name));
  params_.emplace_back(name, std::make_unique<Var>(t, true));
  return *params_.back().second;
}

Tensor& Module::register_buffer(const std::string& name, const Tensor& t) {
  check_new_name(name);
  check(t.defined(), fmt::format("register_buffer '{}': undefined tensor", name));
  buffers_.emplace_back(name, std::make_unique<Tensor>(t));
  return *buffers_.back().second;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  check_new_name(name);
  check(m != nullptr, fmt::format("register_module '{}': null module", name));
  children_.emplace_back(name, std::move(m));
}

// ---- traversal
// -----------------------------------------------------------------------------------
void Module::collect_slots(const std::string& prefix,
                           std::vector<std::pair<std::string, Var*>>& out) const {
  for (const auto& [n, v] : params_) out.emplace_back(join(prefix, n), v.get());
  for (const auto& [n, c] : children_) c->collect_slots(join(prefix, n), out);
}

void Module::collect_buffers(const std::string& prefix,
                             std::vector<std::pair<std::string, Tensor*>>& out) const {
  for (const auto& [n, b] : buffers_) out.emplace_back(join(prefix, n), b.get());
  for (const auto& [n, c] : children_) c->collect_buffers(join(prefix, n), out);
}

// Per module: its parameters, its buffers, then each child (PyTorch's state_dict order).
void Module::collect_state(const std::string& prefix,
                           std::vector<std::pair<std::string, Tensor*>>& out) const {
  for (const auto& [n, v] : params_) out.emplace_back(join(prefix, n), &v->impl()->data);
  for (const auto& [n, b] : buffers_) out.emplace_back(join(prefix, n), b.get());
  for (const auto& [n, c] : children_) c->collect_state(join(prefix, n), out);
}

NamedVars Module::named_parameters() const {
  std::vector<std::pair<std::string, Var*>> slots;
  collect_slots("", slots);
  NamedVars out;
  for (auto& [n, v] : slots) out.emplace_back(n, *v);
  return out;
}

std::vector<Var> Module::parameters() const {
  std::vector<Var> out;
  for (auto& [n, v] : named_parameters()) out.push_back(v);
  return out;
}

NamedTensors Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor*>> slots;
  collect_buffers("", slots);
  NamedTensors out;
  for (auto& [n, t] : slots) out.emplace_back(n, *t);
  return out;
}

NamedTensors Module::state_dict() const {
  std::vector<std::pair<std::string, Tensor*>> slots;
  collect_state("", slots);
  NamedTensors out;
  for (auto& [n, t] : slots) out.emplace_back(n, *t);
  return out;
}

// ---- loading
// -------------------------------------------------------------------------------------
void Module::load_state_dict(const NamedTensors& sd, bool strict) {
  std::vector<std::pair<std::string, Tensor*>> slots;
  collect_state("", slots);
  std::map<std::string, const Tensor*> given;
  std::vector<std::string> problems;
  for (const auto& [n, t] : sd)
    if (!given.emplace(n, &t).second) problems.push_back(fmt::format("duplicate key '{}'", n));

  std::vector<std::pair<Tensor*, const Tensor*>> copies;
  std::map<std::string, bool> known;
  for (auto& [n, dst] : slots) {
    known[n] = true;
    auto it = given.find(n);
    if (it == given.end()) {
      if (strict) problems.push_back(fmt::format("missing key '{}'", n));
      continue;
    }
    const Tensor& src = *it->second;
    if (src.shape() != dst->shape()) {
      problems.push_back(fmt::format("key '{}': expected shape {}, got {}", n, dst->shape().str(),
                                     src.shape().str()));
      continue;
    }
    bool convertible =
        src.dtype() == dst->dtype() || (is_floating(src.dtype()) && is_floating(dst->dtype()));
    if (!convertible) {
      problems.push_back(fmt::format("key '{}': expected dtype {}, got {}", n,
                                     dtype_name(dst->dtype()), dtype_name(src.dtype())));
      continue;
    }
    copies.emplace_back(dst, &src);
  }
  if (strict)
    for (const auto& [n, t] : sd)
      if (!known.count(n)) problems.push_back(fmt::format("unexpected key '{}'", n));

  if (!problems.empty()) {
    std::string msg = fmt::format("load_state_dict: {} problem{}:", problems.size(),
                                  problems.size() == 1 ? "" : "s");
    for (const auto& p : problems) msg += " " + p + ";";
    msg.pop_back();
    throw std::runtime_error(msg);
  }
  // Copy into the existing storage: whoever holds these tensors (an optimiser, a view) sees the
  // new values, and the device stays where the module lives.
  for (auto& [dst, src] : copies) {
    Tensor d = *dst;
    d.copy_from(convert_float(*src, d.dtype()));
  }
}

// ---- whole-tree operations
// -----------------------------------------------------------------------
void Module::set_requires_grad(bool on) {
  for (auto& [n, v] : named_parameters()) v.set_requires_grad(on);
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
}

void Module::zero_grad() {
  for (auto& [n, v] : named_parameters()) v.zero_grad();
}

void Module::to(Device device) {
  std::vector<std::pair<std::string, Var*>> slots;
  collect_slots("", slots);
  for (auto& [n, v] : slots) {
    v->set_data(v->data().to(device));
    if (v->grad().defined()) v->set_grad(v->grad().to(device));
    v->impl()->accumulator.reset();  // its recorded output metadata names the old device
  }
  std::vector<std::pair<std::string, Tensor*>> bufs;
  collect_buffers("", bufs);
  for (auto& [n, b] : bufs) *b = b->to(device);
}

void Module::to(DType dtype) {
  check(is_floating(dtype), "Module::to: the target dtype must be floating");
  std::vector<std::pair<std::string, Var*>> slots;
  collect_slots("", slots);
  for (auto& [n, v] : slots) {
    v->set_data(convert_float(v->data(), dtype));
    v->zero_grad();
    v->impl()->accumulator.reset();
  }
  std::vector<std::pair<std::string, Tensor*>> bufs;
  collect_buffers("", bufs);
  for (auto& [n, b] : bufs)
    if (is_floating(b->dtype())) *b = convert_float(*b, dtype);
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, v] : named_parameters()) n += v.numel();
  return n;
}

void Module::bind_parameters(const std::vector<Var>& vars) {
  std::vector<std::pair<std::string, Var*>> slots;
  collect_slots("", slots);
  check(vars.size() == slots.size(),
        fmt::format("bind_parameters: {} Vars for {} parameters", vars.size(), slots.size()));
  for (size_t i = 0; i < slots.size(); ++i) {
    check(vars[i].shape() == slots[i].second->shape(),
          fmt::format("bind_parameters: '{}' expects shape {}, got {}", slots[i].first,
                      slots[i].second->shape().str(), vars[i].shape().str()));
    *slots[i].second = vars[i];
  }
}

void Module::copy_state_from(const Module& src) {
  std::vector<std::pair<std::string, Var*>> mine, theirs;
  collect_slots("", mine);
  src.collect_slots("", theirs);
  std::vector<std::pair<std::string, Tensor*>> my_bufs, their_bufs;
  collect_buffers("", my_bufs);
  src.collect_buffers("", their_bufs);
  check(mine.size() == theirs.size() && my_bufs.size() == their_bufs.size(),
        "clone: the rebuilt module has a different number of tensors");
  for (size_t i = 0; i < mine.size(); ++i) {
    const Var& s = *theirs[i].second;
    check(mine[i].first == theirs[i].first && mine[i].second->shape() == s.shape(),
          fmt::format("clone: rebuilt '{}' {} differs from '{}' {}", mine[i].first,
                      mine[i].second->shape().str(), theirs[i].first, s.shape().str()));
    *mine[i].second = Var(s.data().clone(), s.requires_grad());
  }
  for (size_t i = 0; i < my_bufs.size(); ++i) *my_bufs[i].second = their_bufs[i].second->clone();
  copy_flags_from(src);
}

// Training flags, module by module (the trees have the same shape).
void Module::copy_flags_from(const Module& src) {
  training_ = src.training_;
  for (size_t i = 0; i < children_.size(); ++i)
    children_[i].second->copy_flags_from(*src.children_[i].second);
}

std::shared_ptr<Module> ModuleList::clone() const {
  auto l = std::make_shared<ModuleList>();
  for (const auto& [n, c] : children()) l->push_back(c->clone());
  l->training_ = training_;
  return l;
}

}  // namespace psvae::nn
