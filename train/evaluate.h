// The evaluation `psvae eval` and `psvae demo` share: how well a PS-VAE gives images back, and,
// with a DiT run, how well generations follow their prompts and how close they are to real images.
//
//   reconstruction  num_recon held-out images -> PS-VAE (evaluation mode, z = mu) -> clamp [-1,1]
//                   PSNR, SSIM (train/metrics.h), LPIPS (weights given), on the synthetic
//                   dataset the analyser's accuracy on the reconstructions (do shapes survive?),
//                   and the Frechet distances below between reconstructions and originals
//   generation      the 24 prompts "a <colour> <shape>" (class models: label shape*6 + colour),
//                   per_prompt images each, once with CFG (cfg_scale) and once without (scale 1),
//                   the same starting noise for both (image i of both runs uses noise (seed, i));
//                   each image scored by the analyser (train/eval/analyser.h) against its prompt
//   Frechet         generated vs the real held-out images, per guidance setting, on
//                   - encoder features (always): the PS-VAE's frozen encoder_ref, per image
//                     [CLS token, mean of the patch tokens] (2D values). The CLS token is what
//                     stage 0 trained for classification; the mean patch token is what the latent
//                     is made from. encoder_ref, not the fine-tuned encoder, so the features do
//                     not depend on what stage 2 did to the encoder.
//                   - DINOv2 CLS features at 224x224 (bicubic resize): FD-DINOv2, weights given
//                   - Inception-v3 pool3 (psvae/inception.h): FID, weights given
//                   fd_real_floor is the same encoder FD between two sets of real images of the
//                   generated sets' size: the estimator's bias at this sample size, the value a
//                   perfect generator would get.
//
// Held-out images: synthetic data with seed held_out_seed(data.seed) (never trained on); a CIFAR-10
// run uses the test split; an image folder run uses its folder (not held out: said in `images`).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tensor/device.h"
#include "tensor/tensor.h"
#include "train/eval/analyser.h"

namespace psvae::train {

struct EvalOptions {
  std::string psvae;  // train-psvae checkpoint (.safetensors) or run folder (newest checkpoint)
  std::string dit;    // train-dit checkpoint or run folder; "" = reconstruction metrics only
  int64_t num_recon = 256;  // held-out images: reconstruction metrics and the real FD set
  int64_t per_prompt = 8;   // generated images per prompt and guidance setting
  double cfg_scale = 4.0;   // the guided run; the unguided run has scale 1
  int steps = 25;
  std::string sampler;             // "" = ddim (eps, v objectives) or euler (flow)
  uint64_t seed = 0;               // generation noise
  int64_t batch = 32;              // images per model call
  std::vector<std::string> lpips;  // LPIPS weight files (backbone + lin); empty = not measured
  std::string dinov2;              // DINOv2 weights (.safetensors); "" = no FD-DINOv2
  std::string inception;           // pt_inception-2015-12-05 as safetensors; "" = no FID
  Device device = Device::cpu();
  bool verbose = true;  // progress lines on stdout
};

// How many images had the right colour / shape / both; `none` found no coloured object.
struct Accuracy {
  int64_t n = 0, colour = 0, shape = 0, both = 0, none = 0;
  double colour_rate() const { return n ? static_cast<double>(colour) / n : 0.0; }
  double shape_rate() const { return n ? static_cast<double>(shape) / n : 0.0; }
  double both_rate() const { return n ? static_cast<double>(both) / n : 0.0; }
  void add(const Analysis& a, int colour_truth, int shape_truth);
};

struct ReconMetrics {
  int64_t n = 0;
  int image_size = 0;
  std::string images;  // where the images came from: "synthetic seed 1000003 (held out)", ...
  double psnr = 0, ssim = 0;
  std::optional<double> lpips;
  std::optional<Accuracy> analyser;  // synthetic only: analyser on reconstructions vs truth
  // Frechet distance of the reconstructions to the originals: encoder features (rFD), DINOv2 and
  // Inception (rFID) when their weights are given.
  double fd_encoder = 0;
  std::optional<double> fd_dinov2, fid;
  Tensor originals, reconstructions;  // (n,3,H,W) f32 CPU in [-1,1] (reconstructions clamped)
};

// One guidance setting's generations.
struct GenerationRun {
  double cfg_scale = 1.0;
  Accuracy accuracy;
  std::vector<Accuracy> per_prompt;  // in GenerationMetrics::prompts order
  std::vector<Analysis> analyses;    // per image
  double fd_encoder = 0;
  std::optional<double> fd_dinov2, fid;
  Tensor images;       // (P*K,3,H,W) f32 CPU in [-1,1]; prompt p's images are rows [p*K, p*K + K)
  double seconds = 0;  // generation wall time
};

struct GenerationMetrics {
  std::vector<std::string> prompts;  // "a red circle", ...: colour-major (colour c, shape s at
                                     // index c * 4 + s)
  std::vector<PromptTarget> targets;
  std::string cond_kind;  // "class" | "text" | "external"
  std::string sampler;    // as run
  int steps = 0;
  int64_t per_prompt = 0;
  GenerationRun guided, unguided;
  double fd_real_floor = 0;  // encoder FD between two real sets of P*K images
};

struct EvalResult {
  EvalOptions options;
  std::string psvae_path, dit_path;  // the checkpoint files actually read
  std::string features;              // how the encoder FD features are made (one line)
  ReconMetrics recon;
  std::optional<GenerationMetrics> generation;
  double seconds = 0;
};

// Runs everything the options ask for. Throws std::runtime_error naming the file or value at fault
// (a checkpoint of the wrong stage, a DiT run of a non-synthetic dataset, a sampler that does not
// fit the objective, weights that do not load).
EvalResult evaluate(const EvalOptions& o);

// Every number and setting (no images). Non-finite numbers are written as strings ("inf"), values
// not measured as null.
nlohmann::json eval_to_json(const EvalResult& r);
// The table `psvae eval` prints.
std::string format_eval_table(const EvalResult& r);

// The 24 prompts of the synthetic dataset, colour-major ("a red circle", "a red square", ...).
std::vector<std::string> synthetic_prompts();

}  // namespace psvae::train
