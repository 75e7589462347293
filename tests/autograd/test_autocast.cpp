// Mixed precision (autograd/autocast.h): which functions cast, to what, that gradients reach f32
// parameters as f32, and that the bf16 results stay within bf16 rounding of the f32 ones.
#include <doctest/doctest.h>

#include "autograd/autocast.h"
#include "autograd/functions.h"
#include "common/test_util.h"

using namespace psvae;
using ag::Var;

namespace {
Var rand_var(Generator& g, const Shape& s, bool grad = true) {
  return Var(ops::cast(test::normal(g, s), DType::F32), grad);
}
double rel(const Tensor& a, const Tensor& b) {
  return test::compare(ops::cast(a, DType::F64), ops::cast(b, DType::F64), 1.0).rel_err;
}
}  // namespace

TEST_CASE("autocast: off by default, the guard nests and restores") {
  CHECK(!ag::autocast_enabled());
  {
    ag::AutocastGuard on(DType::BF16);
    CHECK(ag::autocast_dtype() == DType::BF16);
    {
      ag::AutocastGuard off(DType::F32);
      CHECK(!ag::autocast_enabled());
    }
    CHECK(ag::autocast_dtype() == DType::BF16);
  }
  CHECK(!ag::autocast_enabled());
  CHECK_THROWS_WITH_AS(ag::AutocastGuard(DType::I64),
                       "AutocastGuard: compute dtype must be floating, got i64",
                       std::invalid_argument);
}

TEST_CASE("autocast: without a guard, mixed dtypes are still an error") {
  Generator g(1);
  Var a = rand_var(g, {4}), b(ops::cast(rand_var(g, {4}).data(), DType::BF16));
  CHECK_THROWS(ag::add(a, b));
}

TEST_CASE("autocast bf16: GEMM-class ops run in bf16, norms and losses in f32, mixes promote") {
  Generator g(2);
  Var x = rand_var(g, {3, 5, 8}), w = rand_var(g, {6, 8}), b = rand_var(g, {6});
  ag::AutocastGuard guard(DType::BF16);
  Var y = ag::linear(x, w, b);
  CHECK(y.dtype() == DType::BF16);
  CHECK(ag::matmul(x, x, false, true).dtype() == DType::BF16);
  Var q = rand_var(g, {1, 4, 2, 8});
  CHECK(ag::attention(q, q, q, Tensor(), 0.35).dtype() == DType::BF16);
  Var img = rand_var(g, {1, 2, 5, 5}), k = rand_var(g, {3, 2, 3, 3});
  CHECK(ag::conv2d(img, k, Var(), ops::Conv2dParams{}).dtype() == DType::BF16);
  // A bf16 branch added to an f32 stream: f32. The same for the fused adaLN ops.
  Var stream = rand_var(g, {3, 5, 6});
  CHECK(ag::add(stream, y).dtype() == DType::F32);
  Var gate = rand_var(g, {3, 6});
  CHECK(ag::gated_residual(stream, gate, y).dtype() == DType::F32);
  // bf16 in, f32 out: norms, softmax and losses never run below f32. layernorm_modulate computes
  // in f32 too but writes bf16: its output always feeds a GEMM.
  CHECK(ag::layer_norm(y, Var(), Var(), 1e-6).dtype() == DType::F32);
  CHECK(ag::layernorm_modulate(y, ag::cast(gate, DType::BF16), ag::cast(gate, DType::BF16), 1e-6)
            .dtype() == DType::BF16);
  CHECK(ag::softmax(y).dtype() == DType::F32);
  CHECK(ag::mse_loss(y, ag::cast(y, DType::F32)).dtype() == DType::F32);
  // Two bf16 tensors in a plain elementwise op stay bf16.
  CHECK(ag::mul(y, y).dtype() == DType::BF16);
}

TEST_CASE("autocast bf16: the DiT block's bf16 sides of the fused adaLN ops equal explicit casts") {
  // Under the guard layernorm_modulate writes bf16 for the GEMM and reads the GEMM's bf16
  // gradient; gated_residual takes the GEMM's bf16 output beside the f32 stream and hands it a
  // bf16 gradient. Without the guard, the same chain with the casts written out: f32 ops, then
  // cast. Widening bf16 is exact and each rounding happens once in both, so loss and gradients
  // must agree bit for bit.
  Generator g(5);
  Var x = rand_var(g, {2, 7, 24}), shift = rand_var(g, {2, 24}), scale = rand_var(g, {2, 24});
  Var gate = rand_var(g, {2, 24}), w = rand_var(g, {24, 24});
  auto grads = [&](bool guarded) {
    for (Var* v : {&x, &shift, &scale, &gate, &w}) v->zero_grad();
    Var loss;
    if (guarded) {
      ag::AutocastGuard guard(DType::BF16);
      Var h = ag::layernorm_modulate(x, shift, scale, 1e-6);
      CHECK(h.dtype() == DType::BF16);
      Var o = ag::linear(h, w, Var());
      loss = ag::mean_all(ag::square(ag::gated_residual(x, gate, o)));
    } else {
      Var h = ag::cast(ag::layernorm_modulate(x, shift, scale, 1e-6), DType::BF16);
      Var o = ag::linear(h, ag::cast(w, DType::BF16), Var());
      loss = ag::mean_all(ag::square(ag::gated_residual(x, gate, ag::cast(o, DType::F32))));
    }
    loss.backward();
    return std::vector<Tensor>{loss.data(),  x.grad(),    shift.grad(),
                               scale.grad(), gate.grad(), w.grad()};
  };
  const std::vector<Tensor> fused = grads(true), cast = grads(false);
  for (size_t i = 0; i < fused.size(); ++i) {
    INFO("tensor ", i, " (loss, then the gradients of x, shift, scale, gate, w)");
    CHECK(fused[i].dtype() == DType::F32);
    CHECK(test::bit_mismatches_host(fused[i], cast[i]) == 0);
  }
}

TEST_CASE("autocast bf16: f32 parameters get f32 gradients within bf16 rounding of the f32 ones") {
  Generator g(3);
  Var x = rand_var(g, {4, 16, 32}), w1 = rand_var(g, {64, 32}), b1 = rand_var(g, {64});
  Var w2 = rand_var(g, {32, 64}), target = rand_var(g, {4, 16, 32}, false);
  auto loss_of = [&] {
    Var h = ag::gelu_tanh(ag::linear(ag::layer_norm(x, Var(), Var(), 1e-6), w1, b1));
    return ag::mse_loss(ag::add(x, ag::linear(h, w2, Var())), target);
  };
  Var ref = loss_of();
  ref.backward();
  std::vector<Tensor> want = {x.grad(), w1.grad(), b1.grad(), w2.grad()};
  for (Var* v : {&x, &w1, &b1, &w2}) v->zero_grad();

  Var got;
  {
    ag::AutocastGuard guard(DType::BF16);
    got = loss_of();
  }
  CHECK(got.dtype() == DType::F32);
  got.backward();
  CHECK(rel(got.data(), ref.data()) < 1e-2);
  const std::vector<Tensor> have = {x.grad(), w1.grad(), b1.grad(), w2.grad()};
  for (size_t i = 0; i < have.size(); ++i) {
    INFO("gradient ", i);
    REQUIRE(have[i].defined());
    CHECK(have[i].dtype() == DType::F32);
    // Each GEMM rounds its inputs and its output to bf16 (2^-9 relative each): a few 1e-3.
    CHECK(rel(have[i], want[i]) < 2e-2);
    CHECK(rel(have[i], want[i]) > 0);  // it really ran in bf16
  }
}

TEST_CASE("autocast f64: the same casts at f64 accuracy reproduce the f32 result") {
  // F64 compute goes through every cast the bf16 path inserts, with no rounding to speak of, so
  // the only difference from plain f32 is f32's own rounding.
  Generator g(4);
  Var x = rand_var(g, {2, 8, 16}), w = rand_var(g, {16, 16}), shift = rand_var(g, {2, 16});
  auto loss_of = [&] {
    Var h = ag::layernorm_modulate(x, shift, shift, 1e-6);
    return ag::mean_all(ag::square(ag::gated_residual(x, shift, ag::linear(h, w, Var()))));
  };
  Var ref = loss_of();
  ref.backward();
  const Tensor gw = w.grad(), gs = shift.grad();
  w.zero_grad();
  shift.zero_grad();
  x.zero_grad();
  Var got;
  {
    ag::AutocastGuard guard(DType::F64);
    got = loss_of();
  }
  CHECK(got.dtype() == DType::F64);
  got.backward();
  CHECK(w.grad().dtype() == DType::F32);
  CHECK(rel(got.data(), ref.data()) < 1e-6);
  CHECK(rel(w.grad(), gw) < 1e-5);
  CHECK(rel(shift.grad(), gs) < 1e-5);
}
