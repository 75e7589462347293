#!/usr/bin/env bash
# Copies Debian's header-only dependencies (Eigen, fmt, doctest, nlohmann-json) into .devdeps/,
# the folder that travels to the GPU machine (it has no apt) and that CMake reads through
# -DPSVAE_DEPS_DIR=.devdeps. Run here, in the repository root; .devdeps/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.devdeps/include
rm -rf .devdeps
mkdir -p "$out"
for d in eigen3 fmt doctest nlohmann; do
  [ -d /usr/include/$d ] || { echo "prepare_device_deps: /usr/include/$d missing (make deps)"; exit 1; }
  cp -r /usr/include/$d "$out/"
done
# Eigen's unsupported/ and docs are not used.
rm -rf "$out/eigen3/unsupported"
du -sh .devdeps
