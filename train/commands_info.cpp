// `psvae info FILE.safetensors`: what a weights or checkpoint file holds, without loading it.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>

#include "tensor/safetensors.h"
#include "train/cli.h"

namespace psvae::train {

namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  return u == 0 ? fmt::format("{:.0f} B", b) : fmt::format("{:.2f} {}", b, units[u]);
}

// One metadata value on one line: newlines shown as \n (a saved config is many lines), and cut at
// `limit` characters with the full length, so a 20 kB config does not flood the terminal.
std::string one_line(const std::string& v, size_t limit) {
  std::string s;
  for (char c : v)
    s += c == '\n' ? std::string("\\n") : c == '\t' ? std::string("\\t") : std::string(1, c);
  if (s.size() <= limit) return s;
  return fmt::format("{}... ({} chars; --full shows all)", s.substr(0, limit), v.size());
}

}  // namespace

int cmd_info(int argc, char** argv) {
  CLI::App app{
      "List every tensor of a .safetensors file (name, dtype, shape, bytes), the total "
      "parameter count and size, and the metadata.",
      "psvae info"};
  std::string file;
  bool full = false;
  app.add_option("file,--file", file, "The .safetensors file: weights, a checkpoint, inputs")
      ->required()
      ->type_name("FILE");
  app.add_flag("--full", full, "Print metadata values whole (by default cut at 100 characters)");

  return run_cli(app, argc, argv, [&] {
    // open() validates header, offsets and sizes; its message starts with the path.
    auto f = safetensors::File::open(file);
    const auto& names = f->names();
    size_t wname = 4, wdtype = 5, wshape = 5;
    for (const std::string& n : names) {
      const auto& info = f->info(n);
      wname = std::max(wname, n.size());
      wdtype = std::max(wdtype, std::string(safetensors::file_dtype_name(info.dtype)).size());
      wshape = std::max(wshape, info.shape.str().size());
    }
    int64_t params = 0;
    size_t bytes = 0;
    fmt::print("{}\n\n", f->path());
    fmt::print("  {:<{}}  {:<{}}  {:<{}}  {:>12}\n", "name", wname, "dtype", wdtype, "shape",
               wshape, "bytes");
    for (const std::string& n : names) {
      const auto& info = f->info(n);
      const size_t b = info.end - info.begin;
      params += info.shape.numel();
      bytes += b;
      fmt::print("  {:<{}}  {:<{}}  {:<{}}  {:>12}\n", n, wname,
                 safetensors::file_dtype_name(info.dtype), wdtype, info.shape.str(), wshape, b);
    }
    fmt::print("\ntotal: {} tensors, {} parameters, {} bytes ({})\n", names.size(), params, bytes,
               human_bytes(static_cast<double>(bytes)));

    const auto& meta = f->metadata();
    if (meta.empty()) {
      fmt::print("metadata: none\n");
      return 0;
    }
    fmt::print("\nmetadata ({} keys):\n", meta.size());
    for (const auto& [k, v] : meta) {
      if (full)
        fmt::print("  {} = {}\n", k, v);
      else
        fmt::print("  {} = {}\n", k, one_line(v, 100));
    }
    return 0;
  });
}

}  // namespace psvae::train
