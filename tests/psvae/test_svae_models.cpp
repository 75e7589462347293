// S-VAE / PS-VAE models and losses (psvae_spec.md): state_dict names and shapes, the
// reparameterisation, the G(C) rule, the pixel decoder's resize, the frozen reference encoder,
// stage 1 -> stage 2, KL normalisation, latent statistics and an f64 gradcheck of the full
// stage-2 loss.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <map>
#include <set>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "autograd/gradcheck.h"
#include "common/test_util.h"
#include "psvae/losses.h"
#include "psvae/psvae.h"

using namespace psvae;

namespace {

// Encoder: D 16, patch 4, grid 4 (a 16x16 image is exactly the pretraining grid).
Dinov2Config tiny_encoder(int64_t dim = 16, int heads = 2) {
  Dinov2Config e;
  e.dim = dim;
  e.depth = 1;
  e.heads = heads;
  e.patch = 4;
  e.grid = 4;
  return e;
}

SVAEConfig tiny_svae(int64_t D, int64_t width, int depth, int64_t L, int heads = 2) {
  SVAEConfig s;
  s.enc_dim = D;
  s.latent_dim = L;
  s.width = width;
  s.depth = depth;
  s.heads = heads;
  return s;
}

// 16x16 images -> 4x4 tokens -> 2 upsamples -> 16x16 pixels; channels 16 -> 8 -> 8 so level 1
// has a nin_shortcut.
PSVAEConfig tiny_psvae() {
  PSVAEConfig c;
  c.encoder = tiny_encoder();
  c.svae = tiny_svae(16, 16, 2, 4);
  c.pix.latent_dim = 4;
  c.pix.channels = {16, 8, 8};
  c.pix.res_blocks = 2;
  c.pix.out_h = c.pix.out_w = 16;
  return c;
}

std::map<std::string, Tensor> as_map(const nn::Module& m) {
  std::map<std::string, Tensor> out;
  for (auto& [n, t] : m.state_dict()) out[n] = t;
  return out;
}

bool same_tensors(const nn::Module& a, const nn::Module& b) {
  auto sa = a.state_dict(), sb = b.state_dict();
  if (sa.size() != sb.size()) return false;
  for (size_t i = 0; i < sa.size(); ++i)
    if (sa[i].first != sb[i].first || !test::compare(sa[i].second, sb[i].second, 0).ok)
      return false;
  return true;
}

Tensor image(Generator& g, int64_t N, int64_t S, DType dt = DType::F32) {
  return nn::convert_float(test::uniform(g, {N, 3, S, S}), dt);
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && test::bit_mismatches_host(a, b) == 0;
}

}  // namespace

TEST_CASE("pixel decoder group count G(C)") {
  CHECK(group_count(48) == 24);
  CHECK(group_count(64) == 32);
  CHECK(group_count(8) == 8);
  CHECK(group_count(12) == 12);
  CHECK(group_count(40) == 20);
  CHECK(group_count(512) == 32);
  CHECK(group_count(7) == 7);
  CHECK(group_count(37) == 1);
}

TEST_CASE("PS-VAE state_dict names and shapes follow the spec") {
  Generator g(1);
  PSVAE m(tiny_psvae(), g);
  auto sd = as_map(m);
  auto has = [&](const std::string& k, const Shape& s) {
    INFO(k);
    REQUIRE(sd.count(k) == 1);
    CHECK(sd.at(k).shape() == s);
  };
  // S-VAE: proj (D -> C_w -> 2L), sem_dec (L -> C_w -> D); blocks without LayerScale.
  has("svae.proj.in_proj.weight", {16, 16});
  has("svae.proj.blocks.0.norm1.weight", {16});
  has("svae.proj.blocks.0.attn.qkv.weight", {48, 16});
  has("svae.proj.blocks.0.attn.qkv.bias", {48});
  has("svae.proj.blocks.1.attn.proj.weight", {16, 16});
  has("svae.proj.blocks.1.norm2.bias", {16});
  has("svae.proj.blocks.1.mlp.fc1.weight", {64, 16});
  has("svae.proj.blocks.1.mlp.fc2.weight", {16, 64});
  has("svae.proj.norm.weight", {16});
  has("svae.proj.out.weight", {8, 16});
  has("svae.proj.out.bias", {8});
  has("svae.sem_dec.in_proj.weight", {16, 4});
  has("svae.sem_dec.blocks.1.mlp.fc2.bias", {16});
  has("svae.sem_dec.norm.bias", {16});
  has("svae.sem_dec.out.weight", {16, 16});
  // Pixel decoder: levels 0..2, upsample on levels 0 and 1, nin_shortcut only where 16 -> 8.
  has("pix_dec.conv_in.weight", {16, 4, 3, 3});
  has("pix_dec.levels.0.res.0.norm1.weight", {16});
  has("pix_dec.levels.0.res.1.conv2.weight", {16, 16, 3, 3});
  has("pix_dec.levels.0.upsample.conv.weight", {16, 16, 3, 3});
  has("pix_dec.levels.1.res.0.conv1.weight", {8, 16, 3, 3});
  has("pix_dec.levels.1.res.0.nin_shortcut.weight", {8, 16, 1, 1});
  has("pix_dec.levels.1.res.0.nin_shortcut.bias", {8});
  has("pix_dec.levels.1.upsample.conv.bias", {8});
  has("pix_dec.levels.2.res.1.norm2.bias", {8});
  has("pix_dec.norm_out.weight", {8});
  has("pix_dec.conv_out.weight", {3, 8, 3, 3});
  has("pix_dec.conv_out.bias", {3});
  // Both encoders.
  has("encoder.blocks.0.attn.qkv.weight", {48, 16});
  has("encoder_ref.blocks.0.attn.qkv.weight", {48, 16});
  has("encoder_ref.pos_embed", {1, 17, 16});
  for (const std::string k :
       {"pix_dec.levels.0.res.0.nin_shortcut.weight", "pix_dec.levels.1.res.1.nin_shortcut.weight",
        "pix_dec.levels.2.upsample.conv.weight", "svae.proj.blocks.0.ls1.gamma",
        "pix_dec.levels.0.res.0.norm1.running_mean"}) {
    INFO(k);
    CHECK(sd.count(k) == 0);
  }
  for (auto& [k, t] : sd) {
    INFO(k);
    bool known = k.rfind("encoder.", 0) == 0 || k.rfind("encoder_ref.", 0) == 0 ||
                 k.rfind("svae.proj.", 0) == 0 || k.rfind("svae.sem_dec.", 0) == 0 ||
                 k.rfind("pix_dec.", 0) == 0;
    CHECK(known);
  }
  // GroupNorm groups follow G(C): 16 channels -> 16 groups.
  CHECK(m.pix_dec->norm_out->config().groups == 8);
  CHECK(m.pix_dec->levels->at<DecoderLevel>(0).res->at<ResBlock>(0).norm1->config().groups == 16);

  // The stage-1 model: encoder + svae only, same S-VAE names.
  SVAEModel s1({tiny_encoder(), tiny_svae(16, 16, 2, 4)}, g);
  auto sd1 = as_map(s1);
  CHECK(sd1.count("svae.proj.blocks.0.attn.qkv.weight") == 1);
  CHECK(sd1.count("encoder.norm.weight") == 1);
  for (auto& [k, t] : sd1) CHECK_MESSAGE(k.rfind("pix_dec.", 0) != 0, k);
  for (auto& [k, t] : sd1) CHECK_MESSAGE(k.rfind("encoder_ref.", 0) != 0, k);
}

TEST_CASE("S-VAE and PS-VAE output shapes") {
  Generator g(2);
  PSVAE m(tiny_psvae(), g);
  Tensor x = image(g, 2, 16);
  PSVAEOutput o = m.forward(ag::Var(x), nullptr);
  CHECK(o.mu.shape() == Shape{2, 4, 4, 4});
  CHECK(o.logvar.shape() == Shape{2, 4, 4, 4});
  CHECK(o.z.shape() == Shape{2, 4, 4, 4});
  CHECK(o.semantic.shape() == Shape{2, 4, 4, 16});
  CHECK(o.target.shape() == Shape{2, 4, 4, 16});
  CHECK(o.pixels.shape() == Shape{2, 3, 16, 16});
  CHECK_FALSE(o.target.requires_grad());

  // A 32x32 image through a patch-4 encoder with a 32-pixel decoder target: 8x8 tokens.
  PSVAEConfig c = tiny_psvae();
  c.encoder.grid = 8;
  c.pix.out_h = c.pix.out_w = 32;
  PSVAE m32(c, g);
  PSVAEOutput o32 = m32.forward(ag::Var(image(g, 1, 32)), nullptr);
  CHECK(o32.mu.shape() == Shape{1, 8, 8, 4});
  CHECK(o32.pixels.shape() == Shape{1, 3, 32, 32});

  SVAEModel s1({tiny_encoder(), tiny_svae(16, 16, 1, 4)}, g);
  SVAEModelOutput so = s1.forward(ag::Var(x), nullptr);
  CHECK(so.semantic.shape() == Shape{2, 4, 4, 16});
  CHECK(test::compare(so.target.data(), s1.features(ag::Var(x)).data(), 0).ok);
}

TEST_CASE("S-VAE: evaluation is deterministic (z = mu); training draws eps from the rng") {
  Generator g(3);
  SVAE s(tiny_svae(8, 8, 1, 4), g);
  ag::Var tokens(test::normal(g, {2, 3, 3, 8}));
  s.to(DType::F64);

  SVAEOutput e1 = s.forward(tokens, nullptr), e2 = s.forward(tokens, nullptr);
  CHECK(bit_equal(e1.z.data(), e1.mu.data()));
  CHECK(bit_equal(e1.semantic.data(), e2.semantic.data()));

  Generator r1(42), r2(42);
  SVAEOutput t1 = s.forward(tokens, &r1), t2 = s.forward(tokens, &r2);
  CHECK(r1.offset() > 0);
  CHECK(bit_equal(t1.z.data(), t2.z.data()));  // same seed, same draw
  CHECK(test::compare(t1.z.data(), t1.mu.data(), 1e-3).rel_err > 1e-3);
  SVAEOutput t3 = s.forward(tokens, &r1);  // the generator advanced: a new draw
  CHECK_FALSE(bit_equal(t1.z.data(), t3.z.data()));

  // The draw is N(0,1) from the generator's stream: z = mu + exp(logvar / 2) * eps.
  Generator r3(42);
  Tensor eps = Tensor::empty({2, 3, 3, 4}, DType::F64);
  r3.normal_(eps);
  SVAEOutput f = s.forward_eps(tokens, eps);
  CHECK(bit_equal(f.z.data(), t2.z.data()));
  std::vector<double> mu = test::as_doubles(f.mu.data()), lv = test::as_doubles(f.logvar.data()),
                      ev = test::as_doubles(eps), z = test::as_doubles(f.z.data());
  for (size_t i = 0; i < z.size(); ++i)
    CHECK(z[i] == doctest::Approx(mu[i] + std::exp(0.5 * lv[i]) * ev[i]));
  CHECK(bit_equal(s.decode(f.z).data(), f.semantic.data()));
}

TEST_CASE("S-VAE: logvar is clamped to [-30, 20]") {
  Generator g(4);
  SVAE s(tiny_svae(8, 8, 1, 4), g);
  // proj.out: weight 0, bias 100 on mu channels / +100 on logvar [0,2), -100 on logvar [2,4).
  Tensor(s.proj->out->weight().data()).zero_();
  std::vector<float> b{1, 2, 3, 4, 100, 100, -100, -100};
  Tensor(s.proj->out->bias()->data()).copy_from(Tensor::from_vector(b, Shape{8}));
  SVAEPosterior p = s.encode(ag::Var(nn::convert_float(test::normal(g, {1, 2, 2, 8}), DType::F32)));
  std::vector<double> mu = test::as_doubles(p.mu.data()), lv = test::as_doubles(p.logvar.data());
  for (size_t i = 0; i < 4; ++i) {
    CHECK(mu[i] == static_cast<double>(i + 1));
    CHECK(lv[i] == (i < 2 ? 20.0 : -30.0));
  }
}

TEST_CASE("pixel decoder: bilinear resize when 2^U h differs from the target size") {
  PixelDecoderConfig c;
  c.latent_dim = 4;
  c.channels = {8, 12};  // one upsample: 3x3 -> 6x6; G(12) = 12
  c.res_blocks = 1;
  c.out_h = 7;
  c.out_w = 5;
  PixelDecoderConfig native = c;
  native.out_h = native.out_w = 0;
  Generator g1(5), g2(5);
  PixelDecoder d(c, g1), dn(native, g2);
  CHECK(same_tensors(d, dn));
  Generator g(6);
  ag::Var z(nn::convert_float(test::normal(g, {2, 3, 3, 4}), DType::F32));
  Tensor y = d.forward(z).data(), yn = dn.forward(z).data();
  CHECK(yn.shape() == Shape{2, 3, 6, 6});
  CHECK(y.shape() == Shape{2, 3, 7, 5});
  CHECK(bit_equal(y, ag::upsample_bilinear(ag::Var(yn), 7, 5, false).data()));
  // Matching sizes: no resize at all.
  PixelDecoderConfig same = c;
  same.out_h = same.out_w = 6;
  Generator g3(5);
  PixelDecoder ds(same, g3);
  CHECK(bit_equal(ds.forward(z).data(), yn));
}

TEST_CASE("PS-VAE: the stage-2 loss trains encoder, svae and pix_dec, never encoder_ref") {
  Generator g(7);
  PSVAE m(tiny_psvae(), g);
  CHECK_FALSE(m.encoder_ref->parameters().front().requires_grad());
  Tensor x = image(g, 2, 16);
  Generator rng(8);
  PSVAEOutput o = m.forward(ag::Var(x), &rng);
  LossResult r = psvae_loss(o, ag::Var(x), PsvaeLossWeights{}, nullptr);
  r.total.backward();
  for (auto& [n, p] : m.named_parameters()) {
    INFO(n);
    if (n.rfind("encoder_ref.", 0) == 0) {
      CHECK_FALSE(p.requires_grad());
      CHECK_FALSE(p.grad().defined());
    } else if (n.find("mask_token") == std::string::npos) {  // unused by the forward
      CHECK(p.grad().defined());
    }
  }
  // encoder_ref starts as a copy of encoder.
  CHECK(same_tensors(*m.encoder, *m.encoder_ref));

  // Stage 1: only the S-VAE gets gradients.
  SVAEModel s1({tiny_encoder(), tiny_svae(16, 16, 1, 4)}, g);
  SVAEModelOutput so = s1.forward(ag::Var(x), &rng);
  svae_loss(so, 1e-4).total.backward();
  for (auto& [n, p] : s1.named_parameters()) {
    INFO(n);
    CHECK(p.grad().defined() == (n.rfind("svae.", 0) == 0));
  }
}

TEST_CASE("PS-VAE from stage 1: encoder and encoder_ref copy the stage-1 encoder") {
  Generator g(9);
  SVAEModel s1({tiny_encoder(), tiny_svae(16, 16, 2, 4)}, g);
  PixelDecoderConfig pix = tiny_psvae().pix;
  Generator gp(10), gp2(10);
  auto m = PSVAE::from_stage1(s1, pix, gp);
  CHECK(same_tensors(*m->encoder, *s1.encoder));
  CHECK(same_tensors(*m->encoder_ref, *s1.encoder));
  CHECK(same_tensors(*m->svae, *s1.svae));
  CHECK(same_tensors(*m->pix_dec, PixelDecoder(pix, gp2)));  // pix_dec drawn from g only
  CHECK(m->encoder->parameters().front().requires_grad());
  CHECK_FALSE(m->encoder_ref->parameters().front().requires_grad());
  CHECK(m->svae->parameters().front().requires_grad());
  // Copies, not shares: training stage 2 leaves stage 1 alone.
  Tensor(m->encoder->norm->named_parameters().front().second.data()).fill_(3.0);
  CHECK_FALSE(same_tensors(*m->encoder, *s1.encoder));
  CHECK(same_tensors(*m->encoder_ref, *s1.encoder));

  // The semantic target of stage 2 at the start is stage 1's target.
  Tensor x = image(g, 1, 16);
  CHECK(bit_equal(m->reference_features(ag::Var(x)).data(), s1.features(ag::Var(x)).data()));
}

TEST_CASE("PS-VAE clone is independent and computes the same outputs") {
  Generator g(11);
  PSVAE m(tiny_psvae(), g);
  auto c = std::static_pointer_cast<PSVAE>(m.clone());
  CHECK(same_tensors(m, *c));
  CHECK_FALSE(c->encoder_ref->parameters().front().requires_grad());
  CHECK(c->encoder->parameters().front().requires_grad());
  Tensor x = image(g, 1, 16);
  CHECK(bit_equal(m.forward(ag::Var(x), nullptr).pixels.data(),
                  c->forward(ag::Var(x), nullptr).pixels.data()));
  auto s = std::static_pointer_cast<SVAE>(m.svae->clone());
  CHECK(same_tensors(*s, *m.svae));
}

TEST_CASE("KL: Element and Sample normalisations differ by numel / N") {
  Generator g(12);
  ag::Var mu(test::normal(g, {3, 2, 2, 4})), lv(test::normal(g, {3, 2, 2, 4}, 0.0, 0.5));
  double direct = 0;
  std::vector<double> m = test::as_doubles(mu.data()), l = test::as_doubles(lv.data());
  for (size_t i = 0; i < m.size(); ++i) direct += 0.5 * (m[i] * m[i] + std::exp(l[i]) - 1 - l[i]);
  const double e = kl_term(mu, lv, KlNorm::Element).data().item();
  const double s = kl_term(mu, lv, KlNorm::Sample).data().item();
  CHECK(e == doctest::Approx(direct / 48).epsilon(1e-12));
  CHECK(s == doctest::Approx(direct / 3).epsilon(1e-12));
  CHECK(s / e == doctest::Approx(48.0 / 3.0).epsilon(1e-12));
  CHECK(parse_kl_norm("sample") == KlNorm::Sample);
  CHECK(std::string(kl_norm_name(parse_kl_norm("element"))) == "element");
  CHECK_THROWS_WITH(parse_kl_norm("batch"),
                    doctest::Contains("unknown value 'batch' (choose element or sample)"));
}

TEST_CASE("losses: terms, weights and the optional LPIPS term") {
  Generator g(13);
  PSVAE m(tiny_psvae(), g);
  m.to(DType::F64);
  ag::Var x(test::uniform(g, {2, 3, 16, 16}));
  PSVAEOutput o = m.forward(x, nullptr);
  PsvaeLossWeights w;
  w.alpha = 0.7;
  w.gamma = 1.3;
  w.lambda = 0.2;
  w.beta = 0.01;
  w.kl_norm = KlNorm::Sample;

  LossResult r = psvae_loss(o, x, w, nullptr);
  CHECK(r.terms.count("lpips") == 0);
  CHECK(r.terms.size() == 5);
  const double sem = ag::mse_loss(o.semantic, o.target).data().item();
  const double l1 = ag::l1_loss(o.pixels, x).data().item();
  const double mse = ag::mse_loss(o.pixels, x).data().item();
  const double kl = kl_term(o.mu, o.logvar, KlNorm::Sample).data().item();
  CHECK(r.terms.at("sem") == doctest::Approx(sem).epsilon(1e-12));
  CHECK(r.terms.at("l1") == doctest::Approx(l1).epsilon(1e-12));
  CHECK(r.terms.at("mse") == doctest::Approx(mse).epsilon(1e-12));
  CHECK(r.terms.at("kl") == doctest::Approx(kl).epsilon(1e-12));
  CHECK(r.terms.at("pix") == doctest::Approx(1.3 * 0.5 * (l1 + mse)).epsilon(1e-12));
  CHECK(r.total.data().item() ==
        doctest::Approx(0.7 * sem + 1.3 * 0.5 * (l1 + mse) + 0.01 * kl).epsilon(1e-12));

  Generator gl(14);
  LPIPS lp({LPIPS::Net::vgg, 8}, gl);
  lp.to(DType::F64);
  LossResult rl = psvae_loss(o, x, w, &lp);
  const double lpv = ag::mean_all(lp.forward(o.pixels, x)).data().item();
  REQUIRE(rl.terms.count("lpips") == 1);
  CHECK(rl.terms.at("lpips") == doctest::Approx(lpv).epsilon(1e-12));
  CHECK(rl.terms.at("pix") == doctest::Approx(1.3 * 0.5 * (l1 + mse) + 0.2 * lpv).epsilon(1e-12));
  CHECK(rl.total.data().item() ==
        doctest::Approx(r.total.data().item() + 0.2 * lpv).epsilon(1e-12));

  SVAEModelOutput so = o;
  LossResult r1 = svae_loss(so, 0.5, KlNorm::Element);
  CHECK(r1.terms.size() == 2);
  CHECK(r1.total.data().item() ==
        doctest::Approx(sem + 0.5 * kl_term(o.mu, o.logvar, KlNorm::Element).data().item())
            .epsilon(1e-12));

  // A decoder whose output size differs from the image is reported, not broadcast.
  CHECK_THROWS_WITH(psvae_loss(o, ag::Var(test::uniform(g, {2, 3, 8, 8})), w, nullptr),
                    doctest::Contains("differ in shape"));
}

TEST_CASE("latent statistics match a direct computation") {
  Generator g(15);
  const int64_t L = 5;
  std::vector<Tensor> batches{
      test::normal(g, {2, 3, 3, L}, 1.5, 2.0), test::normal(g, {1, 3, 3, L}, -0.5, 0.3),
      nn::convert_float(test::normal(g, {4, 2, 2, L}, 0.2, 1.0), DType::F32)};
  LatentStats st;
  std::vector<std::vector<double>> per(L);
  for (const Tensor& b : batches) {
    st.add(b);
    std::vector<double> v = test::as_doubles(b);
    for (size_t i = 0; i < v.size(); ++i) per[i % L].push_back(v[i]);
  }
  CHECK(st.count() == 18 + 9 + 16);
  CHECK(st.channels() == L);
  std::vector<double> mean = test::as_doubles(st.mean()), sd = test::as_doubles(st.std());
  CHECK(st.mean().shape() == Shape{L});
  for (int64_t c = 0; c < L; ++c) {
    double m = 0, s2 = 0;
    for (double v : per[c]) m += v;
    m /= static_cast<double>(per[c].size());
    for (double v : per[c]) s2 += (v - m) * (v - m);
    const double s = std::sqrt(s2 / static_cast<double>(per[c].size()));
    CHECK(mean[c] == doctest::Approx(m).epsilon(1e-6));
    CHECK(sd[c] == doctest::Approx(s).epsilon(1e-6));
  }
  // Deterministic: the same batches give bit-identical results.
  LatentStats st2;
  for (const Tensor& b : batches) st2.add(b);
  CHECK(bit_equal(st.std(), st2.std()));
  CHECK_THROWS_WITH(st.add(test::normal(g, {2, 3})), doctest::Contains("3 channels"));
  CHECK_THROWS(LatentStats().mean());
}

TEST_CASE("the full PS-VAE loss gradchecks in f64 on a tiny configuration") {
  // Encoder D 8, depth 1, patch 4 on 16x16 -> 4x4 tokens; S-VAE width 8, depth 1, latent 4; pixel
  // decoder channels [8, 8, 8] (2 upsamples -> 16x16), R 1; LPIPS VGG / 8 (16 px is enough).
  PSVAEConfig c;
  c.encoder = tiny_encoder(8, 2);
  c.svae = tiny_svae(8, 8, 1, 4);
  c.pix.latent_dim = 4;
  c.pix.channels = {8, 8, 8};
  c.pix.res_blocks = 1;
  c.pix.out_h = c.pix.out_w = 16;
  Generator g(16);
  PSVAE m(c, g);
  m.to(DType::F64);
  LPIPS lp({LPIPS::Net::vgg, 8}, g);
  lp.to(DType::F64);
  Tensor x = test::uniform(g, {1, 3, 16, 16});
  Tensor eps = test::normal(g, {1, 4, 4, 4});  // a fixed draw keeps the reparameterisation exact
  // The semantic target is a stop-gradient of encoder_ref(image): hold it fixed at the base image
  // so the finite differences see the same function the backward differentiates.
  const ag::Var target = m.reference_features(ag::Var(x));
  PsvaeLossWeights w;
  w.lambda = 0.5;  // weigh every term visibly
  w.beta = 0.1;

  const std::set<std::string> checked{"encoder.patch_embed.proj.bias",
                                      "encoder.blocks.0.attn.qkv.weight",
                                      "encoder.norm.weight",
                                      "svae.proj.out.weight",
                                      "svae.sem_dec.in_proj.weight",
                                      "svae.sem_dec.out.bias",
                                      "pix_dec.levels.1.res.0.norm1.weight",
                                      "pix_dec.levels.0.upsample.conv.bias",
                                      "pix_dec.conv_out.bias"};
  std::vector<Tensor> inputs{x};
  std::vector<bool> wrt{true};
  size_t found = 0;
  for (auto& [n, p] : m.named_parameters()) {
    inputs.push_back(p.data().clone());
    wrt.push_back(checked.count(n) == 1);
    found += checked.count(n);
  }
  REQUIRE(found == checked.size());
  auto f = [&](const std::vector<ag::Var>& v) {
    m.bind_parameters(std::vector<ag::Var>(v.begin() + 1, v.end()));
    PSVAEOutput o = m.forward_eps(v[0], eps);
    o.target = target;
    return psvae_loss(o, v[0], w, &lp).total;
  };
  auto t0 = std::chrono::steady_clock::now();
  ag::GradcheckResult r = ag::gradcheck(f, inputs, wrt);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("gradcheck: max abs err ", r.max_abs_err, ", max rel err ", r.max_rel_err, ", ", secs,
          " s");
  INFO(r.report);
  CHECK(r.ok);
}
