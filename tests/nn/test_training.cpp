// End-to-end learning: an MLP learns XOR, a tiny transformer overfits one batch.
#include <doctest/doctest.h>

#include <random>

#include "autograd/functions.h"
#include "nn/mlp.h"
#include "nn/optim.h"
#include "nn_test_models.h"

using namespace psvae;
using namespace psvae::nn;

TEST_CASE("a 2-16-1 MLP learns XOR with AdamW") {
  Generator g(2024);
  Mlp net({2, 16, 1, Activation::Tanh}, g);
  Var x(Tensor::from_vector(std::vector<float>{0, 0, 0, 1, 1, 0, 1, 1}, Shape{4, 2}));
  Var y(Tensor::from_vector(std::vector<float>{0, 1, 1, 0}, Shape{4, 1}));
  AdamWOptions o;
  o.lr = 0.03;
  AdamW opt(net.named_parameters(), o);
  double loss = 0;
  for (int step = 0; step < 400; ++step) {
    opt.zero_grad();
    Var l = ag::mse_loss(net.forward(x), y);
    l.backward();
    opt.step();
    loss = l.data().item();
  }
  auto out = net.forward(x).data().to_vector<float>();
  INFO("outputs " << out[0] << " " << out[1] << " " << out[2] << " " << out[3] << " loss " << loss);
  CHECK(out[0] < 0.5f);
  CHECK(out[1] > 0.5f);
  CHECK(out[2] > 0.5f);
  CHECK(out[3] < 0.5f);
  CHECK(loss < 0.01);
}

TEST_CASE("a tiny transformer overfits one batch (loss / 100)") {
  Generator g(7);
  test::TinyTransformer::Config c;  // vocab 11, 8 tokens, width 32, 2 heads, 2 blocks
  test::TinyTransformer net(c, g);
  const int64_t B = 4;
  std::vector<int64_t> ids, targets;
  std::mt19937_64 rng(99);
  for (int64_t i = 0; i < B * c.seq; ++i) {
    ids.push_back(static_cast<int64_t>(rng() % 11));
    targets.push_back(static_cast<int64_t>(rng() % 11));
  }
  Tensor ids_t = Tensor::from_vector(ids, Shape{B, c.seq});
  Tensor tg_t = Tensor::from_vector(targets, Shape{B * c.seq});
  AdamWOptions o;
  o.lr = 3e-3;
  AdamW opt(net.named_parameters(), o);
  double first = 0, last = 0;
  int steps = 0;
  for (; steps < 300; ++steps) {
    opt.zero_grad();
    Var logits = ag::reshape(net.forward(ids_t), Shape{B * c.seq, c.vocab});
    Var l = ag::cross_entropy(logits, tg_t);
    last = l.data().item();
    if (steps == 0) first = last;
    if (last <= first / 100) break;
    l.backward();
    clip_grad_norm(net.parameters(), 1.0);
    opt.step();
  }
  INFO("initial " << first << " final " << last << " after " << steps << " steps");
  CHECK(first > 1.5);  // about ln 11 = 2.4 at initialisation
  CHECK(last <= first / 100);
}
