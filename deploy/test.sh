#!/usr/bin/env bash
# The test command (README): installs missing Debian packages, builds everything, runs
# every test, then the unit tests and fuzzers again under ASan+UBSan. Extra arguments go to ctest, e.g. `deploy/test.sh -L unit` or `-R config`.
# DSV3_BUILD_DIR picks the build folder (default: build).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh

# A real single-node Slurm for the slurm allocator's tests (its own config, under /tmp).
# Started before the build so its first scheduling pass is long done when the tests run;
# stopped at the end when this script started it.
export DSV3_SLURM_BASE=${DSV3_SLURM_BASE:-/tmp/dsv3-slurm}
export SLURM_CONF=$DSV3_SLURM_BASE/slurm.conf
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo --preserve-env=DSV3_SLURM_BASE"; fi
if ! scontrol ping 2>/dev/null | grep -q 'is UP'; then
  $SUDO bash tests/slurm/start-local-slurm.sh
  trap '$SUDO bash tests/slurm/stop-local-slurm.sh' EXIT
fi

build_dir=${DSV3_BUILD_DIR:-build}
jobs=$(nproc)
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV3_WERROR=ON
cmake --build "$build_dir" -j "$jobs"
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" "$@"

# The unit tests and fuzz targets again, built by clang with AddressSanitizer and
# UndefinedBehaviorSanitizer: the LibTorch-free half where input from the network and from
# files is handled (config, data, checkpoint manifests, the job store, auth, allocators,
# dsv3d's services). dsv3ctl's verbs are left out to keep the build short; they are a
# client of the same checks. Skipped when arguments select tests (`deploy/test.sh -R x`).
if [ $# -eq 0 ] && [ "${DSV3_SANITIZER_TESTS:-1}" = 1 ]; then
  asan_dir=${DSV3_ASAN_BUILD_DIR:-build-asan}
  CC=clang CXX=clang++ cmake -S . -B "$asan_dir" -G Ninja -DCMAKE_BUILD_TYPE=Sanitize \
    -DCMAKE_CXX_FLAGS="-O1 -gline-tables-only" -DDSV3_SANITIZE=ON -DDSV3_BUILD_ENGINE=OFF -DDSV3_BUILD_CLI=OFF \
    -DDSV3_WERROR=ON
  cmake --build "$asan_dir" -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir "$asan_dir" --output-on-failure -j "$jobs" -L unit
fi
