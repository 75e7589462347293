// Configs: schema, validation, YAML loading (yaml-cpp), --set overrides and the saved YAML.
//
// Values are kept as canonical text ("1e-4" is stored as "0.0001", "+3" as "3") so that the saved
// config, the report and get_*() all agree, and a saved config re-loads to the same values.
// Loading is all-or-nothing: a file is parsed and every entry validated before any is applied,
// so a config that throws leaves the previous values untouched.
#include "train/config.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "tensor/atomic_file.h"

namespace psvae::train {

// ---- closest matches ---------------------------------------------------------------------------

size_t edit_distance(const std::string& a, const std::string& b) {
  // Optimal string alignment: Levenshtein plus swaps of two adjacent letters, the commonest typo
  // ("stpes"). Three rows of (|b|+1) are enough because a swap looks back two rows.
  auto low = [](char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); };
  const size_t n = a.size(), m = b.size();
  std::vector<size_t> prev2(m + 1), prev(m + 1), cur(m + 1);
  for (size_t j = 0; j <= m; ++j) prev[j] = j;
  for (size_t i = 1; i <= n; ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= m; ++j) {
      size_t cost = low(a[i - 1]) == low(b[j - 1]) ? 0 : 1;
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost});
      if (i > 1 && j > 1 && low(a[i - 1]) == low(b[j - 2]) && low(a[i - 2]) == low(b[j - 1]))
        cur[j] = std::min(cur[j], prev2[j - 2] + 1);
    }
    std::swap(prev2, prev);
    std::swap(prev, cur);
  }
  return prev[m];
}

namespace {

size_t close_enough(const std::string& word) { return std::max<size_t>(1, word.size() / 3); }

std::string last_component(const std::string& key) {
  size_t dot = key.rfind('.');
  return dot == std::string::npos ? key : key.substr(dot + 1);
}

}  // namespace

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = close_enough(word) + 1;
  for (const std::string& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;  // ties keep the first, so the order is the tie-break
  }
  return best;
}

// ---- types and values --------------------------------------------------------------------------

namespace {

std::string format_number(double v) {
  if (std::isinf(v)) return v > 0 ? ".inf" : "-.inf";  // YAML's spelling, which we also parse
  return fmt::format("{}", v);  // shortest text that reads back as the same double
}

bool parse_int(const std::string& s, int64_t* out) {
  size_t i = (!s.empty() && (s[0] == '+' || s[0] == '-')) ? 1 : 0;
  if (i == s.size()) return false;
  for (size_t j = i; j < s.size(); ++j)
    if (!std::isdigit(static_cast<unsigned char>(s[j]))) return false;
  errno = 0;
  long long v = std::strtoll(s.c_str(), nullptr, 10);
  if (errno == ERANGE) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

bool parse_float(const std::string& s, double* out) {
  std::string low;
  for (char c : s) low += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const char* inf : {".inf", "+.inf", "inf", "+inf", "infinity"})
    if (low == inf) return *out = INFINITY, true;
  for (const char* inf : {"-.inf", "-inf", "-infinity"})
    if (low == inf) return *out = -INFINITY, true;
  // Only decimal text: strtod alone would also take "nan", hex floats and leading blanks.
  if (s.empty() || s.find_first_not_of("0123456789+-.eE") != std::string::npos) return false;
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || s.find_first_of("0123456789") == std::string::npos)
    return false;
  if (errno == ERANGE && std::isinf(v)) return false;  // "1e999"; denormal underflow is fine
  *out = v;
  return true;
}

const char* article(KeyType t) {
  return t == KeyType::Int ? "an " : t == KeyType::Float ? "a " : "";
}

bool in_range(const ConfigKey& k, double v) {
  bool above = k.min_exclusive ? v > k.min : v >= k.min;
  bool below = k.max_exclusive ? v < k.max : v <= k.max;
  return above && below;
}

// Validates `text` for `k`; on success writes the canonical text and returns "", otherwise returns
// the error without its location ("key 'train.lr' expects a number, got 'fast'").
std::string validate(const ConfigKey& k, const std::string& text, std::string* canonical) {
  const std::string bad = fmt::format("key '{}' expects {}{}, got '{}'", k.key, article(k.type),
                                      describe_type(k), text);
  switch (k.type) {
    case KeyType::Int: {
      int64_t v = 0;
      if (!parse_int(text, &v)) return bad;
      if (!in_range(k, static_cast<double>(v))) return bad;
      *canonical = std::to_string(v);
      return "";
    }
    case KeyType::Float: {
      double v = 0;
      if (!parse_float(text, &v)) return bad;
      if (!in_range(k, v)) return bad;
      *canonical = format_number(v);
      return "";
    }
    case KeyType::Bool:
      // Only true/false: YAML 1.1's yes/no/on/off surprise people ("no" as a country code).
      if (text != "true" && text != "false") return bad;
      *canonical = text;
      return "";
    case KeyType::String: *canonical = text; return "";
    case KeyType::Choice: {
      if (std::find(k.choices.begin(), k.choices.end(), text) != k.choices.end()) {
        *canonical = text;
        return "";
      }
      std::string near = closest_match(text, k.choices);
      return near.empty() ? bad : fmt::format("{} (did you mean '{}'?)", bad, near);
    }
  }
  return bad;
}

std::string with_where(const std::string& where, const std::string& msg) {
  return where.empty() ? msg : where + ": " + msg;
}

bool valid_key_name(const std::string& key) {
  if (key.empty() || key.front() == '.' || key.back() == '.' || key.find("..") != key.npos)
    return false;
  for (char c : key)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.'))
      return false;
  return true;
}

bool is_section_of(const std::string& section, const std::string& key) {
  return key.size() > section.size() && key.compare(0, section.size(), section) == 0 &&
         key[section.size()] == '.';
}

}  // namespace

std::string describe_type(const ConfigKey& k) {
  auto range = [&]() -> std::string {
    bool lo = std::isfinite(k.min), hi = std::isfinite(k.max);
    if (lo && hi)
      return fmt::format(" in {}{}, {}{}", k.min_exclusive ? '(' : '[', format_number(k.min),
                         format_number(k.max), k.max_exclusive ? ')' : ']');
    if (lo) return (k.min_exclusive ? " > " : " >= ") + format_number(k.min);
    if (hi) return (k.max_exclusive ? " < " : " <= ") + format_number(k.max);
    return "";
  };
  switch (k.type) {
    case KeyType::Int: return "integer" + range();
    case KeyType::Float: return "number" + range();
    case KeyType::Bool: return "true or false";
    case KeyType::String: return "text";
    case KeyType::Choice: {
      std::string s = "one of: ";
      for (size_t i = 0; i < k.choices.size(); ++i) s += (i ? ", " : "") + k.choices[i];
      return s;
    }
  }
  return "";
}

// ---- schema ------------------------------------------------------------------------------------

ConfigSchema& ConfigSchema::add(ConfigKey key) {
  // Every failure here is a bug in the program's schema, not in the user's config.
  auto fail = [&](const std::string& why) {
    throw std::logic_error(fmt::format("config schema: key '{}': {}", key.key, why));
  };
  if (!valid_key_name(key.key)) fail("names are dotted words of letters, digits, '_' and '-'");
  if (find(key.key)) fail("declared twice");
  for (const ConfigKey& k : keys_)
    if (is_section_of(k.key, key.key) || is_section_of(key.key, k.key))
      fail(fmt::format("clashes with key '{}' (a key cannot also be a section)", k.key));
  if (key.type == KeyType::Choice && key.choices.empty()) fail("a choice needs choices");
  if (key.min > key.max) fail("empty range");
  std::string canonical;
  std::string err = validate(key, key.default_value, &canonical);
  if (!err.empty()) fail("bad default: " + err);
  key.default_value = canonical;
  keys_.push_back(std::move(key));
  return *this;
}

ConfigSchema& ConfigSchema::exclusive(const std::string& key, bool min_exclusive,
                                      bool max_exclusive) {
  auto it =
      std::find_if(keys_.begin(), keys_.end(), [&](const ConfigKey& k) { return k.key == key; });
  if (it == keys_.end())
    throw std::logic_error("config schema: exclusive() on unknown key '" + key + "'");
  it->min_exclusive = min_exclusive;
  it->max_exclusive = max_exclusive;
  std::string canonical;
  std::string err = validate(*it, it->default_value, &canonical);
  if (!err.empty()) throw std::logic_error("config schema: key '" + key + "': bad default: " + err);
  return *this;
}

ConfigSchema& ConfigSchema::add_int(const std::string& key, int64_t def, const std::string& doc,
                                    double min, double max) {
  ConfigKey k;
  k.key = key, k.type = KeyType::Int, k.default_value = std::to_string(def), k.doc = doc;
  k.min = min, k.max = max;
  return add(std::move(k));
}

ConfigSchema& ConfigSchema::add_float(const std::string& key, double def, const std::string& doc,
                                      double min, double max) {
  ConfigKey k;
  k.key = key, k.type = KeyType::Float, k.default_value = format_number(def), k.doc = doc;
  k.min = min, k.max = max;
  return add(std::move(k));
}

ConfigSchema& ConfigSchema::add_bool(const std::string& key, bool def, const std::string& doc) {
  ConfigKey k;
  k.key = key, k.type = KeyType::Bool, k.default_value = def ? "true" : "false", k.doc = doc;
  return add(std::move(k));
}

ConfigSchema& ConfigSchema::add_string(const std::string& key, const std::string& def,
                                       const std::string& doc) {
  ConfigKey k;
  k.key = key, k.type = KeyType::String, k.default_value = def, k.doc = doc;
  return add(std::move(k));
}

ConfigSchema& ConfigSchema::add_choice(const std::string& key, const std::string& def,
                                       const std::vector<std::string>& choices,
                                       const std::string& doc) {
  ConfigKey k;
  k.key = key, k.type = KeyType::Choice, k.default_value = def, k.doc = doc, k.choices = choices;
  return add(std::move(k));
}

const ConfigKey* ConfigSchema::find(const std::string& key) const {
  for (const ConfigKey& k : keys_)
    if (k.key == key) return &k;
  return nullptr;
}

std::string ConfigSchema::closest(const std::string& key) const {
  // Two ways to be close: the whole dotted key ("train.stpes" -> "train.steps"), or the last
  // component under the wrong section ("model.lr" -> "train.lr"). A last-component match ranks
  // one edit behind a whole-key match of the same distance.
  const std::string last = last_component(key);
  const ConfigKey* best = nullptr;
  size_t best_score = SIZE_MAX;
  for (const ConfigKey& k : keys_) {
    size_t d_full = edit_distance(key, k.key);
    size_t d_last = edit_distance(last, last_component(k.key));
    size_t score = SIZE_MAX;
    if (d_full <= close_enough(key)) score = d_full;
    if (d_last <= close_enough(last)) score = std::min(score, d_last + 1);
    if (score < best_score) best_score = score, best = &k;
  }
  return best ? best->key : "";
}

// ---- config ------------------------------------------------------------------------------------

Config::Config(const ConfigSchema& schema) : schema_(schema) {
  for (const ConfigKey& k : schema_.keys()) {
    values_[k.key] = k.default_value;  // canonical already (ConfigSchema::add)
    sources_[k.key] = ValueSource{};
  }
}

namespace {

std::string unknown_key_message(const ConfigSchema& schema, const std::string& key) {
  // A section given a value ("train: 3") deserves its own message: the user knows the name.
  std::vector<std::string> under;
  for (const ConfigKey& k : schema.keys())
    if (is_section_of(key, k.key)) under.push_back(k.key);
  if (!under.empty())
    return fmt::format("'{}' is a section of {} keys (e.g. '{}'), not a key", key, under.size(),
                       under.front());
  std::string near = schema.closest(key);
  if (near.empty()) return fmt::format("unknown key '{}'", key);
  return fmt::format("unknown key '{}' (did you mean '{}'?)", key, near);
}

struct Pending {
  std::string key, value, where;
};

std::string where_of(const std::string& source, const YAML::Mark& mark, const YAML::Mark& alt) {
  const YAML::Mark& m = mark.is_null() ? alt : mark;
  return m.is_null() ? source : fmt::format("{}:{}", source, m.line + 1);
}

// Walks nested maps, turning each leaf into a dotted key, and validates it against the schema.
void flatten(const ConfigSchema& schema, const YAML::Node& map, const std::string& prefix,
             const std::string& source, std::vector<Pending>* out,
             std::map<std::string, std::string>* seen) {
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node kn =
        it->first;  // copies: Node is a handle; the iterator hands out temporaries
    const YAML::Node vn = it->second;
    const std::string kwhere = where_of(source, kn.Mark(), map.Mark());
    const std::string vwhere = where_of(source, vn.Mark(), kn.Mark());
    if (!kn.IsScalar())
      throw std::runtime_error(kwhere + ": keys are plain names, not maps or sequences");
    const std::string key = prefix.empty() ? kn.Scalar() : prefix + "." + kn.Scalar();
    const ConfigKey* k = schema.find(key);
    if (!k) {
      bool section = false;
      for (const ConfigKey& c : schema.keys()) section = section || is_section_of(key, c.key);
      if (section && vn.IsMap()) {
        flatten(schema, vn, key, source, out, seen);
        continue;
      }
      if (section && vn.IsNull()) continue;  // "train:" with everything commented out
      // An unknown map is walked too, so the error names a full key ("trian.lr" -> "train.lr").
      if (!section && vn.IsMap() && vn.size() > 0) {
        flatten(schema, vn, key, source, out, seen);
        continue;
      }
      throw std::runtime_error(with_where(kwhere, unknown_key_message(schema, key)));
    }
    const std::string expects =
        fmt::format("key '{}' expects {}{}", key, article(k->type), describe_type(*k));
    if (vn.IsMap()) throw std::runtime_error(with_where(vwhere, expects + ", got a map"));
    if (vn.IsSequence()) throw std::runtime_error(with_where(vwhere, expects + ", got a sequence"));
    if (vn.IsNull() || !vn.IsDefined())
      throw std::runtime_error(with_where(kwhere, expects + ", got no value (write \"\" for "
                                                            "empty text)"));
    auto [prev, fresh] = seen->emplace(key, kwhere);
    if (!fresh)
      throw std::runtime_error(
          with_where(kwhere, fmt::format("key '{}' given twice (also at {})", key, prev->second)));
    std::string canonical;
    std::string err = validate(*k, vn.Scalar(), &canonical);
    if (!err.empty()) throw std::runtime_error(with_where(vwhere, err));
    out->push_back({key, canonical, vwhere});
  }
}

}  // namespace

void Config::load_yaml_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f)
    throw std::runtime_error(
        fmt::format("cannot read config '{}': {}", path, std::strerror(errno)));
  std::string text;
  char buf[1 << 14];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  const int read_errno = std::ferror(f) ? errno : 0;  // e.g. EISDIR when given a folder
  std::fclose(f);
  if (read_errno)
    throw std::runtime_error(
        fmt::format("cannot read config '{}': {}", path, std::strerror(read_errno)));
  load_yaml_string(text, path);
}

void Config::load_yaml_string(const std::string& text, const std::string& source_name) {
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(text);
  } catch (const YAML::Exception& e) {
    std::string where =
        e.mark.is_null() ? source_name : fmt::format("{}:{}", source_name, e.mark.line + 1);
    throw std::runtime_error(fmt::format("{}: invalid YAML: {}", where, e.msg));
  }
  if (docs.size() > 1)
    throw std::runtime_error(fmt::format(
        "{}: holds {} YAML documents ('---'); a config is one document", source_name, docs.size()));
  if (docs.empty() || docs[0].IsNull()) return;  // empty or comments only: no overrides
  const YAML::Node& root = docs[0];
  if (!root.IsMap())
    throw std::runtime_error(
        fmt::format("{}: expected 'key: value' lines at the top level, got a {}",
                    where_of(source_name, root.Mark(), YAML::Mark::null_mark()),
                    root.IsSequence() ? "sequence" : "single value"));
  std::vector<Pending> pending;
  std::map<std::string, std::string> seen;
  flatten(schema_, root, "", source_name, &pending, &seen);
  for (const Pending& p : pending) set(p.key, p.value, p.where);
}

void Config::set_override(const std::string& assignment) {
  const std::string where = "--set " + assignment;
  size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw std::runtime_error(where + ": expected KEY=VALUE, e.g. --set train.lr=1e-4");
  std::string key = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);
  // "--set ' train.lr=1'" from a script: blanks around a key are never meaningful.
  key.erase(0, key.find_first_not_of(" \t"));
  key.erase(key.find_last_not_of(" \t") + 1);
  const ConfigKey* k = schema_.find(key);
  if (!k) throw std::runtime_error(with_where(where, unknown_key_message(schema_, key)));
  std::string canonical;
  std::string err = validate(*k, value, &canonical);
  if (!err.empty()) throw std::runtime_error(with_where(where, err));
  set(key, canonical, "--set");
}

void Config::set(const std::string& key, const std::string& value, const std::string& source) {
  const ConfigKey* k = schema_.find(key);
  if (!k) throw std::runtime_error(with_where(source, unknown_key_message(schema_, key)));
  std::string canonical;
  std::string err = validate(*k, value, &canonical);
  if (!err.empty()) throw std::runtime_error(with_where(source, err));
  values_[key] = canonical;
  sources_[key].where = source;
}

namespace {

const ConfigKey& expect_key(const ConfigSchema& schema, const std::string& key) {
  const ConfigKey* k = schema.find(key);
  if (!k) {
    std::string near = schema.closest(key);
    throw std::logic_error(fmt::format("config has no key '{}'{}", key,
                                       near.empty() ? "" : " (did you mean '" + near + "'?)"));
  }
  return *k;
}

[[noreturn]] void wrong_getter(const ConfigKey& k, const char* asked) {
  throw std::logic_error(
      fmt::format("config key '{}' holds {}, read as {}", k.key, describe_type(k), asked));
}

}  // namespace

int64_t Config::get_int(const std::string& key) const {
  const ConfigKey& k = expect_key(schema_, key);
  if (k.type != KeyType::Int) wrong_getter(k, "an integer");
  return std::strtoll(values_.at(key).c_str(), nullptr, 10);
}

double Config::get_float(const std::string& key) const {
  const ConfigKey& k = expect_key(schema_, key);
  if (k.type != KeyType::Float && k.type != KeyType::Int) wrong_getter(k, "a number");
  double v = 0;
  parse_float(values_.at(key), &v);
  return v;
}

bool Config::get_bool(const std::string& key) const {
  const ConfigKey& k = expect_key(schema_, key);
  if (k.type != KeyType::Bool) wrong_getter(k, "true or false");
  return values_.at(key) == "true";
}

std::string Config::get_string(const std::string& key) const {
  const ConfigKey& k = expect_key(schema_, key);
  if (k.type != KeyType::String && k.type != KeyType::Choice) wrong_getter(k, "text");
  return values_.at(key);
}

bool Config::has(const std::string& key) const { return values_.count(key) != 0; }

const ValueSource& Config::source(const std::string& key) const {
  expect_key(schema_, key);
  return sources_.at(key);
}

// ---- saving ------------------------------------------------------------------------------------

namespace {

std::string quoted(const std::string& s) {
  std::string r = "\"";
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      r += '\\';
      r += c;
    } else if (c == '\n') {
      r += "\\n";
    } else if (c == '\t') {
      r += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
      r += fmt::format("\\x{:02x}", u);
    } else {
      r += c;
    }
  }
  return r + "\"";
}

std::string yaml_value(const ConfigKey& k, const std::string& v) {
  if (k.type == KeyType::String) return quoted(v);  // a quoted scalar is never null or a number
  if (k.type == KeyType::Choice) {
    bool plain = !v.empty() && std::isalpha(static_cast<unsigned char>(v[0]));
    for (char c : v)
      plain = plain && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' ||
                        c == '.' || c == '/');
    std::string low;
    for (char c : v) low += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (low == "null") plain = false;  // plain null would load as "no value"
    return plain ? v : quoted(v);
  }
  return v;
}

struct YamlTree {
  std::string name;
  const ConfigKey* key = nullptr;  // a leaf
  std::vector<YamlTree> children;  // a section, in first-declared order
};

void emit(const std::map<std::string, std::string>& values,
          const std::map<std::string, ValueSource>& sources, const YamlTree& t, int indent,
          std::string* out) {
  const std::string pad(static_cast<size_t>(indent), ' ');
  for (const YamlTree& c : t.children) {
    if (c.key) {
      std::string doc = c.key->doc;
      std::replace(doc.begin(), doc.end(), '\n', ' ');
      *out +=
          fmt::format("{}# {}{}({})\n", pad, doc, doc.empty() ? "" : " ", describe_type(*c.key));
      *out += fmt::format("{}{}: {}", pad, c.name, yaml_value(*c.key, values.at(c.key->key)));
      const std::string& from = sources.at(c.key->key).where;
      if (from != "default") *out += "  # from " + from;
      *out += "\n";
    } else {
      if (indent == 0 && !out->empty()) *out += "\n";
      *out += fmt::format("{}{}:\n", pad, c.name);
      emit(values, sources, c, indent + 2, out);
    }
  }
}

}  // namespace

std::string Config::to_yaml() const {
  YamlTree root;
  for (const ConfigKey& k : schema_.keys()) {
    YamlTree* node = &root;
    size_t begin = 0;
    while (true) {
      size_t dot = k.key.find('.', begin);
      std::string part = k.key.substr(begin, dot == std::string::npos ? dot : dot - begin);
      auto it = std::find_if(node->children.begin(), node->children.end(),
                             [&](const YamlTree& c) { return c.name == part; });
      if (it == node->children.end()) {
        node->children.push_back(YamlTree{part, nullptr, {}});
        it = node->children.end() - 1;
      }
      node = &*it;
      if (dot == std::string::npos) break;
      begin = dot + 1;
    }
    node->key = &k;
  }
  std::string out;
  emit(values_, sources_, root, 0, &out);
  return out;
}

void Config::save(const std::string& path) const {
  const std::string text =
      "# psvae config: every key, with its documentation; values as resolved for this run.\n"
      "# Re-run with --config on this file to get the same settings.\n\n" +
      to_yaml();
  // Atomic (temp file, fsync, rename): a crash leaves the old file or the new one. The inner
  // message names the path and the system error: "cannot write config 'x.yaml': x.yaml: cannot
  // create x.yaml.tmp.123.0: No such file or directory".
  try {
    write_file_atomic(path, text);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(fmt::format("cannot write config '{}': {}", path, e.what()));
  }
}

}  // namespace psvae::train
