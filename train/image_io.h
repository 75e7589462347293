// Images on disk and in tensors: PNG/JPEG decoding through stb (Debian libstb-dev), PNG writing
// (atomic), conversion between 8-bit RGB and (3,H,W) f32 tensors in [-1, 1], and sample grids.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace psvae::train {

// A bad image file or dataset entry; the message starts with the path.
struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // height * width * 3, row-major, interleaved RGB
};

Image load_image(const std::string& path);  // PNG, JPEG (and whatever stb reads); throws DataError
// True when the header is readable (cheap: no full decode); fills width/height.
bool probe_image(const std::string& path, int* width, int* height);
void save_png(const std::string& path, const Image& img);  // atomic; throws naming the path

// (3,H,W) f32 in [-1,1] <-> 8-bit RGB. Values outside [-1,1] are clamped; rounding to nearest.
Tensor image_to_tensor(const Image& img);
Image tensor_to_image(const Tensor& chw);

// Tiles images (N,3,H,W) in [-1,1] into a grid of `nrow` per row with `pad` pixels of the given
// grey level between them (as torchvision's make_grid).
Image make_grid(const Tensor& images, int nrow, int pad = 2, uint8_t pad_value = 255);

// Resampling of an 8-bit image, separable, with PIL's BICUBIC kernel (a = -0.5) widened by the
// scale factor when shrinking (antialiasing), as torchvision's Resize on PIL images.
Image resize_bicubic(const Image& img, int out_w, int out_h);
// Resize so the short side is `size`, then crop the central size x size square.
Image resize_center_crop(const Image& img, int size);

}  // namespace psvae::train
