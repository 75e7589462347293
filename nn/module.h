// Module: a named tree of parameters, buffers and child modules, with PyTorch's state_dict
// naming ("blocks.0.attn.qkv.weight") so published checkpoints load unchanged.
//
// Design:
// - Parameters live in the Module that registered them, each behind a stable address (a
//   unique_ptr'd Var), and layers keep a Var* to theirs. Everything that walks the tree
//   (optimisers, state_dict, to(), clone) goes through the registry, so a layer's forward and the
//   optimiser always see the same Var.
// - Constructors take a Generator& and initialise their parameters from it (PyTorch's defaults,
//   see nn/init.h), so a model built twice from the same seed is bit-identical.
// - Each concrete module keeps the config it was built from; clone() rebuilds the same structure
//   from it (Cloneable<Derived>) and then deep-copies every parameter and buffer.
// - forward() is not virtual: layers have different signatures (a tensor of ids, a context).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/var.h"
#include "tensor/random.h"
#include "tensor/safetensors.h"

namespace psvae::nn {

using ag::Var;
using NamedTensors = safetensors::NamedTensors;
using NamedVars = std::vector<std::pair<std::string, Var>>;

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // A leaf Var requiring grad, owned by this module; the reference stays valid for its lifetime.
  Var& register_parameter(const std::string& name, const Tensor& t);
  // Non-trainable state saved in the state_dict (running statistics, fixed tables).
  Tensor& register_buffer(const std::string& name, const Tensor& t);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }

  // Dotted names; a module's own entries (in registration order) before its children's, as
  // PyTorch orders them.
  NamedVars named_parameters() const;
  std::vector<Var> parameters() const;
  NamedTensors named_buffers() const;
  // Parameters then buffers per module, in registration order (the order PyTorch writes).
  NamedTensors state_dict() const;
  // Copies into the existing tensors (their device and dtype are kept; f64/bf16/f32 convert).
  // Validates everything first and throws std::runtime_error listing every problem at once:
  // "missing key 'a'", "unexpected key 'b'" (only when strict), and
  // "key 'w': expected shape (384, 4, 2, 2), got (384, 4, 4, 4)" (always). Nothing is copied
  // when it throws.
  void load_state_dict(const NamedTensors& sd, bool strict = true);

  void set_requires_grad(bool on);  // freeze (false) or unfreeze every parameter
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  void zero_grad();
  void to(Device device);  // parameters, their gradients and buffers
  // Floating parameters and buffers converted (e.g. to f64 for gradcheck); gradients dropped.
  void to(DType dtype);
  int64_t num_parameters() const;

  // Rebinds every parameter, in named_parameters() order, to the given Vars (a functional call:
  // gradcheck hands in its own leaves). The module then computes with those Vars.
  void bind_parameters(const std::vector<Var>& vars);

  // An independent module: same structure, deep copies of every tensor, same training flag and
  // same requires_grad per parameter.
  virtual std::shared_ptr<Module> clone() const = 0;

  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const {
    return children_;
  }

 protected:
  // Deep-copies src's tensors into this module, whose structure must be identical; used by clone.
  void copy_state_from(const Module& src);

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  void copy_flags_from(const Module& src);
  void check_new_name(const std::string& name) const;
  void collect_slots(const std::string& prefix,
                     std::vector<std::pair<std::string, Var*>>& out) const;
  void collect_buffers(const std::string& prefix,
                       std::vector<std::pair<std::string, Tensor*>>& out) const;
  void collect_state(const std::string& prefix,
                     std::vector<std::pair<std::string, Tensor*>>& out) const;

  std::vector<std::pair<std::string, std::unique_ptr<Var>>> params_;
  std::vector<std::pair<std::string, std::unique_ptr<Tensor>>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;

 protected:
  bool training_ = true;
};

// clone() for a module built from a config: Derived(config, generator) rebuilds the structure
// (the throwaway initialisation is overwritten), then every tensor is deep-copied.
// Derived must provide `const Config& config() const` and a constructor (const Config&,
// Generator&).
template <class Derived>
class Cloneable : public Module {
 public:
  std::shared_ptr<Module> clone() const override {
    Generator scratch(0);
    auto m = std::make_shared<Derived>(static_cast<const Derived&>(*this).config(), scratch);
    m->copy_state_from(*this);
    return m;
  }
};

// Children named "0", "1", ... (PyTorch nn.ModuleList), e.g. "blocks.3.attn.qkv.weight".
class ModuleList : public Module {
 public:
  template <class M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> m) {
    return register_module(std::to_string(children().size()), std::move(m));
  }
  size_t size() const { return children().size(); }
  template <class M = Module>
  M& at(size_t i) const {
    return dynamic_cast<M&>(*children().at(i).second);
  }
  std::shared_ptr<Module> clone() const override;
};

// Converts a floating tensor to another floating dtype through the host (f32/f64/bf16; bf16
// rounds to nearest even); returns t itself when the dtype already matches. Used at load and
// init time, where speed does not matter, so it does not depend on any kernel.
Tensor convert_float(const Tensor& t, DType dtype);

}  // namespace psvae::nn
