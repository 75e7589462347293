"""Golden files for the DiT (facebookresearch/DiT models.py), written in plain torch.

The model below follows upstream's math exactly (PatchEmbed conv, fixed 2D sin-cos pos_embed from
upstream's numpy code, TimestepEmbedder with cos first, LabelEmbedder with the null class,
adaLN-Zero blocks with timm Attention/Mlp(GELU tanh), FinalLayer, unpatchify). Every parameter is
RANDOM, including the ones upstream zero-initialises (otherwise the output is trivially zero).

Writes tests/reference/golden/dit_<name>_{weights,io}.safetensors for four small configurations:
input 8x8x4, depth 2, hidden 64, heads 4, num_classes 10, patch 2 / 4, learn_sigma on / off.
Run: /usr/bin/python3 tests/reference/dit_golden.py
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


# ---- upstream's numpy position embedding (verbatim math) ------------------------------------------
def get_2d_sincos_pos_embed(embed_dim, grid_size):
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0)
    grid = grid.reshape([2, 1, grid_size, grid_size])
    return get_2d_sincos_pos_embed_from_grid(embed_dim, grid)


def get_2d_sincos_pos_embed_from_grid(embed_dim, grid):
    assert embed_dim % 2 == 0
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])  # (H*W, D/2)
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])  # (H*W, D/2)
    return np.concatenate([emb_h, emb_w], axis=1)  # (H*W, D)


def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
    assert embed_dim % 2 == 0
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega  # (D/2,)
    pos = pos.reshape(-1)  # (M,)
    out = np.einsum("m,d->md", pos, omega)  # (M, D/2), outer product
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    def __init__(self, p, c, d):
        super().__init__()
        self.proj = nn.Conv2d(c, d, kernel_size=p, stride=p, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden, freq=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(freq, hidden, bias=True), nn.SiLU(),
                                 nn.Linear(hidden, hidden, bias=True))
        self.freq = freq

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t):
        return self.mlp(self.timestep_embedding(t, self.freq))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, hidden):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y):
        return self.embedding_table(y)


class Attention(nn.Module):  # timm
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):  # timm, GELU tanh
    def __init__(self, d, h):
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden, bias=True))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden, p, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, p * p * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden, bias=True))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, input_size, patch, in_channels, hidden, depth, heads, num_classes, learn_sigma):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch = patch
        self.x_embedder = PatchEmbed(patch, in_channels, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(num_classes, hidden)
        T = (input_size // patch) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, T, hidden), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden, heads) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden, patch, self.out_channels)
        pe = get_2d_sincos_pos_embed(hidden, int(T**0.5))
        self.pos_embed.data.copy_(torch.from_numpy(pe).float().unsqueeze(0))

    def unpatchify(self, x):
        c, p = self.out_channels, self.patch
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(shape=(x.shape[0], h, w, p, p, c))
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(shape=(x.shape[0], c, h * p, h * p))

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        x = self.final_layer(x, c)
        return self.unpatchify(x)


def make(name, patch, learn_sigma, seed):
    torch.manual_seed(seed)
    m = DiT(8, patch, 4, 64, 2, 4, 10, learn_sigma)
    # Random weights everywhere (except the fixed pos_embed), scaled so activations stay O(1).
    with torch.no_grad():
        for k, p in m.named_parameters():
            if k == "pos_embed":
                continue
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.normal_(0.0, 1.0 / math.sqrt(fan_in) if "embedding_table" not in k else 1.0)
            else:
                p.normal_(0.0, 0.1)
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([0.0, 17.0, 999.0])
    y = torch.tensor([3, 10, 7], dtype=torch.int64)  # 10 is the null class
    with torch.no_grad():
        out = m(x, t, y)
    sd = {k: v.detach().contiguous() for k, v in m.state_dict().items()}
    safetensors_io.save(os.path.join(OUT, f"dit_{name}_weights.safetensors"), sd)
    safetensors_io.save(os.path.join(OUT, f"dit_{name}_io.safetensors"),
                        {"x": x, "t": t, "y": y, "out": out})
    print(name, tuple(out.shape), float(out.abs().mean()))


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    make("p2", 2, False, 0)
    make("p2_sigma", 2, True, 1)
    make("p4", 4, False, 2)
    make("p4_sigma", 4, True, 3)
    # The pos_embed of upstream's numpy code at a non-trivial size, in float64 and as stored (f32).
    pe = get_2d_sincos_pos_embed(32, 5)
    safetensors_io.save(os.path.join(OUT, "dit_pos_embed.safetensors"),
                        {"pos_embed_d32_g5_f64": torch.from_numpy(pe),
                         "pos_embed_d32_g5": torch.from_numpy(pe).float()})
