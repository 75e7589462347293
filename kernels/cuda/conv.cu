// CUDA kernels: conv2d forward and backward (cuDNN, or our own implicit GEMM).
// Placeholder while issue 6 is under way: registers nothing yet, so these ops still throw
// "<op>: no CUDA kernel" on device tensors.
#include "kernels/op_table.h"

namespace psvae::kernels::cuda {

void register_conv(OpTable& t) { (void)t; }

}  // namespace psvae::kernels::cuda
