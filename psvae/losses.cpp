#include "psvae/losses.h"

#include <fmt/format.h>

#include <cmath>

#include "nn/module.h"

namespace psvae {

using ag::Var;

KlNorm parse_kl_norm(const std::string& s) {
  if (s == "element") return KlNorm::Element;
  if (s == "sample") return KlNorm::Sample;
  throw std::invalid_argument(
      fmt::format("loss.kl_norm: unknown value '{}' (choose element or sample)", s));
}

const char* kl_norm_name(KlNorm n) { return n == KlNorm::Element ? "element" : "sample"; }

Var kl_term(const Var& mu, const Var& logvar, KlNorm norm) {
  check(mu.shape() == logvar.shape() && mu.rank() >= 1 && mu.numel() > 0,
        fmt::format("kl: mu {} and logvar {} must have the same non-empty shape", mu.shape().str(),
                    logvar.shape().str()));
  const double normaliser =
      norm == KlNorm::Element ? static_cast<double>(mu.numel()) : static_cast<double>(mu.size(0));
  return ag::kl_gauss(mu, logvar, normaliser);
}

LossResult svae_loss(const SVAEModelOutput& out, double beta, KlNorm norm) {
  Var sem = ag::mse_loss(out.semantic, out.target);
  Var kl = kl_term(out.mu, out.logvar, norm);
  LossResult r;
  r.total = ag::add(sem, ag::mul_scalar(kl, beta));
  r.terms["sem"] = sem.data().item();
  r.terms["kl"] = kl.data().item();
  return r;
}

LossResult psvae_loss(const PSVAEOutput& out, const Var& image, const PsvaeLossWeights& w,
                      const LPIPS* lpips) {
  check(out.pixels.shape() == image.shape(),
        fmt::format("psvae loss: pixels {} and image {} differ in shape (set the pixel decoder's "
                    "out_h/out_w to the image size)",
                    out.pixels.shape().str(), image.shape().str()));
  Var sem = ag::mse_loss(out.semantic, out.target);
  Var kl = kl_term(out.mu, out.logvar, w.kl_norm);
  Var l1 = ag::l1_loss(out.pixels, image);
  Var mse = ag::mse_loss(out.pixels, image);
  // gamma * (0.5 L1 + 0.5 MSE) [+ lambda * mean_n LPIPS]
  Var pix = ag::mul_scalar(ag::add(l1, mse), 0.5 * w.gamma);
  LossResult r;
  if (lpips && lpips->enabled()) {
    Var lp = ag::mean_all(lpips->forward(out.pixels, image));  // (N) -> scalar
    pix = ag::add(pix, ag::mul_scalar(lp, w.lambda));
    r.terms["lpips"] = lp.data().item();
  }
  r.total = ag::add(ag::add(ag::mul_scalar(sem, w.alpha), pix), ag::mul_scalar(kl, w.beta));
  r.terms["sem"] = sem.data().item();
  r.terms["kl"] = kl.data().item();
  r.terms["l1"] = l1.data().item();
  r.terms["mse"] = mse.data().item();
  r.terms["pix"] = pix.data().item();
  return r;
}

// ---- latent statistics --------------------------------------------------------------------------
void LatentStats::add(const Tensor& mu) {
  check(mu.defined() && mu.rank() >= 1 && mu.size(mu.rank() - 1) > 0,
        "latent stats: mu must be (..., L) with L > 0");
  const int64_t L = mu.size(mu.rank() - 1);
  if (mean_.empty()) {
    mean_.assign(static_cast<size_t>(L), 0.0);
    m2_.assign(static_cast<size_t>(L), 0.0);
  }
  check(L == channels(),
        fmt::format("latent stats: got {} channels, earlier batches had {}", L, channels()));
  const int64_t n = mu.numel() / L;
  if (n == 0) return;
  const std::vector<double> v =
      nn::convert_float(mu.to(Device::cpu()), DType::F64).to_vector<double>();
  // The batch's own mean and M2 (two passes), then Chan et al.'s merge with the running totals.
  std::vector<double> bm(static_cast<size_t>(L), 0.0), bm2(static_cast<size_t>(L), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < L; ++c) bm[c] += v[static_cast<size_t>(i * L + c)];
  for (double& m : bm) m /= static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < L; ++c) {
      const double d = v[static_cast<size_t>(i * L + c)] - bm[c];
      bm2[c] += d * d;
    }
  const double na = static_cast<double>(count_), nb = static_cast<double>(n), nt = na + nb;
  for (int64_t c = 0; c < L; ++c) {
    const double delta = bm[c] - mean_[c];
    mean_[c] += delta * nb / nt;
    m2_[c] += bm2[c] + delta * delta * na * nb / nt;
  }
  count_ += n;
}

Tensor LatentStats::mean() const {
  check(count_ > 0, "latent stats: no batches were added");
  std::vector<float> m(mean_.begin(), mean_.end());
  return Tensor::from_vector(m, Shape{channels()});
}

Tensor LatentStats::std() const {
  check(count_ > 0, "latent stats: no batches were added");
  std::vector<float> s(mean_.size());
  for (size_t c = 0; c < s.size(); ++c)
    s[c] = static_cast<float>(std::sqrt(m2_[c] / static_cast<double>(count_)));
  return Tensor::from_vector(s, Shape{channels()});
}

}  // namespace psvae
