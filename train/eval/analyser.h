// A deterministic analyser of images of the built-in synthetic dataset: which colour and which
// shape does an image show? The demo scores every generated image against its prompt with it, so
// it is written for the dataset (no learned weights) and tested on real dataset images.
//
// Colour: the pixels whose saturation stands out from the background's (which stays below ~0.15)
// vote by hue for the nearest of the six dataset hues. Shape: the mask of those pixels is compared
// by geometric features (fill of the bounding box, symmetry, where the mass sits) - see the .cpp.
#pragma once
#include <string>

#include "tensor/tensor.h"

namespace psvae::train {

struct Analysis {
  int colour = -1;        // 0..5 as synthetic_colour_name, -1 = no coloured object found
  int shape = -1;         // 0..3 as synthetic_shape_name, -1 = undecided
  double confidence = 0;  // in [0, 1]
};

// image (3,H,W) f32 in [-1,1], CPU, any H = W >= 16.
Analysis analyse_synthetic(const Tensor& image);

// "a red circle on the left" -> colour 0, shape 0 (-1 where a word is missing).
struct PromptTarget {
  int colour = -1, shape = -1;
};
PromptTarget parse_synthetic_prompt(const std::string& prompt);

}  // namespace psvae::train
