"""Golden files for the DiT (facebookresearch/DiT models.py), written in plain torch.

The model below follows upstream's math exactly (PatchEmbed conv, fixed 2D sin-cos pos_embed from
upstream's numpy code, TimestepEmbedder with cos first, LabelEmbedder with the null class,
adaLN-Zero blocks with timm Attention/Mlp(GELU tanh), FinalLayer, unpatchify). Every parameter is
RANDOM, including the ones upstream zero-initialises (otherwise the output is trivially zero).

Writes tests/reference/golden/dit_<name>_{weights,io}.safetensors for four small configurations:
input 8x8x4, depth 2, hidden 64, heads 4, num_classes 10, patch 2 / 4, learn_sigma on / off.

Text conditioning (psvae's PixArt-alpha-style extension, dit/dit.h): dit_text_{weights,io} is a
DiT without classes whose blocks add a residual cross-attention to (N, S, 32) text tokens with a
key padding mask after their self-attention, and whose c adds pool_embedder(pooled) (patch 2,
learn_sigma on). text_encoder_{weights,io} is the small pre-norm transformer text encoder
(dit/text_encoder.h): ids and mask in, tokens and their masked mean out.
The class-conditional files do not depend on the text code: each configuration reseeds torch.
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


class CrossAttention(nn.Module):  # q from x, fused kv from the context (B, S, 2, H, hd)
    def __init__(self, dim, context_dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, context, mask):
        B, N, C = x.shape
        S = context.shape[1]
        q = self.q(x).reshape(B, N, self.heads, C // self.heads).permute(0, 2, 1, 3)
        kv = self.kv(context).reshape(B, S, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, S)
        attn = attn.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class MaskedAttention(Attention):  # timm Attention with a key padding mask
    def forward(self, x, mask):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
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
    def __init__(self, hidden, heads, mlp_ratio=4.0, context_dim=0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        if context_dim:
            self.cross_attn = CrossAttention(hidden, context_dim, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden, bias=True))

    def forward(self, x, c, context=None, mask=None):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        if context is not None:  # PixArt-alpha: plain residual cross-attention, no norm, no gate
            x = x + self.cross_attn(x, context, mask)
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


class PoolEmbedder(nn.Module):  # pooled text (N, Dc) -> (N, D), joins the timestep in c
    def __init__(self, context_dim, hidden):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(context_dim, hidden, bias=True), nn.SiLU(),
                                 nn.Linear(hidden, hidden, bias=True))

    def forward(self, pooled):
        return self.mlp(pooled)


class DiT(nn.Module):
    def __init__(self, input_size, patch, in_channels, hidden, depth, heads, num_classes, learn_sigma,
                 context_dim=0):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch = patch
        self.x_embedder = PatchEmbed(patch, in_channels, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(num_classes, hidden) if num_classes else None
        if context_dim:
            self.pool_embedder = PoolEmbedder(context_dim, hidden)
        T = (input_size // patch) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, T, hidden), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden, heads, context_dim=context_dim)
                                     for _ in range(depth)])
        self.final_layer = FinalLayer(hidden, patch, self.out_channels)
        pe = get_2d_sincos_pos_embed(hidden, int(T**0.5))
        self.pos_embed.data.copy_(torch.from_numpy(pe).float().unsqueeze(0))

    def unpatchify(self, x):
        c, p = self.out_channels, self.patch
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(shape=(x.shape[0], h, w, p, p, c))
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(shape=(x.shape[0], c, h * p, h * p))

    def forward(self, x, t, y=None, context=None, mask=None, pooled=None):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t)
        if y is not None:
            c = c + self.y_embedder(y)
        if pooled is not None:
            c = c + self.pool_embedder(pooled)
        for block in self.blocks:
            x = block(x, c, context, mask)
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


def randomise(m):
    # As make(): random everywhere except pos_embed; LayerNorm gains around 1.
    with torch.no_grad():
        for k, p in m.named_parameters():
            if k == "pos_embed" and not p.requires_grad:
                continue
            if "norm" in k and k.endswith(".weight"):
                p.normal_(1.0, 0.1)
            elif "embedding" in k:  # token / label tables
                p.normal_(0.0, 1.0)
            elif k == "pos_embed":  # the text encoder's learned positions
                p.normal_(0.0, 0.5)
            elif p.dim() >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))
            else:
                p.normal_(0.0, 0.1)


def masked_mean(tokens, mask):
    w = mask.to(tokens.dtype)[:, :, None]
    return (tokens * w).sum(1) / w.sum(1)


def make_text_dit(seed):
    torch.manual_seed(seed)
    m = DiT(8, 2, 4, 64, 2, 4, 0, True, context_dim=32)
    randomise(m)
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([0.0, 17.0, 999.0])
    # Padded positions hold large values: any leak through the mask shows in the output.
    context = torch.randn(3, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.int32)
    context = torch.where(mask.bool()[:, :, None], context, 50.0 * torch.randn(3, 5, 32))
    pooled = masked_mean(context, mask)
    with torch.no_grad():
        out = m(x, t, context=context, mask=mask, pooled=pooled)
    sd = {k: v.detach().contiguous() for k, v in m.state_dict().items()}
    safetensors_io.save(os.path.join(OUT, "dit_text_weights.safetensors"), sd)
    safetensors_io.save(os.path.join(OUT, "dit_text_io.safetensors"),
                        {"x": x, "t": t, "context": context, "context_mask": mask, "pooled": pooled,
                         "out": out})
    print("text", tuple(out.shape), float(out.abs().mean()))


class TextBlock(nn.Module):  # timm pre-norm Block (LayerNorm eps 1e-6, GELU tanh), key padding mask
    def __init__(self, dim, heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MaskedAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, mask):
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    def __init__(self, vocab, max_len, dim, depth, heads):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_len, dim))
        self.blocks = nn.ModuleList([TextBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, ids, mask):
        h = self.token_embedding(ids) + self.pos_embed[:, : ids.shape[1]]
        for b in self.blocks:
            h = b(h, mask)
        tokens = self.norm(h)
        return tokens, masked_mean(tokens, mask)


def make_text_encoder(seed):
    torch.manual_seed(seed)
    m = TextEncoder(20, 8, 32, 2, 4)
    randomise(m)
    ids = torch.tensor([[2, 5, 9, 3, 0, 0], [2, 1, 0, 0, 0, 0], [2, 7, 7, 19, 4, 11]])
    mask = (ids != 0).to(torch.int32)
    with torch.no_grad():
        tokens, pooled = m(ids, mask)
    sd = {k: v.detach().contiguous() for k, v in m.state_dict().items()}
    safetensors_io.save(os.path.join(OUT, "text_encoder_weights.safetensors"), sd)
    safetensors_io.save(os.path.join(OUT, "text_encoder_io.safetensors"),
                        {"ids": ids, "mask": mask, "tokens": tokens, "pooled": pooled})
    print("text_encoder", tuple(tokens.shape), float(tokens.abs().mean()))


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
    make_text_dit(4)
    make_text_encoder(5)
