// The `psvae` command line: the registry of commands, the flags every command shares and the
// parse-and-run helper that turns every usage error into one line and exit status 2.
//
// Adding a command takes two steps: write `int cmd_x(int argc, char** argv)` (declared below, one
// file train/commands_x.cpp) and add one line to the table in cli.cpp. A command that reads a
// config also names its schema there, and `psvae x --help` then lists every key automatically.
//
// Exit status: 0 success (and --help), 1 the command failed (a bad file, a failed run),
// 2 the command line itself is wrong (unknown command or flag, a bad or missing value).
#pragma once
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "tensor/device.h"
#include "train/config.h"

namespace CLI {
class App;
}

namespace psvae::train {

struct Command {
  std::string name;     // "info": what follows `psvae`
  std::string summary;  // one line for `psvae --help`
  // argv[0] is the command name; the rest are its arguments. Returns the exit status.
  std::function<int(int argc, char** argv)> run;
  // The command's config keys, when it reads a config: listed under "Config keys" in --help.
  std::function<ConfigSchema()> schema;
};

// Every command, in the order `psvae --help` lists them.
const std::vector<Command>& commands();
const Command* find_command(const std::string& name);  // nullptr when there is none

std::string version_line();  // "psvae 0.1.0 (...)"
std::string usage();         // what `psvae --help` prints

// The whole program: `psvae <command> [args]`, `psvae --help`, `psvae --version`,
// `psvae help <command>`. An unknown command prints the closest one and the list, returns 2.
int dispatch(int argc, char** argv);

// ---- the commands ------------------------------------------------------------------------------
int cmd_info(int argc, char** argv);     // train/commands_info.cpp
int cmd_dataset(int argc, char** argv);  // train/commands_dataset.cpp
ConfigSchema dataset_schema();           // the keys `psvae dataset` reads (data.*)

int cmd_forward(int argc, char** argv);      // train/commands_forward.cpp
ConfigSchema forward_schema();               // the model options `psvae forward --set` takes
int cmd_reconstruct(int argc, char** argv);  // train/commands_reconstruct.cpp

// The PS-VAE training stages, train/commands_train.cpp (keys: train/tasks/model_keys.h).
int cmd_train_encoder(int argc, char** argv);
int cmd_train_svae(int argc, char** argv);
int cmd_train_psvae(int argc, char** argv);
ConfigSchema train_encoder_schema();
ConfigSchema train_svae_schema();
ConfigSchema train_psvae_schema();

// Stage 3, train/commands_train_dit.cpp (keys: train/tasks/dit_task.h).
int cmd_train_dit(int argc, char** argv);
ConfigSchema train_dit_schema();
// Inference, train/commands_generate.cpp (train/pipeline.h).
int cmd_generate(int argc, char** argv);
int cmd_edit(int argc, char** argv);
int cmd_inpaint(int argc, char** argv);
int cmd_eval(int argc, char** argv);  // train/commands_eval.cpp (train/evaluate.h)
int cmd_demo(int argc, char** argv);  // train/commands_demo.cpp

// ---- flags shared by commands ------------------------------------------------------------------
struct CommonFlags {
  std::string config;             // --config FILE
  std::vector<std::string> sets;  // --set KEY=VALUE, in command-line order
  std::string device = "auto";    // --device cpu|cuda|cuda:N|auto
  int threads = 0;                // --threads N; 0 leaves OpenMP's default (every core)
  int64_t seed = -1;              // --seed K; -1 when not given
};
void add_common_flags(CLI::App& app, CommonFlags& flags);

// The config of a run, by increasing precedence:
//   1. the schema's defaults
//   2. the --config file
//   3. each --set KEY=VALUE, left to right (a later --set of the same key wins)
//   4. --seed K, which sets the schema's "seed" key when it has one (a shorthand for --set seed=K,
//      applied last so the dedicated flag wins over a generic override)
// Every error names the key, the value and where it came from (file:line or the --set text);
// errors in --set and --seed throw UsageError, errors in the file std::runtime_error.
Config resolve_config(const ConfigSchema& schema, const CommonFlags& flags);
// "auto": CUDA device 0 when psvae::cuda_available(), else the CPU. "cuda" or "cuda:N" without
// such a device throws a message saying so.
Device resolve_device(const std::string& name);
// omp_set_num_threads(threads) when threads > 0. Results do not depend on it: kernels never split
// one reduction across threads.
void apply_threads(int threads);

// A mistake on the command line found after parsing (a bad --set): run_cli reports it like a
// parse error, with exit status 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- parsing -----------------------------------------------------------------------------------
// "Config keys (--set KEY=VALUE):" and each key with its default, type and documentation.
std::string config_keys_help(const ConfigSchema& schema);
// When `arg` (e.g. "--fil" or "--fil=x") is not an option of `app`, the one-line error
// "unknown option '--fil' (did you mean '--file'?)"; "" when the option exists.
std::string unknown_option_message(const CLI::App& app, const std::string& arg);
// Parses argv (argv[0] is the command name) and runs `body`. `app` should be named
// "psvae <command>": that name starts every message, and locates the command's schema in the
// registry, whose keys are appended to --help.
//   --help         prints CLI11's help (every flag) and the config keys; returns 0
//   a usage error  (CLI11's, or UsageError from body) prints "psvae <command>: <what is wrong>" to
//   stderr; returns 2 body throws    prints "psvae <command>: <what()>" to stderr; returns 1
//   otherwise      returns body()
int run_cli(CLI::App& app, int argc, char** argv, const std::function<int()>& body);

}  // namespace psvae::train
