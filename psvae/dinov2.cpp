#include "psvae/dinov2.h"

#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <stdexcept>

#include "nn/init.h"
#include "psvae/interpolate.h"

namespace psvae {

using ag::Var;
using safetensors::NamedTensors;

// ---- configs ------------------------------------------------------------------------------------
Dinov2Config dinov2_arch(const std::string& name) {
  std::string n = name;
  if (n.rfind("dinov2_", 0) == 0) n = n.substr(7);
  bool reg = false;
  for (const char* suffix : {"_reg4", "_reg"}) {
    const size_t len = std::strlen(suffix);
    if (n.size() > len && n.compare(n.size() - len, len, suffix) == 0) {
      n.resize(n.size() - len);
      reg = true;
      break;
    }
  }
  Dinov2Config c;
  if (n == "vits14") {
    c.dim = 384, c.depth = 12, c.heads = 6;
  } else if (n == "vitb14") {
    c.dim = 768, c.depth = 12, c.heads = 12;
  } else if (n == "vitl14") {
    c.dim = 1024, c.depth = 24, c.heads = 16;
  } else if (n == "vitg14") {
    c.dim = 1536, c.depth = 40, c.heads = 24, c.swiglu = true;
  } else {
    throw std::invalid_argument(fmt::format(
        "dinov2: unknown arch '{}' (choose vits14, vitb14, vitl14, vitg14, optionally with _reg4)",
        name));
  }
  if (reg) {
    c.registers = 4;
    c.interpolate_offset = 0.0;
    c.interpolate_antialias = true;
  }
  return c;
}

// ---- patch embedding ----------------------------------------------------------------------------
PatchEmbed::PatchEmbed(const Config& c, Generator& g) : cfg_(c) {
  proj = register_module("proj",
                         std::make_shared<nn::Conv2d>(
                             nn::Conv2d::Config{c.in_chans, c.dim, c.patch, c.patch, 0, true}, g));
}

Var PatchEmbed::forward(const Var& x) const {
  const int64_t N = x.size(0), H = x.size(2), W = x.size(3), p = cfg_.patch;
  check(x.rank() == 4 && x.size(1) == cfg_.in_chans,
        fmt::format("dinov2: pixel_values must be (N, {}, H, W), got {}", cfg_.in_chans,
                    x.shape().str()));
  check(H % p == 0 && W % p == 0,
        fmt::format("dinov2: image size {}x{} is not a multiple of the patch size {}", H, W, p));
  Var y = proj->forward(x);  // (N, D, h, w)
  return ag::transpose(ag::reshape(y, Shape{N, cfg_.dim, (H / p) * (W / p)}), 1, 2);  // (N, hw, D)
}

// ---- the model ----------------------------------------------------------------------------------
Dinov2::Dinov2(const Config& c, Generator& g) : cfg_(c) {
  check(c.dim > 0 && c.depth > 0 && c.grid > 0 && c.registers >= 0,
        fmt::format("dinov2: bad config (dim {}, depth {}, grid {}, registers {})", c.dim, c.depth,
                    c.grid, c.registers));
  const int64_t D = c.dim;
  // Own parameters in upstream's registration order (the state_dict order).
  Tensor cls = Tensor::empty({1, 1, D}), pos = Tensor::empty({1, 1 + c.grid * c.grid, D});
  nn::init::normal_(cls, g, 1e-6);
  nn::init::trunc_normal_(pos, g, 0.02, 0.0, -2.0, 2.0);  // PyTorch's absolute bounds
  cls_token_ = &register_parameter("cls_token", cls);
  pos_embed_ = &register_parameter("pos_embed", pos);
  if (c.registers > 0) {
    Tensor reg = Tensor::empty({1, c.registers, D});
    nn::init::normal_(reg, g, 1e-6);
    register_tokens_ = &register_parameter("register_tokens", reg);
  }
  mask_token_ = &register_parameter("mask_token", Tensor::zeros({1, D}));

  patch_embed = register_module(
      "patch_embed", std::make_shared<PatchEmbed>(PatchEmbed::Config{c.in_chans, D, c.patch}, g));
  nn::TransformerBlock::Config bc;
  bc.dim = D;
  bc.heads = c.heads;
  bc.mlp_ratio = c.mlp_ratio;
  bc.eps = 1e-6;
  bc.act = nn::Activation::GeluErf;
  bc.swiglu = c.swiglu;
  bc.layerscale = c.layerscale;
  bc.qkv_bias = c.qkv_bias;
  blocks = register_module("blocks", std::make_shared<nn::ModuleList>());
  for (int i = 0; i < c.depth; ++i)
    blocks->push_back(std::make_shared<nn::TransformerBlock>(bc, g));
  norm =
      register_module("norm", std::make_shared<nn::LayerNorm>(nn::LayerNorm::Config{D, 1e-6}, g));

  // init_weights_vit_timm on every Linear of the blocks (LayerNorms keep 1 / 0).
  for (auto& [name, v] : blocks->named_parameters()) {
    Tensor t = v.data();
    bool is_norm = name.find(".norm") != std::string::npos;
    if (t.rank() == 2)
      nn::init::trunc_normal_(t, g, 0.02, 0.0, -2.0, 2.0);
    else if (!is_norm && name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0)
      nn::init::zeros_(t);
  }
}

Var Dinov2::interpolate_pos_encoding(int64_t h, int64_t w) const {
  const int64_t G = cfg_.grid, D = cfg_.dim;
  // Upstream: `if npatch == N and w == h: return self.pos_embed`.
  if (h * w == G * G && h == w) return *pos_embed_;
  Var pos = *pos_embed_;
  const DType dt = pos.dtype();
  if (dt != DType::F32 && dt != DType::F64)
    pos = ag::cast(pos, DType::F32);                                     // as upstream .float()
  Var class_pos = ag::narrow(pos, 1, 0, 1);                              // (1, 1, D)
  Var grid = ag::reshape(ag::narrow(pos, 1, 1, G * G), Shape{G, G, D});  // (G, G, D)
  interp::BicubicOptions o;
  o.antialias = cfg_.interpolate_antialias;
  if (cfg_.interpolate_offset != 0.0) {
    // "Historical kludge" kept for the released weights: a scale factor, not a size.
    o.scale_h = (static_cast<double>(h) + cfg_.interpolate_offset) / static_cast<double>(G);
    o.scale_w = (static_cast<double>(w) + cfg_.interpolate_offset) / static_cast<double>(G);
    check(interp::output_size(G, o.scale_h) == h && interp::output_size(G, o.scale_w) == w,
          fmt::format("dinov2: interpolate_offset {} does not give a {}x{} grid from {}x{}",
                      cfg_.interpolate_offset, h, w, G, G));
  }
  Var patch_pos = ag::reshape(interp::resize_bicubic(grid, h, w, o), Shape{1, h * w, D});
  Var out = ag::concat({class_pos, patch_pos}, 1);  // (1, 1 + h*w, D)
  return out.dtype() == dt ? out : ag::cast(out, dt);
}

Dinov2Output Dinov2::forward(const Var& pixel_values) const {
  const int64_t N = pixel_values.size(0), D = cfg_.dim, R = cfg_.registers;
  const int64_t h = pixel_values.size(2) / cfg_.patch, w = pixel_values.size(3) / cfg_.patch;
  Var x = patch_embed->forward(pixel_values);                       // (N, hw, D)
  x = ag::concat({ag::expand(*cls_token_, Shape{N, 1, D}), x}, 1);  // (N, 1 + hw, D)
  x = ag::add(x, interpolate_pos_encoding(h, w));                   // + (1, 1 + hw, D)
  if (R > 0)                                                        // (N, 1 + R + hw, D)
    x = ag::concat({ag::narrow(x, 1, 0, 1), ag::expand(*register_tokens_, Shape{N, R, D}),
                    ag::narrow(x, 1, 1, h * w)},
                   1);
  for (size_t i = 0; i < blocks->size(); ++i) x = blocks->at<nn::TransformerBlock>(i).forward(x);
  x = norm->forward(x);
  Dinov2Output out;
  out.cls = ag::reshape(ag::narrow(x, 1, 0, 1), Shape{N, D});
  if (R > 0) out.registers = ag::narrow(x, 1, 1, R);
  out.patch = ag::reshape(ag::narrow(x, 1, 1 + R, h * w), Shape{N, h, w, D});
  return out;
}

Var imagenet_normalize(const Var& x) {
  check(x.rank() == 4 && x.size(1) == 3,
        fmt::format("imagenet_normalize: expected (N, 3, H, W), got {}", x.shape().str()));
  static const double mean[3] = {0.485, 0.456, 0.406}, stdv[3] = {0.229, 0.224, 0.225};
  // ((x + 1)/2 - m)/s = x * (0.5/s) + (0.5 - m)/s, one multiply-add per channel.
  std::vector<double> a(3), b(3);
  for (int c = 0; c < 3; ++c) a[c] = 0.5 / stdv[c], b[c] = (0.5 - mean[c]) / stdv[c];
  auto as_var = [&](const std::vector<double>& v) {
    return Var(
        nn::convert_float(Tensor::from_vector(v, Shape{1, 3, 1, 1}), x.dtype()).to(x.device()));
  };
  return ag::add(ag::mul(x, as_var(a)), as_var(b));
}

// ---- weights ------------------------------------------------------------------------------------
namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

// Concatenates host copies of tensors along dim 0 (they must agree in dtype and trailing dims).
Tensor concat0(const std::vector<std::pair<std::string, Tensor>>& parts) {
  const Tensor& first = parts.front().second;
  std::vector<int64_t> dims = first.shape().vec();
  check(!dims.empty(), fmt::format("dinov2: '{}' has no rows to concatenate", parts[0].first));
  int64_t rows = 0;
  for (const auto& [n, t] : parts) {
    std::vector<int64_t> d = t.shape().vec();
    if (t.dtype() != first.dtype() || d.size() != dims.size() ||
        !std::equal(d.begin() + 1, d.end(), dims.begin() + 1))
      throw std::runtime_error(fmt::format("dinov2: cannot fuse '{}' {} with '{}' {} into qkv", n,
                                           t.shape().str(), parts[0].first, first.shape().str()));
    rows += d[0];
  }
  dims[0] = rows;
  Tensor out = Tensor::empty(Shape(dims), first.dtype());
  char* dst = static_cast<char*>(out.raw_data());
  for (const auto& [n, t] : parts) {
    Tensor hst = t.to(Device::cpu());
    std::memcpy(dst, hst.raw_data(), hst.nbytes());
    dst += hst.nbytes();
  }
  return out;
}

// "encoder.layer.<i>.<rest>" -> (i, rest); false for any other name. (A hand-written match
// rather than std::regex: exact, fast, and free of libstdc++ regex's GCC 12 warnings.)
bool split_hf_layer(const std::string& k, std::string* idx, std::string* rest) {
  static const std::string prefix = "encoder.layer.";
  if (!starts_with(k, prefix)) return false;
  size_t p = prefix.size(), q = p;
  while (q < k.size() && std::isdigit(static_cast<unsigned char>(k[q]))) ++q;
  if (q == p || q + 1 >= k.size() || k[q] != '.') return false;
  *idx = k.substr(p, q - p);
  *rest = k.substr(q + 1);
  return true;
}

// "encoder.layer.<i>.attention.attention.<part>.<kind>" -> (i, part, kind).
bool split_hf_qkv(const std::string& k, std::string* idx, std::string* part, std::string* kind) {
  std::string rest;
  static const std::string attn = "attention.attention.";
  if (!split_hf_layer(k, idx, &rest) || !starts_with(rest, attn)) return false;
  std::string tail = rest.substr(attn.size());
  size_t dot = tail.find('.');
  if (dot == std::string::npos || tail.find('.', dot + 1) != std::string::npos) return false;
  *part = tail.substr(0, dot);
  *kind = tail.substr(dot + 1);
  return true;
}

// One HF name -> the original name ("" for the q/k/v parts, fused separately).
std::string hf_to_orig(const std::string& k) {
  static const std::map<std::string, std::string> fixed = {
      {"embeddings.cls_token", "cls_token"},
      {"embeddings.mask_token", "mask_token"},
      {"embeddings.position_embeddings", "pos_embed"},
      {"embeddings.register_tokens", "register_tokens"},
      {"embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight"},
      {"embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias"},
      {"layernorm.weight", "norm.weight"},
      {"layernorm.bias", "norm.bias"}};
  if (auto it = fixed.find(k); it != fixed.end()) return it->second;
  std::string idx, rest;
  if (!split_hf_layer(k, &idx, &rest)) return k;
  const std::string pre = "blocks." + idx + ".";
  static const std::vector<std::pair<std::string, std::string>> renames = {
      {"attention.output.dense.", "attn.proj."},
      {"layer_scale1.lambda1", "ls1.gamma"},
      {"layer_scale2.lambda1", "ls2.gamma"},
      {"mlp.weights_in.", "mlp.w12."},
      {"mlp.weights_out.", "mlp.w3."},
      {"norm1.", "norm1."},
      {"norm2.", "norm2."},
      {"mlp.fc1.", "mlp.fc1."},
      {"mlp.fc2.", "mlp.fc2."}};
  if (starts_with(rest, "attention.attention.")) return "";
  for (const auto& [from, to] : renames)
    if (starts_with(rest, from)) return pre + to + rest.substr(from.size());
  return k;
}

}  // namespace

bool is_hf_dinov2(const NamedTensors& sd) {
  for (const auto& [k, t] : sd)
    if (starts_with(k, "embeddings.") || starts_with(k, "encoder.layer.") ||
        starts_with(k, "layernorm."))
      return true;
  return false;
}

NamedTensors dinov2_from_hf(const NamedTensors& sd) {
  NamedTensors out;
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [k, t] : sd) by_name[k] = &t;
  std::set<std::string> fused;  // "i.kind" already emitted
  for (const auto& [k, t] : sd) {
    std::string i, part, kind;
    bool is_qkv = split_hf_qkv(k, &i, &part, &kind) &&
                  (part == "query" || part == "key" || part == "value") &&
                  (kind == "weight" || kind == "bias");
    if (!is_qkv) {
      std::string o = hf_to_orig(k);
      out.emplace_back(o.empty() ? k : o, t);  // an unknown attention.attention.* stays as is
      continue;
    }
    if (!fused.insert(i + "." + kind).second) continue;
    std::vector<std::pair<std::string, Tensor>> parts;
    for (const char* piece : {"query", "key", "value"}) {
      std::string name = fmt::format("encoder.layer.{}.attention.attention.{}.{}", i, piece, kind);
      auto it = by_name.find(name);
      if (it == by_name.end())
        throw std::runtime_error(fmt::format("dinov2: missing key '{}' (needed to build {})", name,
                                             "blocks." + i + ".attn.qkv." + kind));
      parts.emplace_back(name, *it->second);
    }
    out.emplace_back("blocks." + i + ".attn.qkv." + kind, concat0(parts));
  }
  return out;
}

void load_dinov2(nn::Module& m, const NamedTensors& sd) {
  const bool hf = is_hf_dinov2(sd);
  NamedTensors conv = hf ? dinov2_from_hf(sd) : sd;
  // The file's own name of each converted key, for messages.
  std::map<std::string, std::string> source;
  if (hf)
    for (const auto& [k, t] : sd) {
      std::string o = hf_to_orig(k);
      if (o.empty()) {
        std::string i, part, kind;
        if (split_hf_qkv(k, &i, &part, &kind)) {
          std::string fusedname = "blocks." + i + ".attn.qkv." + kind;
          if (!source.count(fusedname))
            source[fusedname] =
                fmt::format("encoder.layer.{}.attention.attention.{{query,key,value}}.{}", i, kind);
        }
      } else if (o != k) {
        source[o] = k;
      }
    }
  auto label = [&](const std::string& k) {
    auto it = source.find(k);
    return it == source.end() ? fmt::format("'{}'", k)
                              : fmt::format("'{}' (file key '{}')", k, it->second);
  };

  std::map<std::string, Shape> expected;
  NamedTensors mine = m.state_dict();
  for (const auto& [k, t] : mine) expected.emplace(k, t.shape());
  std::map<std::string, Shape> given;
  for (const auto& [k, t] : conv) given.emplace(k, t.shape());
  std::vector<std::string> problems;
  for (const auto& [k, t] : mine) {
    auto it = given.find(k);
    if (it == given.end())
      problems.push_back(fmt::format("missing key '{}' (expected shape {})", k, t.shape().str()));
    else if (it->second != t.shape())
      problems.push_back(fmt::format("key {}: expected shape {}, file has {}", label(k),
                                     t.shape().str(), it->second.str()));
  }
  for (const auto& [k, t] : conv)
    if (!expected.count(k))
      problems.push_back(fmt::format("unexpected key {} (shape {})", label(k), t.shape().str()));
  if (!problems.empty()) {
    std::string msg = fmt::format(
        "load_dinov2 ({} names): {} problem{}:", hf ? "HF Dinov2Model" : "facebookresearch/dinov2",
        problems.size(), problems.size() == 1 ? "" : "s");
    for (const auto& p : problems) msg += " " + p + ";";
    msg.pop_back();
    throw std::runtime_error(msg);
  }
  m.load_state_dict(conv, true);  // dtype checks and the copy
}

Dinov2Config infer_dinov2_config(const NamedTensors& sd_in, int heads) {
  NamedTensors sd = is_hf_dinov2(sd_in) ? dinov2_from_hf(sd_in) : sd_in;
  std::map<std::string, Tensor> t;
  for (const auto& [k, v] : sd) t.emplace(k, v);
  auto need = [&](const std::string& k, int rank) -> const Tensor& {
    auto it = t.find(k);
    if (it == t.end())
      throw std::runtime_error(fmt::format("dinov2: cannot infer the config: no '{}'", k));
    if (it->second.rank() != rank)
      throw std::runtime_error(fmt::format("dinov2: '{}' has shape {}, expected rank {}", k,
                                           it->second.shape().str(), rank));
    return it->second;
  };
  Dinov2Config c;
  c.dim = need("cls_token", 3).size(2);
  const Tensor& pe = need("patch_embed.proj.weight", 4);
  c.patch = static_cast<int>(pe.size(2));
  c.in_chans = static_cast<int>(pe.size(1));
  const int64_t npos = need("pos_embed", 3).size(1) - 1;
  c.grid = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(npos))));
  if (c.grid * c.grid != npos)
    throw std::runtime_error(
        fmt::format("dinov2: pos_embed has {} patch positions, not a square grid", npos));
  c.depth = 0;
  while (t.count(fmt::format("blocks.{}.norm1.weight", c.depth))) ++c.depth;
  if (c.depth == 0)
    throw std::runtime_error("dinov2: cannot infer the config: no 'blocks.0.norm1.weight'");
  c.registers =
      t.count("register_tokens") ? static_cast<int>(need("register_tokens", 3).size(1)) : 0;
  c.interpolate_offset = c.registers > 0 ? 0.0 : 0.1;
  c.interpolate_antialias = c.registers > 0;
  c.layerscale = t.count("blocks.0.ls1.gamma") ? std::optional<double>(1.0) : std::nullopt;
  c.qkv_bias = t.count("blocks.0.attn.qkv.bias") > 0;
  const double D = static_cast<double>(c.dim);
  if (t.count("blocks.0.mlp.w12.weight")) {
    c.swiglu = true;
    const int64_t hidden = need("blocks.0.mlp.w12.weight", 2).size(0) / 2;
    // H = ceil8(int(ratio * D) * 2/3): try the usual 4 first, then invert the rounding.
    auto swiglu_hidden = [&](double r) {
      auto h = static_cast<int64_t>(r * D);
      return (h * 2 / 3 + 7) / 8 * 8;
    };
    c.mlp_ratio = 4.0;
    if (swiglu_hidden(c.mlp_ratio) != hidden)
      c.mlp_ratio = (static_cast<double>(hidden) * 1.5 + 0.5) / D;
    if (swiglu_hidden(c.mlp_ratio) != hidden)
      throw std::runtime_error(fmt::format(
          "dinov2: SwiGLU hidden width {} is not ceil8(int(r * {}) * 2/3) for any ratio", hidden,
          c.dim));
  } else {
    const int64_t hidden = need("blocks.0.mlp.fc1.weight", 2).size(0);
    c.mlp_ratio = static_cast<double>(hidden) / D;
    if (static_cast<int64_t>(c.mlp_ratio * D) != hidden)
      c.mlp_ratio = (static_cast<double>(hidden) + 0.5) / D;
  }
  c.heads = heads > 0 ? heads : static_cast<int>(c.dim / 64);
  if (c.heads <= 0 || c.dim % c.heads != 0)
    throw std::runtime_error(fmt::format(
        "dinov2: width {} does not split into {} heads (pass the head count)", c.dim, c.heads));
  return c;
}

}  // namespace psvae
