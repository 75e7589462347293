// The progress line. On a terminal one line is redrawn in place ("\r" + text + "\033[K", the ANSI
// erase-to-end-of-line, so a shorter line leaves no tail of the previous one); anywhere else (a log
// file, CI) a plain line is printed every `every` steps and on the last step, because carriage
// returns turn a log into one unreadable line.
#include "train/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <limits>

namespace psvae::train {

size_t resident_bytes() {
  // statm: size resident shared text lib data dt, in pages.
  std::ifstream f("/proc/self/statm");
  size_t size = 0, resident = 0;
  if (!(f >> size >> resident)) return 0;
  long page = sysconf(_SC_PAGESIZE);
  return page > 0 ? resident * static_cast<size_t>(page) : 0;
}

std::string format_bytes(size_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  if (u == 0) return fmt::format("{} B", bytes);
  // Three significant figures at most: "1.4 GiB", "12.5 MiB", "512 MiB".
  if (v < 10) return fmt::format("{:.1f} {}", v, units[u]);
  return fmt::format("{:.0f} {}", v, units[u]);
}

std::string format_count(int64_t n) {
  if (n >= 1000000) return fmt::format("{:.2f}M", static_cast<double>(n) / 1e6);
  if (n >= 1000) return fmt::format("{:.1f}k", static_cast<double>(n) / 1e3);
  return std::to_string(n);
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  long long s = std::llround(seconds);
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  return fmt::format("{}h{:02d}m", s / 3600, (s % 3600) / 60);
}

namespace {

// Smoothing: each step moves the rate estimate 10% of the way to the newest measurement
// (alpha = 0.1 per step, a memory of ~10 steps), so one slow step (a checkpoint write, a sample
// grid) moves the ETA by a tenth of its excess rather than doubling it. An update that covers k
// steps at once weighs its measurement as k single steps would: 1 - 0.9^k.
constexpr double kAlphaPerStep = 0.1;

std::string format_rate(double r) {
  if (r >= 100) return fmt::format("{:.0f}", r);
  if (r >= 1) return fmt::format("{:.1f}", r);
  return fmt::format("{:.3g}", r);
}

}  // namespace

Progress::Progress(int64_t total, int64_t start, std::string label, int every, FILE* out)
    : total_(total),
      start_(start),
      last_step_(start),
      label_(std::move(label)),
      every_(every < 1 ? 1 : every),
      out_(out),
      tty_(out != nullptr && isatty(fileno(out)) != 0),
      t_last_(std::chrono::steady_clock::now()) {}

double Progress::eta_seconds() const {
  if (steps_per_s_ <= 0) return std::numeric_limits<double>::quiet_NaN();
  return static_cast<double>(total_ - last_step_) / steps_per_s_;
}

void Progress::update(int64_t step, double loss, int64_t images, const std::string& extra,
                      size_t memory) {
  auto now = std::chrono::steady_clock::now();
  double dt = std::chrono::duration<double>(now - t_last_).count();
  int64_t k = step - last_step_;
  if (k > 0 && dt > 0) {
    // `images` is what one step consumed (the global batch); an update covering k steps
    // consumed k times that.
    double sps = static_cast<double>(k) / dt;
    double ips = static_cast<double>(images) * static_cast<double>(k) / dt;
    // The first interval seeds the estimate; when that interval was the run's (or the resume's)
    // first single step, the second interval replaces it outright, because that step carries
    // one-off costs (allocator warm-up, the first batches' decoding, thread start-up) that would
    // otherwise bias the ETA for tens of steps. An update covering several steps dilutes them.
    if (steps_per_s_ <= 0 || last_step_ - start_ <= 1) {
      steps_per_s_ = sps;
      images_per_s_ = ips;
    } else {
      double a = 1 - std::pow(1 - kAlphaPerStep, static_cast<double>(k));
      steps_per_s_ += a * (sps - steps_per_s_);
      images_per_s_ += a * (ips - images_per_s_);
    }
  }
  last_step_ = step;
  t_last_ = now;
  if (out_ == nullptr) return;

  std::string line = fmt::format("{}  step {}/{}  loss {:.4g}", label_, step, total_, loss);
  if (steps_per_s_ > 0) {
    line += fmt::format("  {} step/s  {} img/s  ETA {}", format_rate(steps_per_s_),
                        format_rate(images_per_s_), format_duration(eta_seconds()));
  }
  if (memory > 0) line += "  mem " + format_bytes(memory);
  if (!extra.empty()) line += "  " + extra;

  if (tty_) {
    std::fprintf(out_, "\r%s\033[K", line.c_str());
    line_open_ = true;
  } else if (step % every_ == 0 || step >= total_) {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

void Progress::message(const std::string& line) {
  if (out_ == nullptr) return;
  // Erase the in-place line, print the message on its own line; the next update() redraws the
  // progress line below it.
  if (tty_ && line_open_) std::fputs("\r\033[K", out_);
  line_open_ = false;
  std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

void Progress::finish() {
  if (out_ == nullptr) return;
  if (tty_ && line_open_) std::fputc('\n', out_);
  line_open_ = false;
  std::fflush(out_);
}

}  // namespace psvae::train
