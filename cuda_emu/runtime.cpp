// The CUDA runtime API of an emulation build (cuda_emu/cuda_emu.h): the calls the project makes,
// implemented on the host. Device memory is host memory; every copy, fill and kernel runs when
// it is issued, so streams and events only keep their bookkeeping.
//
// The emulated device reports compute capability 9.0, 227 KiB of opt-in shared memory per block
// and PSVAE_EMU_SMS streaming multiprocessors (default 4: grid-stride kernels then start few
// blocks and every thread loops, which exercises the stride paths and keeps runs short).
// PSVAE_EMU_DEVICES sets the device count (default 1).
// The one driver entry point the project asks for, cuTensorMapEncodeTiled (through
// cudaGetDriverEntryPointByVersion), is emulated too: it checks the documented requirements that
// the project's maps can meet or miss, and stores what the emulated bulk tensor copies need.
#include <cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include "cuda_emu/runtime_state.h"

struct CUstream_st {
  int device;
};
struct CUevent_st {
  double ms = 0;  // host time of the last record
};

namespace cuda_emu {

namespace {

int env_int(const char* name, int fallback, int lo, int hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < lo || x > hi) {
    std::fprintf(stderr, "cuda_emu: %s=%s is not an integer in [%d, %d]; using %d\n", name, v, lo,
                 hi, fallback);
    return fallback;
  }
  return static_cast<int>(x);
}

int device_count() {
  static const int n = env_int("PSVAE_EMU_DEVICES", 1, 0, 16);
  return n;
}
int sm_count() {
  static const int n = env_int("PSVAE_EMU_SMS", 4, 1, 1024);
  return n;
}

struct State {
  std::mutex mu;
  int current = 0;
  cudaError_t last = cudaSuccess;
  std::string last_message;
  std::map<const void*, size_t> smem_limit;  // kernel -> opted-in dynamic shared memory
  std::set<void*> allocations;
};
State& state() {
  static State* s = new State;  // leaked: used by static destructors at exit
  return *s;
}

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

cudaError_t check_device(int d) {
  return d >= 0 && d < device_count() ? cudaSuccess : cudaErrorInvalidDevice;
}

// cuTensorMapEncodeTiled as the CUDA driver API documents it, for what the emulator models: tiled
// maps of rank 1..5, no interleave, unit element strides, no swizzle or the 128-byte one. The
// documented requirements are checked (the global address 16-byte aligned, dimensions in
// 1..2^32, strides multiples of 16 below 2^40, box sizes in 1..256 with an inner extent that is
// a multiple of 16 bytes and at most the swizzle span); a map outside what is modelled is
// refused as invalid too (a real driver may accept it), so it cannot pass here unnoticed.
CUresult encode_tiled(CUtensorMap* map, CUtensorMapDataType type, cuuint32_t rank, void* address,
                      const cuuint64_t* dims, const cuuint64_t* strides, const cuuint32_t* box,
                      const cuuint32_t* element_strides, CUtensorMapInterleave interleave,
                      CUtensorMapSwizzle swizzle, CUtensorMapL2promotion,
                      CUtensorMapFloatOOBfill oob) {
  auto bad = [](const std::string& why) {
    std::fprintf(stderr, "cuda_emu: cuTensorMapEncodeTiled: %s\n", why.c_str());
    return CUDA_ERROR_INVALID_VALUE;
  };
  if (!map || (reinterpret_cast<uintptr_t>(map) & 63) != 0)
    return bad("the map is not 64-byte aligned");
  uint32_t elem = 0;
  switch (type) {
    case CU_TENSOR_MAP_DATA_TYPE_UINT8: elem = 1; break;
    case CU_TENSOR_MAP_DATA_TYPE_UINT16:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT16:
    case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16: elem = 2; break;
    case CU_TENSOR_MAP_DATA_TYPE_UINT32:
    case CU_TENSOR_MAP_DATA_TYPE_INT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32: elem = 4; break;
    default: return bad("data type not modelled");
  }
  if (rank < 1 || rank > cuda_emu::TensorMap::kMaxRank)
    return bad("rank " + std::to_string(rank) + " (modelled: 1..5)");
  if (!address || (reinterpret_cast<uintptr_t>(address) & 15) != 0)
    return bad("the global address is not 16-byte aligned");
  if (interleave != CU_TENSOR_MAP_INTERLEAVE_NONE) return bad("interleave not modelled");
  if (oob != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) return bad("NaN out-of-bounds fill not modelled");
  uint32_t span = 0;
  if (swizzle == CU_TENSOR_MAP_SWIZZLE_128B)
    span = 128;
  else if (swizzle != CU_TENSOR_MAP_SWIZZLE_NONE)
    return bad("swizzle mode not modelled (none or 128B)");
  cuda_emu::TensorMap m{};
  m.magic = cuda_emu::TensorMap::kMagic;
  m.base = static_cast<const unsigned char*>(address);
  m.rank = rank;
  m.elem = elem;
  m.swizzle_bytes = span;
  for (int i = 0; i < cuda_emu::TensorMap::kMaxRank; ++i) {
    m.dim[i] = 1;
    m.box[i] = 1;
  }
  m.stride[0] = elem;
  for (uint32_t i = 0; i < rank; ++i) {
    if (dims[i] == 0 || dims[i] > (uint64_t(1) << 32))
      return bad("globalDim[" + std::to_string(i) + "] = " + std::to_string(dims[i]));
    if (box[i] == 0 || box[i] > 256)
      return bad("boxDim[" + std::to_string(i) + "] = " + std::to_string(box[i]));
    if (element_strides[i] != 1) return bad("element strides other than 1 not modelled");
    m.dim[i] = dims[i];
    m.box[i] = box[i];
    if (i > 0) {
      const uint64_t st = strides[i - 1];
      if (st % 16 != 0 || st >= (uint64_t(1) << 40))
        return bad("globalStrides[" + std::to_string(i - 1) + "] = " + std::to_string(st));
      m.stride[i] = st;
    }
  }
  const uint64_t inner = uint64_t(box[0]) * elem;
  if (inner % 16 != 0) return bad("the box's inner extent is not a multiple of 16 bytes");
  if (span && inner != span)
    return bad("the box's inner extent is not the 128-byte swizzle span (modelled: equal)");
  std::memset(map, 0, sizeof *map);
  std::memcpy(map, &m, sizeof m);
  return CUDA_SUCCESS;
}

}  // namespace

size_t max_dynamic_smem(const void* kernel) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.smem_limit.find(kernel);
  return it == s.smem_limit.end() ? default_dynamic_smem() : it->second;
}

void set_launch_error(cudaError_t code, const std::string& message) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.last = code;
  s.last_message = message;
  std::fprintf(stderr, "cuda_emu: %s\n", message.c_str());
}

}  // namespace cuda_emu

using cuda_emu::state;

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = cuda_emu::device_count();
  return cuda_emu::device_count() > 0 ? cudaSuccess : cudaErrorNoDevice;
}
cudaError_t cudaGetDevice(int* device) {
  *device = state().current;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (cuda_emu::check_device(device) != cudaSuccess) return cudaErrorInvalidDevice;
  state().current = device;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaDeviceReset(void) { return cudaSuccess; }

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (cuda_emu::check_device(device) != cudaSuccess) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = cuda_emu::sm_count(); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = static_cast<int>(cuda_emu::max_opt_in_dynamic_smem());
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = static_cast<int>(cuda_emu::default_dynamic_smem());
      return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    case cudaDevAttrL2CacheSize: *value = 50 << 20; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* prop, int device) {
  if (cuda_emu::check_device(device) != cudaSuccess) return cudaErrorInvalidDevice;
  std::memset(prop, 0, sizeof *prop);
  std::snprintf(prop->name, sizeof prop->name, "psvae CUDA emulator (host)");
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = cuda_emu::sm_count();
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->sharedMemPerBlock = cuda_emu::default_dynamic_smem();
  prop->sharedMemPerBlockOptin = cuda_emu::max_opt_in_dynamic_smem();
  prop->totalGlobalMem = size_t(1) << 36;
  prop->l2CacheSize = 50 << 20;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  *free_bytes = *total = size_t(1) << 36;
  return cudaSuccess;
}

// ---- errors ------------------------------------------------------------------------------------
cudaError_t cudaGetLastError(void) {
  std::lock_guard<std::mutex> lock(state().mu);
  const cudaError_t e = state().last;
  state().last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) {
  std::lock_guard<std::mutex> lock(state().mu);
  return state().last;
}
const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    default: return "cudaError (emulator)";
  }
}
const char* cudaGetErrorString(cudaError_t error) {
  // The message of the last failed launch (a static buffer: the caller copies it at once).
  static thread_local std::string text;
  if (error == cudaErrorLaunchFailure || error == cudaErrorInvalidConfiguration) {
    std::lock_guard<std::mutex> lock(state().mu);
    text = state().last_message.empty() ? "launch failed" : state().last_message;
    return text.c_str();
  }
  return cudaGetErrorName(error);
}

// ---- memory ------------------------------------------------------------------------------------
cudaError_t cudaMalloc(void** ptr, size_t size) {
  // Page-aligned: cudaMalloc promises 256 bytes, and in practice its blocks are aligned far
  // beyond (the caching allocator's 512-byte blocks rely on that).
  void* p = std::aligned_alloc(4096, (size + 4095) / 4096 * 4096 + 4096);
  if (!p) return cudaErrorMemoryAllocation;
  std::lock_guard<std::mutex> lock(state().mu);
  state().allocations.insert(p);
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(state().mu);
    if (state().allocations.erase(ptr) == 0) return cudaErrorInvalidDevicePointer;
  }
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** ptr, size_t size) {
  *ptr = std::malloc(size ? size : 1);
  return *ptr ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind) {
  if (count) std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t) {
  return cudaMemcpy(dst, src, count, kind);
}
cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  if (count) std::memset(ptr, value, count);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) {
  return cudaMemset(ptr, value, count);
}
cudaError_t cudaMemset2DAsync(void* ptr, size_t pitch, int value, size_t width, size_t height,
                              cudaStream_t) {
  if (width > pitch && height > 1) return cudaErrorInvalidPitchValue;
  for (size_t r = 0; r < height; ++r) cudaMemset(static_cast<char*>(ptr) + r * pitch, value, width);
  return cudaSuccess;
}

// ---- streams and events ------------------------------------------------------------------------
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  *stream = new CUstream_st{state().current};
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return cudaSuccess; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  *event = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, 0); }
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  event->ms = cuda_emu::now_ms();
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  *ms = static_cast<float>(end->ms - start->ms);
  return cudaSuccess;
}

// ---- kernels -----------------------------------------------------------------------------------
cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (value < 0 || static_cast<size_t>(value) > cuda_emu::max_opt_in_dynamic_smem())
    return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(state().mu);
  state().smem_limit[func] = static_cast<size_t>(value);
  return cudaSuccess;
}

// Every kernel has an "image" here (the emulator stands in for an sm_90a GPU); what the callers
// read (the dynamic shared-memory limit) is filled in, the rest is zero.
cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, const void* func) {
  if (!attr || !func) return cudaErrorInvalidValue;
  std::memset(attr, 0, sizeof *attr);
  attr->maxThreadsPerBlock = 1024;
  attr->maxDynamicSharedSizeBytes = static_cast<int>(cuda_emu::max_dynamic_smem(func));
  attr->ptxVersion = 90;
  attr->binaryVersion = 90;
  return cudaSuccess;
}

// Resident blocks per SM as an sm_90 would allow by threads (2048) and shared memory (228 KiB);
// registers are not modelled.
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* num_blocks, const void*,
                                                          int block_size, size_t smem) {
  if (block_size <= 0 || block_size > 1024) return cudaErrorInvalidValue;
  int n = 2048 / block_size;
  if (smem > 0) n = std::min<int>(n, static_cast<int>((228 * 1024) / (smem + 1024)));
  *num_blocks = std::max(n, 0);
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* num_blocks, const void* f,
                                                                   int block_size, size_t smem,
                                                                   unsigned int) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(num_blocks, f, block_size, smem);
}

// ---- driver entry points -----------------------------------------------------------------------
cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned int,
                                             unsigned long long,
                                             enum cudaDriverEntryPointQueryResult* status) {
  if (!symbol || !fn) return cudaErrorInvalidValue;
  const bool known = std::strcmp(symbol, "cuTensorMapEncodeTiled") == 0;
  *fn = known ? reinterpret_cast<void*>(&cuda_emu::encode_tiled) : nullptr;
  if (status) *status = known ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
  return cudaSuccess;
}

}  // extern "C"
