// The CUDA broadcasting ops (kernels/cuda/broadcast.cu: add, sub, mul, div, where, expand) and
// reductions (kernels/cuda/reduce.cu: sum_to, sum_dim, max_dim, max_dim_bwd, var_dim,
// var_dim_bwd) against the CPU kernels run in f64 on the same (dtype-rounded) inputs, outputs
// poisoned with NaN, every element compared by the relative norm error ||out - ref|| / ||ref||:
// under 1e-5 in f32, 1e-12 in f64, 1e-2 in bf16 (a NaN where the reference is finite fails; a
// NaN or inf in the reference must be matched). Copies (where, expand) and argmax must match
// exactly. Shapes cover every kernel path: one-element and 16-byte packs, misaligned views, rank
// 1 to 6 broadcasts, row (inner == 1) and column reductions, chunks split over R (two passes),
// sizes 1 and odd, R up to 40000. Skipped without a CUDA device.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/cuda_compare.h"
#include "common/test_util.h"
#include "kernels/op_table.h"
#include "kernels/ops.h"

using namespace psvae;
using kernels::Op;
using test::as_dtype;
using test::check_bitwise_equal;
using test::check_close;
using test::on_gpu;
using test::tolerance;
using test::widen;

namespace {

const Device kGpu = Device::cuda(0);

std::vector<int64_t> i64s(const Tensor& t) { return t.to(Device::cpu()).to_vector<int64_t>(); }

// Random values in [lo, hi) rounded to dt; integers in [lo, hi] for integer dtypes.
Tensor random(Generator& g, const Shape& s, DType dt, double lo, double hi) {
  Tensor t = test::uniform(g, s, lo, hi + (is_floating(dt) ? 0.0 : 1.0));
  if (!is_floating(dt)) {
    std::vector<double> v = test::as_doubles(t);
    for (double& x : v) x = std::floor(x);
    t = Tensor::from_vector(v, s);
  }
  return as_dtype(t, dt);
}

// x's shape reduced over dim, the dim kept as 1 or dropped (the kernels see only the numel).
Shape reduced(const Shape& s, int dim, bool keep) {
  Shape r;
  for (int d = 0; d < s.rank(); ++d) {
    if (d != dim)
      r.push_back(s[d]);
    else if (keep)
      r.push_back(1);
  }
  return r;
}

const DType kFloatTypes[] = {DType::F32, DType::BF16, DType::F64};

// Sums take inputs in [-0.5, 1.5): mixed signs, but a mean of 0.5 keeps every sum away from 0, so
// that f32 rounding (absolute, ~1e-7 x the partial sums) stays far below the 1e-5 relative
// tolerance even for a single output; a zero-mean sum of 10^5 terms can land near 0 by chance.
constexpr double kSumLo = -0.5, kSumHi = 1.5;

}  // namespace

TEST_CASE("cuda broadcast: add, sub, mul, div with NumPy broadcasting match the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(101);
  struct Case {
    Shape a, b;
  };
  const std::vector<Case> cases = {
      {{7, 33}, {}},                          // scalar operand: the plain kernel
      {{1}, {37, 129}},                       // one-element first operand
      {{37, 129}, {37, 129}},                 // equal shapes, one-element packs
      {{16, 64}, {16, 64}},                   // equal shapes, 16-byte packs
      {{37, 129}, {129}},                     // row (bias), odd width: one-element packs
      {{129}, {37, 129}},                     // the same, broadcast operand first
      {{4, 16, 64}, {64}},                    // row, 16-byte packs: (N, T, D) op (D)
      {{37, 129}, {37, 1}},                   // column
      {{37, 1}, {37, 128}},                   // column first, packs with a repeated element
      {{3, 17, 65}, {3, 1, 65}},              // middle dim, odd
      {{4, 16, 64}, {4, 1, 64}},              // middle dim, packs: (N, T, D) op (N, 1, D)
      {{4, 1, 64}, {4, 16, 64}},              // the same, broadcast operand first
      {{5, 1}, {1, 7}},                       // both operands broadcast
      {{2, 1, 3, 1}, {1, 5, 1, 7}},           // rank 4, both broadcast
      {{1, 5, 1, 8}, {2, 1, 3, 1}},           // rank 4, packs of the first operand
      {{2, 1, 3, 1, 2, 5}, {4, 1, 3, 2, 1}},  // rank 6 against rank 5
      {{3, 1, 8}, {3, 1}},                    // -> (3, 3, 8)
      {{0, 5}, {5}},                          // empty output
  };
  for (Op op : {Op::add, Op::sub, Op::mul, Op::div}) {
    for (const Case& k : cases) {
      const Shape ys = ops::broadcast_shapes(k.a, k.b);
      for (DType dt : kFloatTypes) {
        CAPTURE(std::string(kernels::op_name(op)));
        CAPTURE(k.a.str());
        CAPTURE(k.b.str());
        CAPTURE(std::string(dtype_name(dt)));
        // b (a divisor for div) stays in [0.5, 2]; a may be anything.
        const Tensor a = random(g, k.a, dt, -2, 2), b = random(g, k.b, dt, 0.5, 2);
        const Tensor ref =
            test::run_op(op, {widen(a), widen(b)}, {{ys, DType::F64}}, Device::cpu())[0];
        const Tensor got = test::run_op(op, on_gpu({a, b}), {{ys, dt}}, kGpu)[0];
        check_close(got, ref, tolerance(dt));
      }
    }
  }
  // Misaligned views (one element into their storage) on a shape that would take 16-byte packs.
  for (DType dt : kFloatTypes) {
    CAPTURE(std::string(dtype_name(dt)));
    const Tensor a_all = random(g, {1 + 4 * 16 * 64}, dt, -2, 2);
    const Tensor b_all = random(g, {1 + 4 * 64}, dt, 0.5, 2);
    const Tensor a = a_all.to(kGpu).slice0(1, 1 + 4 * 16 * 64).reshape({4, 16, 64});
    const Tensor b = b_all.to(kGpu).slice0(1, 1 + 4 * 64).reshape({4, 1, 64});
    const Tensor ref =
        test::run_op(Op::mul, {widen(a), widen(b)}, {{{4, 16, 64}, DType::F64}}, Device::cpu())[0];
    check_close(test::run_op(Op::mul, {a, b}, {{{4, 16, 64}, dt}}, kGpu)[0], ref, tolerance(dt));
  }
  // Through the typed wrapper: the whole dispatch path.
  const Tensor x = random(g, {3, 7}, DType::F32, -1, 1), bias = random(g, {7}, DType::F32, -1, 1);
  check_close(ops::add(x.to(kGpu), bias.to(kGpu)), ops::add(widen(x), widen(bias)), 1e-6);
  // Bad input is refused naming the op.
  const Tensor x35 = Tensor::zeros({3, 5}, DType::F32, kGpu);
  const Tensor x45 = Tensor::zeros({4, 5}, DType::F32, kGpu);
  CHECK_THROWS_WITH_AS(test::run_op(Op::add, {x35, x45}, {{{4, 5}, DType::F32}}, kGpu),
                       doctest::Contains("add"), std::invalid_argument);
  const Tensor x5d = Tensor::zeros({5}, DType::F64, kGpu);
  CHECK_THROWS_WITH_AS(test::run_op(Op::mul, {x35, x5d}, {{{3, 5}, DType::F32}}, kGpu),
                       doctest::Contains("mul"), std::exception);
}

TEST_CASE("cuda broadcast: where with a condition of every dtype matches the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(102);
  struct Case {
    Shape cond, a, b;
  };
  const std::vector<Case> cases = {
      {{6, 5}, {6, 5}, {6, 5}},                    // equal shapes
      {{4, 1, 7}, {1, 5, 7}, {7}},                 // all three broadcast
      {{}, {3, 4}, {1}},                           // scalar condition and branch
      {{2, 1, 3, 1}, {1, 5, 1, 7}, {2, 5, 3, 7}},  // rank 4
      {{64, 1}, {64, 64}, {1, 64}},                // packs; a condition repeated along rows
      {{16, 64}, {16, 64}, {64}},                  // packs; the condition element by element
  };
  for (const Case& k : cases) {
    const Shape ys = ops::broadcast_shapes(ops::broadcast_shapes(k.cond, k.a), k.b);
    for (DType ct : {DType::F32, DType::BF16, DType::F64, DType::I32, DType::I64}) {
      for (DType dt : kFloatTypes) {
        CAPTURE(k.cond.str());
        CAPTURE(k.a.str());
        CAPTURE(k.b.str());
        CAPTURE(std::string(dtype_name(ct)));
        CAPTURE(std::string(dtype_name(dt)));
        // Conditions -1, 0, 1, 2 and, for floats, -0 (false: bf16 is read by its bits).
        std::vector<double> cv = test::as_doubles(random(g, k.cond, DType::I32, -1, 2));
        if (is_floating(ct))
          for (size_t i = 0; i < cv.size(); i += 3)
            if (cv[i] == 0) cv[i] = -0.0;
        const Tensor cond = as_dtype(Tensor::from_vector(cv, k.cond), ct);
        const Tensor a = random(g, k.a, dt, -2, 2), b = random(g, k.b, dt, -2, 2);
        const Tensor ref = test::run_op(Op::where, {cond, widen(a), widen(b)}, {{ys, DType::F64}},
                                        Device::cpu())[0];
        const Tensor got = test::run_op(Op::where, on_gpu({cond, a, b}), {{ys, dt}}, kGpu)[0];
        check_close(got, ref, 0.0);  // a copy of one branch: exact
      }
    }
  }
  const Tensor c = Tensor::zeros({3}, DType::I32, kGpu), a = Tensor::zeros({3}, DType::F32, kGpu);
  const Tensor b = Tensor::zeros({4}, DType::F32, kGpu);
  CHECK_THROWS_WITH_AS(test::run_op(Op::where, {c, a, b}, {{{3}, DType::F32}}, kGpu),
                       doctest::Contains("where"), std::invalid_argument);
}

TEST_CASE("cuda broadcast: expand of every dtype matches the CPU bit for bit") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(103);
  struct Case {
    Shape x, y;
  };
  const std::vector<Case> cases = {
      {{64}, {4, 16, 64}},        // bias to activations, packs
      {{129}, {3, 129}},          // odd row
      {{5, 1}, {5, 8}},           // column
      {{3, 1, 5}, {2, 3, 4, 5}},  // middle and leading dims
      {{2, 1, 3, 1}, {2, 5, 3, 7}},
      {{}, {3, 4}},  // scalar
      {{1}, {7}},
      {{1}, {0}},  // empty output
  };
  for (const Case& k : cases) {
    for (DType dt : {DType::F32, DType::BF16, DType::F64, DType::I32, DType::I64}) {
      CAPTURE(k.x.str());
      CAPTURE(k.y.str());
      CAPTURE(std::string(dtype_name(dt)));
      const Tensor x = random(g, k.x, dt, -100, 100);
      const Tensor ref = test::run_op(Op::expand, {x}, {{k.y, dt}}, Device::cpu())[0];
      check_bitwise_equal(test::run_op(Op::expand, {x.to(kGpu)}, {{k.y, dt}}, kGpu)[0], ref);
    }
  }
  CHECK_THROWS_WITH_AS(
      test::run_op(Op::expand, {Tensor::zeros({3}, DType::F32, kGpu)}, {{{4}, DType::F32}}, kGpu),
      doctest::Contains("expand"), std::invalid_argument);
}

TEST_CASE("cuda reduce: sum_to matches the CPU and is deterministic") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(104);
  struct Case {
    Shape x, y;
  };
  const std::vector<Case> cases = {
      {{65, 33}, {33}},              // leading dim: column reduction
      {{65, 33}, {65, 1}},           // trailing dim: row reduction
      {{3, 17, 5}, {17, 1}},         // two summed groups: two steps through an intermediate
      {{2, 5, 3, 7}, {2, 1, 3, 1}},  // summed, kept, summed, kept ... interleaved
      {{2, 5, 3, 7}, {5, 1, 7}},
      {{4, 6}, {1, 1}},
      {{4, 6}, {}},
      {{7}, {}},
      {{5000, 3}, {3}},     // long column, inner 3
      {{3, 5000}, {3, 1}},  // long rows
      {{1, 5}, {5}},        // only a size-1 dim differs: a copy
      {{2, 3, 4}, {1, 3, 4}},
      {{4097, 96}, {96}},      // R split in chunks (two passes), 16-byte columns
      {{2048, 1152}, {1152}},  // the DiT bias gradient (N*T, D) -> (D), smaller N*T
      {{1, 100003}, {1}},      // one long row split in chunks
      {{2, 0, 3}, {2, 1, 3}},  // summing an empty dim: zeros
  };
  for (const Case& k : cases) {
    for (DType dt : kFloatTypes) {
      CAPTURE(k.x.str());
      CAPTURE(k.y.str());
      CAPTURE(std::string(dtype_name(dt)));
      const Tensor x = random(g, k.x, dt, kSumLo, kSumHi);
      const Tensor ref =
          test::run_op(Op::sum_to, {widen(x)}, {{k.y, DType::F64}}, Device::cpu())[0];
      const Tensor got = test::run_op(Op::sum_to, {x.to(kGpu)}, {{k.y, dt}}, kGpu)[0];
      check_close(got, ref, tolerance(dt));
    }
  }
  // Run twice: bit-identical (fixed-order reduction, no atomics).
  const Tensor x = random(g, {4097, 96}, DType::F32, -1, 1).to(kGpu);
  check_bitwise_equal(test::run_op(Op::sum_to, {x}, {{{96}, DType::F32}}, kGpu)[0],
                      test::run_op(Op::sum_to, {x}, {{{96}, DType::F32}}, kGpu)[0]);
  CHECK_THROWS_WITH_AS(test::run_op(Op::sum_to, {x}, {{{95}, DType::F32}}, kGpu),
                       doctest::Contains("sum_to"), std::invalid_argument);
}

namespace {
// Rank 1 to 4, odd sizes, size-1 dims; R up to 5001 over every dim; two-pass splits: one long row
// (40000), a long column of inner 3, and (2048, 64) over dim 0 (16-byte columns).
const std::vector<Shape> kReduceShapes = {{7},          {3, 5, 7},  {1, 4999, 3}, {5, 1, 33},
                                          {2, 3, 5, 7}, {4, 5001},  {5001, 5},    {64, 1152},
                                          {2, 40000},   {40000, 3}, {2048, 64}};
}  // namespace

TEST_CASE("cuda reduce: sum_dim over every dim matches the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(105);
  for (const Shape& s : kReduceShapes) {
    for (int dim = 0; dim < s.rank(); ++dim) {
      for (DType dt : kFloatTypes) {
        CAPTURE(s.str());
        CAPTURE(dim);
        CAPTURE(std::string(dtype_name(dt)));
        const Shape ys = reduced(s, dim, dim % 2 == 0);
        const Tensor x = random(g, s, dt, kSumLo, kSumHi);
        const Tensor ref =
            test::run_op(Op::sum_dim, {widen(x)}, {{ys, DType::F64}}, Device::cpu(), {dim})[0];
        check_close(test::run_op(Op::sum_dim, {x.to(kGpu)}, {{ys, dt}}, kGpu, {dim})[0], ref,
                    tolerance(dt));
      }
    }
  }
  // The typed wrapper; an empty dim sums to zeros; a bad dim names the op.
  const Tensor x = random(g, {3, 4, 5}, DType::F32, -1, 1);
  check_close(ops::sum(x.to(kGpu), 1, false), ops::sum(widen(x), 1, false), 1e-5);
  const Tensor e = Tensor::zeros({3, 0, 2}, DType::F32, kGpu);
  check_close(test::run_op(Op::sum_dim, {e}, {{{3, 2}, DType::F32}}, kGpu, {1})[0],
              Tensor::zeros({3, 2}, DType::F64), 0.0);
  CHECK_THROWS_WITH_AS(test::run_op(Op::sum_dim, {e}, {{{3, 2}, DType::F32}}, kGpu, {3}),
                       doctest::Contains("sum_dim"), std::invalid_argument);
}

TEST_CASE("cuda reduce: max_dim and max_dim_bwd match the CPU, argmax exactly") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(106);
  // Continuous values (distinct) and small integers (ties everywhere: the first index must win).
  for (bool ties : {false, true}) {
    for (const Shape& s : kReduceShapes) {
      for (int dim = 0; dim < s.rank(); ++dim) {
        for (DType dt : kFloatTypes) {
          CAPTURE(ties);
          CAPTURE(s.str());
          CAPTURE(dim);
          CAPTURE(std::string(dtype_name(dt)));
          const Shape ys = reduced(s, dim, dim % 2 == 1);
          Tensor x = random(g, s, dt, -3, 3);
          if (ties) x = as_dtype(random(g, s, DType::I32, -2, 2), dt);
          const std::vector<Tensor> ref = test::run_op(
              Op::max_dim, {widen(x)}, {{ys, DType::F64}, {ys, DType::I64}}, Device::cpu(), {dim});
          const std::vector<Tensor> got =
              test::run_op(Op::max_dim, {x.to(kGpu)}, {{ys, dt}, {ys, DType::I64}}, kGpu, {dim});
          check_close(got[0], ref[0], 0.0);  // the max is an element: exact
          CHECK(i64s(got[1]) == i64s(ref[1]));
          // Backward: gy routed to the argmax.
          const Tensor gy = random(g, ys, dt, -1, 1);
          const Tensor gx_ref = test::run_op(Op::max_dim_bwd, {widen(gy), ref[1]},
                                             {{s, DType::F64}}, Device::cpu(), {dim})[0];
          const Tensor gx = test::run_op(Op::max_dim_bwd, {gy.to(kGpu), ref[1].to(kGpu)}, {{s, dt}},
                                         kGpu, {dim})[0];
          check_close(gx, gx_ref, 0.0);
        }
      }
    }
  }
  // NaN wins, the first NaN over later ones; +0 and -0 tie (first wins); all -inf gives index 0.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (DType dt : kFloatTypes) {
    CAPTURE(std::string(dtype_name(dt)));
    for (const Shape& s : {Shape{3, 4999, 5}, Shape{6, 300}, Shape{300, 6}}) {
      for (int dim = 0; dim < s.rank(); ++dim) {
        CAPTURE(s.str());
        CAPTURE(dim);
        std::vector<double> v = test::as_doubles(random(g, s, DType::F64, -3, 3));
        for (size_t i = 0; i < v.size(); ++i) {
          if (i % 97 == 5) v[i] = nan;
          if (i % 13 == 2) v[i] = -0.0;
          if (i % 17 == 3) v[i] = 0.0;
        }
        const Tensor x = as_dtype(Tensor::from_vector(v, s), dt);
        const Shape ys = reduced(s, dim, false);
        const std::vector<Tensor> ref = test::run_op(
            Op::max_dim, {widen(x)}, {{ys, DType::F64}, {ys, DType::I64}}, Device::cpu(), {dim});
        const std::vector<Tensor> got =
            test::run_op(Op::max_dim, {x.to(kGpu)}, {{ys, dt}, {ys, DType::I64}}, kGpu, {dim});
        check_close(got[0], ref[0], 0.0);
        CHECK(i64s(got[1]) == i64s(ref[1]));
      }
    }
    // All -inf rows, zeros of both signs only, and a row that is all NaN.
    const std::vector<double> v = {-inf, -inf, -inf, -0.0, 0.0, -0.0, nan, nan, nan};
    const Tensor x = as_dtype(Tensor::from_vector(v, {3, 3}), dt);
    const std::vector<Tensor> got =
        test::run_op(Op::max_dim, {x.to(kGpu)}, {{{3}, dt}, {{3}, DType::I64}}, kGpu, {1});
    CHECK(i64s(got[1]) == std::vector<int64_t>{0, 0, 0});
    const std::vector<double> vals = test::as_doubles(got[0]);
    CHECK(vals[0] == -inf);
    CHECK((vals[1] == 0 && std::signbit(vals[1])));  // -0 first: it wins the tie
    CHECK(std::isnan(vals[2]));
  }
  CHECK_THROWS_WITH_AS(test::run_op(Op::max_dim, {Tensor::zeros({3, 0}, DType::F32, kGpu)},
                                    {{{3}, DType::F32}, {{3}, DType::I64}}, kGpu, {1}),
                       doctest::Contains("max_dim"), std::invalid_argument);
}

TEST_CASE("cuda reduce: var_dim (correction 0 and 1) and var_dim_bwd match the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(107);
  for (int corr : {0, 1}) {
    for (const Shape& s : kReduceShapes) {
      for (int dim = 0; dim < s.rank(); ++dim) {
        for (DType dt : kFloatTypes) {
          CAPTURE(corr);
          CAPTURE(s.str());
          CAPTURE(dim);
          CAPTURE(std::string(dtype_name(dt)));
          const Shape ys = reduced(s, dim, dim % 2 == 0);
          // Offset 10: |mean| >> std, where a one-pass E[x^2] - E[x]^2 would cancel.
          const Tensor x = random(g, s, dt, 9, 11);
          const std::vector<Tensor> ref =
              test::run_op(Op::var_dim, {widen(x)}, {{ys, DType::F64}, {ys, DType::F64}},
                           Device::cpu(), {dim, corr});
          const std::vector<Tensor> got =
              test::run_op(Op::var_dim, {x.to(kGpu)}, {{ys, dt}, {ys, dt}}, kGpu, {dim, corr});
          // R = 1 with correction 1 is 0 / 0: NaN on both sides, which compare() accepts.
          check_close(got[0], ref[0], tolerance(dt));
          check_close(got[1], ref[1], tolerance(dt));
          // Backward, fed the mean rounded to the dtype on both sides.
          const Tensor gy = random(g, ys, dt, -1, 1);
          const Tensor mean = as_dtype(ref[1], dt);
          const Tensor gx_ref = test::run_op(Op::var_dim_bwd, {widen(gy), widen(x), widen(mean)},
                                             {{s, DType::F64}}, Device::cpu(), {dim, corr})[0];
          const Tensor gx =
              test::run_op(Op::var_dim_bwd, on_gpu({gy, x, mean}), {{s, dt}}, kGpu, {dim, corr})[0];
          check_close(gx, gx_ref, tolerance(dt));
        }
      }
    }
  }
  const Tensor x = Tensor::zeros({3, 4}, DType::F32, kGpu);
  CHECK_THROWS_WITH_AS(
      test::run_op(Op::var_dim, {x}, {{{3}, DType::F32}, {{3}, DType::F32}}, kGpu, {1, 2}),
      doctest::Contains("var_dim"), std::invalid_argument);
}
