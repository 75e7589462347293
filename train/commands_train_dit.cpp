// Placeholder until the command lands (issue 5).
#include <stdexcept>

#include "train/cli.h"

namespace psvae::train {

int cmd_train_dit(int, char**) { throw std::runtime_error("not built yet"); }
ConfigSchema train_dit_schema() { return ConfigSchema(); }

}  // namespace psvae::train
