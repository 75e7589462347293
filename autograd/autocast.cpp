#include "autograd/autocast.h"

#include "autograd/functions.h"

namespace psvae::ag {

namespace {
thread_local DType g_compute = DType::F32;

int width(DType d) { return d == DType::BF16 ? 0 : d == DType::F32 ? 1 : 2; }

// Folds one Var into the running widest floating dtype.
void widen(const Var& v, bool& any, DType& w) {
  if (!v.defined() || !is_floating(v.dtype())) return;
  if (!any || width(v.dtype()) > width(w)) w = v.dtype();
  any = true;
}
}  // namespace

DType autocast_dtype() { return g_compute; }

AutocastGuard::AutocastGuard(DType compute) : prev_(g_compute) {
  check(is_floating(compute),
        std::string("AutocastGuard: compute dtype must be floating, got ") + dtype_name(compute));
  g_compute = compute;
}

AutocastGuard::~AutocastGuard() { g_compute = prev_; }

namespace autocast {

Var to(const Var& v, DType dtype) {
  if (!v.defined() || !is_floating(v.dtype()) || v.dtype() == dtype) return v;
  return cast(v, dtype);
}

DType widest(std::initializer_list<const Var*> vs) {
  bool any = false;
  DType w = DType::F32;
  for (const Var* v : vs) widen(*v, any, w);
  return w;
}

std::vector<Var> promote(const std::vector<Var>& vs) {
  if (!autocast_enabled()) return vs;
  bool any = false;
  DType w = DType::F32;
  for (const Var& v : vs) widen(v, any, w);
  std::vector<Var> out;
  out.reserve(vs.size());
  for (const Var& v : vs) out.push_back(to(v, w));
  return out;
}

}  // namespace autocast
}  // namespace psvae::ag
