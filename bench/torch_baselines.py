#!/usr/bin/env python3
"""PyTorch baselines for the bench/ tables, run on the same GPU as the bench_* programs.

Prints markdown tables whose rows carry the same names and shapes as the C++ benchmarks, so the
two can be set side by side in docs/kernels.md:
  - ceilings: device-to-device copy (GB/s) and an 8192^3 bf16 matmul (TFLOP/s);
  - layernorm + adaLN modulate, forward and backward (GB/s), eager and torch.compile;
  - scaled_dot_product_attention, forward and backward (TFLOP/s), bf16, head dims 64, 72 and 128:
    PyTorch's default dispatch and each fused backend on its own (FlashAttention-2,
    memory-efficient, cuDNN: the cuDNN SDPA baseline);
  - the DiT linear layers' GEMMs (TFLOP/s);
  - a whole DiT training step (forward, backward, AdamW), bf16 autocast, eager and torch.compile:
    images/s, and MFU against the measured bf16 matmul ceiling; then one eager step op by op
    (torch.profiler), beside `bench_dit_step --profile`.

Method as bench/bench_common.cuh: CUDA events, L2 flushed (a 2 x L2 buffer zeroed) before each
timed run, median of --iters runs after warm-up. Needs PyTorch 2.x with a CUDA device
(the GPU machine's python3). `--quick` for a smoke run.
"""
import argparse
import math
import statistics
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few runs, small shapes (smoke check)")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--dit", default="XL", choices=["S", "B", "L", "XL"],
                   help="DiT size of the training-step benchmark")
    p.add_argument("--batch", type=int, default=256, help="DiT step batch (256 tokens each)")
    p.add_argument("--step-dtype", default="bf16", choices=["bf16", "f32"],
                   help="DiT step precision: bf16 autocast, or f32 throughout (as bench_dit_step)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile rows")
    p.add_argument("--only", default="", help="comma list of norm,attn,gemm,step")
    p.add_argument("--no-profile", action="store_true",
                   help="skip the op-by-op torch.profiler table of one eager DiT step")
    return p.parse_args()


class Timer:
    def __init__(self, iters, warmup=5):
        self.iters, self.warmup = iters, warmup
        l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
        self.flush = torch.empty(max(2 * l2, 8 << 20), dtype=torch.uint8, device="cuda")

    def median_ms(self, fn):
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.iters):
            self.flush.zero_()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times)


def table(cols):
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))


def row(cells):
    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def ceilings(t):
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = t.median_ms(lambda: b.copy_(a))
    copy_gbs = 2 * n / (ms * 1e-3) / 1e9
    del a, b
    m = 8192
    x = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    ms = t.median_ms(lambda: x @ y)
    tflops = 2 * m**3 / (ms * 1e-3) / 1e12
    print(f"# torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    print(f"ceilings measured in this run: copy {copy_gbs:.0f} GB/s, "
          f"torch bf16 matmul (random data) {tflops:.1f} TFLOP/s\n")
    return copy_gbs, tflops


def maybe_compile(fn, args, label):
    if args.no_compile:
        return []
    try:
        return [(label + "+compile", torch.compile(fn))]
    except Exception as e:  # noqa: BLE001 - report and go on without the row
        print(f"torch.compile unavailable for {label}: {e}", file=sys.stderr)
        return []


def bench_norm(t, args, copy_gbs):
    """LayerNorm (no affine, eps 1e-6) + modulate, as a DiT block's adaLN: y = LN(x)(1+scale)+shift."""
    print("## layernorm + modulate (bf16)\n")
    table(["variant", "shape (N,T,D)", "direction", "time (us)", "GB/s", "% of copy"])
    shapes = [(256, 256, 768), (256, 256, 1152), (32, 1024, 1152)]
    if args.quick:
        shapes = [(8, 256, 1152)]

    def ln_mod(x, shift, scale):
        return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]

    variants = [("eager", ln_mod)] + maybe_compile(ln_mod, args, "eager")
    for n, tok, d in shapes:
        x = torch.randn(n, tok, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        shift = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        scale = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        gy = torch.randn(n, tok, d, device="cuda", dtype=torch.bfloat16)
        elems = n * tok * d * 2  # bytes of one activation in bf16
        for name, fn in variants:
            ms = t.median_ms(lambda: fn(x, shift, scale))
            gbs = 2 * elems / (ms * 1e-3) / 1e9  # x read, y written
            row([name, f"({n},{tok},{d})", "fwd", f"{ms*1e3:.1f}", f"{gbs:.0f}",
                 f"{100*gbs/copy_gbs:.1f}%"])
            y = fn(x, shift, scale)
            ms = t.median_ms(lambda: torch.autograd.grad(y, (x, shift, scale), gy,
                                                         retain_graph=True))
            gbs = 3 * elems / (ms * 1e-3) / 1e9  # x, gy read, gx written (mean/rstd negligible)
            row([name, f"({n},{tok},{d})", "bwd", f"{ms*1e3:.1f}", f"{gbs:.0f}",
                 f"{100*gbs/copy_gbs:.1f}%"])
    print()


def attn_shapes(quick):
    # (B, H, T, d): B*T*H = 1M token-heads at every length, bench_attention's shapes, so that
    # bench/targets.py sets each of our rows beside PyTorch's at the same (B, H, T, d).
    if quick:
        return [(2, 16, 256, 64)]
    out = []
    for d in (64, 128):
        out += [(65536 // tok, 16, tok, d) for tok in (256, 1024, 2048, 4096)]
    return out + [(256, 16, 256, 72)]  # DiT-XL: 1152 / 16 heads


def sdpa_backends():
    """(label, context manager factory) for PyTorch's default dispatch and each fused backend:
    FlashAttention-2, memory-efficient, and cuDNN's fused attention (the cuDNN SDPA baseline)."""
    import contextlib
    out = [("torch sdpa", contextlib.nullcontext)]
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return out
    for label, name in (("sdpa flash", "FLASH_ATTENTION"), ("sdpa mem-efficient",
                        "EFFICIENT_ATTENTION"), ("cudnn sdpa", "CUDNN_ATTENTION")):
        backend = getattr(SDPBackend, name, None)
        if backend is not None:
            out.append((label, lambda b=backend: sdpa_kernel(b)))
    return out


def bench_attention(t, args, peak):
    print("## attention (scaled_dot_product_attention, bf16)\n")
    table(["variant", "B", "H", "T", "d", "direction", "time (us)", "TFLOP/s", "% of matmul"])
    for b, h, tok, d in attn_shapes(args.quick):
        q, k, v = (torch.randn(b, h, tok, d, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        go = torch.randn(b, h, tok, d, device="cuda", dtype=torch.bfloat16)
        fwd_flops = 4 * b * h * tok * tok * d
        for label, ctx in sdpa_backends():
            try:
                with ctx():
                    ms = t.median_ms(lambda: F.scaled_dot_product_attention(q, k, v))
                    tf = fwd_flops / (ms * 1e-3) / 1e12
                    row([label, b, h, tok, d, "fwd", f"{ms*1e3:.1f}", f"{tf:.1f}",
                         f"{100*tf/peak:.1f}%"])
                    o = F.scaled_dot_product_attention(q, k, v)
                    ms = t.median_ms(
                        lambda: torch.autograd.grad(o, (q, k, v), go, retain_graph=True))
                    tf = 2.5 * fwd_flops / (ms * 1e-3) / 1e12
                    row([label, b, h, tok, d, "bwd", f"{ms*1e3:.1f}", f"{tf:.1f}",
                         f"{100*tf/peak:.1f}%"])
            except RuntimeError as e:  # a backend that does not take this shape
                row([label, b, h, tok, d, "-", f"unsupported: {str(e).splitlines()[0][:60]}",
                     "-", "-"])
    print()


DIT_ARCH = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def bench_gemm(t, args, peak):
    print("## DiT linear layers (torch.nn.functional.linear, bf16), 65536 rows\n")
    table(["variant", "model", "layer", "M", "N", "K", "time (us)", "TFLOP/s", "% of matmul"])
    rows = 4096 if args.quick else 65536
    for name, (_, d, _) in DIT_ARCH.items():
        for layer, n, k in (("qkv", 3 * d, d), ("proj", d, d), ("fc1", 4 * d, d),
                            ("fc2", d, 4 * d)):
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
            ms = t.median_ms(lambda: F.linear(x, w, bias))
            tf = 2 * rows * n * k / (ms * 1e-3) / 1e12
            row(["torch linear", f"DiT-{name}", layer, rows, n, k, f"{ms*1e3:.1f}", f"{tf:.1f}",
                 f"{100*tf/peak:.1f}%"])
    print()


# ---- a DiT (adaLN-Zero, patch 1 on a 16x16x96 latent) for the training-step row ---------------
def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c):
        s1, sc1, g1, s2, sc2, g2 = self.ada(c).chunk(6, dim=1)
        b, t, d = x.shape
        h = modulate(self.norm1(x), s1, sc1)
        q, k, v = self.qkv(h).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + g1.unsqueeze(1) * self.proj(a)
        h = modulate(self.norm2(x), s2, sc2)
        return x + g2.unsqueeze(1) * self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class DiT(nn.Module):
    def __init__(self, depth, d, heads, channels=96, tokens=256, classes=1000):
        super().__init__()
        self.x_emb = nn.Linear(channels, d)
        self.pos = nn.Parameter(torch.zeros(1, tokens, d), requires_grad=False)
        self.t_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.y_emb = nn.Embedding(classes + 1, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(depth))
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.out = nn.Linear(d, channels)

    def forward(self, x, t, y):  # x (B, 256, 96) tokens of the latent, t (B,), y (B,)
        half = 128
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=x.device) / half)
        tf = t[:, None].float() * freqs[None]
        c = self.t_mlp(torch.cat([torch.cos(tf), torch.sin(tf)], dim=1)) + self.y_emb(y)
        h = self.x_emb(x) + self.pos
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=1)
        return self.out(modulate(self.final_norm(h), shift, scale))


def print_op_profile(step, device_activity=True, rows=25):
    """One more step under torch.profiler, its ops by self time on the device: the table to set
    beside `bench_dit_step --profile` (psvae's op profiler) for the same step."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_activity else [])
    with profile(activities=acts) as prof:
        step()
        if device_activity:
            torch.cuda.synchronize()
    averages = prof.key_averages()
    # The sort key's name changed across versions (cuda -> device); the CPU key is the fallback.
    keys = ["self_device_time_total", "self_cuda_time_total"] if device_activity else []
    for key in keys + ["self_cpu_time_total"]:
        try:
            print(averages.table(sort_by=key, row_limit=rows))
            return key
        except (AttributeError, KeyError, ValueError):
            continue
    return None


def bench_step(t, args, peak):
    depth, d, heads = DIT_ARCH[args.dit]
    batch = 8 if args.quick else args.batch
    mode = "bf16 autocast" if args.step_dtype == "bf16" else "f32"
    print(f"## DiT-{args.dit} training step (batch {batch}, 256 tokens, {mode}, AdamW)\n")
    table(["variant", "batch", "step (ms)", "images/s", "TFLOP/s", "MFU vs matmul"])
    model = DiT(depth, d, heads).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens = 256
    # 6 flops per parameter per token (fwd 2, bwd 4) + attention: 12 * depth * T^2 * d per image.
    flops = batch * (6 * params * tokens + 12 * depth * tokens * tokens * d)
    x = torch.randn(batch, tokens, 96, device="cuda")
    tt = torch.randint(0, 1000, (batch,), device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")
    target = torch.randn_like(x)

    def step(fwd):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.step_dtype == "bf16"):
            loss = F.mse_loss(fwd(x, tt, y).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    variants = [("torch eager", model)] + maybe_compile(model, args, "torch")
    for name, fwd in variants:
        try:
            ms = t.median_ms(lambda: step(fwd))
        except torch.cuda.OutOfMemoryError:
            row([name, batch, "out of memory", "-", "-", "-"])
            torch.cuda.empty_cache()
            continue
        tf = flops / (ms * 1e-3) / 1e12
        row([name, batch, f"{ms:.1f}", f"{batch / (ms * 1e-3):.0f}", f"{tf:.1f}",
             f"{100*tf/peak:.1f}%"])
    print(f"\nparameters {params/1e6:.1f} M; flops per step {flops/1e12:.2f} T\n")
    if not args.no_profile:
        print(f"## One torch eager step (batch {batch}, {mode}), op by op (torch.profiler)\n")
        try:
            print_op_profile(lambda: step(model))
        except Exception as e:  # a profiler problem must not cost the rest of the session
            print(f"op profile failed: {type(e).__name__}: {e}\n")


def main():
    args = parse()
    if not torch.cuda.is_available():
        sys.exit("torch_baselines.py: no CUDA device (run on the GPU machine)")
    torch.backends.cuda.matmul.allow_tf32 = False
    only = set(filter(None, args.only.split(",")))
    t = Timer(5 if args.quick else args.iters)
    copy_gbs, peak = ceilings(t)
    if not only or "norm" in only:
        bench_norm(t, args, copy_gbs)
    if not only or "attn" in only:
        bench_attention(t, args, peak)
    if not only or "gemm" in only:
        bench_gemm(t, args, peak)
    if not only or "step" in only:
        t_step = Timer(5 if args.quick else 10, warmup=3)
        bench_step(t_step, args, peak)


if __name__ == "__main__":
    main()
