#include "psvae/lpips.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <stdexcept>

#include "autograd/functions.h"
#include "nn/init.h"

namespace psvae {

namespace {

// A container whose children carry explicit names: torchvision's Sequential indices, which skip
// the parameter-free ReLU and pool entries ("features.0", "features.2", "features.5"), and LPIPS's
// NetLinLayer ("lin0.model.1", index 0 being its Dropout).
class Named : public nn::Module {
 public:
  template <class M>
  std::shared_ptr<M> add(const std::string& name, std::shared_ptr<M> m) {
    return register_module(name, std::move(m));
  }
  std::shared_ptr<nn::Module> clone() const override {
    auto c = std::make_shared<Named>();
    for (const auto& [n, child] : children()) c->add(n, child->clone());
    c->train(is_training());
    return c;
  }
};

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// ScalingLayer constants of LPIPS v0.1: ImageNet mean/std mapped to the [-1,1] input range.
constexpr double kShift[3] = {-0.030, -0.088, -0.188};
constexpr double kScale[3] = {0.458, 0.448, 0.450};
constexpr double kNormEps = 1e-10;  // normalize_tensor's eps, added to the norm
// Added under the square root so a dead feature vector (all channels 0 after ReLU) has a finite
// gradient: upstream's sqrt(0) backward is inf * 0 = NaN. It moves the norm of any live vector
// (sum above ~1e-12) by less than one f32 rounding, so the forward values are upstream's.
constexpr double kSqrtFloor = 1e-20;

ag::Var channel_constant(const double (&v)[3], const ag::Var& like) {
  Tensor t = Tensor::from_vector<double>({v[0], v[1], v[2]}, Shape{1, 3, 1, 1});
  return ag::Var(ops::cast(t, like.dtype()).to(like.device()));
}

}  // namespace

std::vector<int64_t> LPIPS::tap_channels(const Config& c) {
  std::vector<int64_t> ch = c.net == Net::vgg ? std::vector<int64_t>{64, 128, 256, 512, 512}
                                              : std::vector<int64_t>{64, 192, 384, 256, 256};
  for (auto& x : ch) x /= c.width_div;
  return ch;
}

LPIPS::LPIPS(const Config& c, Generator& g, bool test_init) : cfg_(c) {
  check(c.width_div >= 1 && 64 % c.width_div == 0,
        fmt::format("LPIPS: width_div {} must divide 64", c.width_div));
  auto features = register_module("features", std::make_shared<Named>());
  int64_t in = 3;
  // conv + ReLU, as torchvision appends them; the conv takes index layers_.size().
  auto conv_relu = [&](int64_t out, int k, int stride, int pad) {
    out /= c.width_div;
    nn::Conv2d::Config cc{in, out, k, stride, pad, true};
    auto conv = features->add(std::to_string(layers_.size()), std::make_shared<nn::Conv2d>(cc, g));
    // He-normal weights keep activations O(1) through VGG's 13 convs; a small positive bias keeps
    // feature vectors off zero. Only for tests: real use loads weights.
    if (test_init) {
      Tensor w = conv->weight().data(), b = conv->bias()->data();
      nn::init::normal_(w, g, std::sqrt(2.0 / static_cast<double>(in * k * k)));
      nn::init::uniform_(b, g, 0.0, 0.1);
    }
    layers_.push_back({Layer::kConv, conv});
    layers_.push_back({Layer::kRelu, nullptr});
    in = out;
  };
  auto pool = [&](int k, int stride) {
    Layer l{Layer::kPool, nullptr};
    l.pool_k = k;
    l.pool_stride = stride;
    layers_.push_back(l);
  };

  if (c.net == Net::vgg) {
    // torchvision vgg16 `features` (cfg D): 3x3 pad 1 convs, 2x2 max pools at 4, 9, 16, 23.
    conv_relu(64, 3, 1, 1), conv_relu(64, 3, 1, 1);                // 0..3   -> relu1_2
    pool(2, 2), conv_relu(128, 3, 1, 1), conv_relu(128, 3, 1, 1);  // 4..8   -> relu2_2
    pool(2, 2), conv_relu(256, 3, 1, 1), conv_relu(256, 3, 1, 1), conv_relu(256, 3, 1, 1);  // ..15
    pool(2, 2), conv_relu(512, 3, 1, 1), conv_relu(512, 3, 1, 1), conv_relu(512, 3, 1, 1);  // ..22
    pool(2, 2), conv_relu(512, 3, 1, 1), conv_relu(512, 3, 1, 1), conv_relu(512, 3, 1, 1);  // ..29
    tap_end_ = {4, 9, 16, 23, 30};  // the final pool (30) is not used by LPIPS
  } else {
    // torchvision alexnet `features`: 11x11/4 conv, 3x3/2 max pools at 2 and 5.
    conv_relu(64, 11, 4, 2);              // 0, 1   -> relu1
    pool(3, 2), conv_relu(192, 5, 1, 2);  // 2..4   -> relu2
    pool(3, 2), conv_relu(384, 3, 1, 1);  // 5..7   -> relu3
    conv_relu(256, 3, 1, 1);              // 8, 9   -> relu4
    conv_relu(256, 3, 1, 1);              // 10, 11 -> relu5
    tap_end_ = {2, 5, 8, 10, 12};         // the final pool (12) is not used by LPIPS
  }

  // lin{k}.model.1: NetLinLayer = Sequential(Dropout, Conv2d(C_k, 1, 1, bias=False)).
  std::vector<int64_t> ch = tap_channels(c);
  for (int k = 0; k < kTaps; ++k) {
    auto lin = register_module("lin" + std::to_string(k), std::make_shared<Named>());
    auto model = lin->add("model", std::make_shared<Named>());
    auto conv = model->add(
        "1", std::make_shared<nn::Conv2d>(nn::Conv2d::Config{ch[k], 1, 1, 1, 0, false}, g));
    Tensor w = conv->weight().data();
    nn::init::uniform_(w, g, 0.0, 2.0 / static_cast<double>(ch[k]));  // LPIPS's are >= 0
    lin_.push_back(conv.get());
  }
  set_requires_grad(false);
  eval();
}

void LPIPS::init_backbone_philox(uint64_t seed) {
  Generator g(seed);
  for (const Layer& l : layers_) {  // features.{idx} in index order: weight, then bias
    if (l.kind != Layer::kConv) continue;
    const Shape ws = l.conv->weight().shape();  // (C_out, C_in, kh, kw)
    const double b = std::sqrt(6.0 / static_cast<double>(ws[1] * ws[2] * ws[3]));
    Tensor w = l.conv->weight().data(), bias = l.conv->bias()->data();  // share the storage
    g.uniform_(w, -b, b);
    g.uniform_(bias, -0.05, 0.05);
  }
  enabled_ = true;
  warning_.clear();
}

std::shared_ptr<nn::Module> LPIPS::clone() const {
  Generator scratch(0);
  std::shared_ptr<LPIPS> m(new LPIPS(cfg_, scratch, /*test_init=*/false));
  m->copy_state_from(*this);
  m->enabled_ = enabled_;
  m->warning_ = warning_;
  return m;
}

std::shared_ptr<LPIPS> LPIPS::load(const Config& c, const std::vector<std::string>& paths) {
  Generator g(0);
  std::shared_ptr<LPIPS> m(new LPIPS(c, g, /*test_init=*/false));
  std::string files;
  for (const auto& p : paths) files += (files.empty() ? "" : ", ") + p;
  const std::string where =
      fmt::format("LPIPS ({}, width_div {}) from {}", net_name(c.net), c.width_div,
                  files.empty() ? std::string("no files") : files);

  nn::NamedTensors merged;
  std::map<std::string, std::string> origin;
  for (const auto& p : paths) {
    for (auto& [name, t] : safetensors::load(p)) {
      if (starts_with(name, "classifier.")) continue;  // torchvision's head, unused by LPIPS
      auto [it, fresh] = origin.emplace(name, p);
      if (!fresh)
        throw std::runtime_error(
            fmt::format("{}: key '{}' is in both {} and {}", where, name, it->second, p));
      merged.emplace_back(name, t);
    }
  }
  bool has_backbone = false;
  for (const auto& [name, t] : merged) has_backbone |= starts_with(name, "features.");
  if (!has_backbone) {
    // Disabled: whatever lin weights were given still load (and are checked); every other slot
    // keeps its random value only to complete the state, and forward() refuses to run.
    for (const auto& [name, t] : m->state_dict())
      if (!origin.count(name)) merged.emplace_back(name, t);
  }
  try {
    m->load_state_dict(merged, /*strict=*/true);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: {}", where, e.what()));
  }
  if (!has_backbone) {
    m->enabled_ = false;
    m->warning_ = "LPIPS: no backbone weights given; the perceptual term is off";
    std::fprintf(stderr, "warning: %s\n", m->warning_.c_str());
  }
  return m;
}

ag::Var LPIPS::backbone_tap(const ag::Var& x, int tap) const {
  ag::Var h = x;
  for (int i = tap == 0 ? 0 : tap_end_[tap - 1]; i < tap_end_[tap]; ++i) {
    const Layer& l = layers_[static_cast<size_t>(i)];
    switch (l.kind) {
      case Layer::kConv: h = l.conv->forward(h); break;
      case Layer::kRelu: h = ag::relu(h); break;
      case Layer::kPool: {
        ops::Pool2dParams p;
        p.kh = p.kw = l.pool_k;
        p.stride_h = p.stride_w = l.pool_stride;
        h = ag::max_pool2d(h, p);
        break;
      }
    }
  }
  return h;
}

ag::Var LPIPS::forward(const ag::Var& x0, const ag::Var& x1,
                       std::vector<ag::Var>* per_layer) const {
  check(enabled_, "LPIPS: disabled (no backbone weights given); check enabled() before forward");
  check(x0.rank() == 4 && x0.size(1) == 3 && x0.shape() == x1.shape(),
        fmt::format("LPIPS: expected two (N,3,H,W) images of the same shape, got {} and {}",
                    x0.shape().str(), x1.shape().str()));
  ag::Var shift = channel_constant(kShift, x0), scale = channel_constant(kScale, x0);
  // The two images go through the backbone separately (not as one 2N batch), so identical images
  // take bit-identical paths and d(x, x) is exactly 0.
  ag::Var h0 = ag::div(ag::sub(x0, shift), scale);  // (N,3,H,W)
  ag::Var h1 = ag::div(ag::sub(x1, shift), scale);
  ag::Var d;
  if (per_layer) per_layer->clear();
  for (int k = 0; k < kTaps; ++k) {
    h0 = backbone_tap(h0, k);  // (N,C_k,H_k,W_k)
    h1 = backbone_tap(h1, k);
    // normalize_tensor, squared difference, 1x1 lin and spatial mean in one fused op
    // (kernels/cpu/lpips.cpp). The lin weights are constants of the metric: frozen here always.
    const ag::Var& lin = lin_[static_cast<size_t>(k)]->weight();  // (1, C, 1, 1)
    check(!lin.requires_grad(),
          fmt::format("LPIPS: lin{}.model.1.weight requires grad; the lin weights are fixed", k));
    ag::Var term = ag::lpips_tap(h0, h1, lin.data().reshape({lin.size(1)}), kNormEps, kSqrtFloor);
    if (per_layer) per_layer->push_back(term);
    d = k == 0 ? term : ag::add(d, term);
  }
  return d;  // (N)
}

}  // namespace psvae
