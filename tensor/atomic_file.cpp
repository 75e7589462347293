// AtomicFile: temp file beside the target, fsync, rename, fsync the directory.
// Plain POSIX descriptors rather than FILE*: write() hands the bytes straight to the kernel, so
// there is no user-space buffer to flush and every error comes back with its errno.
#include "tensor/atomic_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <utility>

namespace psvae {

namespace {

// Process-wide, so two threads replacing the same target never open the same temp file.
std::atomic<unsigned long> g_temp_counter{0};

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  tmp_ = fmt::format("{}.tmp.{}.{}", path_, static_cast<long>(::getpid()),
                     g_temp_counter.fetch_add(1, std::memory_order_relaxed));
  // O_TRUNC rather than O_EXCL: a leftover with this exact name can only come from a dead process
  // whose pid was reused, and overwriting it is harmless. 0666 before umask, as fopen("wb").
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd_ < 0) fail("cannot create", errno);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());  // errors ignored: nothing useful to do in a destructor
}

void AtomicFile::fail(const char* what, int err) const {
  throw std::runtime_error(fmt::format("{}: {} {}: {}", path_, what, tmp_, std::strerror(err)));
}

void AtomicFile::write(const void* data, size_t n) {
  if (fd_ < 0) throw std::logic_error(fmt::format("{}: AtomicFile::write after commit", path_));
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    // Linux moves at most ~2 GiB per write() call; a checkpoint tensor can be larger, so loop.
    ssize_t k = ::write(fd_, p, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      fail("cannot write", errno);
    }
    if (k == 0) fail("cannot write", EIO);  // no progress and no errno: do not spin
    p += k;
    n -= static_cast<size_t>(k);
  }
}

void AtomicFile::commit() {
  if (fd_ < 0) throw std::logic_error(fmt::format("{}: AtomicFile::commit called twice", path_));
  if (::fsync(fd_) != 0) fail("cannot fsync", errno);
  int closed = ::close(fd_);
  fd_ = -1;  // closed even when close() reports an error; never close it twice
  if (closed != 0) fail("cannot close", errno);
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) fail("cannot rename into place", errno);
  committed_ = true;
  // Make the rename durable. Best effort, as before this class existed: the file is already
  // complete under its name, and some file systems refuse to open or fsync a directory (EINVAL);
  // failing the save then would report an error for a file that is in place.
  std::string dir = std::filesystem::path(path_).parent_path().string();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

}  // namespace psvae
