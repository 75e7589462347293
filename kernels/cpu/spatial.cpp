// CPU kernels: spatial family. (being written)
#include "kernels/cpu/cpu_common.h"

namespace psvae::kernels::cpu {

void register_spatial(OpTable& t) { (void)t; }

}  // namespace psvae::kernels::cpu
