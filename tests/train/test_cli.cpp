// The `psvae` command line: dispatch, suggestions for unknown commands and flags, exit codes,
// config precedence through the shared flags, `psvae info` and `psvae dataset` on real files, and
// one end-to-end run of the built binary.
#include <doctest/doctest.h>

#include <CLI/CLI.hpp>
#include <filesystem>

#include "common/cli_capture.h"
#include "common/run_binary.h"
#include "common/test_util.h"
#include "tensor/safetensors.h"
#include "train/cli.h"

using namespace psvae;
using namespace psvae::train;
namespace fs = std::filesystem;
using psvae::test::TempDir;

namespace {

using Run = test::CliRun;
using test::read_text;

Run run_psvae(std::vector<std::string> args) {
  return test::run_cli(std::move(args), "cli_capture");
}

bool contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

}  // namespace

TEST_CASE("cli: psvae --help lists every command") {
  for (const char* flag : {"--help", "-h"}) {
    Run r = run_psvae({flag});
    CHECK(r.rc == 0);
    for (const Command& c : commands()) {
      CHECK(contains(r.out, "  " + c.name));
      CHECK(contains(r.out, c.summary));
    }
    CHECK(contains(r.out, "--device"));
    CHECK(contains(r.out, "psvae <command> --help"));
  }
  CHECK(run_psvae({}).rc == 0);
  Run v = run_psvae({"--version"});
  CHECK(v.rc == 0);
  CHECK(v.out.rfind("psvae ", 0) == 0);
}

TEST_CASE("cli: an unknown command is exit 2 with the closest one and the list") {
  Run r = run_psvae({"datset"});
  CHECK(r.rc == 2);
  CHECK(r.err.rfind("psvae: unknown command 'datset' (did you mean 'dataset'?)\n", 0) == 0);
  CHECK(contains(r.err, "  info"));
  r = run_psvae({"zzzzzz"});
  CHECK(r.rc == 2);
  CHECK(r.err.rfind("psvae: unknown command 'zzzzzz'\n", 0) == 0);
  r = run_psvae({"--verison"});
  CHECK(r.rc == 2);
  CHECK(contains(r.err, "unknown option '--verison' (did you mean '--version'?)"));
}

TEST_CASE("cli: an unknown flag is exit 2 with the closest one") {
  Run r = run_psvae({"info", "--fil", "x.safetensors"});
  CHECK(r.rc == 2);
  CHECK(r.err ==
        "psvae info: unknown option '--fil' (did you mean '--file'?) (see 'psvae info "
        "--help')\n");
  r = run_psvae({"dataset", "--seeed=3"});
  CHECK(r.rc == 2);
  CHECK(contains(r.err, "unknown option '--seeed' (did you mean '--seed'?)"));
  // The suggestion function on its own, over an app's long option names.
  CLI::App app{"test", "psvae test"};
  CommonFlags flags;
  add_common_flags(app, flags);
  CHECK(unknown_option_message(app, "--thread") ==
        "unknown option '--thread' (did you mean '--threads'?)");
  CHECK(unknown_option_message(app, "--device=cpu").empty());
  CHECK(unknown_option_message(app, "-h").empty());
  CHECK(unknown_option_message(app, "--qqqqqq") == "unknown option '--qqqqqq'");
  // Other parse errors: one line, exit 2.
  r = run_psvae({"info"});
  CHECK(r.rc == 2);
  CHECK(contains(r.err, "is required"));
  r = run_psvae({"dataset", "--threads", "many"});
  CHECK(r.rc == 2);
  CHECK(r.err.rfind("psvae dataset: ", 0) == 0);
  r = run_psvae({"dataset", "--device", "gpu"});
  CHECK(r.rc == 2);
  CHECK(contains(r.err, "expects cpu, cuda, cuda:N or auto, got 'gpu'"));
}

TEST_CASE("cli: command --help documents flags and config keys") {
  Run r = run_psvae({"info", "--help"});
  CHECK(r.rc == 0);
  CHECK(contains(r.out, "--full"));
  CHECK_FALSE(contains(r.out, "Config keys"));  // info reads no config
  r = run_psvae({"dataset", "--help"});
  CHECK(r.rc == 0);
  for (const char* flag : {"--config", "--set", "--device", "--threads", "--seed", "--out"})
    CHECK(contains(r.out, flag));
  CHECK(contains(r.out, "Config keys (--set KEY=VALUE"));
  const ConfigSchema schema = dataset_schema();
  for (const ConfigKey& k : schema.keys()) CHECK(contains(r.out, "  " + k.key + " = "));
  Run h = run_psvae({"help", "dataset"});
  CHECK(h.rc == 0);
  CHECK(h.out == r.out);
}

TEST_CASE("cli: resolve_config precedence default < --config < --set < --seed") {
  ConfigSchema s;
  s.add_int("seed", 0, "seed", 0);
  s.add_int("train.steps", 100, "steps", 1);
  s.add_float("train.lr", 1e-4, "lr", 0);
  TempDir dir("cli_precedence");
  std::ofstream(dir / "run.yaml") << "seed: 3\ntrain:\n  steps: 10\n  lr: 0.5\n";
  CommonFlags f;
  f.config = dir / "run.yaml";
  f.sets = {"train.steps=20", "train.steps=30", "seed=4"};
  Config c = resolve_config(s, f);
  CHECK(c.get_float("train.lr") == 0.5);  // file over default
  CHECK(c.get_int("train.steps") == 30);  // --set over file, later --set over earlier
  CHECK(c.get_int("seed") == 4);
  f.seed = 9;
  c = resolve_config(s, f);
  CHECK(c.get_int("seed") == 9);  // --seed over everything
  CHECK(c.source("seed").where == "--seed");
  // --set mistakes are usage errors (exit 2), file mistakes plain errors (exit 1).
  f.sets = {"train.stpes=1"};
  CHECK_THROWS_AS(resolve_config(s, f), UsageError);
  f.sets = {};
  f.config = dir / "missing.yaml";
  CHECK_THROWS_WITH(resolve_config(s, f), doctest::Contains("No such file or directory"));
}

TEST_CASE("cli: --set and --config errors through a command") {
  Run r = run_psvae({"dataset", "--set", "data.image_size"});
  CHECK(r.rc == 2);
  CHECK(r.err ==
        "psvae dataset: --set data.image_size: expected KEY=VALUE, e.g. --set train.lr=1e-4 (see "
        "'psvae dataset --help')\n");
  r = run_psvae({"dataset", "--set", "data.imgae_size=16"});
  CHECK(r.rc == 2);
  CHECK(contains(r.err, "unknown key 'data.imgae_size' (did you mean 'data.image_size'?)"));
  r = run_psvae({"dataset", "--config", "/nonexistent/run.yaml"});
  CHECK(r.rc == 1);
  CHECK(r.err ==
        "psvae dataset: cannot read config '/nonexistent/run.yaml': No such file or "
        "directory\n");
}

TEST_CASE("cli: resolve_device and apply_threads") {
  CHECK(resolve_device("cpu") == Device::cpu());
  CHECK(resolve_device("auto") == (cuda_available() ? Device::cuda(0) : Device::cpu()));
  CHECK_THROWS_WITH(resolve_device("gpu"), "--device gpu: expects cpu, cuda, cuda:N or auto");
  if (!cuda_available()) {
    CHECK_THROWS_WITH(resolve_device("cuda"), doctest::Contains("no CUDA device is available"));
  } else {
    CHECK(resolve_device("cuda") == Device::cuda(0));
    CHECK_THROWS_WITH(resolve_device("cuda:999"), doctest::Contains("CUDA device(s) are visible"));
  }
  apply_threads(0);  // leaves OpenMP's default; must not throw
}

TEST_CASE("cli: psvae info lists tensors, totals and metadata") {
  TempDir dir("cli_info");
  const std::string path = dir / "w.safetensors";
  safetensors::save(path,
                    {{"encoder.weight", Tensor::zeros({2, 3}, DType::F32)},
                     {"encoder.bias", Tensor::zeros({4}, DType::F64)},
                     {"step", Tensor::zeros({1}, DType::I64)}},
                    {{"format", "pt"}, {"config", std::string(500, 'x') + "\nend"}});
  Run r = run_psvae({"info", path});
  CHECK(r.rc == 0);
  CHECK(r.err.empty());
  CHECK(contains(r.out, "encoder.weight"));
  CHECK(contains(r.out, "(2, 3)"));
  CHECK(contains(r.out, "F64"));
  CHECK(contains(r.out, "total: 3 tensors, 11 parameters, 64 bytes"));
  CHECK(contains(r.out, "format = pt"));
  CHECK(contains(r.out, "... (504 chars; --full shows all)"));
  r = run_psvae({"info", "--full", "--file", path});
  CHECK(r.rc == 0);
  CHECK(contains(r.out, std::string(500, 'x') + "\nend"));

  // A corrupt file: the reader's one-line error naming the path, exit 1.
  const std::string bad = dir / "bad.safetensors";
  std::ofstream(bad) << "not a safetensors file";
  r = run_psvae({"info", bad});
  CHECK(r.rc == 1);
  CHECK(r.err.rfind("psvae info: " + bad, 0) == 0);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
}

TEST_CASE("cli: psvae dataset describes the synthetic set and writes a grid") {
  TempDir dir("cli_dataset");
  const std::string png = dir / "grid.png";
  Run r = run_psvae({"dataset", "--set", "data.num_images=12", "--set", "data.image_size=16",
                     "--out", png, "--num", "6", "--nrow", "3", "--captions", "2"});
  CHECK(r.rc == 0);
  CHECK(contains(r.out, "synthetic"));
  CHECK(contains(r.out, "classes: "));
  CHECK(contains(r.out, "  [1] "));
  CHECK_FALSE(contains(r.out, "  [2] "));
  CHECK(fs::exists(png));
}

TEST_CASE("cli: the built binary end to end") {
  // The test runs from bin/ of the build (beside psvae) or with the build dir as working dir.
  if (psvae::test::psvae_binary().empty()) {
    MESSAGE("bin/psvae not built; skipping the end-to-end run");
    return;
  }
  TempDir dir("cli_binary");
  auto sh = [&](const std::string& args) {
    return psvae::test::run_psvae_binary(args, dir / "out").rc;
  };
  CHECK(sh("--help") == 0);
  std::string out = read_text(dir / "out");
  CHECK(contains(out, "info"));
  CHECK(contains(out, "dataset"));
  CHECK(sh("datset") == 2);
  CHECK(contains(read_text(dir / "out"), "did you mean 'dataset'?"));
  CHECK(sh("info --fil x") == 2);
  CHECK(contains(read_text(dir / "out"), "did you mean '--file'?"));
  CHECK(sh("info /nonexistent.safetensors") == 1);
}
