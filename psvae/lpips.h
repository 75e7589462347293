// LPIPS v0.1 (Zhang et al. 2018, richzhang/PerceptualSimilarity): a learned perceptual distance
// between two images, used as a training loss (differentiable w.r.t. both images) and as a metric.
//
//   x0, x1 (N,3,H,W) in [-1,1]
//     -> ScalingLayer (x - shift) / scale                     constants, not in any weight file
//     -> backbone `features` (torchvision VGG16 or AlexNet), tapped 5 times
//     -> per tap k: f / (||f||_channels + 1e-10) for both images, (f0 - f1)^2  (N,C_k,H_k,W_k)
//        -> lin_k: 1x1 conv to one channel, no bias                           (N,1,H_k,W_k)
//        -> mean over H_k, W_k                                                (N)
//     -> sum over the 5 taps                                                  d (N)
//
// Parameter names are torchvision's `features.{idx}.{weight,bias}` and LPIPS's
// `lin{k}.model.1.weight` (1,C_k,1,1), so torchvision's vgg16/alexnet state_dict and the LPIPS
// release's lin weights, converted to safetensors, load unchanged (one merged file or two).
//
// Weights: the lin layers ship with psvae (psvae/weights/lpips/{vgg,alex}.safetensors, BSD-2); the
// ImageNet backbone does not, and the user supplies it. LPIPS::load without a backbone warns and
// returns a disabled object (enabled() false, forward throws): a randomly initialised backbone is
// never used silently as a perceptual loss.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "nn/linear.h"
#include "nn/module.h"

namespace psvae {

class LPIPS : public nn::Cloneable<LPIPS> {
 public:
  enum class Net { vgg, alex };
  struct Config {
    Net net = Net::vgg;
    // Every backbone width divided by this (tests: 8 gives VGG 8,16,32,64,64 and AlexNet
    // 8,24,48,32,32); 1 for the published networks.
    int width_div = 1;
  };
  static constexpr int kTaps = 5;

  // Seeded random weights (He-scaled backbone, non-negative lin), enabled: for tests, and the
  // structure that load() fills. Parameters are frozen (requires_grad false); gradients still
  // flow to the images.
  LPIPS(const Config& c, Generator& g) : LPIPS(c, g, true) {}

  // Builds from safetensors files whose tensors are merged (a torchvision backbone file and the
  // LPIPS lin file, or one file with both); torchvision's unused `classifier.*` keys are ignored,
  // any other unknown key, missing key or wrong shape throws naming the key and both shapes.
  // Without any `features.*` key: prints "warning: LPIPS: no backbone weights given; the
  // perceptual term is off" to stderr, keeps it in warning(), and returns a disabled object.
  static std::shared_ptr<LPIPS> load(const Config& c, const std::vector<std::string>& paths);

  // d (N) for x0, x1 (N,3,H,W) in [-1,1], f32 or f64, on the module's device. Differentiable
  // w.r.t. both images; under ag::NoGradGuard it is the metric. per_layer, when given, receives
  // the 5 per-tap terms (N) that sum to d. Throws when disabled.
  ag::Var forward(const ag::Var& x0, const ag::Var& x1,
                  std::vector<ag::Var>* per_layer = nullptr) const;
  ag::Var operator()(const ag::Var& x0, const ag::Var& x1) const { return forward(x0, x1); }

  // Overwrites the backbone with the seeded random weights that tests/reference/lpips_golden.py
  // regenerates bit for bit (tests/reference/philox.py), so parity tests run the full-width
  // networks without storing them. One Generator(seed) fills each backbone parameter in
  // state_dict order (features.0.weight, features.0.bias, features.2.weight, ...), each fill taking
  // the next ceil(n/4) counters, with fill_uniform's U(-b, b): b = sqrt(6 / fan_in), fan_in =
  // C_in*kh*kw, for weights (He-uniform: activations stay O(1) through 13 ReLU convs) and
  // b = 0.05 for biases. The lin layers are untouched; enables the object (a test backbone).
  void init_backbone_philox(uint64_t seed);

  bool enabled() const { return enabled_; }
  const std::string& warning() const { return warning_; }  // empty unless disabled by load()
  const Config& config() const { return cfg_; }
  std::shared_ptr<nn::Module> clone() const override;

  // Channels of the five taps: VGG 64,128,256,512,512, AlexNet 64,192,384,256,256 (/ width_div).
  static std::vector<int64_t> tap_channels(const Config& c);
  static const char* net_name(Net n) { return n == Net::vgg ? "vgg" : "alex"; }

 private:
  // test_init false keeps nn::Conv2d's default init only: load() overwrites it, and redrawing 15M
  // VGG weights costs a second.
  LPIPS(const Config& c, Generator& g, bool test_init);

  // One entry of torchvision's `features` Sequential: conv (then `conv` is set), ReLU, max pool.
  struct Layer {
    enum Kind { kConv, kRelu, kPool } kind;
    std::shared_ptr<nn::Conv2d> conv;
    int pool_k = 2, pool_stride = 2;
  };
  ag::Var backbone_tap(const ag::Var& x, int tap) const;  // runs layers [tap_begin, tap_end)

  Config cfg_;
  std::vector<Layer> layers_;     // indexed as torchvision's features.{idx}
  std::vector<int> tap_end_;      // taps are [tap_end_[k-1], tap_end_[k]), first from 0
  std::vector<nn::Conv2d*> lin_;  // lin{k}.model.1, (1,C_k,1,1), no bias
  bool enabled_ = true;
  std::string warning_;
};

}  // namespace psvae
