#!/usr/bin/env bash
# Installs every Debian 12 package that dsv3's build, tests and quickstart need.
# Idempotent: packages already present are skipped, and apt is not touched at all
# when nothing is missing. Run as root or with sudo available.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config ccache git
  # libFuzzer targets and the ASan+UBSan build: clang with its runtime (a Recommends that
  # --no-install-recommends skips)
  clang libclang-rt-14-dev
  # engine: LibTorch (CPU) with a threaded OpenBLAS (the reference BLAS is ~19x slower),
  # c10d's Gloo headers, data pipeline
  libtorch-dev libopenblas0-pthread libgloo-dev zlib1g-dev libsentencepiece-dev
  # service: gRPC + protobuf, HTTP, store, logging, CLI
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libboost-dev libsqlite3-dev libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  # metrics: prometheus-cpp's registry and text serializer (not its web server)
  prometheus-cpp-dev
  # web dashboard: Chart.js served by dsv3d from Debian's copy (no CDN)
  libjs-chart.js
  # security: TLS for gRPC (grpc links it; dsv3d checks certificates itself), token hashes
  libssl-dev
  # tests: GoogleTest, promtool for the metrics format, a Python gRPC client, openssl
  libgtest-dev libgmock-dev prometheus python3 python3-grpcio python3-protobuf openssl
  # tests: groff checks the generated man pages; bash runs the generated completion;
  # systemd-analyze checks the units and dpkg-shlibdeps gives the DEB its dependencies
  groff-base bash systemd dpkg-dev
  # tests: the web dashboard in a headless browser
  chromium
  # tests: a real single-node Slurm (tests/slurm/start-local-slurm.sh) for the slurm allocator
  munge slurm-wlm slurmctld slurmd slurm-client
  # bench: the PyTorch-eager Python peer of the model (bench/peer/) on the same LibTorch
  python3-torch
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

echo "install-deps: installing ${missing[*]}"
# Keep apt from starting services (prometheus, munge, slurm) as a side effect of installing them.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  created_policy=1
fi
cleanup() { if [ $created_policy = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: done"
