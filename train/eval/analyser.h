// A deterministic analyser of images of the built-in synthetic dataset: which colour and which
// shape does an image show? The demo scores every generated image against its prompt with it, so
// it is written for the dataset (no learned weights) and tested on real dataset images.
//
// Colour: the hue of the pixels whose chroma stands out from the background's (which stays below
// ~0.2), nearest of the six dataset hues. Shape: the object's coverage map (each pixel's colour
// projected between the fitted background and the object colour) is fit by each of the four
// shape templates (centre, size and a blur free), and the best fit wins - see the .cpp.
// Measured on held-out dataset images: 100% at 32x32 and 64x64, also after a 3x3 box blur
// (tests/train/test_analyser.cpp). About 1.5 ms per image.
#pragma once
#include <string>

#include "tensor/tensor.h"

namespace psvae::train {

struct Analysis {
  int colour = -1;        // 0..5 as synthetic_colour_name, -1 = no coloured object found
  int shape = -1;         // 0..3 as synthetic_shape_name, -1 = undecided
  double confidence = 0;  // in [0, 1]
};

// image (3,H,W) in [-1,1] (f32, f64 or bf16, any device), any H = W >= 16. Thread-safe.
Analysis analyse_synthetic(const Tensor& image);

// "a red circle on the left" -> colour 0, shape 0 (-1 where a word is missing).
struct PromptTarget {
  int colour = -1, shape = -1;
};
PromptTarget parse_synthetic_prompt(const std::string& prompt);

}  // namespace psvae::train
