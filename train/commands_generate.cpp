// Placeholder until the command lands (issue 5).
#include <stdexcept>

#include "train/cli.h"

namespace psvae::train {

int cmd_generate(int, char**) { throw std::runtime_error("not built yet"); }
int cmd_edit(int, char**) { throw std::runtime_error("not built yet"); }
int cmd_inpaint(int, char**) { throw std::runtime_error("not built yet"); }

}  // namespace psvae::train
