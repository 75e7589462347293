// CPU kernels: linalg family. (being written)
#include "kernels/cpu/cpu_common.h"

namespace psvae::kernels::cpu {

void register_linalg(OpTable& t) { (void)t; }

}  // namespace psvae::kernels::cpu
