// Node: one recorded op in the graph. It holds what its forward saved and, for each input, the
// edge to where that input's gradient goes. backward() turns the gradients of its outputs into
// gradients of its inputs.
//
// Writing a differentiable function (see docs/autograd.md):
//   1. compute the outputs with kernels (ops::...);
//   2. if any_requires_grad(inputs), make a Node subclass holding the saved tensors and call
//      attach(node, inputs, outputs) to wire the graph; return the Vars it gives back.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "autograd/var.h"

namespace psvae::ag {

struct Edge {
  std::shared_ptr<Node> fn;  // null: this input needs no gradient
  int output_nr = 0;         // which output of fn
};

struct OutputMeta {
  Shape shape;
  DType dtype = DType::F32;
  Device device;
};

struct Node {
  virtual ~Node() = default;
  virtual const char* name() const = 0;
  // grads[i] is the gradient of output i: defined, same shape as the output (the engine fills
  // undefined ones with zeros before the call). Returns one tensor per input; an undefined
  // tensor means "no gradient" and is allowed only where needs_grad(i) is false.
  virtual std::vector<Tensor> backward(const std::vector<Tensor>& grads) = 0;

  // Optional: the add of a gradient into what is already waiting for an input, fused into this
  // node's kernel. Where takes_waiting() is true the engine calls backward_with_waiting instead,
  // with waiting[i] the gradient already summed for input i's destination by the consumers of
  // that input whose backward ran before (undefined when none; also for every input but the first
  // that shares a destination). A node whose kernel can add waiting[i] into its gradient of input
  // i in the same pass returns that sum and resets waiting[i]; the engine adds what is left as
  // usual. The result must have the bits of the separate add. (The DiT block's layernorm_modulate
  // takes the residual stream's gradient this way: one pass over the stream fewer per use.)
  virtual bool takes_waiting() const { return false; }
  virtual std::vector<Tensor> backward_with_waiting(const std::vector<Tensor>& grads,
                                                    std::vector<Tensor>& waiting) {
    (void)waiting;
    return backward(grads);
  }

  bool needs_grad(size_t input) const { return input < next.size() && next[input].fn != nullptr; }

  std::vector<Edge> next;           // one per input, in the forward's argument order
  std::vector<OutputMeta> outputs;  // one per output
};

// The sink at a leaf: adds the incoming gradient into the leaf's grad().
class AccumulateGrad : public Node {
 public:
  explicit AccumulateGrad(std::weak_ptr<VarImpl> var) : var_(std::move(var)) {}
  const char* name() const override { return "AccumulateGrad"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& grads) override;

 private:
  std::weak_ptr<VarImpl> var_;
};

// True when grad mode is on and at least one input requires a gradient.
bool any_requires_grad(const std::vector<Var>& inputs);

// Wires `node` into the graph: one edge per input, output metadata, and returns the outputs as
// non-leaf Vars pointing at the node.
std::vector<Var> attach(const std::shared_ptr<Node>& node, const std::vector<Var>& inputs,
                        const std::vector<Tensor>& outputs);
Var attach(const std::shared_ptr<Node>& node, const std::vector<Var>& inputs, const Tensor& output);

// Reverse pass over the graph reachable from `root` with the seed gradient `grad`.
void run_backward(const Var& root, const Tensor& grad);

}  // namespace psvae::ag
