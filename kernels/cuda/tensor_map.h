// Tensor maps for the bulk tensor copy engine (TMA, sm_90) of the kernels that use it
// (gemm_wgmma_tma_sm90a.cu, attention_fwd_wgmma_tma_sm90a.cu): bf16, tiled, the 128-byte swizzle
// that their shared-memory slabs and wgmma descriptors assume, zeros outside the tensor.
// cuTensorMapEncodeTiled is a driver function; it is fetched through the runtime
// (cudaGetDriverEntryPointByVersion) so that nothing links against libcuda.
#pragma once
#include <cuda.h>

#include <cstdint>

namespace psvae::kernels::cuda::detail {

// Whether this driver has cuTensorMapEncodeTiled (asked once).
bool tensor_map_encoder_available();

// A rank-dimensional (1..5) bf16 map over `base`: dims[i] elements in dimension i (innermost
// first), strides_bytes[i] bytes between consecutive indices of dimension i + 1, boxes of box[i]
// elements (box[0] * 2 bytes must be 128: the swizzle span). Returns the driver's verdict
// (CUDA_SUCCESS, or why not; CUDA_ERROR_NOT_SUPPORTED without the encoder).
CUresult encode_bf16_sw128(CUtensorMap* map, const void* base, int rank, const uint64_t* dims,
                           const uint64_t* strides_bytes, const uint32_t* box);

}  // namespace psvae::kernels::cuda::detail
