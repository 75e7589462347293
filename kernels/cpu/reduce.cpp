// CPU kernels: reduce family. (being written)
#include "kernels/cpu/cpu_common.h"

namespace psvae::kernels::cpu {

void register_reduce(OpTable& t) { (void)t; }

}  // namespace psvae::kernels::cpu
