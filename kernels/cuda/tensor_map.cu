// Tensor maps for the TMA kernels (tensor_map.h).
#include "kernels/cuda/tensor_map.h"

#include <cuda_runtime.h>

namespace psvae::kernels::cuda::detail {

namespace {

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled from the driver, once; null when the driver lacks it.
EncodeTiled encoder() {
  static const EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                           cudaEnableDefault, &q);
    if (e != cudaSuccess) (void)cudaGetLastError();  // not an error of the caller's work
    return e == cudaSuccess && q == cudaDriverEntryPointSuccess ? reinterpret_cast<EncodeTiled>(f)
                                                                : nullptr;
  }();
  return fn;
}

}  // namespace

bool tensor_map_encoder_available() { return encoder() != nullptr; }

CUresult encode_bf16_sw128(CUtensorMap* map, const void* base, int rank, const uint64_t* dims,
                           const uint64_t* strides_bytes, const uint32_t* box) {
  constexpr int kMaxRank = 5;
  if (encoder() == nullptr) return CUDA_ERROR_NOT_SUPPORTED;
  if (rank < 1 || rank > kMaxRank) return CUDA_ERROR_INVALID_VALUE;
  cuuint64_t d[kMaxRank], st[kMaxRank];
  cuuint32_t b[kMaxRank], unit[kMaxRank];
  for (int i = 0; i < rank; ++i) {
    d[i] = dims[i];
    b[i] = box[i];
    unit[i] = 1;
    if (i + 1 < rank) st[i] = strides_bytes[i];
  }
  return encoder()(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, static_cast<cuuint32_t>(rank),
                   const_cast<void*>(base), d, st, b, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                   CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                   CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
}

}  // namespace psvae::kernels::cuda::detail
