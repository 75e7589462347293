// The op-table harness (after ggml's test-backend-ops): every op of kernels/op_list.h is covered
// by an OpSpec registered here, and one test walks them all:
//   1. f64 forward (through the autograd function) against an independent naive f64 reference;
//   2. f32 forward against the same reference (relative norm error, tolerance per spec), and a
//      bf16 forward against the reference on the bf16-rounded inputs;
//   3. finite-difference gradcheck in f64 of every differentiable input, which exercises the
//      op's backward entry;
//   4. coverage: every op in the table has a CPU kernel and appears in some spec's `covers`.
// New tensors are poisoned with NaN while the harness runs, so an unwritten output element fails.
// A spec file per kernel family: tests/ops/spec_<family>.cpp.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "kernels/op_table.h"
#include "tensor/random.h"

namespace psvae::test {

// One test case: inputs and the op parameters both apply() and reference() read.
struct OpCase {
  std::string label;           // e.g. "(3, 5) + (5)"
  std::vector<Tensor> inputs;  // f64 (or integer) CPU tensors
  std::vector<bool> wrt;       // inputs to gradcheck; empty = every floating input
  std::vector<int64_t> ints;   // op parameters for this case
  std::vector<double> reals;
  bool gradcheck = true;  // false for large cases that test only the forward
};

struct OpSpec {
  std::string name;                 // test name, usually the forward op's name
  std::vector<kernels::Op> covers;  // table entries this spec exercises (forward and backward)
  std::function<std::vector<OpCase>(Generator&)> cases;
  // The op under test, through its autograd function. Called with f64 and with f32 inputs
  // (floating inputs converted, integer ones unchanged).
  std::function<std::vector<ag::Var>(const std::vector<ag::Var>&, const OpCase&)> apply;
  // Independent naive reference in f64 (plain loops, not the kernel), one tensor per output.
  std::function<std::vector<Tensor>(const std::vector<Tensor>&, const OpCase&)> reference;
  double f64_tol = 1e-12;  // relative norm error, f64 forward vs reference
  double f32_tol = 1e-5;   // relative norm error, f32 forward vs reference
  // bf16 forward (CPU, widened to f32 inside) vs the reference on the same bf16-rounded inputs:
  // each stored output carries up to 2^-9 relative rounding, so 1e-2 as for the CUDA bf16 kernels.
  double bf16_tol = 1e-2;
  std::vector<bool> grad_outputs;  // outputs to gradcheck; empty = every floating output
  bool gradcheck = true;
  double gradcheck_atol = 1e-6, gradcheck_rtol = 1e-4;
};

// Registers a spec; use through PSVAE_OP_SPEC.
int register_op_spec(OpSpec (*make)());
const std::vector<OpSpec>& all_op_specs();

// Wraps a single-output function: apply returns {f(inputs)}.
using VarFn = std::function<ag::Var(const std::vector<ag::Var>&, const OpCase&)>;
inline std::function<std::vector<ag::Var>(const std::vector<ag::Var>&, const OpCase&)> single(
    VarFn f) {
  return
      [f](const std::vector<ag::Var>& v, const OpCase& c) { return std::vector<ag::Var>{f(v, c)}; };
}

}  // namespace psvae::test

#define PSVAE_OP_SPEC_CAT2(a, b) a##b
#define PSVAE_OP_SPEC_CAT(a, b) PSVAE_OP_SPEC_CAT2(a, b)
// PSVAE_OP_SPEC(unique_id) { OpSpec s; ...; return s; }
#define PSVAE_OP_SPEC(id)                                     \
  static ::psvae::test::OpSpec psvae_make_spec_##id();        \
  static const int PSVAE_OP_SPEC_CAT(psvae_spec_reg_, id) =   \
      ::psvae::test::register_op_spec(&psvae_make_spec_##id); \
  static ::psvae::test::OpSpec psvae_make_spec_##id()
