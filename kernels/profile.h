// The op profiler: where the time of a step goes, op by op, on the CPU or a GPU.
//
// While it is on (env PSVAE_PROFILE=1 at start-up, or profile_enable(true)), every kernels::run
// call is timed and its bytes counted, per op name and device:
//   - CPU ops: the wall clock around the call.
//   - CUDA ops: a pair of events on the project's stream around the launch, read back when the
//     rows are asked for (one wait then, none per op), so the profile does not serialise the
//     stream. The times include the events' own cost and any gap between two launches (not yet
//     measured on a GPU): small ops are overstated, not understated.
//   - Bytes: the sizes of the op's input and output tensors, the least it must move. GB/s is
//     that over the time: for a memory-bound op, directly comparable to the copy bandwidth.
// Work that does not go through the op table (the multi-tensor AdamW, EMA and grad-norm kernels)
// is wrapped in a ProfileScope by its caller. Off, the cost per op is one relaxed atomic load.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/device.h"

namespace psvae::kernels {

void profile_enable(bool on);
bool profile_enabled();
void profile_reset();  // drops every row and pending measurement

struct ProfileRow {
  std::string name;    // op name, or a ProfileScope's name
  std::string device;  // "cpu" or "cuda"
  int64_t calls = 0;
  double total_ms = 0;
  double bytes = 0;  // summed over calls
};

// The rows so far, by total time, largest first. Waits for the outstanding CUDA events.
std::vector<ProfileRow> profile_rows();

// A markdown table of profile_rows(): name, device, calls, total ms, % of the total, mean us per
// call, GB moved, GB/s. Empty rows -> a line saying nothing was recorded.
std::string profile_report();

// Times the enclosing block on `device` under `name` with `bytes` moved, when profiling is on
// (a null name: never).
class ProfileScope {
 public:
  ProfileScope(const char* name, Device device, double bytes);
  ~ProfileScope();
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  const char* name_ = nullptr;  // null: profiling was off at entry
  Device device_;
  double bytes_ = 0;
  double cpu_start_ms_ = 0;
  void* event_start_ = nullptr;
};

}  // namespace psvae::kernels
