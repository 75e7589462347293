// CUDA kernels: matmul and linear: the GEMM dispatch (cuBLASLt or our own tensor-core kernel).
// Placeholder while issue 6 is under way: registers nothing yet, so these ops still throw
// "<op>: no CUDA kernel" on device tensors.
#include "kernels/op_table.h"

namespace psvae::kernels::cuda {

void register_gemm(OpTable& t) { (void)t; }

}  // namespace psvae::kernels::cuda
