"""Golden files for psvae/dinov2.cpp and psvae/interpolate.cpp (run with /usr/bin/python3).

A plain-torch DINOv2 with the math of facebookresearch/dinov2 (dinov2/models/vision_transformer.py
at b8931f7, 2025-08; interpolate_pos_encoding as of e1277af "Fix interpolation of positional
embeddings", 2024-02): Block with LayerScale, MemEffAttention computed as standard attention,
Mlp (exact GELU) or SwiGLUFFNFused. Small config: D 64, depth 2, heads 4, patch 14, pos grid 4x4.
Every parameter is random (LayerScale gammas, norm weights and biases too) so that no term can
hide behind an identity init.

Writes tests/reference/golden/
  dinov2_{plain,reg4,swiglu}_weights.safetensors     original facebookresearch/dinov2 key names
  dinov2_{plain,reg4,swiglu}_weights_hf.safetensors  HF Dinov2Model key names
  dinov2_{plain,reg4,swiglu}_io.safetensors          pixel_values_{s}, x_norm_clstoken_{s},
                                                     x_norm_patchtokens_{s} for s in SIZES
  dinov2_interp.safetensors                          per-axis bicubic matrices made by
                                                     F.interpolate on the identity
Hub conventions reproduced: models without registers interpolate with scale_factor
((h + 0.1)/G, (w + 0.1)/G) and no antialias; _reg models with the explicit size
(interpolate_offset 0) and antialias=True.
"""
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
D, DEPTH, HEADS, PATCH, G = 64, 2, 4, 14, 4
SIZES = {"56x56": (56, 56), "70x98": (70, 98), "42x28": (42, 28)}  # grids 4x4, 5x7, 3x2


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFNFused(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim, heads, swiglu):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = (SwiGLUFFNFused if swiglu else Mlp)(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, D, PATCH, PATCH)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Dinov2(nn.Module):
    def __init__(self, registers, swiglu):
        super().__init__()
        self.patch_size = PATCH
        self.num_register_tokens = registers
        # Hub: _reg models are built with interpolate_antialias=True, interpolate_offset=0.0.
        self.interpolate_antialias = registers > 0
        self.interpolate_offset = 0.0 if registers > 0 else 0.1
        self.patch_embed = PatchEmbed()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + G * G, D))
        self.register_tokens = nn.Parameter(torch.zeros(1, registers, D)) if registers else None
        self.blocks = nn.ModuleList([Block(D, HEADS, swiglu) for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, D))

    # Behaviour of upstream interpolate_pos_encoding (note: upstream names x.shape[2] "w").
    def interpolate_pos_encoding(self, x, w, h):
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed = pos_embed[:, 0]
        patch_pos_embed = pos_embed[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch_size, h // self.patch_size
        M = int(math.sqrt(N))
        kwargs = {}
        if self.interpolate_offset:
            kwargs["scale_factor"] = (float(w0 + self.interpolate_offset) / M,
                                      float(h0 + self.interpolate_offset) / M)
        else:
            kwargs["size"] = (w0, h0)
        patch_pos_embed = F.interpolate(patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),
                                        mode="bicubic", antialias=self.interpolate_antialias, **kwargs)
        assert (w0, h0) == patch_pos_embed.shape[-2:]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)

    def forward(self, x):
        B, nc, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        if self.register_tokens is not None:
            x = torch.cat((x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x[:, 0], x[:, self.num_register_tokens + 1:]


def randomise(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.3, 1.2)
            elif "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.2)
            elif "norm" in name and name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.05)
            elif name in ("pos_embed", "cls_token", "register_tokens", "mask_token"):
                p.normal_(0.0, 0.5)
            # Linear / Conv weights keep PyTorch's default init.


def to_hf(sd):
    """facebookresearch/dinov2 names -> HF Dinov2Model names (qkv split into query, key, value)."""
    out = {}
    for k, v in sd.items():
        if k == "cls_token":
            out["embeddings.cls_token"] = v
        elif k == "mask_token":
            out["embeddings.mask_token"] = v
        elif k == "pos_embed":
            out["embeddings.position_embeddings"] = v
        elif k == "register_tokens":
            out["embeddings.register_tokens"] = v
        elif k.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + k.split(".")[-1]] = v
        elif k.startswith("norm."):
            out["layernorm." + k.split(".")[-1]] = v
        elif k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            p = f"encoder.layer.{i}."
            if rest.startswith("attn.qkv."):
                kind = rest.split(".")[-1]
                for part, name in zip(v.chunk(3, dim=0), ("query", "key", "value")):
                    out[p + f"attention.attention.{name}.{kind}"] = part.clone()
            elif rest.startswith("attn.proj."):
                out[p + "attention.output.dense." + rest.split(".")[-1]] = v
            elif rest.startswith("ls1.gamma"):
                out[p + "layer_scale1.lambda1"] = v
            elif rest.startswith("ls2.gamma"):
                out[p + "layer_scale2.lambda1"] = v
            elif rest.startswith("mlp.w12."):
                out[p + "mlp.weights_in." + rest.split(".")[-1]] = v
            elif rest.startswith("mlp.w3."):
                out[p + "mlp.weights_out." + rest.split(".")[-1]] = v
            else:  # norm1, norm2, mlp.fc1, mlp.fc2 keep their names
                out[p + rest] = v
        else:
            raise KeyError(k)
    return out


def make_variant(tag, registers, swiglu, seed):
    torch.manual_seed(seed)
    model = Dinov2(registers, swiglu)
    randomise(model)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save(os.path.join(OUT, f"dinov2_{tag}_weights.safetensors"), sd)
    save(os.path.join(OUT, f"dinov2_{tag}_weights_hf.safetensors"), to_hf(sd))
    io = {}
    with torch.no_grad():
        for s, (H, W) in SIZES.items():
            x = torch.randn(2, 3, H, W)
            cls, patch = model(x)
            io[f"pixel_values_{s}"] = x
            io[f"x_norm_clstoken_{s}"] = cls
            io[f"x_norm_patchtokens_{s}"] = patch
    save(os.path.join(OUT, f"dinov2_{tag}_io.safetensors"), io)


def interp_matrix(n_in, n_out, scale_factor, antialias):
    """Row o of the result is F.interpolate's weights for output o (from the identity's image)."""
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1).expand(n_in, 1, n_in, 2)
    kw = {"scale_factor": (scale_factor, 1.0)} if scale_factor else {"size": (n_out, 2)}
    y = F.interpolate(eye.contiguous(), mode="bicubic", align_corners=False, antialias=antialias, **kw)
    assert y.shape[2] == n_out, (y.shape, n_out)
    return y[:, 0, :, 0].t().contiguous()  # (out, in)


def make_interp():
    # (in, out, scale_factor or 0 for size, antialias): the hub cases at 224px (37 -> 16) and
    # 518px, the test grids, and plain up/down-sampling both ways.
    cases = [(37, 16, 16.1 / 37, False), (37, 16, 0, True), (37, 16, 0, False), (37, 37, 0, True),
             (4, 5, 5.1 / 4, False), (4, 7, 7.1 / 4, False), (4, 5, 0, True), (4, 7, 0, True),
             (2, 4, 0, False), (2, 4, 2.0, False), (5, 3, 0, False), (5, 3, 0, True),
             (37, 50, 0, True), (10, 3, 0.35, True), (7, 17, 2.5, True)]
    out = {}
    for i, (n_in, n_out, sf, aa) in enumerate(cases):
        out[f"case{i}"] = interp_matrix(n_in, n_out, sf, aa)
        out[f"case{i}_params"] = torch.tensor([n_in, n_out, sf, float(aa)], dtype=torch.float64)
    save(os.path.join(OUT, "dinov2_interp.safetensors"), out)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    make_variant("plain", 0, False, 0)
    make_variant("reg4", 4, False, 1)
    make_variant("swiglu", 0, True, 2)
    make_interp()
    print(torch.__version__, "ok")
