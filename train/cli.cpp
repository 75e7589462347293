// The command registry, `psvae --help`, the shared flags and the CLI11 glue.
#include "train/cli.h"

#include <fmt/format.h>
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cctype>
#include <cstdlib>
#include <iostream>
#include <stdexcept>

namespace psvae::train {

// The one table of commands. Each later command adds one line here.
const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {"info", "List the tensors (name, dtype, shape, bytes) and metadata of a .safetensors file",
       cmd_info, nullptr},
      {"dataset", "Build the dataset of a config, describe it and write a grid of its images",
       cmd_dataset, dataset_schema},
      {"forward", "Run one model's forward pass (dinov2, lpips, svae, psvae) on a file of inputs",
       cmd_forward, forward_schema},
      {"reconstruct",
       "Encode and decode images with a PS-VAE checkpoint: side-by-side PNGs, PSNR, SSIM, LPIPS",
       cmd_reconstruct, nullptr},
      {"train-encoder", "Stage 0 (demo): train a small ViT encoder on the dataset's labels",
       cmd_train_encoder, train_encoder_schema},
      {"train-svae", "Stage 1: train the S-VAE on a frozen encoder (semantic reconstruction)",
       cmd_train_svae, train_svae_schema},
      {"train-psvae", "Stage 2: train the PS-VAE (pixel decoder, unfrozen encoder) from an S-VAE",
       cmd_train_psvae, train_psvae_schema},
      {"train-dit", "Stage 3: train the DiT in the PS-VAE latent (class or text conditioned)",
       cmd_train_dit, train_dit_schema},
      {"generate", "Generate images from prompts or class labels with a trained DiT + PS-VAE",
       cmd_generate, nullptr},
      {"edit", "Edit an image towards a prompt (SDEdit, or DDIM inversion + regeneration)",
       cmd_edit, nullptr},
      {"inpaint", "Regenerate the masked region of an image following a prompt", cmd_inpaint,
       nullptr},
      {"eval", "Evaluate: reconstruction PSNR/SSIM/LPIPS, FD/FID of generations, prompt accuracy",
       cmd_eval, nullptr},
      {"demo", "The whole pipeline on the built-in dataset: stages 0-3, samples, edits, report",
       cmd_demo, nullptr},
  };
  return table;
}

const Command* find_command(const std::string& name) {
  for (const Command& c : commands())
    if (c.name == name) return &c;
  return nullptr;
}

std::string version_line() {
#ifdef PSVAE_WITH_CUDA
  std::string cuda = cuda_available()
                         ? fmt::format("CUDA backend, {} device(s) visible", cuda_device_count())
                         : std::string("CUDA backend, no device visible");
#else
  std::string cuda = "built without CUDA";
#endif
  return fmt::format("psvae 0.1.0 (C++17, {})", cuda);
}

namespace {

std::string command_list() {
  size_t width = 0;
  for (const Command& c : commands()) width = std::max(width, c.name.size());
  std::string s = "Commands:\n";
  for (const Command& c : commands()) s += fmt::format("  {:<{}}  {}\n", c.name, width, c.summary);
  return s;
}

}  // namespace

std::string usage() {
  return "psvae: a from-scratch C++17/CUDA engine for representation-encoder latent diffusion\n"
         "\n"
         "Usage: psvae <command> [options]\n"
         "\n" +
         command_list() +
         "\n"
         "Common options (commands that read configs or run models):\n"
         "  --config FILE     YAML config; its keys override the defaults\n"
         "  --set KEY=VALUE   override one config key after --config (repeatable)\n"
         "  --device D        cpu | cuda | cuda:N | auto (default: CUDA when available)\n"
         "  --threads N       CPU threads (default: every core)\n"
         "  --seed K          random seed: the command's seed key (train.seed, or data.seed for "
         "dataset)\n"
         "\n"
         "  psvae --version   print the version\n"
         "  psvae <command> --help for details, including every config key of the command\n";
}

int dispatch(int argc, char** argv) {
  if (argc < 2) {
    fmt::print("{}", usage());
    return 0;
  }
  const std::string first = argv[1];
  if (first == "--help" || first == "-h" || first == "help") {
    // `psvae help info` is `psvae info --help`, as git does it.
    if (first == "help" && argc >= 3 && find_command(argv[2])) {
      char help_flag[] = "--help";
      char* sub[] = {argv[2], help_flag, nullptr};
      return find_command(argv[2])->run(2, sub);
    }
    fmt::print("{}", usage());
    return 0;
  }
  if (first == "--version" || first == "-V") {
    fmt::print("{}\n", version_line());
    return 0;
  }
  if (const Command* c = find_command(first)) return c->run(argc - 1, argv + 1);

  if (!first.empty() && first[0] == '-') {
    std::string near = closest_match(first, {"--help", "--version"});
    fmt::print(stderr, "psvae: unknown option '{}'{}; options come after the command\n{}", first,
               near.empty() ? "" : " (did you mean '" + near + "'?)", command_list());
    return 2;
  }
  std::vector<std::string> names;
  for (const Command& c : commands()) names.push_back(c.name);
  std::string near = closest_match(first, names);
  fmt::print(stderr, "psvae: unknown command '{}'{}\n{}", first,
             near.empty() ? "" : " (did you mean '" + near + "'?)", command_list());
  return 2;
}

// ---- shared flags -------------------------------------------------------------------------------

namespace {

// "cpu", "auto", "cuda", "cuda:N"; the CUDA ordinal goes to *index (0 for plain "cuda").
bool parse_device_name(const std::string& s, int* index) {
  if (s == "cpu" || s == "auto" || s == "cuda") {
    if (index) *index = 0;
    return true;
  }
  if (s.rfind("cuda:", 0) != 0 || s.size() == 5 || s.size() > 9) return false;
  for (size_t i = 5; i < s.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  if (index) *index = std::atoi(s.c_str() + 5);
  return true;
}

}  // namespace

void add_common_flags(CLI::App& app, CommonFlags& flags) {
  app.add_option("--config", flags.config,
                 "YAML config file; its keys override the defaults (see Config keys below)")
      ->type_name("FILE");
  // One value per --set, so a --set never swallows the positional argument after it.
  app.add_option("--set", flags.sets,
                 "Override one config key, after --config; repeatable, later ones win")
      ->type_name("KEY=VALUE")
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--device", flags.device,
                 "cpu, cuda, cuda:N, or auto = CUDA when a device is available, else cpu")
      ->type_name("DEVICE")
      ->capture_default_str()
      ->check([](const std::string& s) -> std::string {
        // Only the spelling here; whether the device exists is checked when the run starts.
        return parse_device_name(s, nullptr) ? ""
                                             : "expects cpu, cuda, cuda:N or auto, got '" + s + "'";
      });
  app.add_option("--threads", flags.threads,
                 "CPU threads; 0 = every core (results are identical for any count)")
      ->type_name("N")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", flags.seed,
                 "Random seed: sets the command's seed key (train.seed for training commands, "
                 "data.seed for "
                 "dataset), after --config and --set")
      ->type_name("K")
      ->check(CLI::NonNegativeNumber);
}

Config resolve_config(const ConfigSchema& schema, const CommonFlags& flags) {
  Config cfg(schema);
  if (!flags.config.empty()) cfg.load_yaml_file(flags.config);
  try {
    for (const std::string& s : flags.sets) cfg.set_override(s);
    if (flags.seed >= 0 && schema.find("seed"))
      cfg.set("seed", std::to_string(flags.seed), "--seed");
  } catch (const std::runtime_error& e) {
    throw UsageError(e.what());
  }
  return cfg;
}

Device resolve_device(const std::string& name) {
  int index = 0;
  if (!parse_device_name(name, &index))
    throw std::runtime_error(fmt::format("--device {}: expects cpu, cuda, cuda:N or auto", name));
  if (name == "cpu") return Device::cpu();
  if (name == "auto") return cuda_available() ? Device::cuda(0) : Device::cpu();
  if (!cuda_available())
    throw std::runtime_error(fmt::format(
        "--device {}: no CUDA device is available (this build has no CUDA backend or no GPU is "
        "visible); use --device cpu or auto",
        name));
  if (index >= cuda_device_count())
    throw std::runtime_error(
        fmt::format("--device {}: only {} CUDA device(s) are visible", name, cuda_device_count()));
  return Device::cuda(index);
}

void apply_threads(int threads) {
  if (threads > 0) omp_set_num_threads(threads);
}

// ---- parsing -----------------------------------------------------------------------------------

std::string config_keys_help(const ConfigSchema& schema) {
  if (schema.keys().empty()) return "";
  std::string s = "Config keys (--set KEY=VALUE, or KEY: VALUE in the --config file):\n";
  for (const ConfigKey& k : schema.keys()) {
    std::string def = k.type == KeyType::String ? "\"" + k.default_value + "\"" : k.default_value;
    s += fmt::format("  {} = {}    ({})\n", k.key, def, describe_type(k));
    if (!k.doc.empty()) s += fmt::format("      {}\n", k.doc);
  }
  return s;
}

std::string unknown_option_message(const CLI::App& app, const std::string& arg) {
  const std::string name = arg.substr(0, arg.find('='));
  std::vector<std::string> long_names;
  bool found = false;
  for (const CLI::Option* o : app.get_options()) {
    for (const std::string& l : o->get_lnames()) {
      long_names.push_back("--" + l);
      found = found || name == "--" + l;
    }
    for (const std::string& sn : o->get_snames()) found = found || name == "-" + sn;
  }
  if (found) return "";
  std::string near = closest_match(name, long_names);
  return fmt::format("unknown option '{}'{}", name,
                     near.empty() ? "" : " (did you mean '" + near + "'?)");
}

namespace {

bool looks_like_number(const std::string& s) {
  // "--seed -1" or "--set x=-2": a leading '-' followed by a digit or '.' is a value.
  return s.size() > 1 && s[0] == '-' &&
         (std::isdigit(static_cast<unsigned char>(s[1])) || s[1] == '.');
}

}  // namespace

int run_cli(CLI::App& app, int argc, char** argv, const std::function<int()>& body) {
  const std::string name = app.get_name();
  if (app.get_footer().empty() && name.rfind("psvae ", 0) == 0) {
    const Command* c = find_command(name.substr(6));
    if (c && c->schema) app.footer("\n" + config_keys_help(c->schema()));
  }
  // Checked before CLI11 parses: CLI11 would report "--fil" only after other errors, and
  // without a suggestion.
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--") break;  // everything after is positional
    if (a.size() < 2 || a[0] != '-' || looks_like_number(a)) continue;
    if (a[1] != '-' && a.size() > 2) continue;  // "-abc": combined short flags, CLI11 decides
    std::string msg = unknown_option_message(app, a);
    if (!msg.empty()) {
      fmt::print(stderr, "{}: {} (see '{} --help')\n", name, msg, name);
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help() << std::flush;
    return 0;
  } catch (const CLI::CallForAllHelp&) {
    std::cout << app.help("", CLI::AppFormatMode::All) << std::flush;
    return 0;
  } catch (const CLI::ParseError& e) {
    fmt::print(stderr, "{}: {} (see '{} --help')\n", name, e.what(), name);
    return 2;
  }
  try {
    return body();
  } catch (const UsageError& e) {
    std::cout << std::flush;
    fmt::print(stderr, "{}: {} (see '{} --help')\n", name, e.what(), name);
    return 2;
  } catch (const std::exception& e) {
    std::cout << std::flush;
    fmt::print(stderr, "{}: {}\n", name, e.what());
    return 1;
  }
}

}  // namespace psvae::train
