// Datasets: indexable collections of (image, class label, caption). Three sources:
//   synthetic   - built in, deterministic from a seed, no files (train/data/synthetic.cpp)
//   imagefolder - PNG/JPEG files, class = subfolder, captions from sidecar .txt or captions.jsonl
//   cifar10     - the CIFAR-10 binary format (data_batch_*.bin, test_batch.bin)
// get() is thread-safe and returns images as (3,H,W) f32 in [-1, 1].
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"
#include "train/image_io.h"

namespace psvae::train {

class Config;

struct Sample {
  Tensor image;         // (3, H, W) f32 in [-1, 1]
  int64_t label = 0;    // class index in [0, num_classes)
  std::string caption;  // may be empty when the source has none
  std::string source;   // file path or "synthetic:123", for messages
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  // Throws DataError (message starting with the file path) when the entry cannot be decoded.
  virtual Sample get(int64_t index) const = 0;
  virtual int64_t num_classes() const = 0;
  virtual std::string class_name(int64_t label) const = 0;
  virtual int image_size() const = 0;        // every image is image_size x image_size
  virtual std::string describe() const = 0;  // one line: "synthetic: 4096 images 32x32, 24 classes"
  // Entries found unusable while indexing (unreadable headers), reported once with their paths.
  virtual int64_t num_skipped() const { return 0; }
};

// ---- the built-in synthetic dataset -------------------------------------------------------------
// Shapes x colours over varied backgrounds; label = shape * num_colours + colour; caption "a red
// circle on the left". Image i depends only on (seed, i).
struct SyntheticOptions {
  int64_t num_images = 4096;
  int image_size = 32;
  uint64_t seed = 0;
  // The object's extent (its bounding box side) as a fraction of the image side, drawn uniformly
  // in [min_extent, max_extent].
  double min_extent = 0.40, max_extent = 0.70;
  // The share of captions that name the position ("a red circle on the left"); the others stop
  // at the shape ("a red circle").
  double position_caption_rate = 0.5;
};
constexpr int kSyntheticNumShapes = 4;   // circle, square, triangle, cross
constexpr int kSyntheticNumColours = 6;  // red, green, blue, yellow, magenta, cyan
const char* synthetic_shape_name(int shape);
const char* synthetic_colour_name(int colour);
// The ground truth behind a synthetic image (for analysers and tests).
struct SyntheticInfo {
  int shape = 0, colour = 0;
  double cx = 0, cy = 0, size = 0;  // centre and half-extent, in pixels
  std::string position;             // "on the left", "at the top", "in the centre", ...
  bool position_in_caption = true;  // does the caption name the position?
};
std::unique_ptr<Dataset> make_synthetic(const SyntheticOptions& opt);
// The seed of held-out synthetic images for a training seed: far from any seed a user would
// train with, so evaluation never sees a training image (image i depends only on (seed, i)).
inline uint64_t held_out_seed(uint64_t train_seed) { return train_seed + 1000003; }
SyntheticInfo synthetic_info(const SyntheticOptions& opt, int64_t index);

// ---- files on disk
// --------------------------------------------------------------------------------
// root/<class>/<image>.(png|jpg|jpeg); captions from root/<class>/<image>.txt or a
// root/captions.jsonl of {"file": "<class>/<image>.png", "caption": "..."} lines. Images are
// resized (short side, bicubic) and centre-cropped to image_size.
std::unique_ptr<Dataset> make_image_folder(const std::string& root, int image_size);
// dir holds data_batch_1..5.bin (train) or test_batch.bin (test); batches.meta.txt names classes.
std::unique_ptr<Dataset> make_cifar10(const std::string& dir, bool train, int image_size = 32);

class ConfigSchema;
// The data.* keys: data.dataset (synthetic | imagefolder | cifar10), data.path, data.image_size,
// data.num_images and data.seed (synthetic), data.split (cifar10: train | test), data.hflip,
// data.workers, data.prefetch.
void add_data_keys(ConfigSchema& schema);
// From the data.* keys of a config.
std::unique_ptr<Dataset> make_dataset(const Config& cfg);

}  // namespace psvae::train
