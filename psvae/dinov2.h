// DINOv2 ViT (Oquab et al. 2023), the representation encoder of the S-VAE / PS-VAE, with the
// parameter names of facebookresearch/dinov2 so the released checkpoints load unchanged (HF
// Dinov2Model files are renamed on load).
//
//   pixel_values (N, 3, H, W), ImageNet-normalised, H and W multiples of the patch p
//     patch_embed.proj: Conv2d(3, D, p, stride p)     -> (N, h*w, D),   h = H/p, w = W/p
//     [cls_token, patches] + pos_embed (interpolated from the G x G pretraining grid to h x w)
//     [cls, register_tokens (R, no position), patches] -> (N, 1 + R + h*w, D)
//     blocks.{i}: x += ls1(attn(norm1 x)); x += ls2(mlp(norm2 x))     (depth times)
//     norm                                             -> x_norm
//   x_norm_clstoken = x_norm[:, 0] (N, D); x_norm_patchtokens = x_norm[:, 1+R:] as (N, h, w, D).
#pragma once
#include <optional>
#include <string>

#include "nn/linear.h"
#include "nn/norm.h"
#include "nn/transformer_block.h"

namespace psvae {

struct Dinov2Config {
  int64_t dim = 384;
  int depth = 12;
  int heads = 6;
  int patch = 14;
  int in_chans = 3;
  int64_t grid = 37;  // G: pos_embed holds 1 + G*G rows (the released models: 518px / 14)
  int registers = 0;
  bool swiglu = false;  // ViT-g: SwiGLUFFNFused, hidden ceil8(int(4D) * 2/3) = 4096 at D 1536
  double mlp_ratio = 4.0;
  bool qkv_bias = true;
  // LayerScale init value (torch.hub builds every released model with init_values=1.0); none
  // means blocks without ls1/ls2.
  std::optional<double> layerscale = 1.0;
  // interpolate_pos_encoding, as upstream's constructor arguments: offset > 0 resizes with
  // scale_factor ((h + offset)/G, (w + offset)/G), offset 0 with the explicit size (h, w).
  // Hub: models without registers 0.1 / no antialias; the _reg models 0.0 / antialias.
  double interpolate_offset = 0.1;
  bool interpolate_antialias = false;
};

// "vits14" (384, 12 layers, 6 heads), "vitb14" (768, 12, 12), "vitl14" (1024, 24, 16),
// "vitg14" (1536, 40, 24, SwiGLU); a "_reg4" (or "_reg") suffix adds 4 registers and the
// register models' interpolation; a "dinov2_" prefix is accepted. Throws naming the choices.
Dinov2Config dinov2_arch(const std::string& name);

// patch_embed: x (N, C, H, W) -> (N, h*w, D) (conv, flatten, transpose as upstream PatchEmbed).
class PatchEmbed : public nn::Cloneable<PatchEmbed> {
 public:
  struct Config {
    int in_chans = 3;
    int64_t dim = 0;
    int patch = 14;
  };
  PatchEmbed(const Config& c, Generator& g);
  ag::Var forward(const ag::Var& x) const;
  const Config& config() const { return cfg_; }

  std::shared_ptr<nn::Conv2d> proj;

 private:
  Config cfg_;
};

struct Dinov2Output {
  ag::Var cls;        // x_norm_clstoken (N, D)
  ag::Var patch;      // x_norm_patchtokens (N, h, w, D)
  ag::Var registers;  // x_norm_regtokens (N, R, D); undefined without registers
};

class Dinov2 : public nn::Cloneable<Dinov2> {
 public:
  using Config = Dinov2Config;
  // Initialised as upstream init_weights: pos_embed trunc_normal(0.02), cls/register tokens
  // normal(1e-6), block Linears trunc_normal(0.02) with zero bias, mask_token 0.
  Dinov2(const Config& c, Generator& g);

  Dinov2Output forward(const ag::Var& pixel_values) const;
  Dinov2Output operator()(const ag::Var& pixel_values) const { return forward(pixel_values); }

  // pos_embed for an h x w patch grid: (1, 1 + h*w, D). pos_embed itself when h = w = G, else
  // the G x G part resized bicubically (psvae/interpolate.h); differentiable in pos_embed.
  ag::Var interpolate_pos_encoding(int64_t h, int64_t w) const;

  const Config& config() const { return cfg_; }
  ag::Var& cls_token() const { return *cls_token_; }
  ag::Var& pos_embed() const { return *pos_embed_; }

  std::shared_ptr<PatchEmbed> patch_embed;
  std::shared_ptr<nn::ModuleList> blocks;  // of nn::TransformerBlock
  std::shared_ptr<nn::LayerNorm> norm;

 private:
  Config cfg_;
  ag::Var* cls_token_ = nullptr;        // (1, 1, D)
  ag::Var* pos_embed_ = nullptr;        // (1, 1 + G*G, D)
  ag::Var* register_tokens_ = nullptr;  // (1, R, D), null without registers
  ag::Var* mask_token_ = nullptr;       // (1, D): unused at inference, kept for the key
};

// Images in [-1, 1] (N, 3, H, W) -> ImageNet-normalised: ((x + 1)/2 - mean) / std with
// mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225). Differentiable.
ag::Var imagenet_normalize(const ag::Var& x);

// ---- weights --------------------------------------------------------------------------------
// True when the keys are HF Dinov2Model's (embeddings.*, encoder.layer.*, layernorm.*).
bool is_hf_dinov2(const safetensors::NamedTensors& sd);
// HF -> facebookresearch/dinov2 names; query/key/value weights and biases are concatenated in
// that order into attn.qkv. Other keys pass through unchanged. Throws naming a missing q/k/v part.
safetensors::NamedTensors dinov2_from_hf(const safetensors::NamedTensors& sd);
// Renames if needed, then loads strictly. Every problem is reported at once, naming the key (and
// the file's own name when it was renamed) and the shapes:
//   "missing key 'norm.bias' (expected shape (64))", "unexpected key 'head.weight' (shape (2))",
//   "key 'blocks.0.attn.qkv.weight': expected shape (192, 64), file has (96, 64)".
void load_dinov2(nn::Module& m, const safetensors::NamedTensors& sd);
// The architecture read off a state dict's shapes (either naming): D from cls_token, G from
// pos_embed, patch and channels from patch_embed.proj.weight, depth from the block count, R from
// register_tokens, SwiGLU / mlp_ratio from the MLP widths, LayerScale and qkv bias by presence.
// Heads cannot be read off the weights: `heads` when > 0, else D / 64 (every released model).
// The interpolation follows the hub convention for the register count.
Dinov2Config infer_dinov2_config(const safetensors::NamedTensors& sd, int heads = 0);

}  // namespace psvae
