// Finite-difference gradient check in float64 on the CPU.
//
// For f: inputs -> one Var, the check draws a fixed random cotangent W (same shape as the
// output), takes s(x) = sum(f(x) * W), and compares the analytic gradient of s (one backward) with
// central differences (s(x + eps e_i) - s(x - eps e_i)) / (2 eps) for every element i of every
// input in `wrt`. An element passes when |analytic - numeric| <= atol + rtol * |numeric|.
// Central differences have O(eps^2) truncation error; with eps = 1e-6 in f64 the rounding error is
// about 1e-16 / 1e-6 = 1e-10 relative to s, far inside the default tolerances.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "autograd/var.h"

namespace psvae::ag {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-4;
  uint64_t seed = 1234;  // for the cotangent W
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_err = 0;
  double max_rel_err = 0;
  std::string report;  // first failures: "input 1 element 7: analytic 0.31 numeric 0.29"
};

// inputs must be f64 CPU tensors; wrt[i] says whether input i is checked (it then requires grad).
GradcheckResult gradcheck(const std::function<Var(const std::vector<Var>&)>& f,
                          const std::vector<Tensor>& inputs, const std::vector<bool>& wrt,
                          const GradcheckOptions& opt = {});

}  // namespace psvae::ag
