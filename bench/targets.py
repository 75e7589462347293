#!/usr/bin/env python3
"""Issue 6's targets, read off a GPU session's logs: each target's measured ratio, met or not.

    python3 bench/targets.py gpu-out/bench.log gpu-out/torch.log

bench.log is `bench/gpu_session.sh bench`'s log (our bench_* programs), torch.log the `torch`
phase's (bench/torch_baselines.py, PyTorch on the same GPU). The script only reads the tables
the programs print (markdown rows); it measures nothing. A target whose rows are missing (a
phase cut short, a backend PyTorch lacks) is reported as "no data", never as met.

Targets (issue 6, "Targets on the H200"):
  1. layernorm + modulate, forward and backward: >= 90% of the measured copy bandwidth
     (bench_norm's "% of copy", every layernorm_modulate row);
  2. attention bf16, head dims 64 and 128, 1024-4096 tokens: forward >= 1.0x and backward
     >= 0.9x PyTorch's SDPA (its default dispatch, "torch sdpa"), by TFLOP/s at the same
     (B, H, T, d); ours is the default kernel ("mma", "mma fused"), and the best of our
     variants is shown beside it;
  3. GEMM dispatch: bench_gemm checks its own targets; its summary lines are repeated;
  4. DiT-XL training step, bf16, batch 256: >= 1.2x PyTorch eager's images/s, MFU stated.
Standard library only (the GPU machine's Python has no extra packages to rely on).
"""
import re
import sys


def tables(path):
    """Every markdown table of a log as (context, rows): rows are dicts keyed by the header's
    cells; context is the last '== program', '-- with ...' and '#'-heading lines before it."""
    ctx = {"program": "", "with": "", "heading": ""}
    out, header, rows = [], None, []
    with open(path, errors="replace") as f:
        lines = [ln.rstrip("\n") for ln in f]
    for i, ln in enumerate(lines):
        cells = [c.strip() for c in ln.strip().strip("|").split("|")] if ln.startswith("|") else None
        if cells is not None and header is None:
            if i + 1 < len(lines) and re.match(r"^\|(\s*-+\s*\|)+\s*$", lines[i + 1]):
                header, rows = cells, []
            continue
        if cells is not None and header is not None:
            if set("".join(cells)) <= set("- "):
                continue  # the rule under the header
            if len(cells) == len(header):
                rows.append(dict(zip(header, cells)))
            continue
        if header is not None:
            out.append((dict(ctx), rows))
            header = None
        if ln.startswith("== "):
            ctx = {"program": ln[3:].strip().split("/")[-1], "with": "", "heading": ""}
        elif ln.startswith("-- with "):
            ctx["with"] = ln[len("-- with "):].strip()
        elif ln.startswith("#"):
            ctx["heading"] = ln.lstrip("#").strip()
    if header is not None:
        out.append((dict(ctx), rows))
    return out


def num(cell):
    """The number at the start of a cell ("87.3%", "12.5"), or None."""
    m = re.match(r"^\s*(-?[0-9]+(?:\.[0-9]+)?)", cell or "")
    return float(m.group(1)) if m else None


def verdict(ratio, goal):
    return "no data" if ratio is None else ("met" if ratio >= goal else "NOT met")


def norm_target(ours):
    print("## 1. layernorm + modulate >= 90% of copy bandwidth\n")
    found = False
    for ctx, rows in ours:
        for r in rows:
            if r.get("op", "").startswith("layernorm_modulate") and "% of copy" in r:
                p = num(r["% of copy"])
                found = True
                print(f"- {r['op']}, {r['shape']}, {r['dtype']}: {r['% of copy']} of copy "
                      f"({r['GB/s']} GB/s): {verdict(None if p is None else p / 100, 0.9)}")
    if not found:
        print("- no bench_norm rows: no data")
    print()


def attention_target(ours, torch):
    print("## 2. attention bf16, d 64/128, 1024-4096 tokens: fwd >= 1.0x, bwd >= 0.9x SDPA\n")
    sdpa = {}
    for ctx, rows in torch:
        for r in rows:
            if r.get("variant") == "torch sdpa" and "direction" in r:
                key = (r["B"], r["H"], r["T"], r["d"], r["direction"])
                sdpa[key] = num(r["TFLOP/s"])
    mine, best = {}, {}
    for ctx, rows in ours:
        for r in rows:
            if r.get("op") != "attention" or r.get("dtype") != "bf16":
                continue
            key = (r["B"], r["H"], r["T"], r["d"], r["direction"])
            tf = num(r["TFLOP/s"])
            if tf is None:
                continue
            default = "mma" if r["direction"] == "fwd" else "mma fused"
            if r["path"] == default:
                mine[key] = tf
            if tf > best.get(key, (0, ""))[0]:
                best[key] = (tf, r["path"])
    any_row = False
    for key in sorted(mine, key=lambda k: (k[4], int(k[3]), int(k[2]))):
        b, h, t, d, direction = key
        if int(t) < 1024 or d not in ("64", "128"):
            continue
        any_row = True
        goal = 1.0 if direction == "fwd" else 0.9
        ref = sdpa.get(key)
        ratio = mine[key] / ref if ref else None
        btf, bpath = best[key]
        bratio = f"{btf / ref:.2f}x" if ref else "-"
        shown = f"{ratio:.2f}x" if ratio is not None else "-"
        print(f"- {direction} B={b} H={h} T={t} d={d}: ours {mine[key]:.1f} TFLOP/s, SDPA "
              f"{ref if ref is not None else '-'} TFLOP/s, {shown} (target {goal}x: "
              f"{verdict(ratio, goal)}); best variant {bpath} {bratio}")
    if not any_row:
        print("- no bench_attention rows at 1024-4096 tokens: no data")
    print()


def gemm_target(bench_log):
    print("## 3. GEMM dispatch (bench_gemm's own summary)\n")
    with open(bench_log, errors="replace") as f:
        lines = [ln.rstrip() for ln in f if "target >=" in ln or "not run (this device" in ln]
    print("\n".join(f"- {ln.strip()}" for ln in lines) if lines else "- no summary: no data")
    print()


def step_target(ours, torch):
    print("## 4. DiT-XL step, bf16, batch 256: >= 1.2x PyTorch eager images/s\n")
    eager = None
    for ctx, rows in torch:
        if "training step" in ctx["heading"] and "bf16" in ctx["heading"]:
            for r in rows:
                if r.get("variant") == "torch eager" and r.get("batch") == "256":
                    eager = num(r["images/s"])
                if r.get("variant", "").endswith("+compile") and r.get("batch") == "256":
                    print(f"- (torch.compile: {r['images/s']} images/s)")
    found = False
    for ctx, rows in ours:
        if ctx["program"] != "bench_dit_step":
            continue
        for r in rows:
            if r.get("variant") != "psvae bf16 autocast" or r.get("batch") != "256":
                continue
            found = True
            ips = num(r["images/s"])
            mfu = next((v for k, v in r.items() if k.startswith("MFU")), "-")
            ratio = ips / eager if ips is not None and eager else None
            label = ctx["with"] or "default kernels"
            shown = f"{ratio:.2f}x" if ratio is not None else "-"
            print(f"- ours ({label}): {r['images/s']} images/s, step {r['step (ms)']} ms, MFU "
                  f"{mfu}, peak {r.get('peak memory (MiB)', '-')} MiB; eager "
                  f"{eager if eager is not None else '-'} images/s: {shown} "
                  f"(target 1.2x: {verdict(ratio, 1.2)})")
    if not found:
        print("- no bench_dit_step bf16 batch-256 row: no data")
    print()


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: bench/targets.py BENCH_LOG TORCH_LOG (gpu_session.sh's bench.log and "
                 "torch.log)")
    bench_log, torch_log = sys.argv[1], sys.argv[2]
    try:
        ours, torch = tables(bench_log), tables(torch_log)
    except OSError as e:
        sys.exit(f"targets.py: {e.filename}: {e.strerror}")
    norm_target(ours)
    attention_target(ours, torch)
    gemm_target(bench_log)
    step_target(ours, torch)


if __name__ == "__main__":
    main()
