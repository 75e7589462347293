"""Golden files for psvae/lpips.cpp: LPIPS v0.1 on narrow seeded VGG16 / AlexNet backbones.

The forward is richzhang/PerceptualSimilarity's lpips.LPIPS (version 0.1, lpips=True,
spatial=False): ScalingLayer, the torchvision `features` stack tapped at relu1_2..relu5_3 (VGG) or
relu1..relu5 (AlexNet), normalize_tensor (eps 1e-10), squared difference, the 1x1 lin layers,
spatial_average, sum over taps. The backbones are written layer by layer with torchvision's
indices so the parameter names are `features.{idx}.{weight,bias}`.

The real backbones (15M / 2.5M parameters) would make golden files of tens of MB, so every width is
divided by 8 (VGG 8,16,32,64,64; AlexNet 8,24,48,32,32) and the lin weights are random
non-negative (the real ones are checked separately against their published sums). Weights and
inputs are drawn in float32 and the reference is computed in float64 from those exact values, so
the expected outputs carry no float32 rounding of their own.

Writes tests/reference/golden/lpips_{vgg,alex}_{backbone,lin,io}.safetensors:
  backbone: features.*   lin: lin{k}.model.1.weight   io: x0, x1 (2,3,64,64) in [-1,1],
  d (2), d_layer{k} (2), grad_x0 and grad_x1 = d sum(d) / d x0, x1.

The "full" cases run the published widths with the real v0.1 lin weights
(/work/shared/data/lpips/v0.1/{vgg,alex}.safetensors, shipped as psvae/weights/lpips/) and a seeded
random backbone that both sides regenerate from Philox4x32-10 (tests/reference/philox.py, bit-exact
with tensor/random.cpp), so only inputs and outputs are stored. The scheme is
LPIPS::init_backbone_philox (psvae/lpips.h): one Generator(seed) fills each backbone parameter in
state_dict order (features.0.weight, features.0.bias, features.2.weight, ...), each fill taking
the next ceil(n/4) counters, with U(-b, b) computed as float32(-b + 2b * u) in float64:
b = sqrt(6 / fan_in), fan_in = C_in*kh*kw, for weights (He-uniform) and b = 0.05 for biases.
Seeds: 1234 (vgg, 64x64 inputs: taps 64, 32, 16, 8, 4), 5678 (alex, 96x96: taps 23, 11, 5, 5, 5).
Writes tests/reference/golden/lpips_{vgg,alex}_full_io.safetensors: x0, x1 (2,3,S,S), d (2),
d_layer{k} (2), grad_x0, grad_x1, and per backbone parameter P the checksums of its generated
values ck.P.first8 (f32, the first 8), ck.P.sum (f64, exact sum) and ck.P.bitsum (i64, the sum of
the f32 bit patterns as unsigned integers: bit-exact over every element).
Run: /usr/bin/python3 tests/reference/lpips_golden.py
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import philox  # noqa: E402  (checks the Random123 known-answer vectors on import)
import safetensors_io  # noqa: E402

REAL_LIN = "/work/shared/data/lpips/v0.1"
FULL = {"vgg": (1234, 64), "alex": (5678, 96)}  # net: (backbone seed, image size)

WIDTH_DIV = 8
SIZE = 64
BATCH = 2


def vgg16_features(div):
    """torchvision vgg16().features: cfg D, conv3x3 pad 1 + ReLU, max pool 2x2 after each stage."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, v // div, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c = v // div
    # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    return nn.Sequential(*layers), [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]


def alexnet_features(div):
    """torchvision alexnet().features."""
    w = [64 // div, 192 // div, 384 // div, 256 // div, 256 // div]
    layers = [
        nn.Conv2d(3, w[0], kernel_size=11, stride=4, padding=2),  # 0
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # 2
        nn.Conv2d(w[0], w[1], kernel_size=5, padding=2),  # 3
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # 5
        nn.Conv2d(w[1], w[2], kernel_size=3, padding=1),  # 6
        nn.ReLU(),
        nn.Conv2d(w[2], w[3], kernel_size=3, padding=1),  # 8
        nn.ReLU(),
        nn.Conv2d(w[3], w[4], kernel_size=3, padding=1),  # 10
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # 12
    ]
    return nn.Sequential(*layers), [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]


class LPIPS(nn.Module):
    """lpips.LPIPS(net=..., version='0.1') forward, without the pretrained loading."""

    def __init__(self, features, taps):
        super().__init__()
        self.features = features
        self.taps = taps
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        chns = []
        for lo, hi in taps:
            convs = [m for m in features[lo:hi] if isinstance(m, nn.Conv2d)]
            chns.append(convs[-1].out_channels)
        # NetLinLayer: Sequential(Dropout, Conv2d 1x1 no bias) -> key lin{k}.model.1.weight
        for k, c in enumerate(chns):
            setattr(self, f"lin{k}", nn.Module())
            getattr(self, f"lin{k}").model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))

    def backbone(self, x):
        outs = []
        for lo, hi in self.taps:
            for i in range(lo, hi):
                x = self.features[i](x)
            outs.append(x)
        return outs

    @staticmethod
    def normalize_tensor(f, eps=1e-10):
        norm_factor = torch.sqrt(torch.sum(f**2, dim=1, keepdim=True))
        return f / (norm_factor + eps)

    def forward(self, in0, in1):
        in0 = (in0 - self.shift) / self.scale
        in1 = (in1 - self.shift) / self.scale
        outs0, outs1 = self.backbone(in0), self.backbone(in1)
        res = []
        for k in range(len(self.taps)):
            diff = (self.normalize_tensor(outs0[k]) - self.normalize_tensor(outs1[k])) ** 2
            res.append(getattr(self, f"lin{k}").model(diff).mean([2, 3], keepdim=True))
        return sum(res).flatten(), [r.flatten() for r in res]


def make(name, features, taps, seed, out_dir):
    torch.manual_seed(seed)
    model = LPIPS(features, taps).eval()
    with torch.no_grad():
        for m in model.features:
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                # He init keeps the activations O(1) through 13 ReLU convs; the small positive bias
                # keeps feature vectors away from all-zero (dead) spatial positions.
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
                m.bias.uniform_(0.0, 0.1)
        for k in range(len(taps)):
            w = getattr(model, f"lin{k}").model[1].weight
            w.uniform_(0.0, 2.0 / w.shape[1])
    x0 = (torch.rand(BATCH, 3, SIZE, SIZE) * 2 - 1).float()
    x1 = (x0 + 0.3 * torch.randn(BATCH, 3, SIZE, SIZE)).clamp(-1, 1).float()

    sd32 = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    model = model.double()
    a = x0.double().requires_grad_(True)
    b = x1.double().requires_grad_(True)
    d, per_layer = model(a, b)
    d.sum().backward()

    backbone = {k: v for k, v in sd32.items() if k.startswith("features.")}
    lin = {k: v for k, v in sd32.items() if k.startswith("lin")}
    io = {"x0": x0, "x1": x1, "d": d.detach()}
    for k, r in enumerate(per_layer):
        io[f"d_layer{k}"] = r.detach()
    io["grad_x0"] = a.grad.detach().float()
    io["grad_x1"] = b.grad.detach().float()
    meta = {"net": name, "width_div": WIDTH_DIV, "seed": seed}
    safetensors_io.save(os.path.join(out_dir, f"lpips_{name}_backbone.safetensors"), backbone, meta)
    safetensors_io.save(os.path.join(out_dir, f"lpips_{name}_lin.safetensors"), lin, meta)
    safetensors_io.save(os.path.join(out_dir, f"lpips_{name}_io.safetensors"), io, meta)
    print(name, "d =", d.tolist(), "per layer", [r.tolist() for r in per_layer])


def init_backbone_philox(features, seed):
    """LPIPS::init_backbone_philox: returns {name: checksum tensors} for the values written."""
    g = philox.Generator(seed)
    ck = {}
    for name, p in features.named_parameters():  # "0.weight", "0.bias", "2.weight", ... in order
        if name.endswith(".weight"):
            b = math.sqrt(6.0 / (p.shape[1] * p.shape[2] * p.shape[3]))
        else:
            b = 0.05
        v = g.uniform(tuple(p.shape), -b, b, np.float32)
        with torch.no_grad():
            p.copy_(torch.from_numpy(v))
        flat = v.reshape(-1)
        key = f"ck.features.{name}"
        ck[key + ".first8"] = torch.from_numpy(flat[:8].copy())
        exact_sum = math.fsum(flat.astype(np.float64).tolist())
        ck[key + ".sum"] = torch.tensor([exact_sum], dtype=torch.float64)
        bits = int(flat.view(np.uint32).astype(np.uint64).sum(dtype=np.uint64))
        ck[key + ".bitsum"] = torch.tensor([bits], dtype=torch.int64)
    return ck


def make_full(name, features, taps, out_dir):
    seed, size = FULL[name]
    model = LPIPS(features, taps).eval()
    ck = init_backbone_philox(model.features, seed)
    lin = safetensors_io.load(os.path.join(REAL_LIN, f"{name}.safetensors"))
    with torch.no_grad():
        for k in range(len(taps)):
            getattr(model, f"lin{k}").model[1].weight.copy_(lin[f"lin{k}.model.1.weight"])
    torch.manual_seed(seed)
    x0 = (torch.rand(BATCH, 3, size, size) * 2 - 1).float()
    x1 = (x0 + 0.3 * torch.randn(BATCH, 3, size, size)).clamp(-1, 1).float()

    model = model.double()
    a = x0.double().requires_grad_(True)
    b = x1.double().requires_grad_(True)
    d, per_layer = model(a, b)
    d.sum().backward()

    io = {"x0": x0, "x1": x1, "d": d.detach()}
    for k, r in enumerate(per_layer):
        io[f"d_layer{k}"] = r.detach()
    io["grad_x0"] = a.grad.detach().float()
    io["grad_x1"] = b.grad.detach().float()
    io.update(ck)
    meta = {"net": name, "width_div": 1, "backbone": "philox", "seed": seed, "size": size}
    safetensors_io.save(os.path.join(out_dir, f"lpips_{name}_full_io.safetensors"), io, meta)
    print(name, "full d =", d.tolist(), "per layer", [r.tolist() for r in per_layer])


def main():
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
    os.makedirs(out_dir, exist_ok=True)
    f, taps = vgg16_features(WIDTH_DIV)
    make("vgg", f, taps, 1, out_dir)
    f, taps = alexnet_features(WIDTH_DIV)
    make("alex", f, taps, 2, out_dir)
    f, taps = vgg16_features(1)
    make_full("vgg", f, taps, out_dir)
    f, taps = alexnet_features(1)
    make_full("alex", f, taps, out_dir)


if __name__ == "__main__":
    main()
