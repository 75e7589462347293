// The walk over every op spec (see op_harness.h for what is checked and why).
#include <doctest/doctest.h>

#include <cstdlib>
#include <map>
#include <set>

#include "autograd/grad_mode.h"
#include "autograd/gradcheck.h"
#include "common/test_util.h"
#include "op_harness.h"

namespace psvae::test {

namespace {
std::vector<OpSpec (*)()>& makers() {
  static std::vector<OpSpec (*)()> m;
  return m;
}

std::vector<ag::Var> as_vars(const std::vector<Tensor>& ts, DType float_dtype, bool grad) {
  std::vector<ag::Var> v;
  for (const Tensor& t : ts) {
    if (is_floating(t.dtype()))
      v.emplace_back(ops::cast(t, float_dtype).clone(), grad);
    else
      v.emplace_back(t, false);
  }
  return v;
}

// PSVAE_OP_FILTER=layernorm,conv2d restricts the walk to those specs (for work on one family).
bool selected(const std::string& name) {
  const char* f = std::getenv("PSVAE_OP_FILTER");
  if (!f || !*f) return true;
  std::string list = std::string(",") + f + ",";
  return list.find("," + name + ",") != std::string::npos;
}

std::vector<bool> default_wrt(const OpCase& c) {
  if (!c.wrt.empty()) return c.wrt;
  std::vector<bool> w;
  for (const Tensor& t : c.inputs) w.push_back(is_floating(t.dtype()));
  return w;
}
}  // namespace

int register_op_spec(OpSpec (*make)()) {
  makers().push_back(make);
  return static_cast<int>(makers().size());
}

const std::vector<OpSpec>& all_op_specs() {
  static const std::vector<OpSpec> specs = [] {
    std::vector<OpSpec> s;
    for (auto* m : makers()) s.push_back(m());
    return s;
  }();
  return specs;
}

TEST_CASE("op table: every op has a CPU kernel and is covered by a spec") {
  std::set<int> covered;
  for (const OpSpec& s : all_op_specs())
    for (kernels::Op op : s.covers) covered.insert(static_cast<int>(op));
  for (const kernels::OpDef& d : kernels::op_table().all()) {
    INFO("op ", d.name);
    bool has_cpu = d.cpu != nullptr;
    CHECK_MESSAGE(has_cpu, "no CPU kernel");
    CHECK(covered.count(static_cast<int>(d.op)) == 1);
  }
}

// In a CUDA build every op has a CUDA kernel too (registration needs no device, so this runs in
// CI; whether the kernels are right is for the test_cuda_*.cpp files, on a GPU).
TEST_CASE("op table: every op has a CUDA kernel in a CUDA build") {
#ifdef PSVAE_WITH_CUDA
  for (const kernels::OpDef& d : kernels::op_table().all()) {
    INFO("op ", d.name);
    const bool has_cuda = d.cuda != nullptr;
    CHECK_MESSAGE(has_cuda, "no CUDA kernel");
  }
#else
  MESSAGE("skipped: CPU-only build");
#endif
}

TEST_CASE("op table: names are unique and round-trip") {
  std::set<std::string> names;
  for (const kernels::OpDef& d : kernels::op_table().all()) {
    CHECK(names.insert(d.name).second);
    CHECK(kernels::op_by_name(d.name) == d.op);
  }
  CHECK_THROWS_WITH_AS(kernels::op_by_name("no_such_op"), "unknown op 'no_such_op'",
                       std::invalid_argument);
}

namespace {
// Steps 1-3 of op_harness.h for one case. Returns early (after a failed CHECK) when the output
// count is wrong, so that one broken spec cannot stop the walk over the others.
void check_case(const OpSpec& spec, const OpCase& c) {
  std::vector<Tensor> ref = spec.reference(c.inputs, c);
  // 1. f64 forward, 2. f32 forward, both against the f64 reference.
  for (DType dt : {DType::F64, DType::F32}) {
    ag::NoGradGuard ng;
    std::vector<ag::Var> out = spec.apply(as_vars(c.inputs, dt, false), c);
    CHECK(out.size() == ref.size());
    if (out.size() != ref.size()) return;
    for (size_t k = 0; k < out.size(); ++k) {
      bool floating = is_floating(ref[k].dtype());
      if (floating) CHECK(out[k].dtype() == dt);
      double tol = !floating ? 0.0 : (dt == DType::F64 ? spec.f64_tol : spec.f32_tol);
      Comparison cmp = compare(out[k].data(), ref[k], tol);
      INFO(dtype_name(dt), " output ", k, ": ", cmp.why);
      CHECK(cmp.ok);
    }
  }
  // 2b. bf16 on the CPU (kernels::run widens to f32 and rounds the outputs back), against the
  // reference evaluated on the same bf16-rounded inputs, so only the op's own rounding counts.
  {
    ag::NoGradGuard ng;
    std::vector<Tensor> rounded;
    for (const Tensor& t : c.inputs)
      rounded.push_back(is_floating(t.dtype()) ? ops::cast(ops::cast(t, DType::BF16), DType::F64)
                                               : t);
    std::vector<Tensor> ref16 = spec.reference(rounded, c);
    std::vector<ag::Var> out = spec.apply(as_vars(rounded, DType::BF16, false), c);
    CHECK(out.size() == ref16.size());
    if (out.size() != ref16.size()) return;
    for (size_t k = 0; k < out.size(); ++k) {
      const bool floating = is_floating(ref16[k].dtype());
      if (floating) CHECK(out[k].dtype() == DType::BF16);
      Tensor got = floating ? ops::cast(out[k].data(), DType::F64) : out[k].data();
      Comparison cmp = compare(got, ref16[k], floating ? spec.bf16_tol : 0.0);
      INFO("bf16 output ", k, ": ", cmp.why);
      CHECK(cmp.ok);
    }
  }
  // 3. gradcheck, one output at a time.
  if (!spec.gradcheck || !c.gradcheck) return;
  std::vector<bool> wrt = default_wrt(c);
  for (size_t k = 0; k < ref.size(); ++k) {
    bool want = spec.grad_outputs.empty() ? is_floating(ref[k].dtype()) : spec.grad_outputs[k];
    if (!want) continue;
    auto f = [&](const std::vector<ag::Var>& v) { return spec.apply(v, c)[k]; };
    ag::GradcheckOptions opt;
    opt.atol = spec.gradcheck_atol;
    opt.rtol = spec.gradcheck_rtol;
    ag::GradcheckResult r = ag::gradcheck(f, c.inputs, wrt, opt);
    INFO("gradcheck output ", k, ": max abs err ", r.max_abs_err, "\n", r.report);
    CHECK(r.ok);
  }
}
}  // namespace

TEST_CASE("op harness: forward vs f64 reference, f32 and bf16 forwards, gradcheck") {
  PoisonScope poison;
  REQUIRE(!all_op_specs().empty());
  int cases_run = 0;
  for (const OpSpec& spec : all_op_specs()) {
    if (!selected(spec.name)) continue;
    Generator gen(0x5eed0000ULL + std::hash<std::string>{}(spec.name) % 1000);
    std::vector<OpCase> cases = spec.cases(gen);
    CHECK_MESSAGE(!cases.empty(), spec.name, " has no cases");
    for (const OpCase& c : cases) {
      INFO("op ", spec.name, " case ", c.label);
      try {
        check_case(spec, c);
      } catch (const std::exception& e) {
        FAIL_CHECK("threw: " << e.what());
      }
      ++cases_run;
    }
  }
  MESSAGE(cases_run, " op cases checked");
}

}  // namespace psvae::test
