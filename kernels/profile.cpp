// The op profiler (kernels/profile.h): rows keyed by (name, device), CUDA timings kept as event
// pairs until the rows are read.
#include "kernels/profile.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>

#include "tensor/cuda_runtime.h"

namespace psvae::kernels {
namespace {

bool env_on() {
  const char* v = std::getenv("PSVAE_PROFILE");
  return v && *v && std::strcmp(v, "0") != 0;
}

std::atomic<bool>& enabled_flag() {
  static std::atomic<bool> on{env_on()};
  return on;
}

struct Pending {  // a CUDA measurement whose events are not read yet
  std::string name;
  Device device;
  void* start;
  void* end;
  double bytes;
};

// Pending event pairs are read once this many are outstanding, so a long profiled run holds a
// bounded number of events (each read waits for its end event: one sync per batch).
constexpr size_t kMaxPending = 4096;

struct State {
  std::mutex mutex;
  std::map<std::pair<std::string, std::string>, ProfileRow> rows;
  std::vector<Pending> pending;
};

State& state() {
  static auto* s = new State();  // never destroyed: ops may run from static destructors
  return *s;
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void add_locked(State& s, const std::string& name, const std::string& device, double ms,
                double bytes) {
  ProfileRow& r = s.rows[{name, device}];
  if (r.calls == 0) r.name = name, r.device = device;
  ++r.calls;
  r.total_ms += ms;
  r.bytes += bytes;
}

void release(const Pending& p) {
  cuda::event_release(p.start, p.device.index);
  cuda::event_release(p.end, p.device.index);
}

void drain_locked(State& s) {
  for (const Pending& p : s.pending) {
    add_locked(s, p.name, p.device.str(), cuda::event_elapsed_ms(p.start, p.end), p.bytes);
    release(p);
  }
  s.pending.clear();
}

void record(const std::string& name, const Device& dev, double bytes, double cpu_start_ms,
            void* event_start) {
  State& s = state();
  if (dev.is_cpu()) {
    const double ms = now_ms() - cpu_start_ms;
    std::lock_guard<std::mutex> lock(s.mutex);
    add_locked(s, name, dev.str(), ms, bytes);
    return;
  }
  void* end = cuda::event_record(dev.index);
  std::lock_guard<std::mutex> lock(s.mutex);
  s.pending.push_back({name, dev, event_start, end, bytes});
  if (s.pending.size() >= kMaxPending) drain_locked(s);
}

}  // namespace

void profile_enable(bool on) { enabled_flag().store(on, std::memory_order_relaxed); }
bool profile_enabled() { return enabled_flag().load(std::memory_order_relaxed); }

void profile_reset() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  for (const Pending& p : s.pending) release(p);
  s.pending.clear();
  s.rows.clear();
}

std::vector<ProfileRow> profile_rows() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  drain_locked(s);
  std::vector<ProfileRow> out;
  out.reserve(s.rows.size());
  for (const auto& kv : s.rows) out.push_back(kv.second);
  std::stable_sort(out.begin(), out.end(), [](const ProfileRow& a, const ProfileRow& b) {
    return a.total_ms > b.total_ms;
  });
  return out;
}

std::string profile_report() {
  const std::vector<ProfileRow> rows = profile_rows();
  if (rows.empty()) return "op profile: nothing recorded (profiling off, or no op ran)\n";
  double total = 0;
  for (const ProfileRow& r : rows) total += r.total_ms;
  std::string out =
      "| op | device | calls | total (ms) | % | mean (us) | GB moved | GB/s |\n"
      "|---|---|---|---|---|---|---|---|\n";
  for (const ProfileRow& r : rows) {
    const double gbs = r.total_ms > 0 ? r.bytes / (r.total_ms * 1e-3) / 1e9 : 0.0;
    out += fmt::format("| {} | {} | {} | {:.3f} | {:.1f} | {:.1f} | {:.3f} | {:.1f} |\n", r.name,
                       r.device, r.calls, r.total_ms, total > 0 ? 100.0 * r.total_ms / total : 0.0,
                       1e3 * r.total_ms / static_cast<double>(r.calls), r.bytes / 1e9, gbs);
  }
  out += fmt::format("| total | | | {:.3f} | 100.0 | | | |\n", total);
  return out;
}

ProfileScope::ProfileScope(const char* name, Device device, double bytes) {
  if (!name || !profile_enabled()) return;
  name_ = name, device_ = device, bytes_ = bytes;
  if (device.is_cpu())
    cpu_start_ms_ = now_ms();
  else
    event_start_ = cuda::event_record(device.index);
}

ProfileScope::~ProfileScope() {
  if (!name_) return;
  try {
    record(name_, device_, bytes_, cpu_start_ms_, event_start_);
  } catch (...) {
    // A destructor must not throw. A CUDA error here loses this measurement (and leaks its start
    // event, which may already sit in the pending list: releasing it could pool it twice).
  }
}

}  // namespace psvae::kernels
