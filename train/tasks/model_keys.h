// The config keys of the PS-VAE training stages (model.*, loss.*, weights.*, init.from), their
// mapping to the C++ model configs, and the hand-over between stages: a later stage reads the
// finished weights of the earlier one from its checkpoint (init.from).
//
//   stage 0  psvae train-encoder  Dinov2 + linear head, cross-entropy     runs/encoder
//   stage 1  psvae train-svae     frozen encoder -> S-VAE, semantic MSE   runs/svae
//   stage 2  psvae train-psvae    encoder + S-VAE + pixel decoder         runs/psvae
//
// Hand-over rules (one place, so every stage and test agrees):
//   - The weights of a finished stage are its EMA weights when its checkpoint has them (EMA on),
//     else its model weights: the EMA is what the trainer samples with, so it is the model the run
//     "is". (Buffers are not averaged; they come from model.*.) Latent statistics after stage 2
//     are computed with the same weights, so they describe the latents a later stage will see.
//   - The architecture keys of the earlier stages (model.encoder.*, and after stage 1
//     model.latent_dim and model.svae.*) are taken from the earlier checkpoint's saved config:
//     the weights only fit the model they were trained in. A key left at its default is replaced
//     (and the saved config says where the value came from); a key the user set to a different
//     value is an error naming both values.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "psvae/dinov2.h"
#include "tensor/safetensors.h"
#include "train/config.h"

namespace psvae::train {

// ---- schemas ----------------------------------------------------------------------------------
// Each is the whole schema of one command: its model keys, the trainer keys (run.out_dir
// defaulting to runs/encoder, runs/svae, runs/psvae) and the data keys.
ConfigSchema encoder_stage_schema();
ConfigSchema svae_stage_schema();
ConfigSchema psvae_stage_schema();

// ---- key groups -------------------------------------------------------------------------------
void add_encoder_model_keys(ConfigSchema& s);  // model.encoder.*
void add_svae_model_keys(ConfigSchema& s);     // model.latent_dim, model.svae.*
void add_pixdec_model_keys(ConfigSchema& s);   // model.pixdec.*
void add_loss_keys(ConfigSchema& s,
                   bool stage2);  // loss.beta, loss.kl_norm (+ alpha, gamma, lambda)
// add_trainer_keys with run.out_dir's default replaced by `out_dir`.
void add_trainer_keys_with_out_dir(ConfigSchema& s, const std::string& out_dir);

// ---- configs ----------------------------------------------------------------------------------
// model.encoder.*: dinov2_arch(arch) for a published arch, else the custom keys.
Dinov2Config encoder_config(const Config& cfg);
// model.pixdec.channels "128,64,32" -> {128, 64, 32}; throws naming the key on a bad list.
std::vector<int64_t> pixdec_channels(const Config& cfg);
// weights.lpips "a.safetensors,b.safetensors" -> the files (empty when the key is "").
std::vector<std::string> lpips_files(const Config& cfg);

// ---- stage hand-over --------------------------------------------------------------------------
struct StageCheckpoint {
  std::string path;                 // the file read
  safetensors::NamedTensors model;  // the stage's weights, "model."/"ema." prefix removed
  safetensors::NamedTensors task;   // task.* entries, prefix removed
  safetensors::Metadata meta;
  bool used_ema = false;  // parameters came from ema.*
  std::string task_name;  // psvae.task ("encoder", "svae", ...)
};
// Reads the checkpoint named by config key `key` (init.from): a .safetensors file, or a run folder
// (its newest valid checkpoint under checkpoints/). `expect_task` is the task name the file must
// come from ("" = any). Throws naming the key when the value is empty, the path is missing or the
// file is from another stage.
StageCheckpoint read_stage_checkpoint(const Config& cfg, const std::string& key,
                                      const std::string& expect_task, const std::string& what_for);
// The same for a path (no key): `psvae reconstruct`, tests.
StageCheckpoint read_stage_checkpoint_file(const std::string& path);

// The entries of `sd` whose names start with `prefix` ("encoder."), with the prefix removed.
safetensors::NamedTensors sub_state(const safetensors::NamedTensors& sd, const std::string& prefix);

// Copies into `cfg` the values of the keys starting with any of `prefixes` from the checkpoint's
// saved config (see the hand-over rules above). Keys unknown to cfg's schema are skipped.
void inherit_arch_keys(Config& cfg, const StageCheckpoint& ckpt,
                       const std::vector<std::string>& prefixes);

}  // namespace psvae::train
