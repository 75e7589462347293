// The first CUDA op kernels (kernels/cuda/broadcast.cu: add, sub, mul, div on equal shapes or a
// one-element operand; register.cu: cast; unary.cu: add_scalar, mul_scalar) against the CPU kernels
// through kernels::run, outputs poisoned with NaN. Each is one IEEE operation per element, so f32
// and f64 must match the CPU bit for bit, and bf16 (computed in f32) must equal the CPU's f32
// result rounded to bf16. Skipped without a CUDA device. (Lives in test_ops rather than test_tensor
// because it needs psvae_kernels.)
#include <doctest/doctest.h>

#include <vector>

#include "common/cuda_compare.h"
#include "common/test_util.h"
#include "kernels/op_table.h"
#include "kernels/ops.h"

using namespace psvae;
using kernels::Op;
using test::as_dtype;
using test::bit_mismatches;
using test::on_gpu;
using test::uniform_as;

namespace {

const Device kGpu = Device::cuda(0);

Tensor run1(Op op, const std::vector<Tensor>& in, const Shape& s, DType dt, Device d,
            double r0 = 0) {
  return test::run_op(op, in, {s}, dt, d, {}, {r0})[0];
}

}  // namespace

TEST_CASE("cuda kernels: add, sub, mul, div match the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(2024);
  struct Case {
    Shape a, b, y;
  };
  // 37x129 = 4773 elements takes the scalar path, 64x64 the 16-byte vector path; one-element
  // operands on either side.
  const std::vector<Case> cases = {
      {{37, 129}, {37, 129}, {37, 129}}, {{64, 64}, {64, 64}, {64, 64}}, {{}, {64, 64}, {64, 64}},
      {{64, 64}, {1}, {64, 64}},         {{37, 129}, {}, {37, 129}},     {{1, 1}, {5}, {1, 5}}};
  const Op ops[] = {Op::add, Op::sub, Op::mul, Op::div};
  for (Op op : ops) {
    for (const Case& c : cases) {
      CAPTURE(std::string(kernels::op_name(op)));
      CAPTURE(c.a.str());
      CAPTURE(c.b.str());
      for (DType dt : {DType::F32, DType::F64}) {
        CAPTURE(std::string(dtype_name(dt)));
        std::vector<Tensor> in = {uniform_as(g, c.a, dt, -2, 2), uniform_as(g, c.b, dt, 0.5, 2)};
        Tensor ref = run1(op, in, c.y, dt, Device::cpu());
        Tensor got = run1(op, on_gpu(in), c.y, dt, kGpu);
        CHECK(bit_mismatches(got, ref) == 0);
      }
      // bf16: the f32 CPU result of the same (bf16-exact) inputs, rounded to bf16.
      std::vector<Tensor> in = {uniform_as(g, c.a, DType::BF16, -2, 2),
                                uniform_as(g, c.b, DType::BF16, 0.5, 2)};
      Tensor ref = as_dtype(run1(op, {as_dtype(in[0], DType::F32), as_dtype(in[1], DType::F32)},
                                 c.y, DType::F32, Device::cpu()),
                            DType::BF16);
      Tensor got = run1(op, on_gpu(in), c.y, DType::BF16, kGpu);
      CHECK(bit_mismatches(got, ref) == 0);
    }
  }
  // Through the typed wrapper: the whole dispatch path.
  Tensor a = uniform_as(g, {3, 7}, DType::F32, -1, 1), b = uniform_as(g, {3, 7}, DType::F32, -1, 1);
  CHECK(bit_mismatches(ops::add(a.to(kGpu), b.to(kGpu)), ops::add(a, b)) == 0);
}

TEST_CASE("cuda kernels: add_scalar, mul_scalar match the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(7);
  // Scalars exact in f32, so an f32 kernel computing in f32 or in f64 rounds to the same value.
  for (Op op : {Op::add_scalar, Op::mul_scalar}) {
    for (const Shape& s : {Shape{37, 129}, Shape{64, 64}, Shape{}}) {
      for (double sc : {0.375, -1.25}) {
        CAPTURE(std::string(kernels::op_name(op)));
        CAPTURE(s.str());
        for (DType dt : {DType::F32, DType::F64}) {
          Tensor x = uniform_as(g, s, dt, -3, 3);
          CHECK(bit_mismatches(run1(op, {x.to(kGpu)}, s, dt, kGpu, sc),
                               run1(op, {x}, s, dt, Device::cpu(), sc)) == 0);
        }
        Tensor x = uniform_as(g, s, DType::BF16, -3, 3);
        Tensor ref = as_dtype(run1(op, {as_dtype(x, DType::F32)}, s, DType::F32, Device::cpu(), sc),
                              DType::BF16);
        CHECK(bit_mismatches(run1(op, {x.to(kGpu)}, s, DType::BF16, kGpu, sc), ref) == 0);
      }
    }
  }
}

TEST_CASE("cuda kernels: cast between f32, bf16 and f64") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(11);
  const Shape s{33, 65};
  Tensor x64 = test::uniform(g, s, -100, 100);  // f64 values that are not exact in f32
  Tensor x32 = as_dtype(x64, DType::F32);
  Tensor xb = as_dtype(x32, DType::BF16);
  // Against the CPU kernel where it has one (f32 <-> f64).
  CHECK(bit_mismatches(run1(Op::cast, {x64.to(kGpu)}, s, DType::F32, kGpu),
                       run1(Op::cast, {x64}, s, DType::F32, Device::cpu())) == 0);
  CHECK(bit_mismatches(run1(Op::cast, {x32.to(kGpu)}, s, DType::F64, kGpu),
                       run1(Op::cast, {x32}, s, DType::F64, Device::cpu())) == 0);
  // bf16 against the host conversions of psvae::bf16.
  CHECK(bit_mismatches(run1(Op::cast, {x32.to(kGpu)}, s, DType::BF16, kGpu), xb) == 0);
  CHECK(bit_mismatches(run1(Op::cast, {x64.to(kGpu)}, s, DType::BF16, kGpu), xb) == 0);
  CHECK(bit_mismatches(run1(Op::cast, {xb.to(kGpu)}, s, DType::F32, kGpu),
                       as_dtype(xb, DType::F32)) == 0);
  Tensor xb64 = Tensor::from_vector(test::as_doubles(xb), s);
  CHECK(bit_mismatches(run1(Op::cast, {xb.to(kGpu)}, s, DType::F64, kGpu), xb64) == 0);
}
