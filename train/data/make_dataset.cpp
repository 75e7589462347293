// The data.* config keys and the dataset they describe.
#include <stdexcept>

#include "train/config.h"
#include "train/data/dataset.h"

namespace psvae::train {

void add_data_keys(ConfigSchema& schema) {
  schema.add_choice("data.dataset", "synthetic", {"synthetic", "imagefolder", "cifar10"},
                    "image source: synthetic (built in, no files), imagefolder (root/<class>/"
                    "*.png|jpg) or cifar10 (the binary batches)");
  schema.add_string("data.path", "",
                    "dataset folder (imagefolder: the root of the class folders; cifar10: the "
                    "folder of data_batch_*.bin)");
  schema.add_int("data.image_size", 32, "side of the square training images, in pixels", 8, 1024);
  schema.add_int("data.num_images", 4096, "number of images of the synthetic dataset", 1);
  schema.add_int("data.seed", 0, "seed of the synthetic images", 0);
  schema.add_choice("data.split", "train", {"train", "test"},
                    "cifar10 split: train (data_batch_1..5.bin) or test (test_batch.bin)");
  schema.add_bool("data.hflip", false, "random horizontal flips (p = 0.5)");
  schema.add_int("data.workers", 2, "background decoding threads (0: decode in the caller)", 0, 64);
  schema.add_int("data.prefetch", 2, "batches decoded ahead of the one being used", 1, 64);
}

std::unique_ptr<Dataset> make_dataset(const Config& cfg) {
  const std::string kind = cfg.get_string("data.dataset");
  const int image_size = static_cast<int>(cfg.get_int("data.image_size"));
  if (kind == "synthetic") {
    if (image_size < 16)
      throw std::runtime_error("data.image_size: the synthetic dataset needs at least 16, got " +
                               std::to_string(image_size));
    SyntheticOptions opt;
    opt.num_images = cfg.get_int("data.num_images");
    opt.image_size = image_size;
    opt.seed = static_cast<uint64_t>(cfg.get_int("data.seed"));
    return make_synthetic(opt);
  }
  const std::string path = cfg.get_string("data.path");
  if (path.empty()) throw std::runtime_error("data.path is required for data.dataset=" + kind);
  if (kind == "imagefolder") return make_image_folder(path, image_size);
  if (kind == "cifar10")
    return make_cifar10(path, cfg.get_string("data.split") == "train", image_size);
  throw std::runtime_error("data.dataset: unknown dataset '" + kind + "'");
}

}  // namespace psvae::train
