#!/usr/bin/env bash
# The test command (README): installs missing Debian packages, builds everything, runs
# every test. Extra arguments go to ctest, e.g. `deploy/test.sh -L unit` or `-R config`.
# DSV3_BUILD_DIR picks the build folder (default: build).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh

build_dir=${DSV3_BUILD_DIR:-build}
jobs=$(nproc)
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV3_WERROR=ON
cmake --build "$build_dir" -j "$jobs"
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" "$@"
