// CUDA kernels: fused attention forward and backward (FlashAttention-2 style).
// Placeholder while issue 6 is under way: registers nothing yet, so these ops still throw
// "<op>: no CUDA kernel" on device tensors.
#include "kernels/op_table.h"

namespace psvae::kernels::cuda {

void register_attention(OpTable& t) { (void)t; }

}  // namespace psvae::kernels::cuda
