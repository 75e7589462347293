// Checkpoints: one safetensors file per save, written atomically, holding everything a run needs
// to continue exactly where it stopped:
//   model.<param>            the trained module (parameters and buffers)
//   ema.<param>              EMA shadows (when EMA is on)
//   optim.<param>.m/.v, optim.step   AdamW state
//   task.<name>              task extra state
//   metadata: psvae.step, psvae.rng_seed, psvae.rng_offset, psvae.loader_epoch,
//             psvae.loader_batch, psvae.best_loss, psvae.nonfinite_run, psvae.task,
//             psvae.config (the resolved YAML), psvae.format = "1"
// Integers are stored as decimal strings in the metadata, so they round-trip exactly.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/safetensors.h"

namespace psvae::train {

// Checkpoint files of a run folder, newest (highest step) first; best.safetensors excluded.
std::vector<std::string> list_checkpoints(const std::string& ckpt_dir);
std::string checkpoint_path(const std::string& ckpt_dir,
                            int64_t step);  // .../step_00001000.safetensors

// Opens the newest checkpoint that reads and validates; each unreadable newer one is reported
// with a one-line warning naming its path and the reason, then skipped. Throws when none is valid.
// Returns the path used.
std::string open_newest_valid(const std::string& ckpt_dir, safetensors::NamedTensors* tensors,
                              safetensors::Metadata* metadata);

// Deletes all but the newest `keep` step checkpoints.
void prune_checkpoints(const std::string& ckpt_dir, int keep);

// Required metadata field as integer / double; throws naming the file and the field.
int64_t meta_int(const safetensors::Metadata& m, const std::string& key, const std::string& path);
double meta_double(const safetensors::Metadata& m, const std::string& key, const std::string& path);
// Unsigned 64-bit fields (the RNG seed and offset span the whole u64 range).
uint64_t meta_u64(const safetensors::Metadata& m, const std::string& key, const std::string& path);

}  // namespace psvae::train
