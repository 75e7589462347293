// Devices, streams and copies: the CUDA runtime under tensor/cuda_runtime.h.
//
// One non-default stream per device, created with cudaStreamNonBlocking so that it never
// serialises against the legacy default stream (which other libraries or a debugger may use).
// Every kernel, copy and allocation of the project is ordered on it, which is what lets the
// caching allocator (tensor/cuda/allocator.cu) reuse a freed block without synchronising.
// Streams are never destroyed: they live as long as the process, and destroying them from a static
// destructor would race the CUDA runtime's own teardown at exit.
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"
#include "tensor/cuda_runtime.h"
#include "tensor/device.h"

namespace psvae {

// Any error from cudaGetDeviceCount (no driver, driver too old for this runtime, no device, a
// container without /dev/nvidia*) means "no usable device": CPU-only machines and CI run the same
// binary and must see 0, not an exception. Cached, as the answer cannot change in a process.
int cuda_device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return n;
  }();
  return count;
}

bool cuda_available() { return cuda_device_count() > 0; }

}  // namespace psvae

namespace psvae::cuda {

namespace {

// Per-device state, built on first use of that device.
struct DeviceState {
  std::once_flag once;
  cudaStream_t stream = nullptr;
  int sms = 0;
};

DeviceState& state(int device) {
  check_device(device);
  // Leaked on purpose: see the file comment on teardown order.
  static std::vector<DeviceState>* states =
      new std::vector<DeviceState>(static_cast<size_t>(cuda_device_count()));
  DeviceState& s = (*states)[static_cast<size_t>(device)];
  std::call_once(s.once, [&] {  // an exception leaves the flag unset, so a later call retries
    DeviceGuard g(device);
    PSVAE_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
    PSVAE_CUDA_CHECK(cudaDeviceGetAttribute(&s.sms, cudaDevAttrMultiProcessorCount, device));
  });
  return s;
}

}  // namespace

void check_device(int device) {
  int n = cuda_device_count();
  if (device < 0 || device >= n)
    throw std::invalid_argument("cuda:" + std::to_string(device) + ": no such device (" +
                                std::to_string(n) + " CUDA device(s) visible)");
}

cudaStream_t stream(int device) { return state(device).stream; }
int sm_count(int device) { return state(device).sms; }

DeviceGuard::DeviceGuard(int device) : device_(device) {
  PSVAE_CUDA_CHECK(cudaGetDevice(&prev_));
  if (prev_ != device_) PSVAE_CUDA_CHECK(cudaSetDevice(device_));
}
DeviceGuard::~DeviceGuard() {
  if (prev_ >= 0 && prev_ != device_) (void)cudaSetDevice(prev_);  // destructors must not throw
}

void* current_stream(int device) { return static_cast<void*>(stream(device)); }

// The whole device, not just our stream: libraries (cuBLAS workspaces, NCCL) may queue work on
// streams of their own, and a caller of synchronize() wants all of it finished.
void synchronize(int device) {
  check_device(device);
  DeviceGuard g(device);
  PSVAE_CUDA_CHECK(cudaDeviceSynchronize());
}

// Events are pooled: a profiled training step records two per op, thousands per step, and each
// cudaEventCreate is a driver call. One pool per device, as an event may only be recorded on a
// stream of the device it was created on. Default flags (timing enabled, not blocking-sync).
namespace {
std::mutex event_mutex;
std::vector<cudaEvent_t>& event_pool(int device) {
  static auto* pools = new std::map<int, std::vector<cudaEvent_t>>();  // never destroyed
  return (*pools)[device];
}
}  // namespace

void* event_record(int device) {
  cudaStream_t s = stream(device);
  DeviceGuard g(device);
  cudaEvent_t e = nullptr;
  {
    std::lock_guard<std::mutex> lock(event_mutex);
    std::vector<cudaEvent_t>& pool = event_pool(device);
    if (!pool.empty()) {
      e = pool.back();
      pool.pop_back();
    }
  }
  if (!e) PSVAE_CUDA_CHECK(cudaEventCreate(&e));
  PSVAE_CUDA_CHECK(cudaEventRecord(e, s));
  return static_cast<void*>(e);
}

float event_elapsed_ms(void* start, void* end) {
  PSVAE_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(end)));
  float ms = 0.f;
  PSVAE_CUDA_CHECK(
      cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)));
  return ms;
}

void event_release(void* event, int device) {
  if (!event) return;
  std::lock_guard<std::mutex> lock(event_mutex);
  event_pool(device).push_back(static_cast<cudaEvent_t>(event));
}

void memcpy_h2d(void* dst, const void* src, size_t nbytes, int device) {
  if (nbytes == 0) return;
  cudaStream_t s = stream(device);
  DeviceGuard g(device);
  PSVAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, s));
  // `src` is usually pageable (a std::vector, a CPU tensor) and the caller may free or overwrite
  // it the moment we return. cudaMemcpyAsync from pageable memory gives no guarantee about when
  // the host buffer has been read, so we wait for the copy to complete before returning.
  PSVAE_CUDA_CHECK(cudaStreamSynchronize(s));
}

void memcpy_d2h(void* dst, const void* src, size_t nbytes, int device) {
  if (nbytes == 0) return;
  cudaStream_t s = stream(device);
  DeviceGuard g(device);
  PSVAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, s));
  PSVAE_CUDA_CHECK(cudaStreamSynchronize(s));  // the caller reads `dst` right after
}

void memcpy_d2d(void* dst, const void* src, size_t nbytes, int device) {
  if (nbytes == 0) return;
  cudaStream_t s = stream(device);
  DeviceGuard g(device);
  PSVAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, s));
}

}  // namespace psvae::cuda
