#!/usr/bin/env bash
# Everything a session with the GPU machine runs, in as few device calls as possible (device time
# is the scarce thing: 30 minutes a session, 10 a call). Run from the repository root ON THE GPU
# MACHINE, after bench/prepare_device_deps.sh has filled .devdeps/ here and with .devdeps carried:
#
#   bench/gpu_session.sh build test        # call 1: configure + build (16 cores), every CUDA test
#   bench/gpu_session.sh sanitize bench    # call 2: compute-sanitizer, then every bench_* program
#   bench/gpu_session.sh torch             # call 3: PyTorch baselines (bench/torch_baselines.py)
#
# Then, anywhere: bench/targets.py $OUT/bench.log $OUT/torch.log prints each of issue 6's targets
# with its measured ratio (met or not) from those two logs.
#
# Phases: build, test, sanitize, bench, torch (any order; build is implied when the build dir is
# missing). Logs go to $OUT/<phase>.log (the device tool brings $OUT back), or to gpu-out/ when
# OUT is unset. The machine has no apt: header-only dependencies come from .devdeps, cuDNN from the
# PyTorch wheel (site-packages/nvidia/cudnn), the training system (yaml-cpp, CLI11, stb) is left
# out with -DPSVAE_TRAIN=OFF.
#
# A device call ends at 10 minutes and a fresh machine starts bare (the build is redone per call),
# so PHASE_TIMEOUT=<seconds> caps each phase other than build (killed phases exit 124; their log so
# far stays in $OUT) and every phase prints how long it took. SANITIZE_ARGS replaces the doctest
# filter of the sanitizer runs (default: every test_cuda_*.cpp case of test_ops), SANITIZE_TOOLS
# their list (default: memcheck racecheck synccheck). STEP_TIMEOUT=<seconds> (default 300) caps
# each test binary and each bench program inside a phase, so that one hung kernel costs that
# program, not the phase (kernels that spin also trap after 60 s: kernels/cuda/spin_guard.cuh).
# BENCHES=<program names> limits the bench phase to those (bench_programs, below).
# shellcheck disable=SC2317  # the phase_* functions are called through "phase_$p"
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
BUILD=${BUILD:-build-gpu}
export PSVAE_SHARED=${PSVAE_SHARED:-$PWD/../shared}

cudnn_root() {
  python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null
}

phase_build() {
  local cudnn
  cudnn=$(cudnn_root)
  echo "cuDNN from: ${cudnn:-not found}"
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv
  nvcc --version | tail -1
  [ -f "$BUILD/CMakeCache.txt" ] ||
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPSVAE_TRAIN=OFF -DPSVAE_MPI=OFF \
      -DPSVAE_NATIVE=OFF -DPSVAE_CUDA_ARCHS="90a-real" -DPSVAE_DEPS_DIR="$PWD/.devdeps" \
      -DCUDNN_ROOT="$cudnn" || return 1
  time cmake --build "$BUILD" -j 16 || return 1
  # The wgmma kernels (two GEMMs, the attention forward and backward) must run on Hopper's
  # warpgroup MMA: HGMMA in their SASS (HMMA would be the mma.sync path), and the TMA one on the
  # copy engine (UTMALDG). No disassembler on the development machine, so they are counted here.
  local obj name sass
  for name in gemm_wgmma_sm90a gemm_wgmma_tma_sm90a attention_fwd_wgmma_sm90a \
    attention_fwd_wgmma_tma_sm90a attention_bwd_wgmma_sm90a; do
    obj=$(find "$BUILD" -name "$name.cu.o" | head -1)
    if [ -n "$obj" ] && command -v cuobjdump >/dev/null; then
      sass=$(cuobjdump -sass "$obj")
      echo "SASS of $name: $(grep -c HGMMA <<<"$sass" || true) HGMMA," \
        "$(grep -c ' HMMA' <<<"$sass" || true) HMMA, $(grep -c UTMALDG <<<"$sass" || true) UTMALDG"
    fi
  done
}

export_libs() {
  local cudnn
  cudnn=$(cudnn_root)
  [ -n "$cudnn" ] && export LD_LIBRARY_PATH="$cudnn/lib:${LD_LIBRARY_PATH:-}"
}

# One program of a phase, killed after STEP_TIMEOUT seconds (exit 124, said in the log).
step() {
  timeout --kill-after=10 "${STEP_TIMEOUT:-300}" "$@"
  local rc=$?
  [ "$rc" = 124 ] && echo "!! $1 killed after ${STEP_TIMEOUT:-300} s (STEP_TIMEOUT)"
  return "$rc"
}

# Every CUDA test of every suite: the cases in the files named test_cuda_*.cpp.
phase_test() {
  export_libs
  local rc=0
  for t in "$BUILD"/bin/test_*; do
    echo "== $t"
    step "$t" --no-intro=true -sf='*test_cuda_*' --duration=true || rc=1
  done
  return "$rc"
}

# compute-sanitizer memcheck and racecheck over the CUDA kernel tests (slow: memcheck ~10-50x).
phase_sanitize() {
  export_libs
  local - rc=0
  set -f # SANITIZE_ARGS is split into words, never globbed
  # synccheck: barriers in divergent code. initcheck (reads of device memory never written) is
  # opt-in through SANITIZE_TOOLS: it has not run on these kernels yet.
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck synccheck}; do
    echo "== compute-sanitizer --tool $tool"
    # shellcheck disable=SC2086  # SANITIZE_ARGS is a list of flags
    compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 20 \
      "$BUILD"/bin/test_ops --no-intro=true ${SANITIZE_ARGS:--sf=*test_cuda_*} || rc=1
  done
  return "$rc"
}

# The bench programs in the order they run: those that measure the issue's targets first
# (layernorm + modulate, GEMM, attention, the DiT step), so that a phase cut short by
# PHASE_TIMEOUT loses the others; BENCHES=<names> runs only those (e.g. "bench_gemm bench_norm").
bench_programs() {
  local first="bench_norm bench_gemm bench_attention bench_dit_step" b name
  for name in ${BENCHES:-$first}; do
    [ -x "$BUILD/bin/$name" ] && echo "$BUILD/bin/$name"
  done
  [ -n "${BENCHES:-}" ] && return
  for b in "$BUILD"/bin/bench_*; do
    name=${b##*/}
    case " $first " in *" $name "*) ;; *) echo "$b" ;; esac
  done
}

phase_bench() {
  export_libs
  local rc=0 b
  for b in $(bench_programs); do
    echo "== $b"
    if [ "${b##*/}" = bench_dit_step ] && [ -z "${BENCH_ARGS:-}" ]; then
      # DiT-XL at batch 256 fits in bf16 (about 91 GiB) but not in f32 (about 153 GiB of the
      # H200's 139): docs/kernels.md, "DiT-XL step memory". f32 runs at batch 128. The bf16 run
      # also prints one step op by op (the op profiler).
      step "$b" --precision bf16 --batch 256 --profile || rc=1
      # The same bf16 step with the attention forward and backward on Hopper's wgmma kernels (not
      # yet the default): whether they should be, measured on the whole step. The forward is the
      # TMA-fed one (bench_attention's rows compare it with the cp.async wgmma forward alone).
      echo "-- with PSVAE_ATTN_FWD=wgmma_tma PSVAE_ATTN_BWD=wgmma"
      PSVAE_ATTN_FWD=wgmma_tma PSVAE_ATTN_BWD=wgmma step "$b" --precision bf16 --batch 256 || rc=1
      step "$b" --precision f32 --batch 128 || rc=1
    else
      # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
      step "$b" ${BENCH_ARGS:-} || rc=1
    fi
    echo
  done
  return "$rc"
}

phase_torch() {
  # shellcheck disable=SC2086  # TORCH_ARGS is a list of flags
  PYTHONUNBUFFERED=1 python3 bench/torch_baselines.py ${TORCH_ARGS:-}
}

status=0
for p in "$@"; do
  case "$p" in
    build | test | sanitize | bench | torch) ;;
    *) echo "gpu_session.sh: unknown phase '$p' (build, test, sanitize, bench, torch)"; exit 2 ;;
  esac
  if [ "$p" != build ] && [ "$p" != torch ] && [ ! -f "$BUILD/build.ninja" ]; then
    phase_build 2>&1 | tee "$OUT/build.log"
  fi
  echo "#### phase $p ($(date -u +%FT%TZ))"
  start=$SECONDS
  if [ "$p" != build ] && [ -n "${PHASE_TIMEOUT:-}" ]; then
    # The phase functions run in a child bash so that timeout can kill them.
    export -f "phase_$p" export_libs cudnn_root step bench_programs
    export BUILD OUT
    timeout --kill-after=10 "$PHASE_TIMEOUT" bash -c "phase_$p" 2>&1 | tee "$OUT/$p.log"
  else
    "phase_$p" 2>&1 | tee "$OUT/$p.log"
  fi
  rc=${PIPESTATUS[0]}
  echo "#### phase $p exit $rc after $((SECONDS - start)) s"
  [ "$rc" = 0 ] || status=1
done
exit $status
