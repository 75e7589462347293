// The CUDA side of the tensor layer: device memory through a caching, stream-ordered allocator,
// copies, fills and the Philox fills. In a build without CUDA every entry throws a clear error
// (tensor/cuda_unavailable.cpp), so callers compile the same way in both builds.
#pragma once
#include <cstddef>
#include <cstdint>

namespace psvae::cuda {

// Allocator statistics for one device, in bytes. `reserved` is what the allocator holds from
// cudaMalloc; `in_use` what tensors hold now; `peak_in_use` the high-water mark since the last
// reset; `num_device_allocs` counts cudaMalloc calls (steady-state training must not add any).
struct AllocatorStats {
  size_t in_use = 0;
  size_t peak_in_use = 0;
  size_t reserved = 0;
  uint64_t num_device_allocs = 0;
  uint64_t num_allocs = 0;  // requests served, from the cache or not
};

void* device_alloc(size_t nbytes, int device);
void device_free(void* p, int device);
AllocatorStats allocator_stats(int device);
void reset_peak_stats(int device);
void empty_cache();  // returns every cached, unused block to the driver

// The stream all of this project's kernels on `device` run on (one per device for now).
void* current_stream(int device);  // cudaStream_t, opaque here so headers need no CUDA
void synchronize(int device);

// Timing events on the device's stream, for the op profiler (kernels/profile.h). event_record
// takes an event from the device's pool and records it on the stream; event_elapsed_ms waits for
// `end` and returns the milliseconds between the two; event_release hands an event back to the
// pool of the device it was recorded on.
void* event_record(int device);
float event_elapsed_ms(void* start, void* end);
void event_release(void* event, int device);

// Copies; host pointers may be pageable. Each call is ordered on the current stream. D2H and H2D
// return once the copy is complete (the host buffer may be freed right after the call); D2D
// returns once it is enqueued.
void memcpy_h2d(void* dst, const void* src, size_t nbytes, int device);
void memcpy_d2h(void* dst, const void* src, size_t nbytes, int device);
void memcpy_d2d(void* dst, const void* src, size_t nbytes, int device);

// Fill `n` elements of `elem_size` bytes each with the bit pattern `pattern` (e.g. 0x7fc00000 for
// a NaN poison in f32).
void fill_pattern(void* dst, int64_t n, size_t elem_size, uint64_t pattern, int device);

// Philox fills, identical element for element to the CPU fills in tensor/random.h.
// dtype codes as psvae::DType.
void fill_uniform(void* dst, int64_t n, int dtype, uint64_t seed, uint64_t offset, double lo,
                  double hi, int device);
void fill_normal(void* dst, int64_t n, int dtype, uint64_t seed, uint64_t offset, double mean,
                 double std, int device);

}  // namespace psvae::cuda
