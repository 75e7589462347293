// Configs: a schema of every key (type, default, range, documentation) and the values resolved
// from defaults, a YAML file and `--set a.b=value` overrides, in that order.
//
// Every error names the key and where the value came from: "run.yaml:12: key 'train.lr' expects a
// number, got 'fast'", "--set train.stpes=10: unknown key 'train.stpes' (did you mean
// 'train.steps'?)". The resolved config (every key, defaults included, with its documentation as
// comments) is saved beside every run, so a run can be reproduced from its folder alone.
#pragma once
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace psvae::train {

enum class KeyType { Int, Float, Bool, String, Choice };

struct ConfigKey {
  std::string key;  // dotted: "train.lr"
  KeyType type = KeyType::String;
  std::string default_value;  // as YAML text: "1e-4", "true", "synthetic"
  std::string doc;            // one line, shown in --help and in the saved config
  double min = -std::numeric_limits<double>::infinity();  // Int and Float: inclusive range
  double max = std::numeric_limits<double>::infinity();
  bool min_exclusive = false;        // "> min" rather than ">= min" (a learning rate must be > 0)
  bool max_exclusive = false;        // "< max" (Adam's betas must be < 1)
  std::vector<std::string> choices;  // Choice: the allowed values
};

class ConfigSchema {
 public:
  // Adds a key; throws if it exists already (two sections claiming one key is a bug).
  ConfigSchema& add(ConfigKey key);
  ConfigSchema& add_int(const std::string& key, int64_t def, const std::string& doc,
                        double min = -std::numeric_limits<double>::infinity(),
                        double max = std::numeric_limits<double>::infinity());
  ConfigSchema& add_float(const std::string& key, double def, const std::string& doc,
                          double min = -std::numeric_limits<double>::infinity(),
                          double max = std::numeric_limits<double>::infinity());
  ConfigSchema& add_bool(const std::string& key, bool def, const std::string& doc);
  ConfigSchema& add_string(const std::string& key, const std::string& def, const std::string& doc);
  ConfigSchema& add_choice(const std::string& key, const std::string& def,
                           const std::vector<std::string>& choices, const std::string& doc);

  // Makes the bounds of an Int/Float key exclusive: exclusive(key, true, false) turns
  // [min, max] into (min, max].
  ConfigSchema& exclusive(const std::string& key, bool min_exclusive, bool max_exclusive);

  const ConfigKey* find(const std::string& key) const;
  const std::vector<ConfigKey>& keys() const { return keys_; }
  // The known key closest to `key` by edit distance ("" when none is reasonably close).
  std::string closest(const std::string& key) const;

 private:
  std::vector<ConfigKey> keys_;
};

// Where a value came from: "default", "run.yaml:12" or "--set".
struct ValueSource {
  std::string where = "default";
};

class Config {
 public:
  Config() = default;
  explicit Config(const ConfigSchema& schema);  // every key at its default

  // Merges a YAML file: nested maps flatten to dotted keys. Unknown keys, wrong types and
  // out-of-range values throw std::runtime_error("FILE:LINE: ...").
  void load_yaml_file(const std::string& path);
  void load_yaml_string(const std::string& text, const std::string& source_name);
  // "a.b=value" as given to --set; errors start with "--set a.b=value: ".
  void set_override(const std::string& assignment);
  // Programmatic set (tests, commands deriving values); validated like the others.
  void set(const std::string& key, const std::string& value, const std::string& source = "code");

  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::string get_string(const std::string& key) const;  // String and Choice keys
  bool has(const std::string& key) const;
  const ValueSource& source(const std::string& key) const;
  const ConfigSchema& schema() const { return schema_; }

  // Every key as nested YAML, each preceded by its documentation as a comment.
  std::string to_yaml() const;
  // Atomic write of to_yaml() (temp file + rename).
  void save(const std::string& path) const;

 private:
  ConfigSchema schema_;
  std::map<std::string, std::string> values_;  // canonical text of each value
  std::map<std::string, ValueSource> sources_;
};

// ---- helpers shared by the config loader and the command line ---------------------------------
// Edit distance with adjacent transpositions (optimal string alignment), ASCII case-insensitive:
// "stpes" -> "steps" is 1.
size_t edit_distance(const std::string& a, const std::string& b);
// The candidate closest to `word`, or "" when none is within max(1, len/3) edits: a suggestion
// two letters off a four-letter word is noise, not help.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);
// What a key accepts, for errors and help: "integer >= 1", "number in [0, 1]", "true or false",
// "text", "one of: synthetic, imagefolder, cifar10".
std::string describe_type(const ConfigKey& key);

}  // namespace psvae::train
