// Running the `psvae` command line in-process (train::dispatch) from a test, with stdout and
// stderr sent to files and read back, as a user would see them. tests/common/run_binary.h runs
// the built executable instead.
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "train/cli.h"

namespace psvae::test {

// The whole of a text file ("" when it cannot be opened).
inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct CliRun {
  int rc = -1;
  std::string out, err;
};

// `psvae <args>` through train::dispatch, file descriptors 1 and 2 redirected for the call and
// restored after; `tag` names the temporary directory of the two files.
inline CliRun run_cli(std::vector<std::string> args, const char* tag = "cli_capture") {
  args.insert(args.begin(), "psvae");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  TempDir dir(tag);
  std::fflush(nullptr);
  std::cout.flush();
  const int saved_out = ::dup(1), saved_err = ::dup(2);
  const int fo = ::open((dir / "out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  const int fe = ::open((dir / "err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ::dup2(fo, 1);
  ::dup2(fe, 2);
  ::close(fo);
  ::close(fe);
  CliRun r;
  r.rc = train::dispatch(static_cast<int>(args.size()), argv.data());
  std::fflush(nullptr);
  std::cout.flush();
  std::cerr.flush();
  ::dup2(saved_out, 1);
  ::dup2(saved_err, 2);
  ::close(saved_out);
  ::close(saved_err);
  r.out = read_text(dir / "out");
  r.err = read_text(dir / "err");
  return r;
}

}  // namespace psvae::test
