// What `psvae demo` writes after its stages: the PNGs, out/demo/metrics.json and
// out/demo/report.html. Kept apart from the command (train/commands_demo.cpp) so the page and the
// JSON have one definition each: every number on the page is read from the same DemoSummary the
// JSON is written from.
//
//   OUT/report.html            curves of every stage, reconstructions, a generation grid per
//                              prompt (with and without guidance), edit and inpainting examples,
//                              the metrics table with targets and pass/fail
//   OUT/metrics.json           demo_to_json(): every number and setting (see the .cpp for keys)
//   OUT/reconstructions.png    held-out originals (odd rows) over their reconstructions
//   OUT/generations_cfg.png    one row per prompt, guided; generations_nocfg.png unguided
//   OUT/grids/NN_<prompt>.png  one grid per prompt (guided)
//   OUT/edit.png, inpaint.png  the examples, one row each: source | mask | result
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tensor/tensor.h"
#include "train/eval/analyser.h"
#include "train/evaluate.h"

namespace psvae::train {

// One training stage as the demo ran it.
struct DemoStage {
  std::string name;     // "encoder", "svae", "psvae", "dit"
  std::string command;  // "train-encoder", ...
  std::string run_dir;  // relative to the demo's output folder: "runs/encoder"
  double seconds = 0;   // wall time of the stage in this process (0 when reused)
  bool reused = false;  // --resume found it finished and did not run it again
  int64_t steps = 0;
  int64_t parameters = 0;  // of the stage's model (model.* tensors of its final checkpoint)
  std::string checkpoint;  // the final checkpoint file
};

// An edit or inpainting example: the source image, the prompt it was steered to, the result and
// what the analyser sees in the result.
struct DemoExample {
  std::string source_caption, prompt;
  Tensor source, result;  // (3,H,W) f32 in [-1,1]
  Tensor mask;            // inpainting: (1,H,W), 1 = kept; undefined for edits
  Analysis analysis;      // of result
  PromptTarget target;    // parsed from prompt
  bool follows() const {
    return analysis.colour == target.colour && analysis.shape == target.shape;
  }
};

// A target of the demo (issue 5): the measured value against a threshold; `gating` targets decide
// the exit status, the others are shown for information.
struct DemoTarget {
  std::string key;    // "psnr"
  std::string label;  // "reconstruction PSNR (held out)"
  double value = 0, threshold = 0;
  bool higher_is_better = true;
  std::string unit;  // "dB", "%", "s"
  bool gating = true;
  bool pass() const { return higher_is_better ? value >= threshold : value <= threshold; }
};

struct DemoSummary {
  std::string profile;  // "cpu", "cuda", "tiny"
  std::string device;
  int threads = 0;
  std::string out_dir;  // absolute
  std::vector<DemoStage> stages;
  double eval_seconds = 0, examples_seconds = 0, total_seconds = 0;
  EvalResult eval;
  std::vector<DemoExample> edits, inpaints;
  std::string edit_method;  // "sdedit strength 0.7"
  std::vector<DemoTarget> targets;
  bool check_targets = true;  // false under --tiny: reported, not enforced
  // Sizes: the data and the latent the DiT works in.
  int image_size = 0;
  int64_t dataset_images = 0;
  Shape latent_shape;  // (L, h, w)
  // The checked targets that missed, as one line ("" when all pass or none are checked).
  std::string missed() const;
};

// Writes the PNGs listed above into s.out_dir (atomically, creating grids/).
void write_demo_images(const DemoSummary& s);
nlohmann::json demo_to_json(const DemoSummary& s);
// report.html in s.out_dir (atomically); reads each stage's metrics.jsonl for the curves.
void write_demo_report(const DemoSummary& s);

// "a red circle" -> "a_red_circle" (file names of the per-prompt grids).
std::string prompt_slug(const std::string& prompt);

}  // namespace psvae::train
