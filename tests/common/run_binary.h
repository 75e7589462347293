// Running the built `psvae` executable from a test, the way a user would, with its output
// captured.
#pragma once
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace psvae::test {

// bin/psvae beside the test executable (ctest runs the suites from bin/), else under the working
// directory (the build dir); empty when it has not been built, so callers can skip.
inline std::filesystem::path psvae_binary() {
  namespace fs = std::filesystem;
  fs::path bin = fs::read_symlink("/proc/self/exe").parent_path() / "psvae";
  if (!fs::exists(bin)) bin = fs::current_path() / "bin" / "psvae";
  return fs::exists(bin) ? bin : fs::path();
}

struct BinaryRun {
  int rc = -1;      // exit status; -1 when the process did not exit normally (a signal)
  std::string out;  // stdout and stderr together, in the order written
};

// Runs `psvae <args>` through the shell with stdout and stderr both redirected into `log`
// (overwritten; it stays behind for the caller), then reads the log back. `env`: assignments
// put before the command ("PSVAE_PROFILE=1"), for that run only.
inline BinaryRun run_psvae_binary(const std::string& args, const std::string& log,
                                  const std::string& env = "") {
  const std::string cmd =
      (env.empty() ? "" : env + " ") + psvae_binary().string() + " " + args + " > " + log + " 2>&1";
  const int st = std::system(cmd.c_str());
  BinaryRun r;
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream f(log);
  std::stringstream ss;
  ss << f.rdbuf();
  r.out = ss.str();
  return r;
}

}  // namespace psvae::test
