// `psvae dataset`: build the dataset a config describes, print what it holds, and write a grid of
// its first images, to check a data setup before spending hours training on it.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstring>

#include "train/cli.h"
#include "train/data/dataset.h"
#include "train/image_io.h"

namespace psvae::train {

ConfigSchema dataset_schema() {
  ConfigSchema s;
  add_data_keys(s);
  return s;
}

int cmd_dataset(int argc, char** argv) {
  CLI::App app{
      "Build the dataset of the config's data.* keys, print its description, class "
      "count and first captions, and write a grid of its first images.",
      "psvae dataset"};
  CommonFlags flags;
  std::string out;
  int num = 64, nrow = 8, captions = 5;
  add_common_flags(app, flags);
  app.add_option("--out", out, "PNG file for a grid of the first --num images (none if omitted)")
      ->type_name("FILE.png");
  app.add_option("--num", num, "Images in the grid")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--nrow", nrow, "Images per grid row")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--captions", captions, "Captions to print")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();

  return run_cli(app, argc, argv, [&] {
    apply_threads(flags.threads);
    Config cfg = resolve_config(dataset_schema(), flags);
    // The dataset's own seed is data.seed; --seed is the usual way to say it.
    if (flags.seed >= 0 && cfg.has("data.seed"))
      cfg.set("data.seed", std::to_string(flags.seed), "--seed");
    std::unique_ptr<Dataset> ds = make_dataset(cfg);
    fmt::print("{}\n", ds->describe());
    if (ds->num_skipped() > 0)
      fmt::print("skipped while indexing: {} entries\n", ds->num_skipped());
    const int64_t nc = ds->num_classes();
    std::string names;
    for (int64_t c = 0; c < std::min<int64_t>(nc, 8); ++c)
      names += (c ? ", " : "") + ds->class_name(c);
    fmt::print("classes: {} ({}{})\n", nc, names, nc > 8 ? ", ..." : "");

    // Unreadable entries are reported and passed over, as the loader does in training.
    const int64_t want =
        std::min<int64_t>(out.empty() ? captions : std::max(num, captions), ds->size());
    std::vector<Sample> samples;
    int64_t bad = 0;
    for (int64_t i = 0; i < ds->size() && static_cast<int64_t>(samples.size()) < want; ++i) {
      try {
        samples.push_back(ds->get(i));
      } catch (const DataError& e) {
        fmt::print(stderr, "warning: skipped {}\n", e.what());
        ++bad;
      }
    }
    for (size_t i = 0; i < samples.size() && static_cast<int>(i) < captions; ++i) {
      const Sample& s = samples[i];
      fmt::print("  [{}] {} ({}): {}\n", i, ds->class_name(s.label), s.label,
                 s.caption.empty() ? "(no caption)" : "\"" + s.caption + "\"");
    }
    if (out.empty()) return 0;
    const int64_t n = std::min<int64_t>(num, static_cast<int64_t>(samples.size()));
    if (n == 0) throw std::runtime_error("no readable images to put in the grid");
    const int size = ds->image_size();
    const int64_t per = 3 * static_cast<int64_t>(size) * size;
    Tensor batch = Tensor::empty({n, 3, size, size}, DType::F32);
    for (int64_t i = 0; i < n; ++i) {
      Tensor img = samples[static_cast<size_t>(i)].image.to(Device::cpu());
      if (img.dtype() != DType::F32 || img.numel() != per)
        throw std::runtime_error(fmt::format(
            "{}: image is {} {}, expected (3, {}, {}) f32", samples[static_cast<size_t>(i)].source,
            dtype_name(img.dtype()), img.shape().str(), size, size));
      std::memcpy(batch.data<float>() + i * per, img.data<float>(),
                  static_cast<size_t>(per) * sizeof(float));
    }
    Image grid = make_grid(batch, nrow);
    save_png(out, grid);
    fmt::print("wrote {}: {} images, {}x{} pixels{}\n", out, n, grid.width, grid.height,
               bad ? fmt::format(" ({} unreadable skipped)", bad) : "");
    return 0;
  });
}

}  // namespace psvae::train
