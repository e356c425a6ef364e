#!/usr/bin/env bash
# Fills .carry/ (git-ignored) with what bench/gpu/run.sh needs on a GPU machine that has a CUDA
# PyTorch but no Debian packages: nlohmann_json (headers + CMake config), zlib (headers + static
# library) and the GoogleTest sources, all from this machine's Debian packages
# (deploy/install-deps.sh installs them). Pass `.carry` in the device call's `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
C=.carry
rm -rf "$C"
mkdir -p "$C/deps/include" "$C/deps/lib" "$C/deps/share/cmake"
cp -r /usr/include/nlohmann "$C/deps/include/"
cp -r /usr/share/cmake/nlohmann_json "$C/deps/share/cmake/"
cp /usr/include/zlib.h /usr/include/zconf.h "$C/deps/include/"
cp /usr/lib/x86_64-linux-gnu/libz.a "$C/deps/lib/"
cp -r /usr/src/googletest "$C/googletest"
du -sh "$C"
