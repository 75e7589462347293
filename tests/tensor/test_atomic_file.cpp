// AtomicFile: the target changes only at commit(), an abandoned write leaves nothing behind, errors
// name the path, and concurrent writers in one process never share a temp file.
#include "tensor/atomic_file.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/test_util.h"

using namespace psvae;
namespace fs = std::filesystem;

using psvae::test::TempDir;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE("AtomicFile: the target keeps its old content until commit") {
  TempDir tmp("atomic_file");
  std::string path = tmp / "a.txt";
  write_file_atomic(path, "old");
  AtomicFile f(path);
  CHECK(f.path() == path);
  CHECK(f.temp_path().rfind(path + ".tmp." + std::to_string(::getpid()) + ".", 0) == 0);
  f.write("new ", 4);
  f.write("content", 7);
  CHECK(slurp(path) == "old");  // written bytes sit in the temp file
  CHECK(tmp.listing().size() == 2);
  f.commit();
  CHECK(slurp(path) == "new content");
  CHECK(tmp.listing() == std::vector<std::string>{"a.txt"});  // no temp file after commit
  CHECK_THROWS_AS(f.write("x", 1), std::logic_error);
  CHECK_THROWS_AS(f.commit(), std::logic_error);
}

TEST_CASE("AtomicFile: destroyed without commit, the target is untouched and no temp file stays") {
  TempDir tmp("atomic_file");
  std::string path = tmp / "keep.bin";
  write_file_atomic(path, "original");
  {
    AtomicFile f(path);
    f.write("half a fi", 9);
  }
  CHECK(slurp(path) == "original");
  CHECK(tmp.listing() == std::vector<std::string>{"keep.bin"});

  // Same when the writer is unwound by an exception, and when no target existed before.
  std::string fresh = tmp / "fresh.bin";
  try {
    AtomicFile f(fresh);
    f.write("abc", 3);
    throw std::runtime_error("encoder failed");
  } catch (const std::runtime_error&) {
  }
  CHECK_FALSE(fs::exists(fresh));
  CHECK(tmp.listing() == std::vector<std::string>{"keep.bin"});
}

TEST_CASE("AtomicFile: a missing directory throws naming the path") {
  TempDir tmp("atomic_file");
  std::string missing = tmp / "no/such/dir/x.bin";
  CHECK_THROWS_WITH_AS(AtomicFile{missing},
                       doctest::Contains((missing + ": cannot create").c_str()),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(write_file_atomic(missing, "x"),
                       doctest::Contains("No such file or directory"), std::runtime_error);
  CHECK(tmp.listing().empty());

  // The target is a directory: the rename fails at commit, naming the path, and the temp goes.
  fs::create_directories(tmp.path() / "adir");
  std::string dir_target = tmp / "adir";
  CHECK_THROWS_WITH_AS(write_file_atomic(dir_target, "x"),
                       doctest::Contains((dir_target + ": cannot rename into place").c_str()),
                       std::runtime_error);
  CHECK(tmp.listing() == std::vector<std::string>{"adir"});
}

TEST_CASE("write_file_atomic: round trip, empty and binary content, overwrite") {
  TempDir tmp("atomic_file");
  std::string path = tmp / "r.bin";
  std::string bytes;
  for (int i = 0; i < 70000; ++i) bytes.push_back(static_cast<char>(i * 7 % 256));  // has '\0's
  write_file_atomic(path, bytes);
  CHECK(slurp(path) == bytes);
  write_file_atomic(path, "");
  CHECK(fs::file_size(path) == 0);
  write_file_atomic(path, "short");
  CHECK(slurp(path) == "short");
  CHECK(tmp.listing() == std::vector<std::string>{"r.bin"});
}

TEST_CASE("AtomicFile: threads writing the same target never share a temp file") {
  TempDir tmp("atomic_file");
  std::string path = tmp / "shared.txt";
  // Each thread writes a line of its own letter; whichever commit lands last wins, but the file is
  // always one whole line (two writers sharing a temp file would interleave or truncate).
  constexpr int kThreads = 8, kRounds = 25;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::string line(4000, static_cast<char>('a' + t));
      for (int r = 0; r < kRounds; ++r) {
        try {
          AtomicFile f(path);
          f.write(line.data(), line.size() / 2);
          f.write(line.data() + line.size() / 2, line.size() - line.size() / 2);
          f.commit();
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  std::string got = slurp(path);
  REQUIRE(got.size() == 4000);
  CHECK(std::count(got.begin(), got.end(), got[0]) == 4000);
  CHECK(tmp.listing() == std::vector<std::string>{"shared.txt"});
}
