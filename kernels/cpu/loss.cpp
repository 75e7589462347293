// CPU kernels: loss family. (being written)
#include "kernels/cpu/cpu_common.h"

namespace psvae::kernels::cpu {

void register_loss(OpTable& t) { (void)t; }

}  // namespace psvae::kernels::cpu
