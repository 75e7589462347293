#include "nn/serialize.h"

#include <stdexcept>

namespace psvae::nn {

void save_module(const Module& m, const std::string& path, const safetensors::Metadata& meta) {
  safetensors::save(path, m.state_dict(), meta);
}

safetensors::Metadata load_module(Module& m, const std::string& path, bool strict) {
  safetensors::Metadata meta;
  NamedTensors sd = safetensors::load(path, &meta);
  try {
    m.load_state_dict(sd, strict);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  return meta;
}

}  // namespace psvae::nn
