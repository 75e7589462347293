#include "train/checkpoint.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <utility>

namespace psvae::train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "step_";
constexpr const char* kSuffix = ".safetensors";

// The step of "step_00001000.safetensors", or -1 when the name is not a step checkpoint (temp
// files of an interrupted atomic write, best.safetensors, anything else a user put there).
int64_t step_of(const std::string& name) {
  const std::string prefix = kPrefix, suffix = kSuffix;
  if (name.size() <= prefix.size() + suffix.size()) return -1;
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  if (name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return -1;
  const char* b = name.data() + prefix.size();
  const char* e = name.data() + name.size() - suffix.size();
  int64_t step = -1;
  auto [ptr, ec] = std::from_chars(b, e, step);
  if (ec != std::errc() || ptr != e || step < 0) return -1;
  return step;
}

const std::string& field(const safetensors::Metadata& m, const std::string& key,
                         const std::string& path) {
  auto it = m.find(key);
  if (it == m.end())
    throw std::runtime_error(fmt::format("{}: checkpoint metadata lacks '{}'", path, key));
  return it->second;
}

// The metadata every resumable checkpoint carries; validated before a checkpoint is chosen, so a
// file that opens but was written by something else is skipped like a corrupt one.
void validate(const safetensors::File& f, int64_t file_step) {
  const auto& m = f.metadata();
  const std::string& path = f.path();
  const std::string& format = field(m, "psvae.format", path);
  if (format != "1")
    throw std::runtime_error(fmt::format(
        "{}: unknown checkpoint format '{}' (this build reads format 1)", path, format));
  int64_t step = meta_int(m, "psvae.step", path);
  if (step != file_step)
    throw std::runtime_error(fmt::format("{}: metadata says step {} but the file name says step {}",
                                         path, step, file_step));
  meta_u64(m, "psvae.rng_seed", path);
  meta_u64(m, "psvae.rng_offset", path);
  meta_u64(m, "psvae.loader_epoch", path);
  meta_int(m, "psvae.loader_batch", path);
  meta_int(m, "psvae.nonfinite_run", path);
  meta_double(m, "psvae.best_loss", path);
}

// File::open's messages start with the path; the warning names the path itself already.
std::string reason_without_path(const std::string& what, const std::string& path) {
  if (what.compare(0, path.size() + 2, path + ": ") == 0) return what.substr(path.size() + 2);
  return what;
}

}  // namespace

std::vector<std::string> list_checkpoints(const std::string& ckpt_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(ckpt_dir, ec)) return {};
  for (const auto& entry : fs::directory_iterator(ckpt_dir, ec)) {
    if (!entry.is_regular_file(ec)) continue;
    int64_t step = step_of(entry.path().filename().string());
    if (step >= 0) found.emplace_back(step, checkpoint_path(ckpt_dir, step));
  }
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::string> paths;
  for (auto& [step, path] : found) paths.push_back(std::move(path));
  return paths;
}

std::string checkpoint_path(const std::string& ckpt_dir, int64_t step) {
  return fmt::format("{}/{}{:08d}{}", ckpt_dir, kPrefix, step, kSuffix);
}

std::string open_newest_valid(const std::string& ckpt_dir, safetensors::NamedTensors* tensors,
                              safetensors::Metadata* metadata) {
  std::vector<std::string> paths = list_checkpoints(ckpt_dir);
  if (paths.empty())
    throw std::runtime_error(
        fmt::format("no valid checkpoint in {} (no step_*.safetensors files)", ckpt_dir));
  std::string failures;
  for (size_t i = 0; i < paths.size(); ++i) {
    const std::string& path = paths[i];
    try {
      auto file = safetensors::File::open(path);
      validate(*file, step_of(fs::path(path).filename().string()));
      // The tensors are zero-copy views that keep the mapping alive after `file` goes.
      if (tensors) *tensors = file->all();
      if (metadata) *metadata = file->metadata();
      return path;
    } catch (const std::exception& e) {
      std::string reason = reason_without_path(e.what(), path);
      failures += fmt::format("; {}: {}", path, reason);
      if (i + 1 < paths.size())
        std::fprintf(stderr, "warning: checkpoint %s is unreadable (%s); trying the previous one\n",
                     path.c_str(), reason.c_str());
    }
  }
  throw std::runtime_error(
      fmt::format("no valid checkpoint in {} ({})", ckpt_dir, failures.substr(2)));
}

void prune_checkpoints(const std::string& ckpt_dir, int keep) {
  std::vector<std::string> paths = list_checkpoints(ckpt_dir);
  for (size_t i = static_cast<size_t>(std::max(keep, 0)); i < paths.size(); ++i) {
    std::error_code ec;
    fs::remove(paths[i], ec);
    // Not fatal: the run goes on, the disk just holds one file more than asked.
    if (ec)
      std::fprintf(stderr, "warning: could not delete old checkpoint %s (%s)\n", paths[i].c_str(),
                   ec.message().c_str());
  }
}

int64_t meta_int(const safetensors::Metadata& m, const std::string& key, const std::string& path) {
  const std::string& s = field(m, key, path);
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || s.empty())
    throw std::runtime_error(
        fmt::format("{}: checkpoint metadata '{}' = '{}' is not an integer", path, key, s));
  return v;
}

uint64_t meta_u64(const safetensors::Metadata& m, const std::string& key, const std::string& path) {
  const std::string& s = field(m, key, path);
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || s.empty())
    throw std::runtime_error(fmt::format(
        "{}: checkpoint metadata '{}' = '{}' is not an unsigned integer", path, key, s));
  return v;
}

double meta_double(const safetensors::Metadata& m, const std::string& key,
                   const std::string& path) {
  const std::string& s = field(m, key, path);
  // from_chars reads "inf" and "nan" too (best_loss is +inf before the first checkpoint).
  double v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || s.empty())
    throw std::runtime_error(
        fmt::format("{}: checkpoint metadata '{}' = '{}' is not a number", path, key, s));
  return v;
}

}  // namespace psvae::train
