// Module checkpoints as safetensors files with the module's state_dict names, so files written
// by PyTorch's safetensors.torch.save_file(model.state_dict()) load unchanged (and ours load
// there).
#pragma once
#include <string>

#include "nn/module.h"

namespace psvae::nn {

// Writes every parameter and buffer (the writer is atomic: temp file, fsync, rename).
void save_module(const Module& m, const std::string& path, const safetensors::Metadata& meta = {});
// Loads into m's existing tensors (see Module::load_state_dict); errors start with the path.
// Returns the file's metadata.
safetensors::Metadata load_module(Module& m, const std::string& path, bool strict = true);

}  // namespace psvae::nn
