// The CPU-only build's CUDA entry points: every one reports that CUDA was not compiled in.
// (The CUDA build compiles tensor/cuda/*.cu instead; this file is then empty.)
#ifndef PSVAE_WITH_CUDA
#include <stdexcept>

#include "tensor/cuda_runtime.h"
#include "tensor/device.h"

namespace psvae {
bool cuda_available() { return false; }
int cuda_device_count() { return 0; }
}  // namespace psvae

namespace psvae::cuda {
namespace {
[[noreturn]] void unavailable(const char* what) {
  throw std::runtime_error(
      std::string(what) +
      ": this build has no CUDA backend (nvcc was not found at configure time)");
}
}  // namespace
void* device_alloc(size_t, int) { unavailable("device_alloc"); }
void device_free(void*, int) { unavailable("device_free"); }
AllocatorStats allocator_stats(int) { unavailable("allocator_stats"); }
void reset_peak_stats(int) { unavailable("reset_peak_stats"); }
void empty_cache() {}
void* current_stream(int) { unavailable("current_stream"); }
void synchronize(int) { unavailable("synchronize"); }
void* event_record(int) { unavailable("event_record"); }
float event_elapsed_ms(void*, void*) { unavailable("event_elapsed_ms"); }
void event_release(void*, int) {}
void memcpy_h2d(void*, const void*, size_t, int) { unavailable("memcpy_h2d"); }
void memcpy_d2h(void*, const void*, size_t, int) { unavailable("memcpy_d2h"); }
void memcpy_d2d(void*, const void*, size_t, int) { unavailable("memcpy_d2d"); }
void fill_pattern(void*, int64_t, size_t, uint64_t, int) { unavailable("fill_pattern"); }
void fill_uniform(void*, int64_t, int, uint64_t, uint64_t, double, double, int) {
  unavailable("fill_uniform");
}
void fill_normal(void*, int64_t, int, uint64_t, uint64_t, double, double, int) {
  unavailable("fill_normal");
}
}  // namespace psvae::cuda
#endif
