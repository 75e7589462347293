// Pixel decoder (spec "Pixel decoder", psvae_spec.md): an LDM-style convolutional decoder from
// the S-VAE latent to RGB, NCHW inside.
//
//   z (N,h,w,L) -> (N,L,h,w)
//     conv_in Conv2d(L, c_0, 3, pad 1)
//     levels.{i}, i = 0..U:  res.{j} ResBlock x R (first of level i>0: c_{i-1} -> c_i)
//                            i < U: nearest 2x, upsample.conv Conv2d(c_i, c_i, 3, pad 1)
//     norm_out GroupNorm(G(c_U)), silu, conv_out Conv2d(c_U, 3, 3, pad 1)   (N,3,2^U h,2^U w)
//     bilinear resize (align_corners false) to (out_h, out_w) when the size differs
//   pixels (N,3,H,W), unbounded (no tanh), compared with images in [-1,1].
// No mid attention block: the latent is already mixed by the S-VAE transformer.
#pragma once
#include <memory>
#include <vector>

#include "nn/linear.h"
#include "nn/norm.h"

namespace psvae {

struct PixelDecoderConfig {
  int64_t latent_dim = 96;                                 // L
  std::vector<int64_t> channels{512, 256, 256, 128, 128};  // c_0..c_U: U = size - 1 upsamples
  int res_blocks = 2;                                      // R per level
  int64_t out_h = 256, out_w = 256;  // target size; 0 keeps the native 2^U h x 2^U w
};

// G(C): 32 when 32 divides C, else the largest divisor of C that is <= 32 (48 -> 24, 40 -> 20).
int group_count(int64_t channels);

// h = conv1(silu(norm1 x)); h = conv2(silu(norm2 h)); out = skip(x) + h; skip = nin_shortcut
// (1x1 conv) when in != out, else identity. GroupNorms G(C) groups, eps 1e-6.
// x (N,in,H,W) -> (N,out,H,W).
class ResBlock : public nn::Cloneable<ResBlock> {
 public:
  struct Config {
    int64_t in = 0, out = 0;
  };
  ResBlock(const Config& c, Generator& g);
  ag::Var forward(const ag::Var& x) const;
  const Config& config() const { return cfg_; }

  std::shared_ptr<nn::GroupNorm> norm1, norm2;
  std::shared_ptr<nn::Conv2d> conv1, conv2;
  std::shared_ptr<nn::Conv2d> nin_shortcut;  // null when in == out

 private:
  Config cfg_;
};

// Nearest 2x then `conv` Conv2d(C, C, 3, pad 1): (N,C,H,W) -> (N,C,2H,2W).
class Upsample : public nn::Cloneable<Upsample> {
 public:
  struct Config {
    int64_t channels = 0;
  };
  Upsample(const Config& c, Generator& g);
  ag::Var forward(const ag::Var& x) const;
  const Config& config() const { return cfg_; }

  std::shared_ptr<nn::Conv2d> conv;

 private:
  Config cfg_;
};

// `levels.{i}`: res.{j} ResBlocks, then (when upsample) `upsample`.
class DecoderLevel : public nn::Cloneable<DecoderLevel> {
 public:
  struct Config {
    int64_t in = 0, out = 0;
    int res_blocks = 1;
    bool upsample = false;
  };
  DecoderLevel(const Config& c, Generator& g);
  ag::Var forward(const ag::Var& x) const;
  const Config& config() const { return cfg_; }

  std::shared_ptr<nn::ModuleList> res;  // of ResBlock
  std::shared_ptr<Upsample> upsample;   // null at the last level

 private:
  Config cfg_;
};

class PixelDecoder : public nn::Cloneable<PixelDecoder> {
 public:
  using Config = PixelDecoderConfig;
  PixelDecoder(const Config& c, Generator& g);

  // z (N,h,w,L) -> pixels (N,3,out_h,out_w) (or (N,3,2^U h,2^U w) when out_h/out_w are 0).
  ag::Var forward(const ag::Var& z) const;
  ag::Var operator()(const ag::Var& z) const { return forward(z); }

  int upsamples() const { return static_cast<int>(cfg_.channels.size()) - 1; }
  const Config& config() const { return cfg_; }

  std::shared_ptr<nn::Conv2d> conv_in;
  std::shared_ptr<nn::ModuleList> levels;  // of DecoderLevel
  std::shared_ptr<nn::GroupNorm> norm_out;
  std::shared_ptr<nn::Conv2d> conv_out;

 private:
  Config cfg_;
};

}  // namespace psvae
