// CUDA kernels: expand, sum_to, where and general numpy broadcasting for the binary ops.
// Placeholder while issue 6 is under way: registers nothing yet, so these ops still throw
// "<op>: no CUDA kernel" on device tensors.
#include "kernels/op_table.h"

namespace psvae::kernels::cuda {

void register_broadcast(OpTable& t) { (void)t; }

}  // namespace psvae::kernels::cuda
