// Helpers shared by the CUDA-vs-CPU kernel tests (tests/ops/test_cuda_*.cpp): each test rounds its
// inputs to the dtype under test, runs the op through kernels::run on the GPU and, on the same
// values widened to f64, on the CPU, and compares the two by the relative norm error
// ||out - ref|| / ||ref|| under the per-dtype tolerance (1e-5 f32, 1e-2 bf16, 1e-12 f64), or bit
// for bit where the kernel promises determinism. Needs doctest at the use site (REQUIRE/CHECK).
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "kernels/op_table.h"

namespace psvae::test {

// ---- values in a dtype -------------------------------------------------------------------------

// f64 values as a CPU tensor of dtype dt: bf16 rounds through f32 (as psvae::bf16 and the CPU
// cast do), NaN and +-inf stay; integer dtypes round to nearest (callers pass integral values).
inline Tensor from_doubles(const std::vector<double>& v, const Shape& s, DType dt) {
  switch (dt) {
    case DType::F64: return Tensor::from_vector(v, s);
    case DType::F32: return Tensor::from_vector(std::vector<float>(v.begin(), v.end()), s);
    case DType::BF16: {
      std::vector<bf16> b;
      b.reserve(v.size());
      for (double x : v) b.emplace_back(static_cast<float>(x));
      return Tensor::from_vector(b, s);
    }
    case DType::I32: {
      std::vector<int32_t> i;
      i.reserve(v.size());
      for (double x : v) i.push_back(static_cast<int32_t>(std::lround(x)));
      return Tensor::from_vector(i, s);
    }
    case DType::I64: {
      std::vector<int64_t> i;
      i.reserve(v.size());
      for (double x : v) i.push_back(static_cast<int64_t>(std::llround(x)));
      return Tensor::from_vector(i, s);
    }
  }
  return {};
}

// Values of t (any dtype, any device) rounded to dtype dt, as a CPU tensor of dtype dt.
inline Tensor as_dtype(const Tensor& t, DType dt) {
  return from_doubles(as_doubles(t), t.shape(), dt);
}

// The same values as an f64 CPU tensor (exact: f32, bf16 and small integers widen without
// rounding). This is what the CPU reference runs on.
inline Tensor widen(const Tensor& t) { return Tensor::from_vector(as_doubles(t), t.shape()); }
inline std::vector<Tensor> widen(const std::vector<Tensor>& ts) {
  std::vector<Tensor> r;
  for (const Tensor& t : ts) r.push_back(widen(t));
  return r;
}

// Values of t rounded to dt and widened back: an f64 CPU tensor holding dt-exact values.
inline Tensor rounded(const Tensor& t, DType dt) { return widen(as_dtype(t, dt)); }

// Uniform values in [lo, hi) rounded to dt, as a CPU tensor of dtype dt. One draw of
// test::uniform, so a test's generator sequence is the same as drawing f64 and rounding.
inline Tensor uniform_as(Generator& g, const Shape& s, DType dt, double lo = -1.0,
                         double hi = 1.0) {
  return as_dtype(uniform(g, s, lo, hi), dt);
}

// ---- devices -----------------------------------------------------------------------------------

// Copies on device d (undefined tensors stay undefined; a tensor already there is itself, so a
// deliberately misaligned view keeps its address).
inline Tensor to_device(const Tensor& t, Device d) { return t.defined() ? t.to(d) : Tensor(); }
inline std::vector<Tensor> to_device(const std::vector<Tensor>& ts, Device d) {
  std::vector<Tensor> r;
  for (const Tensor& t : ts) r.push_back(to_device(t, d));
  return r;
}
inline Tensor on_gpu(const Tensor& t) { return to_device(t, Device::cuda(0)); }
inline std::vector<Tensor> on_gpu(const std::vector<Tensor>& ts) {
  return to_device(ts, Device::cuda(0));
}

// ---- running an op -----------------------------------------------------------------------------

// An OpCall with the given tensors; ints and reals fill the leading params, the rest stay 0.
inline kernels::OpCall op_call(std::vector<Tensor> in, std::vector<Tensor> out,
                               const std::vector<int64_t>& ints = {},
                               const std::vector<double>& reals = {}) {
  kernels::OpCall c;
  c.in = std::move(in);
  c.out = std::move(out);
  for (size_t i = 0; i < ints.size(); ++i) c.ints.at(i) = ints[i];
  for (size_t i = 0; i < reals.size(); ++i) c.reals.at(i) = reals[i];
  return c;
}

struct OutSpec {
  Shape shape;
  DType dtype;
};

// Runs op on `in` (used where they are: no copies) into fresh outputs on device d, NaN-filled
// under a PoisonScope, and returns the outputs.
inline std::vector<Tensor> run_op(kernels::Op op, const std::vector<Tensor>& in,
                                  const std::vector<OutSpec>& outs, Device d,
                                  const std::vector<int64_t>& ints = {},
                                  const std::vector<double>& reals = {}) {
  std::vector<Tensor> o;
  for (const OutSpec& s : outs) o.push_back(Tensor::empty(s.shape, s.dtype, d));
  kernels::OpCall c = op_call(in, std::move(o), ints, reals);
  kernels::run(op, c);
  return c.out;
}
// The same with every output of one dtype.
inline std::vector<Tensor> run_op(kernels::Op op, const std::vector<Tensor>& in,
                                  const std::vector<Shape>& shapes, DType dt, Device d,
                                  const std::vector<int64_t>& ints = {},
                                  const std::vector<double>& reals = {}) {
  std::vector<OutSpec> outs;
  for (const Shape& s : shapes) outs.push_back({s, dt});
  return run_op(op, in, outs, d, ints, reals);
}

// ---- comparing ---------------------------------------------------------------------------------

// The tolerance of the relative norm error per dtype: 1e-5 f32, 1e-12 f64, 1e-2 bf16.
inline double tolerance(DType dt) {
  return dt == DType::F32 ? 1e-5 : dt == DType::F64 ? 1e-12 : 1e-2;
}

// The sums of squares the norm errors below are made of, in double, in element order.
inline double sum_sq(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return s;
}
inline double sum_sq_diff(const std::vector<double>& got, const std::vector<double>& ref) {
  REQUIRE(got.size() == ref.size());
  double s = 0;
  for (size_t i = 0; i < got.size(); ++i) s += (got[i] - ref[i]) * (got[i] - ref[i]);
  return s;
}

// ||got - ref|| / ||ref|| in double, for `CHECK(rel_norm_error(...) < tol)`. A NaN anywhere (in
// got or ref) gives NaN, which fails every such check. When ||ref||^2 <= zero_floor the error is
// absolute (||got - ref||): with the default 0 an all-zero reference asks for exact zeros; a
// positive floor treats a reference that is zero up to the CPU's own rounding the same way.
inline double rel_norm_error(const std::vector<double>& got, const std::vector<double>& ref,
                             double zero_floor = 0) {
  const double num = sum_sq_diff(got, ref), den = sum_sq(ref);
  return den > zero_floor ? std::sqrt(num) / std::sqrt(den) : std::sqrt(num);
}
inline double rel_norm_error(const Tensor& got, const Tensor& ref, double zero_floor = 0) {
  return rel_norm_error(as_doubles(got), as_doubles(ref), zero_floor);
}

// ||got - ref|| in double, the absolute counterpart of rel_norm_error: for outputs whose exact
// value is zero (or below the dtype's resolution), where a relative error only compares noise;
// callers scale the bound by the problem's natural magnitude, e.g. l2_norm of an input.
inline double abs_norm_error(const Tensor& got, const Tensor& ref) {
  return std::sqrt(sum_sq_diff(as_doubles(got), as_doubles(ref)));
}
// ||t|| in double.
inline double l2_norm(const Tensor& t) { return std::sqrt(sum_sq(as_doubles(t))); }

// test::compare (shapes equal, non-finite reference entries matched exactly, NaN in the output
// fails, relative norm error <= tol) as a doctest check; got may be on any device.
inline void check_close(const Tensor& got, const Tensor& ref, double tol,
                        const std::string& what = "") {
  const Comparison c = compare(got, ref, tol);
  CHECK_MESSAGE(c.ok, (what + (what.empty() ? "" : ": ") + c.why));
}

// The same with the tolerance of dtype dt (see tolerance()).
inline void check_close(const Tensor& got, const Tensor& ref, DType dt,
                        const std::string& what = "") {
  check_close(got, ref, tolerance(dt), what);
}

// How many elements of a and b (any devices) differ in their bits; dtype and shape must match.
inline int64_t bit_mismatches(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
  REQUIRE(ha.dtype() == hb.dtype());
  REQUIRE(ha.shape() == hb.shape());
  return bit_mismatches_host(ha, hb);
}
inline void check_bitwise_equal(const Tensor& a, const Tensor& b, const std::string& what = "") {
  CAPTURE(what);
  CHECK(bit_mismatches(a, b) == 0);
}

// Same dtype, same shape, same bits (false, not a failed REQUIRE, on a dtype or shape mismatch).
inline bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  return bit_mismatches_host(a.to(Device::cpu()), b.to(Device::cpu())) == 0;
}
// Same dtype, same element count, same bits in flat order (shapes may differ, e.g. a 1-D view
// against an n-d result).
inline bool same_bits_flat(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.numel() != b.numel()) return false;
  return bit_mismatches_host(a.to(Device::cpu()), b.to(Device::cpu())) == 0;
}

}  // namespace psvae::test
