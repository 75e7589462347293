#include "psvae/pixel_decoder.h"

#include <fmt/format.h>

namespace psvae {

using ag::Var;

int group_count(int64_t channels) {
  check(channels > 0, fmt::format("pixel decoder: channel count {} must be positive", channels));
  for (int g = 32; g > 1; --g)
    if (channels % g == 0) return g;
  return 1;
}

namespace {
std::shared_ptr<nn::GroupNorm> group_norm(int64_t channels, Generator& g) {
  return std::make_shared<nn::GroupNorm>(
      nn::GroupNorm::Config{group_count(channels), channels, 1e-6, true}, g);
}
std::shared_ptr<nn::Conv2d> conv(int64_t in, int64_t out, int k, Generator& g) {
  return std::make_shared<nn::Conv2d>(nn::Conv2d::Config{in, out, k, 1, k / 2, true}, g);
}
}  // namespace

// ---- ResBlock -----------------------------------------------------------------------------------
ResBlock::ResBlock(const Config& c, Generator& g) : cfg_(c) {
  norm1 = register_module("norm1", group_norm(c.in, g));
  conv1 = register_module("conv1", conv(c.in, c.out, 3, g));
  norm2 = register_module("norm2", group_norm(c.out, g));
  conv2 = register_module("conv2", conv(c.out, c.out, 3, g));
  if (c.in != c.out) nin_shortcut = register_module("nin_shortcut", conv(c.in, c.out, 1, g));
}

Var ResBlock::forward(const Var& x) const {
  Var h = conv1->forward(ag::silu(norm1->forward(x)));  // (N, out, H, W)
  h = conv2->forward(ag::silu(norm2->forward(h)));
  return ag::add(nin_shortcut ? nin_shortcut->forward(x) : x, h);
}

// ---- Upsample -----------------------------------------------------------------------------------
Upsample::Upsample(const Config& c, Generator& g) : cfg_(c) {
  conv = register_module("conv", psvae::conv(c.channels, c.channels, 3, g));
}

Var Upsample::forward(const Var& x) const {
  return conv->forward(ag::upsample_nearest(x, 2 * x.size(2), 2 * x.size(3)));
}

// ---- one level ----------------------------------------------------------------------------------
DecoderLevel::DecoderLevel(const Config& c, Generator& g) : cfg_(c) {
  check(c.res_blocks >= 1,
        fmt::format("pixel decoder: res_blocks must be >= 1, got {}", c.res_blocks));
  res = register_module("res", std::make_shared<nn::ModuleList>());
  for (int j = 0; j < c.res_blocks; ++j)
    res->push_back(std::make_shared<ResBlock>(ResBlock::Config{j == 0 ? c.in : c.out, c.out}, g));
  if (c.upsample)
    upsample = register_module("upsample", std::make_shared<Upsample>(Upsample::Config{c.out}, g));
}

Var DecoderLevel::forward(const Var& x) const {
  Var h = x;
  for (size_t j = 0; j < res->size(); ++j) h = res->at<ResBlock>(j).forward(h);
  return upsample ? upsample->forward(h) : h;
}

// ---- the decoder --------------------------------------------------------------------------------
PixelDecoder::PixelDecoder(const Config& c, Generator& g) : cfg_(c) {
  check(c.latent_dim > 0 && !c.channels.empty() && c.out_h >= 0 && c.out_w >= 0,
        fmt::format("pixel decoder: bad config (latent_dim {}, {} levels, out {}x{})", c.latent_dim,
                    c.channels.size(), c.out_h, c.out_w));
  const size_t U = c.channels.size() - 1;
  conv_in = register_module("conv_in", conv(c.latent_dim, c.channels[0], 3, g));
  levels = register_module("levels", std::make_shared<nn::ModuleList>());
  for (size_t i = 0; i <= U; ++i)
    levels->push_back(std::make_shared<DecoderLevel>(
        DecoderLevel::Config{c.channels[i == 0 ? 0 : i - 1], c.channels[i], c.res_blocks, i < U},
        g));
  norm_out = register_module("norm_out", group_norm(c.channels[U], g));
  conv_out = register_module("conv_out", conv(c.channels[U], 3, 3, g));
}

Var PixelDecoder::forward(const Var& z) const {
  check(z.rank() == 4 && z.size(3) == cfg_.latent_dim,
        fmt::format("pixel decoder: z must be (N, h, w, {}), got {}", cfg_.latent_dim,
                    z.shape().str()));
  Var x = conv_in->forward(ag::permute(z, {0, 3, 1, 2}));  // (N, c_0, h, w)
  for (size_t i = 0; i < levels->size(); ++i) x = levels->at<DecoderLevel>(i).forward(x);
  x = conv_out->forward(ag::silu(norm_out->forward(x)));  // (N, 3, 2^U h, 2^U w)
  const int64_t H = cfg_.out_h > 0 ? cfg_.out_h : x.size(2);
  const int64_t W = cfg_.out_w > 0 ? cfg_.out_w : x.size(3);
  if (H != x.size(2) || W != x.size(3)) x = ag::upsample_bilinear(x, H, W, false);
  return x;  // (N, 3, H, W)
}

}  // namespace psvae
