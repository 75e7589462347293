// The tape's engine: a topological reverse pass over the graph reachable from the root.
#include <fmt/format.h>

#include <unordered_map>
#include <unordered_set>

#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "kernels/ops.h"

namespace psvae::ag {

// ---- grad mode ---------------------------------------------------------------------------------
namespace {
thread_local bool g_grad_enabled = true;
}
bool grad_enabled() { return g_grad_enabled; }
void set_grad_enabled(bool on) { g_grad_enabled = on; }

// ---- Var
// -----------------------------------------------------------------------------------------
Var::Var(Tensor data, bool requires_grad) : impl_(std::make_shared<VarImpl>()) {
  impl_->data = std::move(data);
  set_requires_grad(requires_grad);
}

void Var::set_requires_grad(bool on) {
  check(impl_ != nullptr, "set_requires_grad on an undefined Var");
  check(!impl_->grad_fn, "set_requires_grad: only leaves can be frozen or unfrozen; use detach()");
  check(!on || is_floating(impl_->data.dtype()),
        fmt::format("set_requires_grad: {} tensors cannot require a gradient",
                    dtype_name(impl_->data.dtype())));
  impl_->requires_grad = on;
  if (!on) impl_->accumulator.reset();
}

void Var::backward(const Tensor& grad) const {
  check(defined(), "backward on an undefined Var");
  check(requires_grad(), "backward: this Var does not require grad (no leaf it depends on does)");
  Tensor seed = grad;
  if (!seed.defined()) {
    check(numel() == 1,
          fmt::format("backward: implicit gradient needs a one-element output, got {}",
                      shape().str()));
    seed = Tensor::full(shape(), 1.0, dtype(), device());
  }
  check(seed.shape() == shape(), fmt::format("backward: gradient shape {} for output {}",
                                             seed.shape().str(), shape().str()));
  run_backward(*this, seed);
}

Var make_nonleaf(const Tensor& data, std::shared_ptr<Node> fn, int output_nr) {
  Var v;
  v.impl_ = std::make_shared<VarImpl>();
  v.impl_->data = data;
  v.impl_->requires_grad = true;
  v.impl_->grad_fn = std::move(fn);
  v.impl_->output_nr = output_nr;
  return v;
}

// ---- graph construction ----------------------------------------------------------------------
std::vector<Tensor> AccumulateGrad::backward(const std::vector<Tensor>& grads) {
  std::shared_ptr<VarImpl> v = var_.lock();
  if (!v) return {};  // the leaf is gone: nobody can read its gradient
  const Tensor& g = grads[0];
  if (!v->grad.defined()) {
    v->grad = g.clone();
  } else {
    v->grad = ops::add(v->grad, g);
  }
  return {};
}

bool any_requires_grad(const std::vector<Var>& inputs) {
  if (!grad_enabled()) return false;
  for (const Var& v : inputs)
    if (v.defined() && v.requires_grad()) return true;
  return false;
}

static Edge edge_of(const Var& v) {
  if (!v.defined() || !v.requires_grad()) return {};
  const auto& impl = v.impl();
  if (impl->grad_fn) return {impl->grad_fn, impl->output_nr};
  if (!impl->accumulator) {
    impl->accumulator = std::make_shared<AccumulateGrad>(impl);
    impl->accumulator->outputs.push_back(
        {impl->data.shape(), impl->data.dtype(), impl->data.device()});
  }
  return {impl->accumulator, 0};
}

std::vector<Var> attach(const std::shared_ptr<Node>& node, const std::vector<Var>& inputs,
                        const std::vector<Tensor>& outputs) {
  node->next.clear();
  for (const Var& v : inputs) node->next.push_back(edge_of(v));
  node->outputs.clear();
  std::vector<Var> out;
  for (size_t i = 0; i < outputs.size(); ++i) {
    node->outputs.push_back({outputs[i].shape(), outputs[i].dtype(), outputs[i].device()});
    out.push_back(make_nonleaf(outputs[i], node, static_cast<int>(i)));
  }
  return out;
}

Var attach(const std::shared_ptr<Node>& node, const std::vector<Var>& inputs,
           const Tensor& output) {
  return attach(node, inputs, std::vector<Tensor>{output})[0];
}

// ---- reverse pass ------------------------------------------------------------------------------
void run_backward(const Var& root, const Tensor& seed) {
  // Topological order by iterative DFS (post-order), so deep graphs cannot overflow the stack.
  std::vector<Node*> order;
  std::unordered_set<Node*> seen;
  std::vector<std::pair<Node*, size_t>> stack;
  Edge root_edge = edge_of(root);
  Node* start = root_edge.fn.get();
  stack.push_back({start, 0});
  seen.insert(start);
  while (!stack.empty()) {
    auto& [node, idx] = stack.back();
    if (idx < node->next.size()) {
      Node* child = node->next[idx++].fn.get();
      if (child && seen.insert(child).second) stack.push_back({child, 0});
    } else {
      order.push_back(node);
      stack.pop_back();
    }
  }

  // Gradients waiting for each node, one slot per output; summed as they arrive.
  std::unordered_map<Node*, std::vector<Tensor>> pending;
  auto deposit = [&](Node* n, int slot, const Tensor& g) {
    auto& slots = pending[n];
    if (slots.empty()) slots.resize(std::max<size_t>(n->outputs.size(), 1));
    Tensor& s = slots[static_cast<size_t>(slot)];
    s = s.defined() ? ops::add(s, g) : g;
  };
  deposit(start, root_edge.output_nr, seed);

  NoGradGuard no_grad;  // backward kernels build no graph (no double backward)
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node* node = *it;
    auto found = pending.find(node);
    if (found == pending.end()) continue;  // no gradient reached it
    std::vector<Tensor> grads = std::move(found->second);
    pending.erase(found);
    for (size_t i = 0; i < node->outputs.size(); ++i) {
      if (!grads[i].defined()) {
        const OutputMeta& m = node->outputs[i];
        grads[i] = Tensor::zeros(m.shape, m.dtype, m.device);
      }
    }
    // What is already waiting for each input's destination, for a node that can add it in its own
    // kernel (Node::takes_waiting); taken out of `pending` so that it is not added twice.
    std::vector<Tensor> waiting;
    if (node->takes_waiting()) {
      waiting.resize(node->next.size());
      for (size_t i = 0; i < node->next.size(); ++i) {
        const Edge& e = node->next[i];
        if (!e.fn) continue;
        bool first = true;  // only the first input with this destination is offered its gradient
        for (size_t j = 0; j < i; ++j)
          first = first && !(node->next[j].fn == e.fn && node->next[j].output_nr == e.output_nr);
        auto it_p = pending.find(e.fn.get());
        if (!first || it_p == pending.end()) continue;
        Tensor& slot = it_p->second[static_cast<size_t>(e.output_nr)];
        waiting[i] = slot;
        slot = Tensor();
      }
    }
    std::vector<Tensor> in_grads =
        node->takes_waiting() ? node->backward_with_waiting(grads, waiting) : node->backward(grads);
    for (size_t i = 0; i < node->next.size(); ++i) {
      const Edge& e = node->next[i];
      if (!e.fn) continue;
      // A waiting gradient the node did not take goes back first: the sum is then formed in the
      // same order as without the offer.
      if (i < waiting.size() && waiting[i].defined()) deposit(e.fn.get(), e.output_nr, waiting[i]);
      check(i < in_grads.size() && in_grads[i].defined(),
            fmt::format("{}: backward returned no gradient for input {}", node->name(), i));
      const OutputMeta* m =
          e.fn->outputs.empty() ? nullptr : &e.fn->outputs[static_cast<size_t>(e.output_nr)];
      if (m)
        check(in_grads[i].shape() == m->shape,
              fmt::format("{}: gradient for input {} has shape {}, expected {}", node->name(), i,
                          in_grads[i].shape().str(), m->shape.str()));
      deposit(e.fn.get(), e.output_nr, in_grads[i]);
    }
  }
}

}  // namespace psvae::ag
