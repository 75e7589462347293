// The progress line: step/total, loss, steps/s, images/s, ETA and memory, refreshed in place
// (carriage return) on a terminal and printed as plain lines every `every` steps otherwise
// (logs, CI). Rates are smoothed over the recent window so a slow first step does not skew ETA.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace psvae::train {

// Resident memory of this process in bytes (from /proc/self/statm), 0 when unknown.
size_t resident_bytes();
std::string format_bytes(size_t bytes);       // "1.4 GiB"
std::string format_duration(double seconds);  // "1h02m", "3m05s", "12s"
std::string format_count(int64_t n);          // parameter counts: "1.29M", "350.0k", "812"

class Progress {
 public:
  // total: steps of the whole run; start: step the run (re)starts from; label: e.g. "svae".
  Progress(int64_t total, int64_t start, std::string label, int every = 10, FILE* out = stdout);
  // After each optimiser step: its 1-based count, its loss, images it consumed, and any extra
  // text (e.g. "kl 0.03"). memory: bytes to show (device or resident), 0 to omit.
  void update(int64_t step, double loss, int64_t images, const std::string& extra = "",
              size_t memory = 0);
  void message(const std::string& line);  // prints a line without breaking the in-place display
  void finish();
  double steps_per_second() const { return steps_per_s_; }
  double images_per_second() const { return images_per_s_; }
  double eta_seconds() const;

 private:
  int64_t total_, start_, last_step_;
  std::string label_;
  int every_;
  FILE* out_;
  bool tty_;
  bool line_open_ = false;
  std::chrono::steady_clock::time_point t_last_;
  double steps_per_s_ = 0, images_per_s_ = 0;
};

}  // namespace psvae::train
