// S-VAE / PS-VAE losses (spec "Losses", psvae_spec.md) and the latent statistics stored after
// stage 2. All reductions are means unless stated.
//
//   KL    = 0.5 * sum(mu^2 + exp(logvar) - 1 - logvar) / normaliser
//           normaliser: Element = numel(mu) (mean over every latent element, the default),
//                       Sample  = N (sum per image, mean over the batch)
//   stage 1: L = MSE(semantic, target) + beta * KL
//   stage 2: L = alpha * MSE(semantic, target) + gamma * (0.5 L1(pixels, image)
//               + 0.5 MSE(pixels, image)) + lambda * mean_n LPIPS(pixels, image) + beta * KL
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "psvae/lpips.h"
#include "psvae/psvae.h"

namespace psvae {

enum class KlNorm { Element, Sample };
// "element" / "sample"; throws naming the choices.
KlNorm parse_kl_norm(const std::string& s);
const char* kl_norm_name(KlNorm n);

// KL(N(mu, exp(logvar)) || N(0, 1)) with the chosen normaliser; a scalar Var.
ag::Var kl_term(const ag::Var& mu, const ag::Var& logvar, KlNorm norm);

struct PsvaeLossWeights {
  double alpha = 1.0;   // semantic MSE
  double gamma = 1.0;   // pixel 0.5 L1 + 0.5 MSE
  double lambda = 0.1;  // LPIPS
  double beta = 1e-4;   // KL
  KlNorm kl_norm = KlNorm::Element;
};

// total: the scalar to backpropagate. terms: the unweighted values of each term, for logging:
//   "sem" MSE(semantic, target), "kl" KL; stage 2 also "l1", "mse" (pixels vs image), "lpips"
//   (mean over the batch; absent when LPIPS is null or disabled) and
//   "pix" = gamma * (0.5 l1 + 0.5 mse) + lambda * lpips (the weighted pixel part of the total).
struct LossResult {
  ag::Var total;
  std::map<std::string, double> terms;
};

LossResult svae_loss(const SVAEModelOutput& out, double beta, KlNorm norm = KlNorm::Element);
// image (N,3,H,W) in [-1,1], the model's input. lpips may be null or disabled: its term is off.
LossResult psvae_loss(const PSVAEOutput& out, const ag::Var& image, const PsvaeLossWeights& w,
                      const LPIPS* lpips);

// Per-channel mean and std of mu over many batches (the last dim is the channel), accumulated on
// the host in double with Chan et al.'s pairwise merge of (count, mean, M2): deterministic for a
// given batch order. std is the population std (divides by the count).
class LatentStats {
 public:
  // mu (..., L) of any floating dtype on any device; the first call fixes L.
  void add(const Tensor& mu);
  int64_t count() const { return count_; }  // values seen per channel
  int64_t channels() const { return static_cast<int64_t>(mean_.size()); }
  // (L) f32 tensors on the CPU; throw when nothing was added.
  Tensor mean() const;
  Tensor std() const;

 private:
  int64_t count_ = 0;
  std::vector<double> mean_, m2_;
};

}  // namespace psvae
