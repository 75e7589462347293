// A composed graph gradchecks end to end in f64: an MLP and one transformer block, with respect
// to the input and every parameter.
#include <doctest/doctest.h>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "nn/mlp.h"
#include "nn/transformer_block.h"

using namespace psvae;
using namespace psvae::nn;

namespace {
// Checks f(x) = module(x) with respect to x and every parameter of m (converted to f64).
template <class M, class Fwd>
void check_module(M& m, const Shape& x_shape, Fwd fwd) {
  m.to(DType::F64);
  Generator g(31);
  Tensor x = Tensor::empty(x_shape, DType::F64);
  g.normal_(x);
  std::vector<Tensor> inputs{x};
  for (auto& [n, p] : m.named_parameters()) inputs.push_back(p.data().clone());
  std::vector<bool> wrt(inputs.size(), true);
  auto f = [&](const std::vector<ag::Var>& v) {
    m.bind_parameters(std::vector<ag::Var>(v.begin() + 1, v.end()));
    return fwd(v[0]);
  };
  ag::GradcheckResult r = ag::gradcheck(f, inputs, wrt);
  INFO(r.report);
  CHECK(r.ok);
}
}  // namespace

TEST_CASE("an MLP gradchecks end to end") {
  Generator g(1);
  Mlp m({3, 6, 2, Activation::GeluTanh}, g);
  check_module(m, {4, 3}, [&](const ag::Var& x) { return m.forward(x); });
}

TEST_CASE("a transformer block gradchecks end to end") {
  Generator g(2);
  TransformerBlock::Config c;
  c.dim = 8;
  c.heads = 2;
  c.mlp_ratio = 2;
  TransformerBlock b(c, g);
  check_module(b, {1, 3, 8}, [&](const ag::Var& x) { return b.forward(x); });
}

TEST_CASE("a DINOv2-style block (SwiGLU, LayerScale, key mask) gradchecks end to end") {
  Generator g(3);
  TransformerBlock::Config c;
  c.dim = 8;
  c.heads = 2;
  c.mlp_ratio = 2;
  c.swiglu = true;
  c.layerscale = 0.5;
  TransformerBlock b(c, g);
  Tensor mask = Tensor::from_vector(std::vector<int32_t>{1, 1, 0}, Shape{1, 3});
  check_module(b, {1, 3, 8}, [&](const ag::Var& x) { return b.forward(x, mask); });
}

TEST_CASE("cross-attention gradchecks end to end") {
  Generator g(4);
  CrossAttention a({8, 4, 2, true}, g);
  Tensor ctx = Tensor::empty({1, 2, 4}, DType::F64);
  g.normal_(ctx);
  check_module(a, {1, 3, 8}, [&](const ag::Var& x) { return a.forward(x, ag::Var(ctx)); });
}
