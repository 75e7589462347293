// Placeholder until the command lands (issue 5).
#include <stdexcept>

#include "train/cli.h"

namespace psvae::train {

int cmd_demo(int, char**) { throw std::runtime_error("not built yet"); }

}  // namespace psvae::train
