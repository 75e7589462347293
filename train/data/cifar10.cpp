// CIFAR-10, binary version (https://www.cs.toronto.edu/~kriz/cifar.html): each record is one label
// byte and 3072 pixel bytes - the 1024 red values of the 32x32 image in row-major order, then
// the 1024 green, then the 1024 blue. Train = data_batch_1..5.bin, test = test_batch.bin.
// The records are read into memory once (150 MB for the training set, as torchvision does).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "train/data/dataset.h"

namespace psvae::train {

namespace fs = std::filesystem;

namespace {

constexpr int kSide = 32;
constexpr size_t kPixels = kSide * kSide * 3;
constexpr size_t kRecord = 1 + kPixels;

const char* const kStandardClasses[] = {"airplane", "automobile", "bird",  "cat",  "deer",
                                        "dog",      "frog",       "horse", "ship", "truck"};

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n\f\v";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

class Cifar10Dataset : public Dataset {
 public:
  Cifar10Dataset(const std::string& dir, bool train, int image_size)
      : dir_(dir), train_(train), size_(image_size) {
    if (image_size < 1)
      throw std::invalid_argument("cifar10: image_size must be positive, got " +
                                  std::to_string(image_size));
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
      throw DataError("cifar10: directory '" + dir + "' does not exist");

    // batches.meta.txt: one class name per line (blank lines, e.g. the trailing one, ignored).
    const fs::path meta = fs::path(dir) / "batches.meta.txt";
    if (fs::is_regular_file(meta, ec)) {
      std::ifstream f(meta);
      std::string line;
      while (std::getline(f, line))
        if (!trim(line).empty()) classes_.push_back(trim(line));
      if (classes_.empty()) throw DataError(meta.string() + ": no class names");
    } else {
      classes_.assign(std::begin(kStandardClasses), std::end(kStandardClasses));
    }

    std::vector<fs::path> files;
    if (train) {
      for (int k = 1; k <= 5; ++k) {
        fs::path p = fs::path(dir) / ("data_batch_" + std::to_string(k) + ".bin");
        if (fs::is_regular_file(p, ec)) files.push_back(p);
      }
      if (files.empty())
        throw DataError("cifar10: no training batches (data_batch_1..5.bin) in '" + dir + "'");
    } else {
      fs::path p = fs::path(dir) / "test_batch.bin";
      if (!fs::is_regular_file(p, ec)) throw DataError("cifar10: '" + p.string() + "' not found");
      files.push_back(p);
    }
    for (const fs::path& p : files) read_batch(p);
    if (labels_.empty()) throw DataError("cifar10: no records in '" + dir + "'");
  }

  int64_t size() const override { return static_cast<int64_t>(labels_.size()); }
  Sample get(int64_t index) const override {
    if (index < 0 || index >= size())
      throw std::out_of_range("cifar10: index " + std::to_string(index) + " out of range [0, " +
                              std::to_string(size()) + ")");
    // Planar RGB to the interleaved layout of Image.
    const uint8_t* src = &pixels_[static_cast<size_t>(index) * kPixels];
    Image img;
    img.width = img.height = kSide;
    img.rgb.resize(kPixels);
    for (size_t i = 0; i < kSide * kSide; ++i)
      for (size_t c = 0; c < 3; ++c) img.rgb[i * 3 + c] = src[c * kSide * kSide + i];
    if (size_ != kSide) img = resize_bicubic(img, size_, size_);
    Sample s;
    s.image = image_to_tensor(img);
    s.label = labels_[static_cast<size_t>(index)];
    s.caption = "a photo of a " + classes_[static_cast<size_t>(s.label)];
    s.source = sources_[static_cast<size_t>(index)];
    return s;
  }
  int64_t num_classes() const override { return static_cast<int64_t>(classes_.size()); }
  std::string class_name(int64_t label) const override {
    if (label < 0 || label >= num_classes())
      throw std::out_of_range("cifar10: label " + std::to_string(label) + " out of range");
    return classes_[static_cast<size_t>(label)];
  }
  int image_size() const override { return size_; }
  std::string describe() const override {
    return "cifar10 " + dir_ + " (" + (train_ ? "train" : "test") + "): " + std::to_string(size()) +
           " images " + std::to_string(size_) + "x" + std::to_string(size_) + ", " +
           std::to_string(num_classes()) + " classes";
  }

 private:
  void read_batch(const fs::path& p) {
    std::error_code ec;
    const uintmax_t bytes = fs::file_size(p, ec);
    if (ec) throw DataError(p.string() + ": cannot read: " + ec.message());
    if (bytes % kRecord != 0)
      throw DataError(p.string() + ": size " + std::to_string(bytes) +
                      " bytes is not a multiple of 3073 (1 label byte + 3072 pixel bytes per "
                      "record); not a CIFAR-10 binary batch");
    std::ifstream f(p, std::ios::binary);
    if (!f) throw DataError(p.string() + ": cannot open");
    const size_t n = static_cast<size_t>(bytes / kRecord);
    std::vector<uint8_t> rec(kRecord);
    for (size_t r = 0; r < n; ++r) {
      if (!f.read(reinterpret_cast<char*>(rec.data()), kRecord))
        throw DataError(p.string() + ": cannot read record " + std::to_string(r));
      if (rec[0] >= classes_.size())
        throw DataError(p.string() + ": record " + std::to_string(r) + " has label " +
                        std::to_string(rec[0]) + ", but there are " +
                        std::to_string(classes_.size()) + " classes");
      labels_.push_back(rec[0]);
      pixels_.insert(pixels_.end(), rec.begin() + 1, rec.end());
      sources_.push_back(p.string() + "#" + std::to_string(r));
    }
  }

  std::string dir_;
  bool train_;
  int size_;
  std::vector<std::string> classes_;
  std::vector<int64_t> labels_;
  std::vector<uint8_t> pixels_;  // planar 32x32x3 per record
  std::vector<std::string> sources_;
};

}  // namespace

std::unique_ptr<Dataset> make_cifar10(const std::string& dir, bool train, int image_size) {
  return std::make_unique<Cifar10Dataset>(dir, train, image_size);
}

}  // namespace psvae::train
