// Config keys of the PS-VAE stages and the hand-over between stages (see model_keys.h).
#include "train/tasks/model_keys.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <sstream>
#include <stdexcept>

#include "train/checkpoint.h"
#include "train/data/dataset.h"
#include "train/trainer.h"

namespace psvae::train {

namespace fs = std::filesystem;

// ---- key groups -------------------------------------------------------------------------------

void add_encoder_model_keys(ConfigSchema& s) {
  s.add_choice("model.encoder.arch", "custom",
               {"custom", "vits14", "vitb14", "vitl14", "vitg14", "vits14_reg4", "vitb14_reg4",
                "vitl14_reg4", "vitg14_reg4"},
               "representation encoder: a published DINOv2 ViT (load its weights with "
               "weights.encoder) or 'custom' = the model.encoder.* sizes below");
  // The demo scale: 32x32 images, patch 4 -> an 8x8 token grid, a 4-layer ViT of width 128.
  s.add_int("model.encoder.patch", 4, "custom encoder: patch size (image_size must be a multiple)",
            1, 64);
  s.add_int("model.encoder.dim", 128, "custom encoder: token width D (a multiple of heads)", 8,
            8192);
  s.add_int("model.encoder.depth", 4, "custom encoder: transformer blocks", 1, 64);
  s.add_int("model.encoder.heads", 4, "custom encoder: attention heads", 1, 64);
  s.add_int("model.encoder.registers", 0, "custom encoder: register tokens", 0, 16);
  s.add_int("model.encoder.pos_grid", 8,
            "custom encoder: side G of the learned position-embedding grid (other token grids "
            "interpolate it); image_size / patch avoids any interpolation",
            1, 256);
  s.add_bool("model.encoder.swiglu", false,
             "custom encoder: SwiGLU MLPs (as ViT-g) instead of GELU");
}

void add_svae_model_keys(ConfigSchema& s) {
  s.add_int("model.latent_dim", 96, "latent channels L per token (the paper: 96)", 1, 4096);
  s.add_int("model.svae.width", 128,
            "S-VAE projector and semantic decoder width C_w (a multiple of heads)", 8, 8192);
  s.add_int("model.svae.depth", 2,
            "transformer blocks in the projector and in the semantic decoder", 0, 64);
  s.add_int("model.svae.heads", 4, "attention heads of the S-VAE blocks", 1, 64);
}

void add_pixdec_model_keys(ConfigSchema& s) {
  s.add_string("model.pixdec.channels", "128,64,32",
               "pixel decoder widths c_0,...,c_U, comma-separated: U = count - 1 nearest 2x "
               "upsamplings (patch 4 needs 3 entries, patch 14 needs 5 and a final resize)");
  s.add_int("model.pixdec.res_blocks", 1, "pixel decoder residual blocks per level", 1, 16);
}

void add_loss_keys(ConfigSchema& s, bool stage2) {
  if (stage2) {
    s.add_float("loss.alpha", 1.0,
                "weight of the semantic MSE against the frozen stage-1 encoder's features", 0);
    s.add_float("loss.gamma", 1.0, "weight of the pixel term 0.5 L1 + 0.5 MSE", 0);
    s.add_float("loss.lambda", 0.1,
                "weight of the LPIPS term (off without LPIPS backbone weights, see "
                "weights.lpips)",
                0);
  }
  s.add_float("loss.beta", 1e-4, "weight of the KL term of the latent Gaussian", 0);
  s.add_choice("loss.kl_norm", "element", {"element", "sample"},
               "KL normaliser: element = mean over every latent element, sample = sum per "
               "image, mean over the batch");
}

void add_trainer_keys_with_out_dir(ConfigSchema& s, const std::string& out_dir) {
  // add_trainer_keys owns the trainer keys; only run.out_dir's default differs per command.
  ConfigSchema t;
  add_trainer_keys(t);
  for (ConfigKey k : t.keys()) {
    if (k.key == "run.out_dir") k.default_value = out_dir;
    s.add(k);
  }
}

namespace {

void add_encoder_weights_key(ConfigSchema& s) {
  s.add_string("weights.encoder", "",
               "DINOv2 weights (.safetensors, facebookresearch or HF names) for the encoder; must "
               "fit model.encoder.arch. \"\" = random init (train-encoder) or init.from");
}

}  // namespace

ConfigSchema encoder_stage_schema() {
  ConfigSchema s;
  add_encoder_model_keys(s);
  add_encoder_weights_key(s);
  add_trainer_keys_with_out_dir(s, "runs/encoder");
  add_data_keys(s);
  return s;
}

ConfigSchema svae_stage_schema() {
  ConfigSchema s;
  add_encoder_model_keys(s);
  add_svae_model_keys(s);
  add_loss_keys(s, false);
  add_encoder_weights_key(s);
  s.add_string("init.from", "",
               "the frozen encoder: a train-encoder checkpoint or run folder (its EMA weights "
               "when it has them); \"\" = use weights.encoder. model.encoder.* then come from it");
  add_trainer_keys_with_out_dir(s, "runs/svae");
  add_data_keys(s);
  return s;
}

ConfigSchema psvae_stage_schema() {
  ConfigSchema s;
  add_encoder_model_keys(s);
  add_svae_model_keys(s);
  add_pixdec_model_keys(s);
  add_loss_keys(s, true);
  s.add_string("weights.lpips", "",
               "LPIPS weight files, comma-separated: the VGG16 backbone (torchvision "
               "features.*, which the user supplies) and the lin layers (shipped in "
               "psvae/weights/lpips/vgg.safetensors); \"\" = the LPIPS term is off");
  s.add_string("init.from", "",
               "required: the train-svae checkpoint or run folder to start from (encoder and "
               "S-VAE; EMA weights when it has them). model.encoder.*, model.latent_dim and "
               "model.svae.* come from it");
  add_trainer_keys_with_out_dir(s, "runs/psvae");
  add_data_keys(s);
  return s;
}

// ---- configs ----------------------------------------------------------------------------------

Dinov2Config encoder_config(const Config& cfg) {
  const std::string arch = cfg.get_string("model.encoder.arch");
  if (arch != "custom") return dinov2_arch(arch);
  Dinov2Config c;
  c.dim = cfg.get_int("model.encoder.dim");
  c.depth = static_cast<int>(cfg.get_int("model.encoder.depth"));
  c.heads = static_cast<int>(cfg.get_int("model.encoder.heads"));
  c.patch = static_cast<int>(cfg.get_int("model.encoder.patch"));
  c.grid = cfg.get_int("model.encoder.pos_grid");
  c.registers = static_cast<int>(cfg.get_int("model.encoder.registers"));
  c.swiglu = cfg.get_bool("model.encoder.swiglu");
  if (c.dim % c.heads != 0)
    throw std::runtime_error(fmt::format(
        "model.encoder.dim = {} is not a multiple of model.encoder.heads = {}", c.dim, c.heads));
  if (c.registers > 0) {  // as the released _reg models
    c.interpolate_offset = 0.0;
    c.interpolate_antialias = true;
  }
  return c;
}

std::vector<int64_t> pixdec_channels(const Config& cfg) {
  const std::string text = cfg.get_string("model.pixdec.channels");
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    std::string v = b == std::string::npos ? "" : item.substr(b, e - b + 1);
    char* end = nullptr;
    long long n = v.empty() ? 0 : std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || n < 1 || n > 65536)
      throw std::runtime_error(fmt::format(
          "model.pixdec.channels = \"{}\": expects positive integers separated by commas, got "
          "'{}'",
          text, v));
    out.push_back(n);
  }
  if (out.empty())
    throw std::runtime_error("model.pixdec.channels is empty: give at least one width");
  return out;
}

std::vector<std::string> lpips_files(const Config& cfg) {
  std::vector<std::string> out;
  std::stringstream ss(cfg.get_string("weights.lpips"));
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
  }
  return out;
}

// ---- stage hand-over --------------------------------------------------------------------------

safetensors::NamedTensors sub_state(const safetensors::NamedTensors& sd,
                                    const std::string& prefix) {
  safetensors::NamedTensors out;
  for (const auto& [n, t] : sd)
    if (n.compare(0, prefix.size(), prefix) == 0) out.emplace_back(n.substr(prefix.size()), t);
  return out;
}

namespace {

StageCheckpoint split_checkpoint(const std::string& path, const safetensors::NamedTensors& all,
                                 const safetensors::Metadata& meta) {
  StageCheckpoint c;
  c.path = path;
  c.meta = meta;
  auto it = meta.find("psvae.task");
  c.task_name = it == meta.end() ? "" : it->second;
  safetensors::NamedTensors model = sub_state(all, "model."), ema = sub_state(all, "ema.");
  c.task = sub_state(all, "task.");
  if (model.empty())
    throw std::runtime_error(
        fmt::format("{}: not a psvae training checkpoint (no model.* tensors)", path));
  // EMA shadows cover the parameters only; buffers keep their model.* values.
  std::map<std::string, const Tensor*> shadow;
  for (const auto& [n, t] : ema) shadow[n] = &t;
  c.used_ema = !ema.empty();
  for (auto& [n, t] : model) {
    auto s = shadow.find(n);
    c.model.emplace_back(n, s != shadow.end() ? *s->second : t);
  }
  return c;
}

}  // namespace

StageCheckpoint read_stage_checkpoint_file(const std::string& path) {
  std::error_code ec;
  safetensors::NamedTensors all;
  safetensors::Metadata meta;
  if (fs::is_directory(path, ec)) {
    // A run folder: its newest valid step checkpoint (the end of the run).
    const std::string dir =
        fs::is_directory(path + "/checkpoints", ec) ? path + "/checkpoints" : path;
    std::string used = open_newest_valid(dir, &all, &meta);
    return split_checkpoint(used, all, meta);
  }
  if (!fs::exists(path, ec)) throw std::runtime_error(fmt::format("{}: no such file", path));
  all = safetensors::load(path, &meta);
  return split_checkpoint(path, all, meta);
}

StageCheckpoint read_stage_checkpoint(const Config& cfg, const std::string& key,
                                      const std::string& expect_task, const std::string& what_for) {
  const std::string path = cfg.get_string(key);
  if (path.empty())
    throw std::runtime_error(
        fmt::format("{} is not set: give the {} (--set {}=PATH)", key, what_for, key));
  StageCheckpoint c;
  try {
    c = read_stage_checkpoint_file(path);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{} = {}: {}", key, path, e.what()));
  }
  if (!expect_task.empty() && c.task_name != expect_task)
    throw std::runtime_error(fmt::format(
        "{} = {}: {} is a checkpoint of task '{}', expected a '{}' checkpoint ({})", key, path,
        c.path, c.task_name.empty() ? "?" : c.task_name, expect_task, what_for));
  return c;
}

namespace {

void flatten_yaml(const YAML::Node& n, const std::string& prefix,
                  std::map<std::string, std::string>& out) {
  if (n.IsMap()) {
    for (const auto& kv : n)
      flatten_yaml(
          kv.second,
          prefix.empty() ? kv.first.as<std::string>() : prefix + "." + kv.first.as<std::string>(),
          out);
  } else if (n.IsScalar()) {
    out[prefix] = n.Scalar();
  } else if (n.IsNull()) {
    out[prefix] = "";
  }
}

// The value of a key as comparable text (ints and bools parsed, so "1e2" and "100" agree).
std::string value_of(const Config& c, const ConfigKey& k) {
  switch (k.type) {
    case KeyType::Int: return std::to_string(c.get_int(k.key));
    case KeyType::Float: return fmt::format("{}", c.get_float(k.key));
    case KeyType::Bool: return c.get_bool(k.key) ? "true" : "false";
    default: return c.get_string(k.key);
  }
}

}  // namespace

void inherit_arch_keys(Config& cfg, const StageCheckpoint& ckpt,
                       const std::vector<std::string>& prefixes) {
  auto it = ckpt.meta.find("psvae.config");
  if (it == ckpt.meta.end())
    throw std::runtime_error(fmt::format(
        "{}: has no saved config (psvae.config), so its architecture is unknown", ckpt.path));
  std::map<std::string, std::string> prev;
  try {
    flatten_yaml(YAML::Load(it->second), "", prev);
  } catch (const YAML::Exception& e) {
    throw std::runtime_error(
        fmt::format("{}: its saved config does not parse: {}", ckpt.path, e.what()));
  }
  for (const ConfigKey& k : cfg.schema().keys()) {
    bool match = false;
    for (const std::string& p : prefixes) match = match || k.key.compare(0, p.size(), p) == 0;
    auto pv = prev.find(k.key);
    if (!match || pv == prev.end()) continue;
    Config theirs = cfg;
    theirs.set(k.key, pv->second, ckpt.path);
    const std::string want = value_of(theirs, k), have = value_of(cfg, k);
    if (want == have) {
      cfg.set(k.key, pv->second, "init.from " + ckpt.path);
      continue;
    }
    if (cfg.source(k.key).where != "default")
      throw std::runtime_error(fmt::format(
          "{} = {} ({}) differs from {} in {}, whose weights this stage starts from; drop the "
          "override (the architecture comes from init.from)",
          k.key, have, cfg.source(k.key).where, want, ckpt.path));
    cfg.set(k.key, pv->second, "init.from " + ckpt.path);
  }
}

}  // namespace psvae::train
