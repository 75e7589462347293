// Configs: every error path names the key, the value and the file line; precedence; round trip.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>

#include "common/test_util.h"
#include "train/config.h"

using namespace psvae::train;
namespace fs = std::filesystem;
using psvae::test::TempDir;

namespace {

ConfigSchema schema() {
  ConfigSchema s;
  s.add_int("train.steps", 100, "optimizer steps", 1);
  s.add_float("train.lr", 1e-4, "peak learning rate", 0, 1);
  s.add_bool("train.ema", true, "keep an EMA of the weights");
  s.add_float("train.beta", 0.5, "any real number");
  s.add_string("data.path", "", "dataset folder");
  s.add_choice("data.dataset", "synthetic", {"synthetic", "imagefolder", "cifar10"},
               "image source");
  s.add_int("seed", 0, "random seed", 0);
  return s;
}

// The message of the std::runtime_error `f` throws ("" when it does not throw).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

std::string load_error(const std::string& yaml) {
  Config c(schema());
  return error_of([&] { c.load_yaml_string(yaml, "run.yaml"); });
}

}  // namespace

TEST_CASE("config: defaults, typed getters and sources") {
  Config c(schema());
  CHECK(c.get_int("train.steps") == 100);
  CHECK(c.get_float("train.lr") == 1e-4);
  CHECK(c.get_bool("train.ema"));
  CHECK(c.get_string("data.path").empty());
  CHECK(c.get_string("data.dataset") == "synthetic");
  CHECK(c.get_float("train.steps") == 100.0);  // an integer reads as a number too
  CHECK(c.has("seed"));
  CHECK_FALSE(c.has("train"));
  CHECK(c.source("train.lr").where == "default");
  // Reading with the wrong type or an unknown name is a program bug: a logic_error naming it.
  CHECK_THROWS_AS(c.get_int("train.lr"), std::logic_error);
  CHECK_THROWS_WITH(c.get_bool("train.stpes"),
                    "config has no key 'train.stpes' (did you mean 'train.steps'?)");
}

TEST_CASE("config: YAML nested maps and dotted keys, with their lines") {
  Config c(schema());
  c.load_yaml_string(
      "# a comment\n"
      "train:\n"
      "  steps: 20\n"
      "  lr: 3e-4\n"
      "  ema: false\n"
      "data.dataset: imagefolder\n"
      "data:\n"
      "  path: \"/tmp/my images\"\n"
      "seed: 7\n",
      "run.yaml");
  CHECK(c.get_int("train.steps") == 20);
  CHECK(c.get_float("train.lr") == 3e-4);
  CHECK_FALSE(c.get_bool("train.ema"));
  CHECK(c.get_string("data.dataset") == "imagefolder");
  CHECK(c.get_string("data.path") == "/tmp/my images");
  CHECK(c.get_int("seed") == 7);
  CHECK(c.source("train.lr").where == "run.yaml:4");
  CHECK(c.source("seed").where == "run.yaml:9");
  CHECK(c.source("train.beta").where == "default");
}

TEST_CASE("config: empty and comment-only files change nothing") {
  Config c(schema());
  c.load_yaml_string("", "empty.yaml");
  c.load_yaml_string("# nothing yet\n\n", "comments.yaml");
  c.load_yaml_string("train:\n  # steps: 5\n", "section.yaml");
  CHECK(c.get_int("train.steps") == 100);
  CHECK(c.source("train.steps").where == "default");
}

TEST_CASE("config: unknown keys suggest the closest one") {
  CHECK(load_error("seed: 1\ntrain:\n  lr: 0.1\n  stpes: 10\n") ==
        "run.yaml:4: unknown key 'train.stpes' (did you mean 'train.steps'?)");
  // Wrong section, right name.
  CHECK(load_error("model:\n  lr: 0.1\n") ==
        "run.yaml:2: unknown key 'model.lr' (did you mean 'train.lr'?)");
  // Misspelt section: the error still names the full key.
  CHECK(load_error("trian:\n  lr: 0.1\n") ==
        "run.yaml:2: unknown key 'trian.lr' (did you mean 'train.lr'?)");
  // Nothing close: no suggestion rather than a silly one.
  CHECK(load_error("completely_different: 1\n") ==
        "run.yaml:1: unknown key 'completely_different'");
  // A section given a value.
  CHECK(load_error("train: 5\n") ==
        "run.yaml:1: 'train' is a section of 4 keys (e.g. 'train.steps'), not a key");
}

TEST_CASE("config: wrong types, ranges, choices and bools name key, value and line") {
  CHECK(load_error("train:\n  lr: fast\n") ==
        "run.yaml:2: key 'train.lr' expects a number in [0, 1], got 'fast'");
  CHECK(load_error("train:\n  steps: 3.5\n") ==
        "run.yaml:2: key 'train.steps' expects an integer >= 1, got '3.5'");
  CHECK(load_error("train:\n  steps: 1e3\n") ==
        "run.yaml:2: key 'train.steps' expects an integer >= 1, got '1e3'");
  CHECK(load_error("train:\n  steps: 0\n") ==
        "run.yaml:2: key 'train.steps' expects an integer >= 1, got '0'");
  CHECK(load_error("train:\n  steps: 99999999999999999999\n") ==
        "run.yaml:2: key 'train.steps' expects an integer >= 1, got '99999999999999999999'");
  CHECK(load_error("train:\n  lr: 2\n") ==
        "run.yaml:2: key 'train.lr' expects a number in [0, 1], got '2'");
  CHECK(load_error("train:\n  lr: -1e-9\n") ==
        "run.yaml:2: key 'train.lr' expects a number in [0, 1], got '-1e-9'");
  CHECK(load_error("train:\n  beta: nan\n") ==
        "run.yaml:2: key 'train.beta' expects a number, got 'nan'");
  CHECK(load_error("train:\n  ema: yes\n") ==
        "run.yaml:2: key 'train.ema' expects true or false, got 'yes'");
  CHECK(load_error("train:\n  ema: 1\n") ==
        "run.yaml:2: key 'train.ema' expects true or false, got '1'");
  CHECK(load_error("data:\n  dataset: imgfolder\n") ==
        "run.yaml:2: key 'data.dataset' expects one of: synthetic, imagefolder, cifar10, got "
        "'imgfolder' (did you mean 'imagefolder'?)");
  CHECK(load_error("data:\n  dataset: mnist\n") ==
        "run.yaml:2: key 'data.dataset' expects one of: synthetic, imagefolder, cifar10, got "
        "'mnist'");
  // Inclusive ranges: the bounds themselves are fine.
  Config c(schema());
  c.load_yaml_string("train:\n  lr: 1\n  steps: 1\n", "run.yaml");
  CHECK(c.get_float("train.lr") == 1.0);
  c.load_yaml_string("train:\n  lr: 0\n", "run.yaml");
  CHECK(c.get_float("train.lr") == 0.0);
}

TEST_CASE("config: structure errors") {
  CHECK(load_error("train:\n  lr: [1, 2]\n") ==
        "run.yaml:2: key 'train.lr' expects a number in [0, 1], got a sequence");
  CHECK(load_error("train:\n  lr:\n    a: 1\n") ==
        "run.yaml:3: key 'train.lr' expects a number in [0, 1], got a map");
  CHECK(load_error("train:\n  lr:\n") ==
        "run.yaml:2: key 'train.lr' expects a number in [0, 1], got no value (write \"\" for "
        "empty text)");
  CHECK(load_error("- a\n- b\n") ==
        "run.yaml:1: expected 'key: value' lines at the top level, got a sequence");
  CHECK(load_error("seed: 1\nseed: 2\n") ==
        "run.yaml:2: key 'seed' given twice (also at run.yaml:1)");
  CHECK(load_error("seed: 1\n---\nseed: 2\n") ==
        "run.yaml: holds 2 YAML documents ('---'); a config is one document");
}

TEST_CASE("config: YAML syntax errors carry the file line") {
  // An unclosed flow sequence: yaml-cpp notices where the next key starts, on line 4.
  CHECK(load_error("seed: 1\ntrain:\n  lr: [1, 2\nx: 3\n") ==
        "run.yaml:4: invalid YAML: end of sequence flow not found");
  CHECK(load_error("train:\n  lr: 0.1\n    steps: 3\n") ==
        "run.yaml:3: invalid YAML: illegal map value");
  CHECK(load_error("seed: 1\ntrain: lr: 3\n") == "run.yaml:2: invalid YAML: illegal map value");
  CHECK(load_error("seed: 1\n\t- x\n") ==
        "run.yaml:2: invalid YAML: illegal tab when looking for indentation");
}

TEST_CASE("config: a failed load changes nothing") {
  Config c(schema());
  CHECK_THROWS(c.load_yaml_string("seed: 5\ntrain:\n  lr: fast\n", "run.yaml"));
  CHECK(c.get_int("seed") == 0);
  CHECK(c.source("seed").where == "default");
}

TEST_CASE("config: files") {
  TempDir dir("config_files");
  Config c(schema());
  CHECK(error_of([&] { c.load_yaml_file(dir / "missing.yaml"); }) ==
        "cannot read config '" + (dir / "missing.yaml") + "': No such file or directory");
  CHECK(error_of([&] { c.load_yaml_file(dir.path().string()); }) ==
        "cannot read config '" + dir.path().string() + "': Is a directory");
  {
    std::ofstream(dir / "empty.yaml");
    std::ofstream(dir / "run.yaml") << "train:\n  steps: 7\n  lr: oops\n";
  }
  c.load_yaml_file(dir / "empty.yaml");
  CHECK(error_of([&] { c.load_yaml_file(dir / "run.yaml"); }) ==
        (dir / "run.yaml") + ":3: key 'train.lr' expects a number in [0, 1], got 'oops'");
}

TEST_CASE("config: --set overrides") {
  Config c(schema());
  c.set_override("train.lr=1e-3");
  c.set_override("data.path=a=b");  // the first '=' splits; the rest is the value
  c.set_override("data.path=");     // an empty string is a value
  c.set_override("train.steps=+5");
  CHECK(c.get_float("train.lr") == 1e-3);
  CHECK(c.get_string("data.path").empty());
  CHECK(c.get_int("train.steps") == 5);
  CHECK(c.source("train.lr").where == "--set");
  CHECK(error_of([&] { c.set_override("train.lr"); }) ==
        "--set train.lr: expected KEY=VALUE, e.g. --set train.lr=1e-4");
  CHECK(error_of([&] { c.set_override("=3"); }) ==
        "--set =3: expected KEY=VALUE, e.g. --set train.lr=1e-4");
  CHECK(error_of([&] { c.set_override("train.stpes=10"); }) ==
        "--set train.stpes=10: unknown key 'train.stpes' (did you mean 'train.steps'?)");
  CHECK(error_of([&] { c.set_override("train.lr=fast"); }) ==
        "--set train.lr=fast: key 'train.lr' expects a number in [0, 1], got 'fast'");
  CHECK(error_of([&] { c.set("seed", "-1", "code"); }) ==
        "code: key 'seed' expects an integer >= 0, got '-1'");
}

TEST_CASE("config: precedence default < file < --set") {
  Config c(schema());
  c.load_yaml_string("train:\n  steps: 10\n  lr: 0.5\n", "run.yaml");
  c.set_override("train.steps=20");
  CHECK(c.get_int("train.steps") == 20);
  CHECK(c.source("train.steps").where == "--set");
  CHECK(c.get_float("train.lr") == 0.5);
  CHECK(c.source("train.lr").where == "run.yaml:3");
  CHECK(c.get_int("seed") == 0);
  CHECK(c.source("seed").where == "default");
}

TEST_CASE("config: to_yaml and save re-load to identical values") {
  Config a(schema());
  a.set("train.lr", "0.1", "code");  // not exactly representable: needs the shortest round trip
  a.set("train.beta", "-1.2345678901234567e-300", "code");
  a.set("train.steps", "123456789012", "code");
  a.set("train.ema", "false", "code");
  a.set("data.path", "C:\\odd \"path\": #not a comment\n\tline two", "code");
  a.set("data.dataset", "cifar10", "code");
  const std::string yaml = a.to_yaml();
  // Nested, documented, and the saved value of a float is its shortest exact text.
  CHECK(yaml.find("train:\n  # optimizer steps (integer >= 1)\n  steps: 123456789012") !=
        std::string::npos);
  CHECK(yaml.find("  lr: 0.1") != std::string::npos);

  Config b(schema());
  b.load_yaml_string(yaml, "saved.yaml");
  const ConfigSchema keys = schema();  // named: a temporary would die before the loop runs
  for (const ConfigKey& k : keys.keys()) {
    CAPTURE(k.key);
    switch (k.type) {
      case KeyType::Int: CHECK(a.get_int(k.key) == b.get_int(k.key)); break;
      case KeyType::Float: CHECK(a.get_float(k.key) == b.get_float(k.key)); break;
      case KeyType::Bool: CHECK(a.get_bool(k.key) == b.get_bool(k.key)); break;
      default: CHECK(a.get_string(k.key) == b.get_string(k.key)); break;
    }
  }
  CHECK(b.get_float("train.lr") == 0.1);
  CHECK(b.get_float("train.beta") == -1.2345678901234567e-300);

  // Infinity and a string that YAML would read as null or a bool survive too.
  ConfigSchema s2;
  s2.add_float("x.hi", std::numeric_limits<double>::infinity(), "no upper bound");
  s2.add_string("x.word", "null", "looks like null");
  s2.add_string("x.flag", "true", "looks like a bool");
  s2.add_string("x.empty", "", "empty");
  Config c(s2), d(s2);
  d.load_yaml_string(c.to_yaml(), "saved.yaml");
  CHECK(std::isinf(d.get_float("x.hi")));
  CHECK(d.get_string("x.word") == "null");
  CHECK(d.get_string("x.flag") == "true");
  CHECK(d.get_string("x.empty").empty());

  TempDir dir("config_save");
  const std::string path = dir / "config.yaml";
  a.save(path);
  a.save(path);  // overwriting is fine, and leaves no temp file behind
  Config e(schema());
  e.load_yaml_file(path);
  CHECK(e.to_yaml().find("  steps: 123456789012") != std::string::npos);
  CHECK(e.get_string("data.path") == a.get_string("data.path"));
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir.path())) files += entry.is_regular_file();
  CHECK(files == 1);
  CHECK_THROWS_WITH(a.save(dir / "no/such/dir.yaml"), doctest::Contains("cannot write config"));
}

TEST_CASE("config: closest matches") {
  CHECK(edit_distance("stpes", "steps") == 1);  // a swap is one edit
  CHECK(edit_distance("kitten", "sitting") == 3);
  CHECK(edit_distance("", "abc") == 3);
  CHECK(edit_distance("LR", "lr") == 0);
  CHECK(closest_match("trian", {"info", "train", "dataset"}) == "train");
  CHECK(closest_match("xyz", {"info", "train", "dataset"}).empty());
  CHECK(closest_match("--fil", {"--help", "--file", "--full"}) == "--file");
  const ConfigSchema s = schema();
  CHECK(s.closest("train.stpes") == "train.steps");
  CHECK(s.closest("TRAIN.LR") == "train.lr");
  CHECK(s.closest("optim.lr") == "train.lr");
  CHECK(s.closest("sed") == "seed");
  CHECK(s.closest("data.datasets") == "data.dataset");
  CHECK(s.closest("model.depth").empty());
}

TEST_CASE("config: schema mistakes are caught when declared") {
  ConfigSchema s = schema();
  CHECK_THROWS_AS(s.add_int("seed", 1, "again"), std::logic_error);
  CHECK_THROWS_AS(s.add_int("train", 1, "a key over a section"), std::logic_error);
  CHECK_THROWS_AS(s.add_int("seed.x", 1, "a section over a key"), std::logic_error);
  CHECK_THROWS_AS(s.add_int("a..b", 1, "empty component"), std::logic_error);
  CHECK_THROWS_AS(s.add_int("a.n", 0, "default out of range", 1, 10), std::logic_error);
  CHECK_THROWS_AS(s.add_choice("a.c", "x", {"y", "z"}, "default not a choice"), std::logic_error);
  ConfigKey k;
  k.key = "a.f";
  k.type = KeyType::Float;
  k.default_value = "1e-4";
  s.add(k);
  CHECK(s.find("a.f")->default_value == "0.0001");  // stored canonical
}

TEST_CASE("config: exclusive bounds") {
  ConfigSchema s;
  s.add_float("opt.lr", 1e-3, "learning rate", 0).exclusive("opt.lr", true, false);
  s.add_float("opt.beta", 0.9, "decay", 0, 1).exclusive("opt.beta", false, true);
  Config c(s);
  CHECK_THROWS_WITH_AS(c.set("opt.lr", "0"), "code: key 'opt.lr' expects a number > 0, got '0'",
                       std::runtime_error);
  CHECK_NOTHROW(c.set("opt.lr", "1e-9"));
  CHECK_THROWS_WITH_AS(c.set("opt.beta", "1"),
                       "code: key 'opt.beta' expects a number in [0, 1), got '1'",
                       std::runtime_error);
  CHECK_NOTHROW(c.set("opt.beta", "0"));
  // A default outside the narrowed range is a schema bug, caught when the schema is built.
  ConfigSchema bad;
  bad.add_float("opt.lr", 0.0, "learning rate", 0);
  CHECK_THROWS_AS(bad.exclusive("opt.lr", true, false), std::logic_error);
}
