// The CUDA layout kernels (kernels/cuda/layout.cu: permute, concat, slice, pad, embedding,
// embedding_bwd) and spatial kernels (kernels/cuda/spatial.cu: nearest and bilinear upsampling,
// average and max pooling, each with its backward) against the CPU kernels, through kernels::run,
// every output poisoned with NaN (0xA5 bytes for integers) so an unwritten element fails.
//   - Pure data movement (permute, concat, slice, pad, embedding, nearest upsampling, max pooling's
//     values and argmax) must match the CPU result EXACTLY, for f32, bf16, f64, i32, i64 where the
//     op takes them: the CPU runs on the same values (widened to f64 for floats).
//   - Arithmetic (bilinear, pooling and upsampling backwards, embedding_bwd) is compared with the
//     f64 CPU result by the relative norm error: < 1e-5 f32, < 1e-2 bf16, < 1e-12 f64. Where the
//     CUDA kernel sums in the CPU kernel's order and accumulator with additions only
//     (embedding_bwd, avg_pool2d forward, nearest and max-pool backwards), f32 must also equal the
//     CPU's f32 result bit for bit: that checks the summation order.
// Shapes are odd (no multiple of a tile or a 16-byte unit), have size-1 and size-0 dims, and views
// at an offset (not 16-byte aligned) test the unit fallbacks. Skipped without a CUDA device.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/cuda_compare.h"
#include "common/test_util.h"
#include "kernels/op_table.h"

using namespace psvae;
using kernels::Op;
using test::bit_mismatches;
using test::from_doubles;
using test::widen;

namespace {

const Device kGpu = Device::cuda(0);
const std::vector<DType> kAllTypes = {DType::F32, DType::BF16, DType::F64, DType::I32, DType::I64};
const std::vector<DType> kFloatTypes = {DType::F32, DType::BF16, DType::F64};

bool is_float(DType dt) { return dt == DType::F32 || dt == DType::BF16 || dt == DType::F64; }

// Random CPU tensor of dtype dt: floats in (-2/3, 4/3) with every mantissa bit used (x (1 + x / 3)
// of a uniform x, so a sum of f64 values depends on its order), integers in [-1000, 1000].
Tensor random(Generator& g, const Shape& s, DType dt) {
  std::vector<double> v = test::as_doubles(test::uniform(g, s, -1, 1));
  for (double& x : v) x = is_float(dt) ? x * (1 + x / 3) : std::round(x * 1000);
  return from_doubles(v, s, dt);
}

// The tensor the CPU reference runs on: floats widened to f64 (exact), integers as they are.
Tensor ref_input(const Tensor& t) { return is_float(t.dtype()) ? widen(t) : t; }

kernels::OpCall call(const std::vector<Tensor>& in, const std::vector<Tensor>& out,
                     const std::vector<int64_t>& ints = {}, double real = 0) {
  return test::op_call(in, out, ints, {real});
}

// Runs op on device d: inputs moved there, outputs allocated as given.
std::vector<Tensor> run(Op op, const std::vector<Tensor>& in,
                        const std::vector<test::OutSpec>& outs, Device d,
                        const std::vector<int64_t>& ints = {}, double real = 0) {
  return test::run_op(op, test::to_device(in, d), outs, d, ints, {real});
}
Tensor run1(Op op, const std::vector<Tensor>& in, const Shape& s, DType dt, Device d,
            const std::vector<int64_t>& ints = {}, double real = 0) {
  return run(op, in, {{s, dt}}, d, ints, real)[0];
}

// Elements whose values differ (NaN equals NaN: a NaN the reference also has is correct, a
// poison NaN where the reference is a number is not).
int64_t mismatches(const Tensor& got, const Tensor& ref) {
  REQUIRE(got.shape() == ref.shape());
  std::vector<double> a = test::as_doubles(got), b = test::as_doubles(ref);
  int64_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i)
    bad += !(a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i])));
  return bad;
}

// got (any device, dtype dt) against the f64 reference, by the relative norm error.
void check_close(const Tensor& got, const Tensor& ref) { test::check_close(got, ref, got.dtype()); }

std::string str(const std::vector<int64_t>& v) {
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + ")";
}

// Every permutation of 0..r-1.
std::vector<std::vector<int64_t>> all_perms(int r) {
  std::vector<int64_t> p(static_cast<size_t>(r));
  std::iota(p.begin(), p.end(), 0);
  std::vector<std::vector<int64_t>> out;
  do out.push_back(p);
  while (std::next_permutation(p.begin(), p.end()));
  return out;
}

Shape permuted(const Shape& s, const std::vector<int64_t>& perm) {
  std::vector<int64_t> d;
  for (int64_t p : perm) d.push_back(s[static_cast<int>(p)]);
  return Shape(d);
}

// A GPU copy of x that starts `lead` elements into its buffer: the kernels see an address that is
// not 16-byte aligned when lead * element size is not a multiple of 16.
Tensor gpu_at_offset(const Tensor& x, int64_t lead) {
  Tensor big = Tensor::zeros({lead + x.numel()}, x.dtype(), kGpu);
  Tensor view = big.slice0(lead, lead + x.numel()).reshape(x.shape());
  view.copy_from(x);
  return view;
}

}  // namespace

// ---- layout -------------------------------------------------------------------------------------

TEST_CASE("cuda layout: permute of rank 0-6, every dtype, matches the CPU exactly") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(101);
  struct P {
    Shape shape;
    std::vector<std::vector<int64_t>> perms;
  };
  std::vector<P> ps = {
      {{}, {{}}},
      {{7}, {{0}}},
      {{3, 5}, all_perms(2)},
      {{1, 7}, all_perms(2)},
      {{33, 1}, all_perms(2)},
      {{37, 65}, all_perms(2)},   // several tiles, ragged edges
      {{130, 70}, all_perms(2)},  // more tiles than one block row
      {{2, 3, 4}, all_perms(3)},
      {{9, 13, 17}, all_perms(3)},
      {{1, 33, 65}, all_perms(3)},
      {{5, 1, 70}, all_perms(3)},
      {{3, 0, 4}, all_perms(3)},  // empty
      {{2, 5, 3, 4}, all_perms(4)},
      {{2, 3, 1, 5}, all_perms(4)},
      {{3, 37, 5, 8}, all_perms(4)},
      {{2, 37, 5, 72}, {{0, 2, 1, 3}, {0, 2, 3, 1}, {0, 3, 1, 2}}},  // (B,T,H,d) -> (B,H,T,d) ...
      {{2, 3, 2, 3, 5}, all_perms(5)},
      {{3, 4, 5, 6, 7}, {{4, 3, 2, 1, 0}, {0, 2, 1, 4, 3}, {1, 0, 2, 3, 4}, {0, 1, 2, 4, 3}}},
      {{2, 1, 3, 2, 2, 3}, {{5, 3, 1, 0, 4, 2}, {0, 1, 2, 3, 5, 4}, {2, 0, 1, 3, 4, 5}}},
  };
  for (const P& p : ps) {
    for (const auto& perm : p.perms) {
      for (DType dt : kAllTypes) {
        CAPTURE(p.shape.str());
        CAPTURE(str(perm));
        CAPTURE(std::string(dtype_name(dt)));
        const Tensor x = random(g, p.shape, dt);
        const Shape os = permuted(p.shape, perm);
        const Tensor ref =
            run1(Op::permute, {ref_input(x)}, os, ref_input(x).dtype(), Device::cpu(), perm);
        const Tensor y = run1(Op::permute, {x}, os, dt, kGpu, perm);
        CHECK(mismatches(y, ref) == 0);
      }
    }
  }
  // An input at an address that is not 16-byte aligned (the run-copy path falls back to smaller
  // units).
  for (DType dt : kAllTypes) {
    CAPTURE(std::string(dtype_name(dt)));
    const Tensor x = random(g, {3, 4, 2, 8}, dt);
    const std::vector<int64_t> perm = {2, 0, 1, 3};
    const Shape os = permuted(x.shape(), perm);
    kernels::OpCall c = call({gpu_at_offset(x, 1)}, {Tensor::empty(os, dt, kGpu)}, perm);
    kernels::run(Op::permute, c);
    const Tensor ref =
        run1(Op::permute, {ref_input(x)}, os, ref_input(x).dtype(), Device::cpu(), perm);
    CHECK(mismatches(c.out[0], ref) == 0);
  }
}

TEST_CASE("cuda layout: concat of 1-3 inputs along every dim matches the CPU exactly") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(103);
  const std::vector<Shape> bases = {{7}, {3, 5}, {2, 3, 4}, {2, 1, 3, 8}, {3, 2, 5, 3, 2}};
  const std::vector<std::vector<int64_t>> sizes = {{1, 4, 2}, {3, 0, 5}, {8, 8, 8}, {5}};
  for (const Shape& base : bases) {
    for (int dim = 0; dim < base.rank(); ++dim) {
      for (const auto& along : sizes) {
        for (DType dt : kAllTypes) {
          CAPTURE(base.str());
          CAPTURE(dim);
          CAPTURE(str(along));
          CAPTURE(std::string(dtype_name(dt)));
          std::vector<Tensor> xs, refs;
          Shape os = base;
          os[dim] = 0;
          for (int64_t a : along) {
            Shape s = base;
            s[dim] = a;
            xs.push_back(random(g, s, dt));
            refs.push_back(ref_input(xs.back()));
            os[dim] += a;
          }
          const Tensor ref = run1(Op::concat, refs, os, refs[0].dtype(), Device::cpu(), {dim});
          const Tensor y = run1(Op::concat, xs, os, dt, kGpu, {dim});
          CHECK(mismatches(y, ref) == 0);
        }
      }
    }
  }
  // Inputs at unaligned addresses, next to an aligned one.
  for (DType dt : kAllTypes) {
    CAPTURE(std::string(dtype_name(dt)));
    const Tensor a = random(g, {4, 8}, dt), b = random(g, {4, 16}, dt), d = random(g, {4, 5}, dt);
    const Shape os{4, 29};
    kernels::OpCall c = call({gpu_at_offset(a, 1), b.to(kGpu), gpu_at_offset(d, 3)},
                             {Tensor::empty(os, dt, kGpu)}, {1});
    kernels::run(Op::concat, c);
    const Tensor ref = run1(Op::concat, {ref_input(a), ref_input(b), ref_input(d)}, os,
                            ref_input(a).dtype(), Device::cpu(), {1});
    CHECK(mismatches(c.out[0], ref) == 0);
  }
}

TEST_CASE("cuda layout: slice matches the CPU exactly") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(107);
  std::mt19937 rng(7);
  const std::vector<Shape> shapes = {{},        {9},           {1, 13},         {6, 7},
                                     {5, 4, 9}, {3, 1, 8, 10}, {2, 3, 4, 5, 6}, {2, 1, 3, 2, 2, 9}};
  for (const Shape& s : shapes) {
    for (int trial = 0; trial < 6; ++trial) {
      std::vector<int64_t> starts;
      std::vector<int64_t> dims;
      for (int d = 0; d < s.rank(); ++d) {
        // trial 0: the whole tensor; trial 1: one element wide; else random windows (may be 0).
        int64_t len = trial == 0 ? s[d] : trial == 1 ? 1 : static_cast<int64_t>(rng() % (s[d] + 1));
        int64_t st = static_cast<int64_t>(rng() % (s[d] - len + 1));
        if (trial == 0) st = 0;
        starts.push_back(st);
        dims.push_back(len);
      }
      const Shape os(dims);
      for (DType dt : kAllTypes) {
        CAPTURE(s.str());
        CAPTURE(str(starts));
        CAPTURE(os.str());
        CAPTURE(std::string(dtype_name(dt)));
        const Tensor x = random(g, s, dt);
        const Tensor ref =
            run1(Op::slice, {ref_input(x)}, os, ref_input(x).dtype(), Device::cpu(), starts);
        const Tensor y = run1(Op::slice, {x}, os, dt, kGpu, starts);
        CHECK(mismatches(y, ref) == 0);
      }
    }
  }
}

TEST_CASE("cuda layout: pad matches the CPU exactly") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(109);
  struct P {
    Shape shape;
    std::vector<int64_t> before, after;
  };
  const std::vector<P> ps = {
      {{}, {}, {}},
      {{5}, {2}, {3}},
      {{8}, {4}, {4}},  // 16-byte units for f32 and bf16
      {{3, 7}, {0, 1}, {2, 0}},
      {{2, 3, 5, 7}, {0, 0, 1, 1}, {0, 0, 1, 1}},  // NCHW spatial padding
      {{2, 3, 4, 8}, {0, 0, 2, 8}, {0, 0, 1, 8}},
      {{1, 1, 3, 1}, {1, 2, 0, 3}, {0, 1, 2, 0}},
      {{2, 0, 3}, {1, 1, 1}, {0, 2, 0}},  // empty input: all value
      {{3, 4, 5}, {0, 0, 0}, {0, 0, 0}},  // nothing padded
      {{2, 2, 2, 2, 3}, {1, 0, 1, 0, 2}, {0, 1, 0, 1, 1}},
  };
  for (const P& p : ps) {
    std::vector<int64_t> od;
    for (int d = 0; d < p.shape.rank(); ++d)
      od.push_back(p.shape[d] + p.before[static_cast<size_t>(d)] + p.after[static_cast<size_t>(d)]);
    const Shape os(od);
    for (DType dt : kAllTypes) {
      CAPTURE(p.shape.str());
      CAPTURE(str(p.before));
      CAPTURE(str(p.after));
      CAPTURE(std::string(dtype_name(dt)));
      const double value = is_float(dt) ? -1.5 : 7;  // exact in every dtype
      const Tensor x = random(g, p.shape, dt);
      const Tensor ref =
          run1(Op::pad, {ref_input(x)}, os, ref_input(x).dtype(), Device::cpu(), p.before, value);
      const Tensor y = run1(Op::pad, {x}, os, dt, kGpu, p.before, value);
      CHECK(mismatches(y, ref) == 0);
    }
  }
  // An input at an unaligned address, in a shape that would take 16-byte units.
  for (DType dt : kAllTypes) {
    CAPTURE(std::string(dtype_name(dt)));
    const Tensor x = random(g, {3, 8}, dt);
    const Shape os{4, 16};
    const std::vector<int64_t> before = {1, 4};
    kernels::OpCall c = call({gpu_at_offset(x, 1)}, {Tensor::empty(os, dt, kGpu)}, before, 2);
    kernels::run(Op::pad, c);
    const Tensor ref =
        run1(Op::pad, {ref_input(x)}, os, ref_input(x).dtype(), Device::cpu(), before, 2);
    CHECK(mismatches(c.out[0], ref) == 0);
  }
}

TEST_CASE("cuda layout: embedding gathers rows exactly; bad ids throw as on the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(113);
  std::mt19937 rng(11);
  const int64_t V = 17;
  const std::vector<Shape> id_shapes = {{}, {7}, {2, 5}, {3, 1, 4}};
  for (int64_t D : {1, 3, 8, 64, 77}) {
    for (const Shape& is : id_shapes) {
      for (DType idt : {DType::I64, DType::I32}) {
        std::vector<double> idv;
        for (int64_t i = 0; i < is.numel(); ++i)
          idv.push_back(static_cast<double>(i % 3 == 0 ? 4 : rng() % V));  // repeats of id 4
        const Tensor ids = from_doubles(idv, is, idt);
        Shape os = is;
        os.push_back(D);
        for (DType dt : kAllTypes) {
          CAPTURE(D);
          CAPTURE(is.str());
          CAPTURE(std::string(dtype_name(idt)));
          CAPTURE(std::string(dtype_name(dt)));
          const Tensor table = random(g, {V, D}, dt);
          const Tensor ref = run1(Op::embedding, {ref_input(table), ids}, os,
                                  ref_input(table).dtype(), Device::cpu());
          const Tensor y = run1(Op::embedding, {table, ids}, os, dt, kGpu);
          CHECK(mismatches(y, ref) == 0);
        }
      }
    }
  }
  // A table at an unaligned address (rows of 16 bytes multiples fall back to smaller units).
  for (DType dt : kAllTypes) {
    CAPTURE(std::string(dtype_name(dt)));
    const Tensor table = random(g, {V, 8}, dt);
    const Tensor ids = from_doubles({3, 16, 0, 3, 9}, {5}, DType::I64);
    kernels::OpCall c =
        call({gpu_at_offset(table, 1), ids.to(kGpu)}, {Tensor::empty({5, 8}, dt, kGpu)});
    kernels::run(Op::embedding, c);
    const Tensor ref = run1(Op::embedding, {ref_input(table), ids}, {5, 8},
                            ref_input(table).dtype(), Device::cpu());
    CHECK(mismatches(c.out[0], ref) == 0);
  }
  // Out-of-range ids (too large, negative; also with D = 0) throw std::out_of_range naming the
  // op and the first bad position, as the CPU kernel.
  for (int64_t D : {4, 0}) {
    for (int64_t bad : {V, int64_t{-1}}) {
      CAPTURE(D);
      CAPTURE(bad);
      const Tensor ids = from_doubles(
          {1, 2, 3, static_cast<double>(bad), 0, static_cast<double>(bad)}, {6}, DType::I64);
      const Tensor table = random(g, {V, D}, DType::F32).to(kGpu);
      kernels::OpCall c = call({table, ids.to(kGpu)}, {Tensor::empty({6, D}, DType::F32, kGpu)});
      CHECK_THROWS_WITH_AS(
          kernels::run(Op::embedding, c),
          doctest::Contains(("embedding: id " + std::to_string(bad) + " at position 3").c_str()),
          std::out_of_range);
    }
  }
}

TEST_CASE("cuda layout: embedding_bwd sums rows in token order, deterministically") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(127);
  std::mt19937 rng(13);
  struct P {
    int64_t V, D;
    Shape ids;
  };
  // n = 2048 fills exactly one sort segment; 2049 and 5000 need the global bitonic stages.
  const std::vector<P> ps = {{1, 1, {1}},       {37, 5, {7}},      {37, 130, {2, 9}},
                             {300, 5, {2048}},  {300, 3, {2049}},  {37, 17, {5000}},
                             {5, 64, {40, 50}}, {3000, 2, {1, 4}}, {8, 8, {0}}};
  for (const P& p : ps) {
    for (DType idt : {DType::I64, DType::I32}) {
      // Skewed ids: half the tokens carry id min(3, V - 1), the rest uniform; some ids unused.
      std::vector<double> idv;
      for (int64_t i = 0; i < p.ids.numel(); ++i)
        idv.push_back(static_cast<double>(rng() % 2 ? std::min<int64_t>(3, p.V - 1)
                                                    : static_cast<int64_t>(rng() % p.V)));
      const Tensor ids = from_doubles(idv, p.ids, idt);
      Shape gs = p.ids;
      gs.push_back(p.D);
      const Shape ts{p.V, p.D};
      for (DType dt : kFloatTypes) {
        CAPTURE(p.V);
        CAPTURE(p.D);
        CAPTURE(p.ids.str());
        CAPTURE(std::string(dtype_name(idt)));
        CAPTURE(std::string(dtype_name(dt)));
        const Tensor gy = random(g, gs, dt);
        const Tensor ref =
            run1(Op::embedding_bwd, {ref_input(gy), ids}, ts, DType::F64, Device::cpu());
        const Tensor gt = run1(Op::embedding_bwd, {gy, ids}, ts, dt, kGpu);
        check_close(gt, ref);
        // Same order, same double accumulator as the CPU: f32 and f64 equal the CPU's bit for bit.
        if (dt != DType::BF16) {
          const Tensor ref_same = run1(Op::embedding_bwd, {gy, ids}, ts, dt, Device::cpu());
          CHECK(bit_mismatches(gt, ref_same) == 0);
        }
        // A second run is bit-identical.
        CHECK(bit_mismatches(gt, run1(Op::embedding_bwd, {gy, ids}, ts, dt, kGpu)) == 0);
      }
    }
  }
  // A bad id throws before anything is summed.
  const Tensor ids = from_doubles({0, 1, 9, 2}, {4}, DType::I32).to(kGpu);
  const Tensor gy = Tensor::zeros({4, 3}, DType::F32, kGpu);
  kernels::OpCall c = call({gy, ids}, {Tensor::empty({9, 3}, DType::F32, kGpu)});
  CHECK_THROWS_WITH_AS(kernels::run(Op::embedding_bwd, c),
                       doctest::Contains("embedding_bwd: id 9 at position 2"), std::out_of_range);
  // Integer gradients are refused, naming the op.
  kernels::OpCall ci = call({Tensor::zeros({4, 3}, DType::I32, kGpu), ids},
                            {Tensor::empty({9, 3}, DType::I32, kGpu)});
  CHECK_THROWS_WITH_AS(kernels::run(Op::embedding_bwd, ci), doctest::Contains("embedding_bwd"),
                       std::exception);
}

// ---- spatial ------------------------------------------------------------------------------------

namespace {

struct Resize {
  int64_t H, W, Ho, Wo;
};
// Up by 2, odd ratios both ways (5 -> 7, 7 -> 3), identity, 1 -> many, many -> 1.
const std::vector<Resize> kResizes = {{5, 7, 10, 14}, {5, 7, 7, 3},     {7, 3, 3, 7},
                                      {4, 4, 4, 4},   {1, 1, 3, 5},     {6, 5, 1, 1},
                                      {3, 8, 13, 4},  {16, 16, 32, 32}, {2, 9, 5, 2}};

}  // namespace

TEST_CASE("cuda spatial: nearest upsampling, forward exact, backward matches the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(131);
  for (const Resize& r : kResizes) {
    for (DType dt : kFloatTypes) {
      CAPTURE(r.H);
      CAPTURE(r.W);
      CAPTURE(r.Ho);
      CAPTURE(r.Wo);
      CAPTURE(std::string(dtype_name(dt)));
      const Shape xs{2, 3, r.H, r.W}, ys{2, 3, r.Ho, r.Wo};
      const Tensor x = random(g, xs, dt);
      const Tensor ref = run1(Op::upsample_nearest, {ref_input(x)}, ys, DType::F64, Device::cpu());
      CHECK(mismatches(run1(Op::upsample_nearest, {x}, ys, dt, kGpu), ref) == 0);
      const Tensor gy = random(g, ys, dt);
      const Tensor gref =
          run1(Op::upsample_nearest_bwd, {ref_input(gy)}, xs, DType::F64, Device::cpu());
      const Tensor gx = run1(Op::upsample_nearest_bwd, {gy}, xs, dt, kGpu);
      check_close(gx, gref);
      if (dt == DType::F32)  // the CPU's order of f32 additions
        CHECK(bit_mismatches(gx, run1(Op::upsample_nearest_bwd, {gy}, xs, dt, Device::cpu())) == 0);
    }
  }
  // Integer data is refused, naming the op.
  kernels::OpCall c = call({Tensor::zeros({1, 1, 2, 2}, DType::I32, kGpu)},
                           {Tensor::empty({1, 1, 4, 4}, DType::I32, kGpu)});
  CHECK_THROWS_WITH_AS(kernels::run(Op::upsample_nearest, c), doctest::Contains("upsample_nearest"),
                       std::exception);
}

TEST_CASE("cuda spatial: bilinear upsampling, both align_corners, forward and backward") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(137);
  for (int64_t align : {0, 1}) {
    for (const Resize& r : kResizes) {
      for (DType dt : kFloatTypes) {
        CAPTURE(align);
        CAPTURE(r.H);
        CAPTURE(r.W);
        CAPTURE(r.Ho);
        CAPTURE(r.Wo);
        CAPTURE(std::string(dtype_name(dt)));
        const Shape xs{2, 3, r.H, r.W}, ys{2, 3, r.Ho, r.Wo};
        const Tensor x = random(g, xs, dt);
        const Tensor ref =
            run1(Op::upsample_bilinear, {ref_input(x)}, ys, DType::F64, Device::cpu(), {align});
        check_close(run1(Op::upsample_bilinear, {x}, ys, dt, kGpu, {align}), ref);
        const Tensor gy = random(g, ys, dt);
        const Tensor gref = run1(Op::upsample_bilinear_bwd, {ref_input(gy)}, xs, DType::F64,
                                 Device::cpu(), {align});
        check_close(run1(Op::upsample_bilinear_bwd, {gy}, xs, dt, kGpu, {align}), gref);
      }
    }
  }
}

namespace {

struct PoolCase {
  int64_t kh, kw, sh, sw, ph, pw;
};
const std::vector<PoolCase> kPools = {{2, 2, 2, 2, 0, 0}, {3, 3, 2, 2, 1, 1}, {3, 3, 1, 1, 1, 1},
                                      {2, 2, 1, 1, 0, 0}, {3, 2, 2, 1, 1, 0}, {1, 1, 1, 1, 0, 0},
                                      {3, 3, 3, 3, 0, 0}, {4, 3, 3, 2, 2, 1}};
const std::vector<Shape> kPoolShapes = {{2, 3, 9, 11}, {1, 2, 8, 8}, {1, 1, 5, 4}, {3, 1, 1, 2}};

// The pooled shape, or an empty optional-like false when the window does not fit.
bool pooled(const Shape& x, const PoolCase& p, Shape& y) {
  if (x[2] + 2 * p.ph < p.kh || x[3] + 2 * p.pw < p.kw) return false;
  y = Shape{x[0], x[1], (x[2] + 2 * p.ph - p.kh) / p.sh + 1, (x[3] + 2 * p.pw - p.kw) / p.sw + 1};
  return true;
}
std::vector<int64_t> ints_of(const PoolCase& p) { return {p.kh, p.kw, p.sh, p.sw, p.ph, p.pw}; }

}  // namespace

TEST_CASE("cuda spatial: avg_pool2d forward and backward match the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(139);
  for (const Shape& xs : kPoolShapes) {
    for (const PoolCase& p : kPools) {
      Shape ys;
      if (!pooled(xs, p, ys)) continue;
      for (DType dt : kFloatTypes) {
        CAPTURE(xs.str());
        CAPTURE(str(ints_of(p)));
        CAPTURE(std::string(dtype_name(dt)));
        const Tensor x = random(g, xs, dt);
        const Tensor ref =
            run1(Op::avg_pool2d, {ref_input(x)}, ys, DType::F64, Device::cpu(), ints_of(p));
        const Tensor y = run1(Op::avg_pool2d, {x}, ys, dt, kGpu, ints_of(p));
        check_close(y, ref);
        if (dt != DType::BF16)  // double sum in the CPU's order, one rounding
          CHECK(bit_mismatches(y, run1(Op::avg_pool2d, {x}, ys, dt, Device::cpu(), ints_of(p))) ==
                0);
        const Tensor gy = random(g, ys, dt);
        const Tensor gref =
            run1(Op::avg_pool2d_bwd, {ref_input(gy)}, xs, DType::F64, Device::cpu(), ints_of(p));
        check_close(run1(Op::avg_pool2d_bwd, {gy}, xs, dt, kGpu, ints_of(p)), gref);
      }
    }
  }
}

TEST_CASE("cuda spatial: max_pool2d values and argmax exact (ties, NaN), backward gathers") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(149);
  std::mt19937 rng(17);
  for (const Shape& xs : kPoolShapes) {
    for (const PoolCase& p : kPools) {
      Shape ys;
      if (!pooled(xs, p, ys)) continue;
      for (int variant = 0; variant < 3; ++variant) {
        for (DType dt : kFloatTypes) {
          CAPTURE(xs.str());
          CAPTURE(str(ints_of(p)));
          CAPTURE(variant);
          CAPTURE(std::string(dtype_name(dt)));
          // 0: distinct values; 1: quarters in [-1, 1] (ties: the first maximum must win);
          // 2: as 1 with some NaNs and -infs.
          std::vector<double> v = test::as_doubles(test::uniform(g, xs, -1, 1));
          if (variant > 0)
            for (double& e : v) e = std::round(e * 4) / 4;
          if (variant == 2)
            for (double& e : v) {
              const unsigned k = rng() % 11;
              if (k == 0) e = std::numeric_limits<double>::quiet_NaN();
              if (k == 1) e = -std::numeric_limits<double>::infinity();
            }
          const Tensor x = from_doubles(v, xs, dt);
          const auto ref = run(Op::max_pool2d, {ref_input(x)}, {{ys, DType::F64}, {ys, DType::I64}},
                               Device::cpu(), ints_of(p));
          const auto got = run(Op::max_pool2d, {x}, {{ys, dt}, {ys, DType::I64}}, kGpu, ints_of(p));
          CHECK(mismatches(got[0], ref[0]) == 0);
          CHECK(mismatches(got[1], ref[1]) == 0);
          // Backward with the CPU's argmax (a NaN-free gy).
          const Tensor gy = random(g, ys, dt);
          const Tensor gref =
              run1(Op::max_pool2d_bwd, {ref_input(gy), ref[1]}, xs, DType::F64, Device::cpu());
          const Tensor gx = run1(Op::max_pool2d_bwd, {gy, ref[1]}, xs, dt, kGpu);
          check_close(gx, gref);
          if (dt == DType::F32)  // the CPU's order of f32 additions
            CHECK(bit_mismatches(
                      gx, run1(Op::max_pool2d_bwd, {gy, ref[1]}, xs, dt, Device::cpu())) == 0);
        }
      }
    }
  }
  // The backward takes any argmax inside the plane (it is not told the pool geometry): random
  // pixels, and every output on pixel 0.
  for (int variant = 0; variant < 2; ++variant) {
    for (DType dt : kFloatTypes) {
      CAPTURE(variant);
      CAPTURE(std::string(dtype_name(dt)));
      const Shape xs{2, 3, 7, 9}, ys{2, 3, 4, 5};
      std::vector<double> a;
      for (int64_t i = 0; i < ys.numel(); ++i)
        a.push_back(variant == 0 ? static_cast<double>(rng() % 63) : 0.0);
      const Tensor am = from_doubles(a, ys, DType::I64);
      const Tensor gy = random(g, ys, dt);
      const Tensor gref =
          run1(Op::max_pool2d_bwd, {ref_input(gy), am}, xs, DType::F64, Device::cpu());
      check_close(run1(Op::max_pool2d_bwd, {gy, am}, xs, dt, kGpu), gref);
    }
  }
  // A non-i64 argmax is refused, naming the op.
  kernels::OpCall c = call({Tensor::zeros({1, 1, 2, 2}, DType::F32, kGpu),
                            Tensor::zeros({1, 1, 2, 2}, DType::I32, kGpu)},
                           {Tensor::empty({1, 1, 4, 4}, DType::F32, kGpu)});
  CHECK_THROWS_WITH_AS(kernels::run(Op::max_pool2d_bwd, c), doctest::Contains("max_pool2d_bwd"),
                       std::exception);
}
