// `psvae forward`: one model's forward pass, float32, no gradients, from a safetensors file of
// named inputs to a safetensors file of named outputs. This is the seam between psvae and any
// other implementation (a PyTorch script, a published checkpoint): parity is checked by feeding
// both the same inputs file and comparing the outputs file, with no C++ on the other side.
//
//   psvae forward --model dinov2 --weights dinov2_vits14.safetensors
//                 --inputs in.safetensors --out out.safetensors      (one command line)
//
// Models, inputs -> outputs (shapes as ARCHITECTURE.md's `psvae forward` contract):
//   dinov2  pixel_values (N,3,H,W), ImageNet-normalised -> x_norm_clstoken (N,D),
//           x_norm_patchtokens (N,h*w,D) [, x_norm_regtokens (N,R,D) with registers]
//   lpips   x0, x1 (N,3,H,W) in [-1,1] -> d (N)
//   svae    image (N,3,H,W) in [-1,1] -> mu, logvar, semantic (N,h,w,.)
//   psvae   image -> mu, logvar, semantic, pixels (N,3,H,W)
//   dit     x (N,C,H,W), t (N) steps (float or integer), y (N) integer labels (num_classes = null)
//           -> out (N,C_out,H,W); the configuration is read off the weights. A text DiT (weights
//           with cross_attn) also takes context (N,S,Dc), pooled (N,Dc) and optionally
//           context_mask (N,S) i32; y only when it has a label table
// Weights from several --weights files are merged (a backbone and its heads often ship apart); a
// key present twice is an error rather than a silent "last one wins".
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <map>
#include <memory>

#include "autograd/grad_mode.h"
#include "dit/dit.h"
#include "nn/module.h"
#include "psvae/dinov2.h"
#include "psvae/lpips.h"
#include "psvae/psvae.h"
#include "tensor/safetensors.h"
#include "train/cli.h"
#include "train/tasks/model_keys.h"

namespace psvae::train {

namespace {

struct ForwardArgs {
  std::string model, arch, inputs, out, device = "auto";
  std::vector<std::string> weights;
  Config keys;  // the --set keys, validated against forward_schema()
  Device dev;
};

using Named = std::map<std::string, Tensor>;

// Every tensor of every file, in file order. A key in two files throws naming it and both files:
// which copy a model should get is not ours to guess.
safetensors::NamedTensors merge_weight_files(const std::vector<std::string>& paths) {
  safetensors::NamedTensors all;
  std::map<std::string, std::string> owner;  // key -> the file it came from
  for (const std::string& p : paths) {
    for (auto& [n, t] : safetensors::load(p)) {
      auto [it, fresh] = owner.emplace(n, p);
      if (!fresh)
        throw std::runtime_error(
            fmt::format("--weights: key '{}' is in both {} and {}", n, it->second, p));
      all.emplace_back(n, t);
    }
  }
  return all;
}

// The input `name`, or an error naming what the file has.
const Tensor& find_input(const Named& in, const std::string& name, const ForwardArgs& a) {
  auto it = in.find(name);
  if (it == in.end()) {
    std::string have;
    for (const auto& [n, t] : in) have += (have.empty() ? "" : ", ") + n;
    throw std::runtime_error(
        fmt::format("{}: no input named '{}' (the file has: {}); --model {} "
                    "needs it",
                    a.inputs, name, have.empty() ? "nothing" : have, a.model));
  }
  return it->second;
}

// The input `name` as f32 on the run's device; f64 / bf16 (and f16, which loads as f32) inputs
// are converted, since every model here computes in f32.
Tensor input_f32(const Named& in, const std::string& name, const ForwardArgs& a) {
  const Tensor& t = find_input(in, name, a);
  if (!is_floating(t.dtype()))
    throw std::runtime_error(fmt::format("{}: input '{}' is {}, expected a floating dtype",
                                         a.inputs, name, dtype_name(t.dtype())));
  if (t.rank() != 4 || t.size(1) != 3)
    throw std::runtime_error(fmt::format("{}: input '{}' has shape {}, expected (N, 3, H, W)",
                                         a.inputs, name, t.shape().str()));
  return nn::convert_float(t, DType::F32).to(a.dev);
}

// ---- dinov2 -------------------------------------------------------------------------------------
Named forward_dinov2(const ForwardArgs& a, const Named& in) {
  safetensors::NamedTensors sd = merge_weight_files(a.weights);
  const int heads = static_cast<int>(a.keys.get_int("heads"));
  Dinov2Config cfg;
  if (a.arch.empty()) {
    cfg = infer_dinov2_config(sd, heads);  // heads 0: D / 64, as every released model
  } else {
    cfg = dinov2_arch(a.arch);
    if (heads > 0) cfg.heads = heads;
  }
  Generator g(0);  // the initial values are overwritten by the load
  Dinov2 model(cfg, g);
  load_dinov2(model, sd);
  model.to(a.dev);
  model.eval();
  Tensor x = input_f32(in, "pixel_values", a);
  Dinov2Output o = model.forward(ag::Var(x));
  const Tensor& patch = o.patch.data();  // (N, h, w, D) -> (N, h*w, D) as upstream returns it
  Named out;
  out["x_norm_clstoken"] = o.cls.data();
  out["x_norm_patchtokens"] =
      patch.reshape({patch.size(0), patch.size(1) * patch.size(2), patch.size(3)});
  if (o.registers.defined()) out["x_norm_regtokens"] = o.registers.data();
  return out;
}

// ---- lpips --------------------------------------------------------------------------------------
Named forward_lpips(const ForwardArgs& a, const Named& in) {
  // Read the merged keys once, for the duplicate check and to infer what --arch/--set omit.
  safetensors::NamedTensors sd = merge_weight_files(a.weights);
  std::map<std::string, Shape> shapes;
  for (const auto& [n, t] : sd) shapes.emplace(n, t.shape());
  LPIPS::Config cfg;
  if (a.arch == "vgg" || a.arch == "vgg16") {
    cfg.net = LPIPS::Net::vgg;
  } else if (a.arch == "alex" || a.arch == "alexnet") {
    cfg.net = LPIPS::Net::alex;
  } else if (!a.arch.empty()) {
    throw UsageError(fmt::format("--arch {}: lpips expects vgg or alex", a.arch));
  } else if (shapes.count("features.28.weight")) {  // VGG16's last conv; AlexNet ends at 10
    cfg.net = LPIPS::Net::vgg;
  } else if (shapes.count("features.10.weight")) {
    cfg.net = LPIPS::Net::alex;
  } else {
    throw std::runtime_error(
        "cannot tell vgg from alex: the --weights have neither features.28.weight (VGG16) nor "
        "features.10.weight (AlexNet); give --arch");
  }
  int64_t div = a.keys.get_int("width_div");
  if (div == 0) {
    // The first tap has 64 channels in both published backbones; a narrower lin0 means a
    // narrowed test backbone.
    auto it = shapes.find("lin0.model.1.weight");
    div = 1;
    if (it != shapes.end() && it->second.rank() == 4 && it->second[1] > 0 &&
        64 % it->second[1] == 0)
      div = 64 / it->second[1];
  }
  cfg.width_div = static_cast<int>(div);
  std::shared_ptr<LPIPS> m = LPIPS::load(cfg, a.weights);
  if (!m->enabled())
    throw std::runtime_error(
        "lpips: the --weights hold no backbone (features.*) weights; give the torchvision "
        "backbone file too");
  m->to(a.dev);
  m->eval();
  Tensor x0 = input_f32(in, "x0", a), x1 = input_f32(in, "x1", a);
  if (x0.shape() != x1.shape())
    throw std::runtime_error(fmt::format("{}: x0 {} and x1 {} differ in shape", a.inputs,
                                         x0.shape().str(), x1.shape().str()));
  Named out;
  out["d"] = m->forward(ag::Var(x0), ag::Var(x1)).data();
  return out;
}

// ---- svae, psvae -------------------------------------------------------------------------------
// The architecture comes from the model.* keys: --set ones, or, when the one --weights file is a
// training checkpoint (it has psvae.config metadata), that checkpoint's saved config, and the
// weights are its EMA weights when it has them (the hand-over rule of train/tasks/model_keys.h).
// A plain state-dict file holds "encoder.*", "svae.*" (and for psvae "pix_dec.*", optionally
// "encoder_ref.*") as the modules name them.
struct VaeSetup {
  Config keys;
  safetensors::NamedTensors sd;
};

VaeSetup vae_setup(const ForwardArgs& a) {
  VaeSetup v{a.keys, {}};
  bool checkpoint = false;
  for (const std::string& p : a.weights)
    if (safetensors::File::open(p)->metadata().count("psvae.config")) {
      if (a.weights.size() > 1)
        throw UsageError(fmt::format(
            "--weights {} is a training checkpoint: give it as the only --weights file", p));
      checkpoint = true;
    }
  if (!checkpoint) {
    v.sd = merge_weight_files(a.weights);
    return v;
  }
  StageCheckpoint ck = read_stage_checkpoint_file(a.weights[0]);
  if (ck.task_name != "svae" && ck.task_name != "psvae")
    throw std::runtime_error(fmt::format("{}: a checkpoint of task '{}', not of an S-VAE or PS-VAE",
                                         ck.path, ck.task_name));
  inherit_arch_keys(v.keys, ck, {"model."});
  v.sd = std::move(ck.model);
  return v;
}

// The entries of sd whose names start with one of `prefixes` (names kept).
safetensors::NamedTensors keep_prefixes(const safetensors::NamedTensors& sd,
                                        const std::vector<std::string>& prefixes) {
  safetensors::NamedTensors out;
  for (const auto& [n, t] : sd)
    for (const std::string& p : prefixes)
      if (n.compare(0, p.size(), p) == 0) {
        out.emplace_back(n, t);
        break;
      }
  return out;
}

SVAEConfig svae_config_of(const Config& k, int64_t enc_dim) {
  SVAEConfig c;
  c.enc_dim = enc_dim;
  c.latent_dim = k.get_int("model.latent_dim");
  c.width = k.get_int("model.svae.width");
  c.depth = static_cast<int>(k.get_int("model.svae.depth"));
  c.heads = static_cast<int>(k.get_int("model.svae.heads"));
  return c;
}

void load_or_explain(nn::Module& m, const safetensors::NamedTensors& sd, const ForwardArgs& a) {
  try {
    m.load_state_dict(sd, true);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format(
        "--model {}: the --weights do not fit the model of the model.* keys (set them with --set, "
        "or pass a training checkpoint): {}",
        a.model, e.what()));
  }
}

Named forward_svae(const ForwardArgs& a, const Named& in) {
  VaeSetup v = vae_setup(a);
  SVAEModelConfig c;
  c.encoder = encoder_config(v.keys);
  c.svae = svae_config_of(v.keys, c.encoder.dim);
  Generator g(0);  // overwritten by the load
  SVAEModel model(c, g);
  // A PS-VAE's weights hold an S-VAE too (its encoder_ref and pix_dec are not part of it).
  load_or_explain(model, keep_prefixes(v.sd, {"encoder.", "svae."}), a);
  model.to(a.dev);
  model.eval();
  SVAEModelOutput o = model.forward(ag::Var(input_f32(in, "image", a)), nullptr);
  return {{"mu", o.mu.data()}, {"logvar", o.logvar.data()}, {"semantic", o.semantic.data()}};
}

Named forward_psvae(const ForwardArgs& a, const Named& in) {
  VaeSetup v = vae_setup(a);
  Tensor image = input_f32(in, "image", a);
  PSVAEConfig c;
  c.encoder = encoder_config(v.keys);
  c.svae = svae_config_of(v.keys, c.encoder.dim);
  c.pix.latent_dim = c.svae.latent_dim;
  c.pix.channels = pixdec_channels(v.keys);
  c.pix.res_blocks = static_cast<int>(v.keys.get_int("model.pixdec.res_blocks"));
  c.pix.out_h = image.size(2);  // pixels come back at the input's size
  c.pix.out_w = image.size(3);
  Generator g(0);
  PSVAE model(c, g);
  safetensors::NamedTensors sd = v.sd;
  // encoder_ref only makes the training target, not an output: a plain weights file may leave
  // it out, and then it is the encoder (as a stage 2 starts).
  if (keep_prefixes(sd, {"encoder_ref."}).empty())
    for (auto& [n, t] : sub_state(v.sd, "encoder.")) sd.emplace_back("encoder_ref." + n, t);
  load_or_explain(model, sd, a);
  model.to(a.dev);
  model.eval();
  PSVAEOutput o = model.forward(ag::Var(image), nullptr);
  return {{"mu", o.mu.data()},
          {"logvar", o.logvar.data()},
          {"semantic", o.semantic.data()},
          {"pixels", o.pixels.data()}};
}

// ---- dit ----------------------------------------------------------------------------------------
// The input `name` of rank `rank`.
const Tensor& input_named(const Named& in, const std::string& name, int rank,
                          const ForwardArgs& a) {
  const Tensor& t = find_input(in, name, a);
  if (t.rank() != rank)
    throw std::runtime_error(fmt::format("{}: input '{}' has shape {}, expected rank {}", a.inputs,
                                         name, t.shape().str(), rank));
  return t;
}

Named forward_dit(const ForwardArgs& a, const Named& in) {
  safetensors::NamedTensors sd = merge_weight_files(a.weights);
  // Heads are not in the weights: --set heads, else the --arch's, else the published rule.
  int heads = static_cast<int>(a.keys.get_int("heads"));
  if (heads == 0 && !a.arch.empty()) heads = dit::dit_arch(a.arch).heads;
  dit::DiTConfig cfg = dit::infer_dit_config(sd, heads);
  Generator g(0);  // overwritten by the load
  dit::DiT model(cfg, g);
  model.load_state_dict(sd, true);
  model.to(a.dev);
  model.eval();
  const Tensor& x = input_named(in, "x", 4, a);
  const Tensor& t = input_named(in, "t", 1, a);
  if (!is_floating(x.dtype()))
    throw std::runtime_error(fmt::format("{}: input 'x' is {}, expected a floating dtype", a.inputs,
                                         dtype_name(x.dtype())));
  dit::DiTCond cond;
  // y: required with a label table; without one (a text DiT) it is optional and not read.
  if (cfg.num_classes > 0) {
    cond.y = input_named(in, "y", 1, a);
    if (cond.y.dtype() != DType::I64)
      throw std::runtime_error(fmt::format("{}: input 'y' is {}, expected I64 labels", a.inputs,
                                           dtype_name(cond.y.dtype())));
  }
  // Text DiT: context (N,S,Dc) and pooled (N,Dc) floats, context_mask (N,S) i32 (optional).
  if (cfg.context_dim > 0) {
    auto f32 = [&](const std::string& name, int rank) {
      const Tensor& v = input_named(in, name, rank, a);
      if (!is_floating(v.dtype()))
        throw std::runtime_error(fmt::format("{}: input '{}' is {}, expected a floating dtype",
                                             a.inputs, name, dtype_name(v.dtype())));
      return ag::Var(nn::convert_float(v, DType::F32).to(a.dev));
    };
    cond.context = f32("context", 3);
    cond.pooled = f32("pooled", 2);
    if (in.count("context_mask")) {
      cond.context_mask = input_named(in, "context_mask", 2, a);
      if (cond.context_mask.dtype() != DType::I32)
        throw std::runtime_error(fmt::format("{}: input 'context_mask' is {}, expected I32",
                                             a.inputs, dtype_name(cond.context_mask.dtype())));
    }
  }
  ag::Var out = model.forward(ag::Var(nn::convert_float(x, DType::F32).to(a.dev)), t, cond);
  return {{"out", out.data()}};
}

struct ModelEntry {
  const char* name;
  Named (*run)(const ForwardArgs&, const Named&);
};

// The models this build runs.
const std::vector<ModelEntry>& model_table() {
  static const std::vector<ModelEntry> t = {
      {"dinov2", forward_dinov2}, {"lpips", forward_lpips}, {"svae", forward_svae},
      {"psvae", forward_psvae},   {"dit", forward_dit},
  };
  return t;
}

}  // namespace

ConfigSchema forward_schema() {
  ConfigSchema s;
  s.add_int("heads", 0,
            "dinov2, dit: attention heads (not readable off the weights); 0 = the released "
            "models' rule (dinov2: D / 64; dit: 16 from D 1024 on, else D / 64)",
            0, 4096);
  s.add_int("width_div", 0,
            "lpips: backbone widths divided by this (8 for the narrow test backbones); 0 = read "
            "off lin0's width",
            0, 64);
  // svae / psvae: the architecture, as the training stages name it (a checkpoint brings its own).
  add_encoder_model_keys(s);
  add_svae_model_keys(s);
  add_pixdec_model_keys(s);
  return s;
}

int cmd_forward(int argc, char** argv) {
  CLI::App app{
      "Run one model's forward pass in float32, without gradients, on the named tensors of a "
      "safetensors file, and write the named outputs to another (the parity seam with PyTorch).\n"
      "  dinov2: pixel_values (N,3,H,W), normalised -> x_norm_clstoken (N,D), x_norm_patchtokens "
      "(N,h*w,D)\n"
      "  lpips:  x0, x1 (N,3,H,W) in [-1,1] -> d (N)\n"
      "  svae:   image (N,3,H,W) in [-1,1] -> mu, logvar, semantic\n"
      "  psvae:  image -> mu, logvar, semantic, pixels\n"
      "  dit:    x (N,C,H,W), t (N) steps, y (N) i64 labels -> out (N,C_out,H,W); text DiTs: "
      "context (N,S,Dc), pooled (N,Dc), context_mask (N,S) i32 (optional), y only with classes",
      "psvae forward"};
  ForwardArgs a;
  std::vector<std::string> sets;
  int threads = 0;
  app.add_option("--model", a.model, "dinov2, lpips, svae, psvae, dit")->required();
  app.add_option("--weights", a.weights,
                 "safetensors weights; repeat to merge several files (a key in two is an error)")
      ->type_name("FILE")
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->required();
  app.add_option("--inputs", a.inputs, "safetensors file with the model's named inputs")
      ->type_name("FILE")
      ->required();
  app.add_option("--out", a.out, "safetensors file for the named outputs (written atomically)")
      ->type_name("FILE")
      ->required();
  app.add_option("--arch", a.arch,
                 "dinov2: vits14, vitb14, vitl14, vitg14 (+ _reg4); lpips: vgg, alex; dit: "
                 "DiT-XL/2 etc. (its heads); default: read off the weights");
  app.add_option("--set", sets, "Model option KEY=VALUE (see Config keys below); repeatable")
      ->type_name("KEY=VALUE")
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--device", a.device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads; 0 = every core")
      ->check(CLI::NonNegativeNumber);

  return run_cli(app, argc, argv, [&] {
    apply_threads(threads);
    const ModelEntry* entry = nullptr;
    std::string names;
    for (const ModelEntry& e : model_table()) {
      if (a.model == e.name) entry = &e;
      names += (names.empty() ? "" : ", ") + std::string(e.name);
    }
    if (!entry) {
      std::vector<std::string> all;
      for (const ModelEntry& e : model_table()) all.push_back(e.name);
      std::string near = closest_match(a.model, all);
      throw UsageError(fmt::format("--model {}: unknown model{}; valid: {}", a.model,
                                   near.empty() ? "" : " (did you mean '" + near + "'?)", names));
    }
    CommonFlags f;
    f.sets = sets;
    a.keys = resolve_config(forward_schema(), f);
    a.dev = resolve_device(a.device);

    Named in;
    for (auto& [n, t] : safetensors::load(a.inputs)) in[n] = t;
    ag::NoGradGuard no_grad;
    Named out = entry->run(a, in);
    safetensors::NamedTensors tensors;
    for (auto& [n, t] : out) tensors.emplace_back(n, t.to(Device::cpu()));
    safetensors::Metadata meta{{"psvae.model", a.model}};
    if (!a.arch.empty()) meta["psvae.arch"] = a.arch;
    safetensors::save(a.out, tensors, meta);
    for (const auto& [n, t] : tensors)
      fmt::print("{}: {} {}\n", n, dtype_name(t.dtype()), t.shape().str());
    fmt::print("wrote {}\n", a.out);
    return 0;
  });
}

}  // namespace psvae::train
