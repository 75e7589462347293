// AtomicFile: write a file so that readers (and a crash) see either the old content or the new,
// never a half-written file. Bytes go to "<path>.tmp.<pid>.<n>" in the same directory (rename is
// only atomic within one file system), and commit() fsyncs the data, renames the temp file over
// the target and fsyncs the directory so the rename itself survives a power cut.
//
// Used by every writer that replaces a file in place: safetensors checkpoints (streamed, GBs),
// config.yaml, PNG samples, report.html, metrics.jsonl rewrites. It lives in the tensor layer,
// the lowest one, so every layer above can use it.
//
//   AtomicFile f(path);             // throws "<path>: cannot create <tmp>: <strerror>"
//   f.write(header.data(), n);      // stream as many pieces as needed
//   f.commit();                     // until here the target is untouched
//
// An AtomicFile destroyed without commit() (an exception on the way) removes its temp file.
#pragma once

#include <cstddef>
#include <string>

namespace psvae {

class AtomicFile {
 public:
  // Creates the temp file. The <pid>.<n> suffix (n from a process-wide atomic counter) keeps two
  // threads, or two processes, writing the same target from sharing one temp file.
  explicit AtomicFile(std::string path);
  ~AtomicFile();  // not committed: closes and removes the temp file; never throws
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Appends n bytes (retrying short writes). Throws naming the path (e.g. disk full).
  void write(const void* data, size_t n);
  // fsync, close, rename over the target, fsync the directory. Throws naming the path.
  void commit();

  const std::string& path() const { return path_; }      // the target
  const std::string& temp_path() const { return tmp_; }  // where the bytes go until commit()

 private:
  [[noreturn]] void fail(const char* what, int err) const;

  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// The whole file in one call: AtomicFile(path), write(bytes), commit().
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace psvae
