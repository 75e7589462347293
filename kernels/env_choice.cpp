#include "kernels/env_choice.h"

#include <cstdlib>
#include <stdexcept>

namespace psvae::kernels {

int env_choice(const char* name, std::initializer_list<const char*> values,
               const std::string& prefix) {
  const char* env = std::getenv(name);
  const std::string v = env ? env : "";
  if (v.empty()) return 0;
  int i = 0;
  for (const char* value : values) {
    if (v == value) return i;
    ++i;
  }
  // "a, b or c": commas between all but the last two.
  std::string list;
  i = 0;
  for (const char* value : values) {
    if (i > 0) list += i + 1 == static_cast<int>(values.size()) ? " or " : ", ";
    list += value;
    ++i;
  }
  throw std::invalid_argument(prefix + name + " must be " + list + ", got '" + v + "'");
}

}  // namespace psvae::kernels
