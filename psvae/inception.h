// The Inception-v3 feature extractor of FID (Heusel et al. 2017), as pytorch-fid builds it
// (mseitzer/pytorch-fid, src/pytorch_fid/inception.py: fid_inception_v3 + InceptionV3 with the
// default output block 3): the pool3 features (2048-d) of the TensorFlow 2015-12-05 Inception
// weights, ported to PyTorch as pt_inception-2015-12-05-6726825d.pth.
//
//   images (N,3,H,W) in [-1,1]   (pytorch-fid takes [0,1] and maps it by 2x - 1: ours already are)
//     -> bilinear resize to 299x299 (align_corners false)
//     block 0: Conv2d_1a_3x3 (32, s2) -> Conv2d_2a_3x3 (32) -> Conv2d_2b_3x3 (64, p1)
//              -> max pool 3/2                                           (N,64,73,73)
//     block 1: Conv2d_3b_1x1 (80) -> Conv2d_4a_3x3 (192) -> max pool 3/2  (N,192,35,35)
//     block 2: Mixed_5b, 5c, 5d (FIDInceptionA) -> Mixed_6a (InceptionB)
//              -> Mixed_6b..6e (FIDInceptionC)                           (N,768,17,17)
//     block 3: Mixed_7a (InceptionD) -> Mixed_7b (FIDInceptionE_1) -> Mixed_7c (FIDInceptionE_2)
//              -> global average pool                                    (N,2048)
// Each BasicConv2d is conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU; the
// BatchNorm is folded into the conv at each forward (w * gamma / sqrt(var + eps), beta - mean *
// gamma / sqrt(var + eps)). The FID blocks differ from torchvision's: their branch-pool average
// pools exclude the padding from the divisor (count_include_pad=False, TensorFlow's), and
// Mixed_7c's branch pool is a 3x3 max pool (stride 1, pad 1).
//
// Weights: the state_dict names of pytorch-fid's model (torchvision Inception3 names:
// "Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch5x5_1.bn.running_mean", ...). The .pth is not a
// format psvae reads; convert it once with torch:
//   sd = torch.load("pt_inception-2015-12-05-6726825d.pth")
//   safetensors_io.save("pt_inception-2015-12-05.safetensors", sd)   (tests/reference/)
// load() ignores fc.* (the 1008-way classifier), AuxLogits.* and bn.num_batches_tracked.
// Inference only: forward runs without any autograd graph, in the weights' dtype (f32).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"

namespace psvae {

class InceptionV3 : public nn::Module {
 public:
  static constexpr int kInputSize = 299;
  static constexpr int kFeatures = 2048;
  static constexpr double kBatchNormEps = 1e-3;

  // The structure with placeholder weights (zeros, unit running variance): load() or init_philox()
  // fills it.
  InceptionV3();

  // From a safetensors file of the pt_inception state_dict. Throws naming the file: a .pth file,
  // a file that is not these weights (no Conv2d_1a_3x3.conv.weight), and, listed together, every
  // missing key, unexpected key and wrong shape.
  static std::shared_ptr<InceptionV3> load(const std::string& path);

  // Seeded weights that tests/reference/inception_golden.py regenerates bit for bit
  // (tests/reference/philox.py), so the parity test needs no 96 MB file. One Generator(seed) fills
  // every state_dict entry in order (per BasicConv2d: conv.weight, bn.weight, bn.bias,
  // bn.running_mean, bn.running_var), each fill taking the next ceil(n/4) counters:
  //   conv.weight U(-b, b), b = sqrt(6 / fan_in) (He-uniform: activations stay O(1) through the
  //   94 conv-BN-ReLU layers); bn.weight U(0.5, 1.5); bn.bias U(-0.2, 0.2);
  //   bn.running_mean U(-0.2, 0.2); bn.running_var U(0.5, 1.5).
  void init_philox(uint64_t seed);

  // pool3 features (N, 2048) of images (N,3,H,W) in [-1,1] on the module's device.
  Tensor forward(const Tensor& images) const;
  // pytorch-fid's output blocks 0..last_block (at most 3), in order: (N,64,73,73), (N,192,35,35),
  // (N,768,17,17), (N,2048) for a 299x299 input.
  std::vector<Tensor> forward_blocks(const Tensor& images, int last_block = 3) const;

  std::shared_ptr<nn::Module> clone() const override;

 private:
  struct Layers;
  std::shared_ptr<Layers> layers_;  // typed pointers to the children, in forward order
};

}  // namespace psvae
