// ImageFolder: root/<class>/<image>.(png|jpg|jpeg), as torchvision's ImageFolder. Indexing probes
// every header once (cheap), so a file stb cannot even identify is reported and left out up
// front; a file whose pixels fail to decode later is the loader's to skip.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "train/data/dataset.h"

namespace psvae::train {

namespace fs = std::filesystem;

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n\f\v";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

bool is_image_name(const fs::path& p) {
  std::string ext = lower(p.extension().string());
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw DataError(p.string() + ": cannot read");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// root/captions.jsonl: {"file": "<class>/<name>", "caption": "..."} per line; blank lines allowed.
std::map<std::string, std::string> read_captions_jsonl(const fs::path& path) {
  std::map<std::string, std::string> out;
  std::ifstream f(path);
  if (!f) throw DataError(path.string() + ": cannot read");
  std::string line;
  for (int lineno = 1; std::getline(f, line); ++lineno) {
    if (trim(line).empty()) continue;
    const std::string where = path.string() + ":" + std::to_string(lineno) + ": ";
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw DataError(where + "not valid JSON (" + e.what() + ")");
    }
    if (!j.is_object() || !j.contains("file") || !j["file"].is_string() || !j.contains("caption") ||
        !j["caption"].is_string())
      throw DataError(
          where + "expected {\"file\": \"<class>/<image>\", \"caption\": \"...\"} with strings");
    out[j["file"].get<std::string>()] = trim(j["caption"].get<std::string>());
  }
  return out;
}

struct Entry {
  std::string path;
  int64_t label = 0;
  std::string caption;
};

class ImageFolderDataset : public Dataset {
 public:
  ImageFolderDataset(const std::string& root, int image_size) : root_(root), size_(image_size) {
    if (image_size < 1)
      throw std::invalid_argument("imagefolder: image_size must be positive, got " +
                                  std::to_string(image_size));
    std::error_code ec;
    if (!fs::exists(root, ec))
      throw DataError("imagefolder: directory '" + root + "' does not exist");
    if (!fs::is_directory(root, ec))
      throw DataError("imagefolder: '" + root + "' is not a directory");

    // Classes: the subfolders, sorted by name (hidden ones such as .cache are not classes).
    for (const fs::directory_entry& d : fs::directory_iterator(root)) {
      const std::string name = d.path().filename().string();
      if (d.is_directory() && !name.empty() && name[0] != '.') classes_.push_back(name);
    }
    std::sort(classes_.begin(), classes_.end());
    if (classes_.empty())
      throw DataError("imagefolder: no class folders in '" + root +
                      "' (expected <root>/<class>/<image>.png)");

    std::map<std::string, std::string> jsonl;
    const fs::path jsonl_path = fs::path(root) / "captions.jsonl";
    if (fs::exists(jsonl_path, ec)) jsonl = read_captions_jsonl(jsonl_path);

    for (size_t label = 0; label < classes_.size(); ++label) {
      std::vector<fs::path> files;
      for (const fs::directory_entry& f : fs::directory_iterator(fs::path(root) / classes_[label]))
        if (f.is_regular_file() && is_image_name(f.path())) files.push_back(f.path());
      std::sort(files.begin(), files.end());
      for (const fs::path& p : files) {
        int w = 0, h = 0;
        if (!probe_image(p.string(), &w, &h)) {
          std::cerr << "warning: skipping " << p.string() << ": unreadable image header\n";
          ++skipped_;
          continue;
        }
        Entry e;
        e.path = p.string();
        e.label = static_cast<int64_t>(label);
        // A sidecar caption (<image stem>.txt beside the image) is the more specific source and
        // wins over captions.jsonl.
        fs::path sidecar = p;
        sidecar.replace_extension(".txt");
        if (fs::is_regular_file(sidecar, ec)) {
          e.caption = trim(read_text(sidecar));
        } else {
          auto it = jsonl.find(classes_[label] + "/" + p.filename().string());
          if (it != jsonl.end()) e.caption = it->second;
        }
        entries_.push_back(std::move(e));
      }
    }
    if (entries_.empty())
      throw DataError("imagefolder: no usable images in '" + root + "' (" +
                      std::to_string(skipped_) + " unreadable; expected .png/.jpg/.jpeg files in " +
                      std::to_string(classes_.size()) + " class folders)");
  }

  int64_t size() const override { return static_cast<int64_t>(entries_.size()); }
  Sample get(int64_t index) const override {
    if (index < 0 || index >= size())
      throw std::out_of_range("imagefolder: index " + std::to_string(index) + " out of range [0, " +
                              std::to_string(size()) + ")");
    const Entry& e = entries_[static_cast<size_t>(index)];
    Sample s;
    s.image = image_to_tensor(resize_center_crop(load_image(e.path), size_));
    s.label = e.label;
    s.caption = e.caption;
    s.source = e.path;
    return s;
  }
  int64_t num_classes() const override { return static_cast<int64_t>(classes_.size()); }
  std::string class_name(int64_t label) const override {
    if (label < 0 || label >= num_classes())
      throw std::out_of_range("imagefolder: label " + std::to_string(label) + " out of range");
    return classes_[static_cast<size_t>(label)];
  }
  int image_size() const override { return size_; }
  std::string describe() const override {
    std::string d = "imagefolder " + root_ + ": " + std::to_string(size()) + " images " +
                    std::to_string(size_) + "x" + std::to_string(size_) + ", " +
                    std::to_string(num_classes()) + " classes";
    if (skipped_ > 0) d += ", " + std::to_string(skipped_) + " unreadable skipped";
    return d;
  }
  int64_t num_skipped() const override { return skipped_; }

 private:
  std::string root_;
  int size_;
  std::vector<std::string> classes_;
  std::vector<Entry> entries_;
  int64_t skipped_ = 0;
};

}  // namespace

std::unique_ptr<Dataset> make_image_folder(const std::string& root, int image_size) {
  return std::make_unique<ImageFolderDataset>(root, image_size);
}

}  // namespace psvae::train
