#include "psvae/inception.h"

#include <fmt/format.h>

#include <cmath>
#include <map>
#include <stdexcept>

#include "autograd/grad_mode.h"
#include "kernels/ops.h"
#include "tensor/random.h"

namespace psvae {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

struct ConvSpec {
  int64_t in = 0, out = 0;
  int kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
};
// kernel k x k, stride s, padding p.
ConvSpec sq(int64_t in, int64_t out, int k, int s = 1, int p = 0) {
  return {in, out, k, k, s, s, p, p};
}
// kernel kh x kw with "same" padding (stride 1): torchvision's (1,7)/(7,1)/(1,3)/(3,1) convs.
ConvSpec rect(int64_t in, int64_t out, int kh, int kw) {
  return {in, out, kh, kw, 1, 1, kh / 2, kw / 2};
}

// torchvision's BasicConv2d children: "conv" (Conv2d without bias) and "bn" (BatchNorm2d).
class ConvWeight : public nn::Module {
 public:
  explicit ConvWeight(const Shape& s) : w_(&register_parameter("weight", Tensor::zeros(s))) {}
  const Tensor& weight() const { return w_->data(); }
  std::shared_ptr<nn::Module> clone() const override {
    auto m = std::make_shared<ConvWeight>(weight().shape());
    m->copy_state_from(*this);
    return m;
  }

 private:
  nn::Var* w_;
};

class BatchNorm : public nn::Module {
 public:
  explicit BatchNorm(int64_t c)
      : weight_(&register_parameter("weight", Tensor::full({c}, 1.0))),
        bias_(&register_parameter("bias", Tensor::zeros({c}))),
        mean_(&register_buffer("running_mean", Tensor::zeros({c}))),
        var_(&register_buffer("running_var", Tensor::full({c}, 1.0))) {}
  std::shared_ptr<nn::Module> clone() const override {
    auto m = std::make_shared<BatchNorm>(mean_->size(0));
    m->copy_state_from(*this);
    return m;
  }
  // The inference transform as y = x * scale + shift per channel.
  void affine(Tensor& scale, Tensor& shift) const {
    scale =
        ops::mul(weight_->data(), ops::rsqrt(ops::add_scalar(*var_, InceptionV3::kBatchNormEps)));
    shift = ops::sub(bias_->data(), ops::mul(*mean_, scale));
  }

 private:
  nn::Var* weight_;
  nn::Var* bias_;
  Tensor* mean_;
  Tensor* var_;
};

class BasicConv2d : public nn::Module {
 public:
  explicit BasicConv2d(const ConvSpec& s) : spec_(s) {
    conv_ = register_module("conv", std::make_shared<ConvWeight>(Shape{s.out, s.in, s.kh, s.kw}));
    bn_ = register_module("bn", std::make_shared<BatchNorm>(s.out));
  }
  std::shared_ptr<nn::Module> clone() const override {
    auto m = std::make_shared<BasicConv2d>(spec_);
    m->copy_state_from(*this);
    return m;
  }
  // relu(bn(conv(x))) with the BatchNorm folded into the conv's weight and bias.
  Tensor forward(const Tensor& x) const {
    Tensor scale, shift;
    bn_->affine(scale, shift);
    const Tensor& w = conv_->weight();
    Tensor wf = ops::mul(w, scale.reshape({w.size(0), 1, 1, 1}));
    ops::Conv2dParams p;
    p.stride_h = spec_.sh, p.stride_w = spec_.sw, p.pad_h = spec_.ph, p.pad_w = spec_.pw;
    return ops::relu(ops::conv2d(x, wf, shift, p));
  }

 private:
  ConvSpec spec_;
  std::shared_ptr<ConvWeight> conv_;
  std::shared_ptr<BatchNorm> bn_;
};

Tensor max_pool(const Tensor& x, int k, int s, int p) {
  ops::Pool2dParams pp;
  pp.kh = pp.kw = k;
  pp.stride_h = pp.stride_w = s;
  pp.pad_h = pp.pad_w = p;
  return ops::max_pool2d(x, pp).first;
}

// F.avg_pool2d(x, 3, stride 1, padding 1, count_include_pad=False): ops::avg_pool2d divides every
// window by 9, so the result is rescaled by 9 / (in-bounds taps): 9/4 at corners, 9/6 on edges.
Tensor avg_pool_3x3_exclude_pad(const Tensor& x) {
  ops::Pool2dParams pp;
  pp.kh = pp.kw = 3;
  pp.stride_h = pp.stride_w = 1;
  pp.pad_h = pp.pad_w = 1;
  const int64_t H = x.size(2), W = x.size(3);
  Tensor fix = Tensor::empty({1, 1, H, W}, DType::F64);
  for (int64_t i = 0; i < H; ++i)
    for (int64_t j = 0; j < W; ++j) {
      const int64_t rows = 3 - (i == 0) - (i == H - 1), cols = 3 - (j == 0) - (j == W - 1);
      fix.data<double>()[i * W + j] = 9.0 / static_cast<double>(rows * cols);
    }
  return ops::mul(ops::avg_pool2d(x, pp), ops::cast(fix, x.dtype()).to(x.device()));
}

// One of torchvision's Inception blocks, with pytorch-fid's patches where they apply.
class Block : public nn::Module {
 public:
  enum Kind { kA, kB, kC, kD, kE1, kE2 };
  // param: pool_features (A), channels_7x7 (C); unused otherwise.
  Block(Kind k, int64_t in, int64_t param = 0) : kind_(k), in_(in), param_(param) {
    switch (k) {
      case kA:  // FIDInceptionA: 64 + 64 + 96 + pool_features channels
        add("branch1x1", sq(in, 64, 1));
        add("branch5x5_1", sq(in, 48, 1));
        add("branch5x5_2", sq(48, 64, 5, 1, 2));
        add("branch3x3dbl_1", sq(in, 64, 1));
        add("branch3x3dbl_2", sq(64, 96, 3, 1, 1));
        add("branch3x3dbl_3", sq(96, 96, 3, 1, 1));
        add("branch_pool", sq(in, param, 1));
        break;
      case kB:  // InceptionB (Mixed_6a): 384 + 96 + in, stride 2
        add("branch3x3", sq(in, 384, 3, 2));
        add("branch3x3dbl_1", sq(in, 64, 1));
        add("branch3x3dbl_2", sq(64, 96, 3, 1, 1));
        add("branch3x3dbl_3", sq(96, 96, 3, 2));
        break;
      case kC: {  // FIDInceptionC: 4 x 192 channels
        const int64_t c7 = param;
        add("branch1x1", sq(in, 192, 1));
        add("branch7x7_1", sq(in, c7, 1));
        add("branch7x7_2", rect(c7, c7, 1, 7));
        add("branch7x7_3", rect(c7, 192, 7, 1));
        add("branch7x7dbl_1", sq(in, c7, 1));
        add("branch7x7dbl_2", rect(c7, c7, 7, 1));
        add("branch7x7dbl_3", rect(c7, c7, 1, 7));
        add("branch7x7dbl_4", rect(c7, c7, 7, 1));
        add("branch7x7dbl_5", rect(c7, 192, 1, 7));
        add("branch_pool", sq(in, 192, 1));
        break;
      }
      case kD:  // InceptionD (Mixed_7a): 320 + 192 + in, stride 2
        add("branch3x3_1", sq(in, 192, 1));
        add("branch3x3_2", sq(192, 320, 3, 2));
        add("branch7x7x3_1", sq(in, 192, 1));
        add("branch7x7x3_2", rect(192, 192, 1, 7));
        add("branch7x7x3_3", rect(192, 192, 7, 1));
        add("branch7x7x3_4", sq(192, 192, 3, 2));
        break;
      case kE1:
      case kE2:  // FIDInceptionE_1 / _2: 320 + 768 + 768 + 192 = 2048 channels
        add("branch1x1", sq(in, 320, 1));
        add("branch3x3_1", sq(in, 384, 1));
        add("branch3x3_2a", rect(384, 384, 1, 3));
        add("branch3x3_2b", rect(384, 384, 3, 1));
        add("branch3x3dbl_1", sq(in, 448, 1));
        add("branch3x3dbl_2", sq(448, 384, 3, 1, 1));
        add("branch3x3dbl_3a", rect(384, 384, 1, 3));
        add("branch3x3dbl_3b", rect(384, 384, 3, 1));
        add("branch_pool", sq(in, 192, 1));
        break;
    }
  }
  std::shared_ptr<nn::Module> clone() const override {
    auto m = std::make_shared<Block>(kind_, in_, param_);
    m->copy_state_from(*this);
    return m;
  }

  Tensor forward(const Tensor& x) const {
    switch (kind_) {
      case kA: {
        Tensor b1 = c("branch1x1", x);
        Tensor b5 = c("branch5x5_2", c("branch5x5_1", x));
        Tensor b3 = c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x)));
        Tensor bp = c("branch_pool", avg_pool_3x3_exclude_pad(x));
        return ops::concat({b1, b5, b3, bp}, 1);
      }
      case kB: {
        Tensor b3 = c("branch3x3", x);
        Tensor bd = c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x)));
        return ops::concat({b3, bd, max_pool(x, 3, 2, 0)}, 1);
      }
      case kC: {
        Tensor b1 = c("branch1x1", x);
        Tensor b7 = c("branch7x7_3", c("branch7x7_2", c("branch7x7_1", x)));
        Tensor bd = x;
        for (const char* n : {"branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3",
                              "branch7x7dbl_4", "branch7x7dbl_5"})
          bd = c(n, bd);
        Tensor bp = c("branch_pool", avg_pool_3x3_exclude_pad(x));
        return ops::concat({b1, b7, bd, bp}, 1);
      }
      case kD: {
        Tensor b3 = c("branch3x3_2", c("branch3x3_1", x));
        Tensor b7 = x;
        for (const char* n : {"branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"})
          b7 = c(n, b7);
        return ops::concat({b3, b7, max_pool(x, 3, 2, 0)}, 1);
      }
      case kE1:
      case kE2: {
        Tensor b1 = c("branch1x1", x);
        Tensor t3 = c("branch3x3_1", x);
        Tensor b3 = ops::concat({c("branch3x3_2a", t3), c("branch3x3_2b", t3)}, 1);
        Tensor td = c("branch3x3dbl_2", c("branch3x3dbl_1", x));
        Tensor bd = ops::concat({c("branch3x3dbl_3a", td), c("branch3x3dbl_3b", td)}, 1);
        // E_1: TensorFlow's average pool without the padding; E_2 (Mixed_7c): a max pool, as the
        // ported TF graph has it.
        Tensor pooled = kind_ == kE1 ? avg_pool_3x3_exclude_pad(x) : max_pool(x, 3, 1, 1);
        return ops::concat({b1, b3, bd, c("branch_pool", pooled)}, 1);
      }
    }
    return x;
  }

 private:
  void add(const std::string& name, const ConvSpec& s) {
    convs_[name] = register_module(name, std::make_shared<BasicConv2d>(s)).get();
  }
  Tensor c(const std::string& name, const Tensor& x) const { return convs_.at(name)->forward(x); }

  Kind kind_;
  int64_t in_, param_;
  std::map<std::string, BasicConv2d*> convs_;
};

}  // namespace

struct InceptionV3::Layers {
  std::vector<BasicConv2d*> stem;  // Conv2d_1a_3x3 .. Conv2d_4a_3x3
  std::vector<Block*> mixed;       // Mixed_5b .. Mixed_7c
};

InceptionV3::InceptionV3() : layers_(std::make_shared<Layers>()) {
  auto stem = [&](const char* name, const ConvSpec& s) {
    layers_->stem.push_back(register_module(name, std::make_shared<BasicConv2d>(s)).get());
  };
  auto mixed = [&](const char* name, Block::Kind k, int64_t in, int64_t param = 0) {
    layers_->mixed.push_back(register_module(name, std::make_shared<Block>(k, in, param)).get());
  };
  // torchvision Inception3's registration order (= its state_dict order).
  stem("Conv2d_1a_3x3", sq(3, 32, 3, 2));
  stem("Conv2d_2a_3x3", sq(32, 32, 3));
  stem("Conv2d_2b_3x3", sq(32, 64, 3, 1, 1));
  stem("Conv2d_3b_1x1", sq(64, 80, 1));
  stem("Conv2d_4a_3x3", sq(80, 192, 3));
  mixed("Mixed_5b", Block::kA, 192, 32);
  mixed("Mixed_5c", Block::kA, 256, 64);
  mixed("Mixed_5d", Block::kA, 288, 64);
  mixed("Mixed_6a", Block::kB, 288);
  mixed("Mixed_6b", Block::kC, 768, 128);
  mixed("Mixed_6c", Block::kC, 768, 160);
  mixed("Mixed_6d", Block::kC, 768, 160);
  mixed("Mixed_6e", Block::kC, 768, 192);
  mixed("Mixed_7a", Block::kD, 768);
  mixed("Mixed_7b", Block::kE1, 1280);
  mixed("Mixed_7c", Block::kE2, 2048);
  set_requires_grad(false);
  eval();
}

std::shared_ptr<nn::Module> InceptionV3::clone() const {
  auto m = std::make_shared<InceptionV3>();
  m->copy_state_from(*this);
  return m;
}

std::shared_ptr<InceptionV3> InceptionV3::load(const std::string& path) {
  if (ends_with(path, ".pth") || ends_with(path, ".pt"))
    throw std::runtime_error(fmt::format(
        "{}: a PyTorch pickle; convert it to safetensors first (psvae/inception.h says how)",
        path));
  nn::NamedTensors sd;
  bool found = false;
  for (auto& [name, t] : safetensors::load(path)) {
    // The classifier, the auxiliary head and BatchNorm's step counter are not used for features.
    if (starts_with(name, "fc.") || starts_with(name, "AuxLogits.") ||
        ends_with(name, ".num_batches_tracked"))
      continue;
    found |= name == "Conv2d_1a_3x3.conv.weight";
    sd.emplace_back(name, t);
  }
  if (!found)
    throw std::runtime_error(fmt::format(
        "{}: not the pytorch-fid Inception weights (no tensor 'Conv2d_1a_3x3.conv.weight')", path));
  auto m = std::make_shared<InceptionV3>();
  try {
    m->load_state_dict(sd, /*strict=*/true);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: Inception-v3 (FID) weights: {}", path, e.what()));
  }
  return m;
}

void InceptionV3::init_philox(uint64_t seed) {
  Generator g(seed);
  for (auto& [name, t] : state_dict()) {  // tensors share the parameters' storage
    Tensor v = t;
    if (ends_with(name, ".conv.weight")) {
      const double b = std::sqrt(6.0 / static_cast<double>(t.size(1) * t.size(2) * t.size(3)));
      g.uniform_(v, -b, b);
    } else if (ends_with(name, ".bn.weight") || ends_with(name, ".bn.running_var")) {
      g.uniform_(v, 0.5, 1.5);
    } else {  // bn.bias, bn.running_mean
      g.uniform_(v, -0.2, 0.2);
    }
  }
}

std::vector<Tensor> InceptionV3::forward_blocks(const Tensor& images, int last_block) const {
  check(images.rank() == 4 && images.size(1) == 3,
        fmt::format("InceptionV3: expected images (N,3,H,W), got {}", images.shape().str()));
  check(last_block >= 0 && last_block <= 3,
        fmt::format("InceptionV3: last_block {} is not in 0..3", last_block));
  ag::NoGradGuard no_grad;
  Tensor x = images;
  if (x.size(2) != kInputSize || x.size(3) != kInputSize)
    x = ops::upsample_bilinear(x, kInputSize, kInputSize, /*align_corners=*/false);
  const auto& st = layers_->stem;
  const auto& mx = layers_->mixed;
  std::vector<Tensor> out;
  x = max_pool(st[2]->forward(st[1]->forward(st[0]->forward(x))), 3, 2, 0);  // (N,64,73,73)
  out.push_back(x);
  if (last_block == 0) return out;
  x = max_pool(st[4]->forward(st[3]->forward(x)), 3, 2, 0);  // (N,192,35,35)
  out.push_back(x);
  if (last_block == 1) return out;
  for (size_t i = 0; i < 8; ++i) x = mx[i]->forward(x);  // Mixed_5b .. Mixed_6e: (N,768,17,17)
  out.push_back(x);
  if (last_block == 2) return out;
  for (size_t i = 8; i < mx.size(); ++i) x = mx[i]->forward(x);        // (N,2048,8,8)
  out.push_back(ops::mean(x.reshape({x.size(0), x.size(1), -1}), 2));  // (N,2048)
  return out;
}

Tensor InceptionV3::forward(const Tensor& images) const { return forward_blocks(images, 3).back(); }

}  // namespace psvae
