#!/usr/bin/env python3
"""Registers, spills and static shared memory of every CUDA kernel, as ptxas reports them.

Compile-time facts, no GPU needed: each .cu of kernels/ and tensor/ is recompiled from a CUDA build
directory's compile_commands.json for one real architecture with `-Xptxas -v`, output discarded.

    bench/ptxas_report.py [--build build-cu] [--arch sm_90] [--jobs 2] [--all]

Prints one markdown row per kernel instantiation that spills or uses more than 128 registers
(--all: every one), then a summary line, then every kernel whose wgmma ptxas serialised (its
"Potential Performance Loss" infos C7510-C7520: a warpgroup wait or arrive it had to insert, so
the tensor cores run one wgmma at a time; --only REGEX restricts the report to matching files). A kernel needs registers x threads <= 65536 per block to
launch at all, and registers decide how many blocks share an SM; spilled bytes go to local memory
(L1, then L2). docs/kernels.md, "Registers and spills", quotes this report.
"""
import argparse
import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys


def ptxas_lines(entry, arch):
    """ptxas -v output of one compile_commands entry, rebuilt for `arch` only. A *_sm90a.cu
    file exists only for sm_90a (its wgmma needs it): it is built for sm_90a when `arch` is
    sm_90, and left out for any other arch."""
    if entry["file"].endswith("_sm90a.cu"):
        if arch != "sm_90":
            return []
        arch = "sm_90a"
    args = shlex.split(entry["command"])
    out, keep = [], True
    for a in args:
        if not keep:
            keep = True  # the value after -o
            continue
        if a == "-o":
            keep = False
            continue
        if a.startswith("--generate-code=") or a.startswith("-gencode"):
            continue
        out.append(a)
    # sm_90a as -gencode: nvcc's -arch=sm_90a shorthand also runs a device pass without the
    # sm_90a features, where the kernel's wgmma branch is compiled out.
    target = ("-gencode=arch=compute_90a,code=sm_90a" if arch == "sm_90a" else f"-arch={arch}")
    out += [target, "-Xptxas", "-v", "-o", os.devnull]
    r = subprocess.run(out, cwd=entry["directory"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ptxas_report: compiling {entry['file']} failed:\n{r.stderr[-2000:]}")
    return r.stderr.splitlines()


def parse(lines):
    """[(mangled name, registers, stack, spill stores, spill loads, smem)] from ptxas -v."""
    rows, name, spill = [], None, (0, 0, 0)
    for line in lines:
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            name, spill = m.group(1), (0, 0, 0)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m and name:
            spill = tuple(map(int, m.groups()))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            sm = re.search(r"(\d+) bytes smem", line)
            rows.append((name, int(m.group(1)), *spill, int(sm.group(1)) if sm else 0))
            name = None
    return rows


SERIALISED = re.compile(r"\((C75\d\d)\) Potential Performance Loss: wgmma\.mma_async instructions "
                        r"are serialized (.*) in the function '(\S+)'")


def serialised(lines):
    """[(mangled name, code, reason)] of the kernels whose wgmma ptxas serialised."""
    return [(m.group(3), m.group(1), m.group(2)) for m in map(SERIALISED.search, lines) if m]


def demangle(names):
    return subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                          text=True).stdout.splitlines()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", default="build-cu", help="a CMake build dir with the CUDA backend")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--all", action="store_true", help="every kernel, not only the notable ones")
    p.add_argument("--only", default="", help="only the .cu files whose path matches this regex")
    a = p.parse_args()
    db = os.path.join(a.build, "compile_commands.json")
    if not os.path.exists(db):
        sys.exit(f"ptxas_report: {db} not found (configure a CUDA build there first)")
    entries = [e for e in json.load(open(db))
               if e["file"].endswith(".cu") and
               re.search(r"/(kernels|tensor)/cuda/", e["file"]) and re.search(a.only, e["file"])]
    if not entries:
        sys.exit(f"ptxas_report: no kernels/ or tensor/ .cu files in {db} (not a CUDA build?)")
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        results = list(pool.map(lambda e: (e["file"], ptxas_lines(e, a.arch)), entries))
    rows = [(os.path.basename(f), *r) for f, lines in results for r in parse(lines)]
    names = demangle([r[1] for r in rows])
    strip = re.compile(r"psvae::kernels::cuda::|psvae::cuda::|\(anonymous namespace\)::|detail::")
    print(f"| file | kernel | registers | spill stores / loads (B) | static smem (B) |")
    print("|---|---|---|---|---|")
    notable = 0
    for (f, _, reg, _stack, ss, sl, smem), n in sorted(zip(rows, names), key=lambda x: -x[0][2]):
        if a.all or ss or sl or reg > 128:
            notable += 1
            n = strip.sub("", n)
            n = n if len(n) <= 110 else n[:107] + "..."
            print(f"| {f} | `{n}` | {reg} | {ss} / {sl} | {smem} |")
    spills = [r for r in rows if r[4] or r[5]]
    print(f"\n{len(rows)} kernel instantiations in {len(entries)} files for {a.arch}: "
          f"{len(spills)} spill (at most {max((r[4] for r in rows), default=0)} bytes stored), "
          f"{sum(r[2] > 128 for r in rows)} use more than 128 registers, "
          f"the most is {max(r[2] for r in rows)}.")
    ser = [(os.path.basename(f), *x) for f, lines in results for x in serialised(lines)]
    if not ser:
        print("wgmma serialised by ptxas (C7510-C7520): in no kernel.")
        return
    print(f"\nwgmma serialised by ptxas in {len(ser)} kernel(s):")
    for (f, _, code, why), n in zip(ser, demangle([x[1] for x in ser])):
        print(f"- {f} `{strip.sub('', n)}`: {code}, {why}")


if __name__ == "__main__":
    main()
