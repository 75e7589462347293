#include "autograd/gradcheck.h"

#include <fmt/format.h>

#include <cmath>
#include <random>

#include "autograd/grad_mode.h"

namespace psvae::ag {

namespace {
// s = sum(out * w), accumulated in long double so the finite difference is not limited by the
// order of summation.
double project(const Var& out, const std::vector<double>& w) {
  const double* p = out.data().data<double>();
  long double s = 0;
  for (size_t i = 0; i < w.size(); ++i) s += static_cast<long double>(p[i]) * w[i];
  return static_cast<double>(s);
}
}  // namespace

GradcheckResult gradcheck(const std::function<Var(const std::vector<Var>&)>& f,
                          const std::vector<Tensor>& inputs, const std::vector<bool>& wrt,
                          const GradcheckOptions& opt) {
  check(wrt.size() == inputs.size(), "gradcheck: wrt must have one flag per input");
  std::vector<Var> vars;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    check(t.device().is_cpu(), "gradcheck: inputs must be on the CPU");
    check(!wrt[i] || t.dtype() == DType::F64,
          fmt::format("gradcheck: input {} is {}, checked inputs must be f64", i,
                      dtype_name(t.dtype())));
    vars.emplace_back(t.clone(), static_cast<bool>(wrt[i]));
  }

  GradcheckResult res;
  Var out = f(vars);
  check(out.dtype() == DType::F64, "gradcheck: the function's output must be f64");
  std::mt19937_64 rng(opt.seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> w(static_cast<size_t>(out.numel()));
  for (double& x : w) x = normal(rng);
  if (!out.requires_grad()) {
    res.ok = false;
    res.report = "output does not require grad: no checked input reaches it";
    return res;
  }
  out.backward(Tensor::from_vector(w, out.shape()));

  int failures = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!wrt[i]) continue;
    Tensor analytic = vars[i].grad();
    if (!analytic.defined()) analytic = Tensor::zeros(inputs[i].shape(), DType::F64);
    const double* a = analytic.data<double>();
    double* x = vars[i].data().data<double>();
    NoGradGuard no_grad;
    for (int64_t e = 0; e < inputs[i].numel(); ++e) {
      double orig = x[e];
      x[e] = orig + opt.eps;
      double sp = project(f(vars), w);
      x[e] = orig - opt.eps;
      double sm = project(f(vars), w);
      x[e] = orig;
      double numeric = (sp - sm) / (2 * opt.eps);
      double err = std::fabs(a[e] - numeric);
      double rel = err / std::max(std::fabs(numeric), 1e-300);
      res.max_abs_err = std::max(res.max_abs_err, err);
      if (std::fabs(numeric) > opt.atol) res.max_rel_err = std::max(res.max_rel_err, rel);
      bool pass = err <= opt.atol + opt.rtol * std::fabs(numeric) && std::isfinite(a[e]);
      if (!pass) {
        res.ok = false;
        if (failures++ < 5)
          res.report += fmt::format("input {} element {}: analytic {:.10g} numeric {:.10g}\n", i, e,
                                    a[e], numeric);
      }
    }
  }
  if (failures > 5) res.report += fmt::format("... {} failing elements in all\n", failures);
  return res;
}

}  // namespace psvae::ag
