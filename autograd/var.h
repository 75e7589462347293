// Var: a tensor in the autograd graph. A leaf Var (a parameter, an input) may require a gradient,
// which backward() accumulates into grad(). A non-leaf Var remembers the Node that made it
// (grad_fn) and which of that node's outputs it is.
//
// Gradient conventions (as llm.c): gradients of leaves accumulate (+=) across backward passes
// until zero_grad(); gradients flowing between nodes are fresh tensors.
#pragma once
#include <memory>
#include <string>

#include "tensor/tensor.h"

namespace psvae::ag {

struct Node;
class AccumulateGrad;

struct VarImpl {
  Tensor data;
  Tensor grad;
  bool requires_grad = false;     // leaves: set by the user; non-leaves: true when grad_fn set
  std::shared_ptr<Node> grad_fn;  // null for leaves
  int output_nr = 0;              // which output of grad_fn this is
  std::shared_ptr<AccumulateGrad> accumulator;  // leaves that require grad, created lazily
};

class Var {
 public:
  Var() = default;
  explicit Var(Tensor data, bool requires_grad = false);

  bool defined() const { return impl_ && impl_->data.defined(); }
  const Tensor& data() const { return impl_->data; }
  // Replace the tensor in place (optimisers, loading weights). Keeps graph identity.
  void set_data(const Tensor& t) { impl_->data = t; }
  const Tensor& grad() const { return impl_->grad; }
  void set_grad(const Tensor& g) { impl_->grad = g; }
  void zero_grad() { impl_->grad = Tensor(); }

  bool requires_grad() const { return impl_ && impl_->requires_grad; }
  // Only on leaves: freezing or unfreezing a parameter.
  void set_requires_grad(bool on);
  bool is_leaf() const { return !impl_->grad_fn; }
  const std::shared_ptr<Node>& grad_fn() const { return impl_->grad_fn; }
  int output_nr() const { return impl_->output_nr; }

  // A new leaf sharing this Var's tensor, outside the graph.
  Var detach() const { return Var(impl_->data, false); }

  // Reverse pass from this Var. `grad` defaults to 1 for a one-element Var; other shapes must
  // pass it. Leaves reached accumulate into grad().
  void backward(const Tensor& grad = Tensor()) const;

  const Shape& shape() const { return impl_->data.shape(); }
  int64_t size(int dim) const { return impl_->data.size(dim); }
  int rank() const { return impl_->data.rank(); }
  int64_t numel() const { return impl_->data.numel(); }
  DType dtype() const { return impl_->data.dtype(); }
  Device device() const { return impl_->data.device(); }

  const std::shared_ptr<VarImpl>& impl() const { return impl_; }
  bool same(const Var& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<VarImpl> impl_;
  friend Var make_nonleaf(const Tensor& data, std::shared_ptr<Node> fn, int output_nr);
};

}  // namespace psvae::ag
