// The caching, stream-ordered device allocator behind device_alloc / device_free.
//
// Why cache: cudaMalloc costs tens to hundreds of microseconds and cudaFree synchronises the whole
// device. A training step allocates and frees the same few hundred activation and gradient
// buffers every iteration, so after the first step every request must come from the cache:
// num_device_allocs stays flat in steady state (tests/tensor/test_cuda_tensor.cpp checks it).
//
// Why stream-ordered: device_free is called by the host as soon as the last Tensor goes, while
// kernels queued earlier on the stream may still read the block. Giving the block to a later
// request on the *same* stream is nevertheless safe without any synchronisation: that request's
// kernels are queued behind the pending ones. Giving it to another stream would need an event
// (PyTorch's record_stream). So every free block stays in the pool of the stream it was used on,
// and the pools are searched per stream. Today there is one stream per device
// (current_stream()), so this is bookkeeping that keeps the allocator right when more come.
//
// Sizes (the numbers of PyTorch's CUDACachingAllocator, which this follows in a much smaller form):
//   - every request is rounded up to 512 bytes, so each block is 512-aligned (any vector load is
//     aligned) and the number of distinct sizes stays small; a 0-byte request gets 512 bytes.
//   - small requests (<= 1 MiB) are carved out of 2 MiB segments shared by many small blocks, so
//     scalars and per-row statistics do not each cost a cudaMalloc;
//   - large requests (> 1 MiB) get a dedicated segment of their size rounded up to 2 MiB; a
//     cached large block serving a smaller request is split and the tail stays free.
//   Small and large blocks live in separate pools so a long-lived small tensor never pins a large
//   segment. Free pools are std::sets ordered by (stream, size, address): lower_bound is best fit.
//   On free a block merges with its free neighbours in the segment, so a segment whose tensors
//   are all gone is again one free block and can serve any request that fits.
//   in_use counts the rounded sizes of live blocks; reserved the segments held from cudaMalloc.
//
// Out of memory: when cudaMalloc fails, every cached segment that is entirely free is returned to
// the driver (after a device synchronisation, since queued kernels may still use a block that the
// host has freed) and cudaMalloc is retried once; a second failure throws with the numbers.
// Thread safety: one mutex per device guards its pools, blocks and statistics.
// The per-device caches are never destroyed (Storage destructors of static tensors may run after
// the CUDA runtime has shut down at exit; they then only touch host bookkeeping).
#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "tensor/cuda/cuda_check.cuh"
#include "tensor/cuda/launch.cuh"
#include "tensor/cuda_runtime.h"
#include "tensor/device.h"

namespace psvae::cuda {

namespace {

constexpr size_t kRound = 512;             // granularity of every block
constexpr size_t kSmallMax = 1 << 20;      // requests up to 1 MiB are "small"
constexpr size_t kSmallSegment = 2 << 20;  // small blocks are carved from 2 MiB segments
constexpr size_t kLargeRound = 2 << 20;    // large segments are multiples of 2 MiB

size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

// A contiguous range of one segment; the blocks of a segment form a doubly linked list in
// address order. A segment is fully free when its only block is free (no prev, no next).
struct Block {
  char* ptr = nullptr;
  size_t size = 0;
  cudaStream_t stream = nullptr;
  bool small = false;      // which pool: fixed by the segment it belongs to
  bool allocated = false;  // held by a caller
  Block* prev = nullptr;
  Block* next = nullptr;
};

struct BlockOrder {  // (stream, size, address): lower_bound on (s, n, 0) is the best fit on s
  bool operator()(const Block* a, const Block* b) const {
    if (a->stream != b->stream)
      return std::less<const void*>()(static_cast<const void*>(a->stream),
                                      static_cast<const void*>(b->stream));
    if (a->size != b->size) return a->size < b->size;
    return std::less<const char*>()(a->ptr, b->ptr);
  }
};
using Pool = std::set<Block*, BlockOrder>;

std::string mib(size_t bytes) {
  std::ostringstream o;
  o.setf(std::ios::fixed);
  o.precision(1);
  o << static_cast<double>(bytes) / (1 << 20) << " MiB";
  return o.str();
}

class DeviceCache {
 public:
  explicit DeviceCache(int device) : device_(device) {}

  void* alloc(size_t nbytes) {
    const size_t size = round_up(nbytes == 0 ? 1 : nbytes, kRound);
    const bool small = size <= kSmallMax;
    cudaStream_t s = stream(device_);
    std::lock_guard<std::mutex> lock(mu_);
    Pool& pool = small ? small_ : large_;
    Block key;
    key.stream = s;
    key.size = size;
    Block* b = nullptr;
    auto it = pool.lower_bound(&key);
    if (it != pool.end() && (*it)->stream == s) {
      b = *it;
      pool.erase(it);
    } else {
      b = new_segment(small ? kSmallSegment : round_up(size, kLargeRound), size, s, small);
    }
    if (b->size - size >= kRound) {  // split: the tail stays free in the same pool
      Block* tail = new Block;
      tail->ptr = b->ptr + size;
      tail->size = b->size - size;
      tail->stream = s;
      tail->small = small;
      tail->prev = b;
      tail->next = b->next;
      if (b->next) b->next->prev = tail;
      b->next = tail;
      b->size = size;
      pool.insert(tail);
    }
    b->allocated = true;
    active_[b->ptr] = b;
    stats_.in_use += b->size;
    stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
    ++stats_.num_allocs;
    return b->ptr;
  }

  void free(void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(p);
    if (it == active_.end()) {
      std::ostringstream o;
      o << "device_free: " << p
        << " is not a live block of the CUDA caching allocator on cuda:" << device_
        << " (freed twice, freed on the wrong device, or never allocated here)";
      throw std::invalid_argument(o.str());
    }
    Block* b = it->second;
    active_.erase(it);
    b->allocated = false;
    stats_.in_use -= b->size;
    Pool& pool = b->small ? small_ : large_;
    // Coalesce with free neighbours. Erase them from the pool before changing their size: the
    // pool is ordered by size.
    if (b->prev && !b->prev->allocated) {
      Block* p0 = b->prev;
      pool.erase(p0);
      p0->size += b->size;
      p0->next = b->next;
      if (b->next) b->next->prev = p0;
      delete b;
      b = p0;
    }
    if (b->next && !b->next->allocated) {
      Block* n0 = b->next;
      pool.erase(n0);
      b->size += n0->size;
      b->next = n0->next;
      if (n0->next) n0->next->prev = b;
      delete n0;
    }
    pool.insert(b);
  }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.peak_in_use = stats_.in_use;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mu_);
    release_free_segments();
  }

 private:
  // cudaMalloc a segment of `seg` bytes for a request of `size`; on failure release the cache and
  // retry once. Called with mu_ held (a concurrent request must not take the freed memory first).
  Block* new_segment(size_t seg, size_t size, cudaStream_t s, bool small) {
    DeviceGuard g(device_);
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, seg);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      release_free_segments();
      err = cudaMalloc(&p, seg);
    }
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      const char* what =
          err == cudaErrorMemoryAllocation ? "CUDA out of memory" : "cudaMalloc failed";
      throw std::runtime_error(
          std::string(what) + " on cuda:" + std::to_string(device_) + ": cannot allocate " +
          std::to_string(size) + " bytes (" + mib(size) + ", a segment of " + mib(seg) +
          "): " + cudaGetErrorString(err) + "; in_use " + std::to_string(stats_.in_use) +
          " bytes (" + mib(stats_.in_use) + "), reserved " + std::to_string(stats_.reserved) +
          " bytes (" + mib(stats_.reserved) + ") after returning all free cached segments");
    }
    Block* b = new Block;
    b->ptr = static_cast<char*>(p);
    b->size = seg;
    b->stream = s;
    b->small = small;
    stats_.reserved += seg;
    ++stats_.num_device_allocs;
    return b;
  }

  // Returns every segment that is one free block to the driver. Called with mu_ held.
  void release_free_segments() {
    std::vector<Block*> whole;
    for (Pool* pool : {&small_, &large_})
      for (Block* b : *pool)
        if (!b->prev && !b->next) whole.push_back(b);
    if (whole.empty()) return;
    DeviceGuard g(device_);
    // The host freed these blocks, but kernels queued before the free may still be using them.
    PSVAE_CUDA_CHECK(cudaDeviceSynchronize());
    for (Block* b : whole) {
      (b->small ? small_ : large_).erase(b);
      PSVAE_CUDA_CHECK(cudaFree(b->ptr));
      stats_.reserved -= b->size;
      delete b;
    }
  }

  const int device_;
  std::mutex mu_;
  Pool small_, large_;
  std::unordered_map<void*, Block*> active_;
  AllocatorStats stats_;
};

DeviceCache& cache(int device) {
  check_device(device);
  static std::vector<DeviceCache*>* caches = [] {
    auto* v = new std::vector<DeviceCache*>;  // leaked on purpose: see the file comment
    for (int d = 0; d < cuda_device_count(); ++d) v->push_back(new DeviceCache(d));
    return v;
  }();
  return *(*caches)[static_cast<size_t>(device)];
}

}  // namespace

void* device_alloc(size_t nbytes, int device) { return cache(device).alloc(nbytes); }

void device_free(void* p, int device) {
  if (!p) return;
  cache(device).free(p);
}

AllocatorStats allocator_stats(int device) { return cache(device).stats(); }
void reset_peak_stats(int device) { cache(device).reset_peak(); }

void empty_cache() {
  for (int d = 0; d < cuda_device_count(); ++d) cache(d).empty_cache();
}

}  // namespace psvae::cuda
