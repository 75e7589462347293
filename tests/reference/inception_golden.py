"""Golden file for psvae/inception.cpp: pytorch-fid's FID Inception-v3 on seeded weights.

The model is mseitzer/pytorch-fid's (src/pytorch_fid/inception.py): fid_inception_v3() (torchvision
Inception3 with num_classes 1008, aux_logits False, and the FID blocks FIDInceptionA, C, E_1, E_2)
wrapped by InceptionV3(output_blocks=[0, 1, 2, 3], resize_input=True, normalize_input=False).
torchvision is not installed here, so its Inception3 pieces (BasicConv2d with BatchNorm eps 0.001,
InceptionA..E) are written out below in plain torch with torchvision's attribute names, which makes
the state_dict names those of the pt_inception-2015-12-05 weights ("Conv2d_1a_3x3.conv.weight",
"Mixed_5b.branch_pool.bn.running_var", ...).

Inputs are in [-1, 1] (psvae's images); pytorch-fid's normalize_input maps [0, 1] to that range, so
it is off here and the C++ model takes [-1, 1] directly.

The real weights (~96 MB) are not shipped, so both sides regenerate the same seeded weights with
Philox4x32-10 (tests/reference/philox.py, bit-exact with tensor/random.cpp), the scheme of
InceptionV3::init_philox (psvae/inception.h): one Generator(seed) fills every state_dict entry in
order, skipping bn.num_batches_tracked (per BasicConv2d: conv.weight U(-b, b) with
b = sqrt(6 / fan_in), bn.weight U(0.5, 1.5), bn.bias U(-0.2, 0.2), bn.running_mean U(-0.2, 0.2),
bn.running_var U(0.5, 1.5)), each fill taking the next ceil(n/4) counters. The forward runs in
float64 from those float32 values, so the reference carries no float32 rounding of its own.

Writes tests/reference/golden/inception_io.safetensors:
  images (2,3,40,40) f32 in [-1,1]; pool3 (2,2048) f64 (block 3);
  block{0,1,2}_mean (2,C) f64: the spatial means of blocks 0..2 (64, 192, 768 channels), which
  localise a mismatch without storing whole feature maps;
  ck.<name>.sum (f64, exact) and ck.<name>.first (f32) for every generated tensor.
Run: /usr/bin/python3 tests/reference/inception_golden.py
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import philox  # noqa: E402  (checks the Random123 known-answer vectors on import)
import safetensors_io  # noqa: E402

SEED = 2015
SIZE = 40
BATCH = 2


class BasicConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class FIDInceptionA(nn.Module):
    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        branch_pool = self.branch_pool(branch_pool)
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b = self.branch7x7dbl_1(x)
        b = self.branch7x7dbl_2(b)
        b = self.branch7x7dbl_3(b)
        b = self.branch7x7dbl_4(b)
        branch7x7dbl = self.branch7x7dbl_5(b)
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        branch_pool = self.branch_pool(branch_pool)
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        b = self.branch7x7x3_2(b)
        b = self.branch7x7x3_3(b)
        branch7x7x3 = self.branch7x7x3_4(b)
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class FIDInceptionE(nn.Module):
    """FIDInceptionE_1 (avg pool without padding) or, with max_pool, FIDInceptionE_2."""

    def __init__(self, in_channels, max_pool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        b = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b)], 1)
        if self.max_pool:
            branch_pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        branch_pool = self.branch_pool(branch_pool)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInception(nn.Module):
    """fid_inception_v3() restricted to what InceptionV3's four output blocks use (no AuxLogits,
    no fc), in torchvision's registration order."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)

    def forward(self, inp):
        """pytorch-fid InceptionV3.forward with output_blocks [0, 1, 2, 3], resize_input True,
        normalize_input False."""
        x = F.interpolate(inp, size=(299, 299), mode="bilinear", align_corners=False)
        outs = []
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        outs.append(x)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        outs.append(x)
        for m in [self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                  self.Mixed_6c, self.Mixed_6d, self.Mixed_6e]:
            x = m(x)
        outs.append(x)
        for m in [self.Mixed_7a, self.Mixed_7b, self.Mixed_7c]:
            x = m(x)
        outs.append(F.adaptive_avg_pool2d(x, output_size=(1, 1)).flatten(1))
        return outs


def init_philox(model, seed):
    """InceptionV3::init_philox; returns checksums of every generated tensor."""
    g = philox.Generator(seed)
    ck = {}
    sd = model.state_dict()
    with torch.no_grad():
        for name, t in sd.items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith(".conv.weight"):
                b = math.sqrt(6.0 / (t.shape[1] * t.shape[2] * t.shape[3]))
                lo, hi = -b, b
            elif name.endswith(".bn.weight") or name.endswith(".bn.running_var"):
                lo, hi = 0.5, 1.5
            else:
                lo, hi = -0.2, 0.2
            v = g.uniform(tuple(t.shape), lo, hi, np.float32)
            t.copy_(torch.from_numpy(v))  # state_dict tensors share the module's storage
            flat = v.reshape(-1)
            ck[f"ck.{name}.sum"] = torch.tensor([math.fsum(flat.astype(np.float64).tolist())],
                                                dtype=torch.float64)
            ck[f"ck.{name}.first"] = torch.from_numpy(flat[:1].copy())
    return ck


def main():
    model = FIDInception().eval()
    ck = init_philox(model, SEED)
    torch.manual_seed(SEED)
    images = (torch.rand(BATCH, 3, SIZE, SIZE) * 2 - 1).float()
    with torch.no_grad():
        outs = model.double()(images.double())
    io = {"images": images, "pool3": outs[3]}
    for k in range(3):
        io[f"block{k}_mean"] = outs[k].mean(dim=(2, 3))
    io.update(ck)
    meta = {"seed": str(SEED), "size": str(SIZE)}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "inception_io.safetensors")
    safetensors_io.save(path, io, meta)
    print("pool3 mean", outs[3].mean().item(), "std", outs[3].std().item(),
          "block shapes", [tuple(o.shape) for o in outs], "tensors", len(ck) // 2)


if __name__ == "__main__":
    main()
