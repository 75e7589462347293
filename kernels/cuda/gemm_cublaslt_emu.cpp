// cuBLASLt in an emulation build (cmake -DPSVAE_CUDA_EMU=ON): the library cannot run on the host
// emulator, so it "has no algorithm" for any problem and the dispatch takes our own kernels
// (gemm.cu's fallback rule). The real wrapper is gemm_cublaslt.cu.
#ifdef PSVAE_CUDA_EMULATION
#include "kernels/cuda/gemm.h"

namespace psvae::kernels::cuda::detail {

bool gemm_cublaslt(const GemmDesc&, int, void*) { return false; }
void gemm_cublaslt_clear_cache() {}

}  // namespace psvae::kernels::cuda::detail
#endif
