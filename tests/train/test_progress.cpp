// The progress line: formatting helpers, plain lines for logs, the in-place line on a terminal
// (a pseudo-terminal made here), smoothed rates and the ETA.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "train/progress.h"

using namespace psvae::train;

namespace {

std::string read_all(FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string s;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  return s;
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i)
    if (s[i] == '\n') out.push_back(s.substr(start, i - start)), start = i + 1;
  if (start < s.size()) out.push_back(s.substr(start));
  return out;
}

}  // namespace

TEST_CASE("progress: format_bytes and format_duration") {
  CHECK(format_bytes(0) == "0 B");
  CHECK(format_bytes(1023) == "1023 B");
  CHECK(format_bytes(1024) == "1.0 KiB");
  CHECK(format_bytes(size_t(512) << 20) == "512 MiB");
  CHECK(format_bytes(size_t(12.5 * (1 << 20))) == "12 MiB");
  CHECK(format_bytes(size_t(1.4 * double(size_t(1) << 30))) == "1.4 GiB");
  CHECK(format_duration(0) == "0s");
  CHECK(format_duration(12.4) == "12s");
  CHECK(format_duration(185) == "3m05s");
  CHECK(format_duration(59.6) == "1m00s");  // rounds to 60 s before choosing the unit
  CHECK(format_duration(3720) == "1h02m");
  CHECK(format_duration(100 * 3600 + 59) == "100h00m");
  CHECK(format_duration(std::nan("")) == "?");
  CHECK(format_duration(INFINITY) == "?");
  CHECK(format_duration(-1) == "?");
}

TEST_CASE("progress: resident_bytes is plausible") {
  size_t before = resident_bytes();
  CHECK(before > (size_t(1) << 20));  // a test binary with its libraries: well over 1 MiB
  CHECK(before < (size_t(1) << 40));
  std::vector<char> big(size_t(64) << 20, 1);  // touch 64 MiB
  size_t after = resident_bytes();
  CHECK(after >= before + (size_t(48) << 20));
  CHECK(big[12345] == 1);
}

TEST_CASE("progress: plain lines every N steps and on the last one (not a terminal)") {
  FILE* f = std::tmpfile();
  REQUIRE(f);
  Progress p(25, 0, "svae", 10, f);
  for (int64_t s = 1; s <= 25; ++s) {
    if (s == 15) p.message("checkpoint written");
    p.update(s, 0.0213, 8, "kl 0.031", size_t(512) << 20);
  }
  p.finish();
  std::string out = read_all(f);
  std::fclose(f);
  CHECK(out.find('\r') == std::string::npos);
  CHECK(out.find('\033') == std::string::npos);
  std::vector<std::string> lines = lines_of(out);
  REQUIRE(lines.size() == 4);
  CHECK(lines[0].rfind("svae  step 10/25  loss 0.0213  ", 0) == 0);
  CHECK(lines[1] == "checkpoint written");
  CHECK(lines[2].rfind("svae  step 20/25  ", 0) == 0);
  CHECK(lines[3].rfind("svae  step 25/25  ", 0) == 0);
  for (size_t i : {size_t(0), size_t(2), size_t(3)}) {
    CAPTURE(lines[i]);
    CHECK(lines[i].find(" step/s  ") != std::string::npos);
    CHECK(lines[i].find(" img/s  ETA ") != std::string::npos);
    CHECK(lines[i].find("  mem 512 MiB  kl 0.031") != std::string::npos);
  }
}

TEST_CASE("progress: a resumed run counts from its start step") {
  FILE* f = std::tmpfile();
  REQUIRE(f);
  Progress p(100, 50, "dit", 1, f);
  p.update(51, 1.5, 4);
  p.finish();
  std::string out = read_all(f);
  std::fclose(f);
  CHECK(out.rfind("dit  step 51/100  loss 1.5", 0) == 0);
  CHECK(out.find("mem") == std::string::npos);  // memory 0: omitted
}

TEST_CASE("progress: rates, their ratio, and the ETA") {
  Progress p(1000, 0, "svae", 10, nullptr);  // no output: only the arithmetic
  CHECK(std::isnan(p.eta_seconds()));        // no measurement yet
  for (int64_t s = 1; s <= 6; ++s) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    p.update(s, 0.5, 16);
  }
  // Every interval is at least 20 ms, so at most 50 steps/s; well above 1 unless the machine
  // stalls for seconds.
  CHECK(p.steps_per_second() <= 50.0);
  CHECK(p.steps_per_second() > 1.0);
  // Both rates see the same intervals and the same smoothing: their ratio is the batch size.
  CHECK(p.images_per_second() / p.steps_per_second() == doctest::Approx(16.0).epsilon(1e-12));
  CHECK(p.eta_seconds() == doctest::Approx(994.0 / p.steps_per_second()).epsilon(1e-12));

  // An update covering several steps counts them all: 5 steps of 16 images in >= 100 ms.
  Progress q(100, 0, "x", 10, nullptr);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  q.update(5, 0.1, 16);
  CHECK(q.steps_per_second() <= 50.0);
  CHECK(q.images_per_second() / q.steps_per_second() == doctest::Approx(16.0).epsilon(1e-12));
}

TEST_CASE("progress: in place on a terminal") {
  // A pseudo-terminal: what the process writes to the slave side is read back from the master.
  int master = posix_openpt(O_RDWR | O_NOCTTY);
  if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) {
    MESSAGE("no pseudo-terminal available; in-place display not tested");
    if (master >= 0) close(master);
    return;
  }
  int slave = open(ptsname(master), O_RDWR | O_NOCTTY);
  REQUIRE(slave >= 0);
  FILE* tty = fdopen(slave, "w");
  REQUIRE(tty);
  {
    Progress p(3, 0, "svae", 10, tty);
    p.update(1, 0.25, 8);
    p.update(2, 0.125, 8, "kl 0.5");
    p.message("saved step_2");
    p.update(3, 0.0625, 8);
    p.finish();
  }
  std::fclose(tty);
  std::string out;
  char buf[4096];
  pollfd pfd{master, POLLIN, 0};
  while (poll(&pfd, 1, 200) > 0 && (pfd.revents & POLLIN)) {
    ssize_t n = read(master, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  close(master);
  // The terminal's output processing turns "\n" into "\r\n"; everything else arrives as written.
  CHECK(out.find("\rsvae  step 1/3  loss 0.25  ") != std::string::npos);
  CHECK(out.find(" step/s  ") != std::string::npos);
  CHECK(out.find("\rsvae  step 2/3  loss 0.125  ") != std::string::npos);
  CHECK(out.find("kl 0.5\033[K") != std::string::npos);
  // The message first erases the in-place line, then stands on its own line.
  CHECK(out.find("\033[K\r\033[Ksaved step_2\r\n") != std::string::npos);
  CHECK(out.find("\rsvae  step 3/3  loss 0.0625") != std::string::npos);
  // finish() ends the line, and only once.
  CHECK(out.size() >= 2);
  CHECK(out.substr(out.size() - 5) == "\033[K\r\n");
  // Exactly two newlines: the message's and finish()'s.
  size_t newlines = 0;
  for (char c : out) newlines += c == '\n';
  CHECK(newlines == 2);
}
