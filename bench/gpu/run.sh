#!/usr/bin/env bash
# The GPU check, in one script for a machine with one CUDA GPU and a CUDA PyTorch (see
# ../shared/GPU.md): builds the engine, the kernels and their tests against that PyTorch's
# LibTorch, runs every test labelled `gpu` (the kernels against the LibTorch reference on CUDA
# in fp32 and bf16, the NCCL communicator in a world of one, 50 bf16 steps of the tiny config),
# then times tiny and small in bf16 with fused kernels on and off (tokens/s, MFU, peak memory).
# Figures and logs go to $OUT; the summary is printed last; exit status non-zero when a check
# failed.
#
#   bash bench/gpu/prepare-carry.sh        # here, once: fills .carry/
#   OUT=/tmp/out bash bench/gpu/run.sh     # there (the device call: carry [".carry"])
#
# Knobs: JOBS (16), STEPS (10), SKIP_BENCH=1 (tests only).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-/tmp/dsv3-gpu}
JOBS=${JOBS:-16}
STEPS=${STEPS:-10}
CARRY=$ROOT/.carry
BUILD=$ROOT/build-gpu
mkdir -p "$OUT"
status=0
summary=()
note() { summary+=("$1"); echo "== $1"; }
fail() { note "FAIL: $1"; status=1; }

PY=${PYTHON:-python3}
TORCH_PREFIX=$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)') || { echo "no PyTorch"; exit 2; }
ABI=$($PY -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
TORCH_INFO=$($PY -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))')
NCCL_ROOT=$($PY -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))' 2>/dev/null || true)
note "torch $TORCH_INFO; CXX11 ABI $ABI; NCCL ${NCCL_ROOT:-from the CUDA toolkit}"
[ -d "$CARRY/deps" ] || { echo "missing $CARRY: run bench/gpu/prepare-carry.sh here first"; exit 2; }
FLAGS="-D_GLIBCXX_USE_CXX11_ABI=$ABI"

# GoogleTest with the same C++ ABI as LibTorch.
if [ ! -d "$CARRY/gtest" ]; then
  cmake -S "$CARRY/googletest" -B "$CARRY/gtest-build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CXX_FLAGS="$FLAGS" -DCMAKE_INSTALL_PREFIX="$CARRY/gtest" >"$OUT/gtest.log" 2>&1 &&
    cmake --build "$CARRY/gtest-build" -j "$JOBS" --target install >>"$OUT/gtest.log" 2>&1 || { fail "googletest build"; }
fi

start=$(date +%s)
export TORCH_CUDA_ARCH_LIST=9.0
if cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS="$FLAGS" \
     -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$CARRY/deps;$CARRY/gtest" -DZLIB_ROOT="$CARRY/deps" \
     -DDSV3_WITH_GRPC=OFF -DDSV3_WITH_CUDA=ON -DDSV3_FUZZ=OFF -DCMAKE_CUDA_ARCHITECTURES=90 \
     ${NCCL_ROOT:+-DNCCL_ROOT=$NCCL_ROOT} >"$OUT/configure.log" 2>&1 &&
   cmake --build "$BUILD" -j "$JOBS" --target kernels_test gpu_training_test communicator_contract_test \
     train_bench >"$OUT/build.log" 2>&1; then
  note "built in $(( $(date +%s) - start )) s"
else
  fail "configure/build (see configure.log, build.log)"
  tail -40 "$OUT/build.log" "$OUT/configure.log" 2>/dev/null
  printf '%s\n' "${summary[@]}"
  exit 1
fi
grep -q "CUDA kernels and their LibTorch bindings" "$OUT/configure.log" || fail "configure did not enable the CUDA bindings"

# Every gpu-labelled test: the kernels on CUDA, NCCL in a world of one, 50 bf16 steps of tiny.
if (cd "$BUILD" && ctest -L gpu --output-on-failure --timeout 600) >"$OUT/gpu_tests.log" 2>&1; then
  note "gpu tests: $(grep -E 'tests passed' "$OUT/gpu_tests.log" | tail -1)"
else
  fail "gpu tests: $(grep -E 'tests passed|tests failed' "$OUT/gpu_tests.log" | tail -1)"
  grep -E "Failure|FAILED|Expected|max \|got" "$OUT/gpu_tests.log" | head -30
fi
grep -q "Skipped" "$OUT/gpu_tests.log" && fail "a gpu test was skipped on the GPU machine (see gpu_tests.log)"

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  echo "config,batch,seq,fused,tokens_per_s,mfu,peak_device_mib,forward_ms,backward_ms,optimizer_ms,loss" >"$OUT/bench.csv"
  for spec in tiny:8:1024 small:4:2048; do
    IFS=: read -r name batch seq <<<"$spec"
    for fused in 1 0; do
      log="$OUT/bench_${name}_fused${fused}.log"
      if "$BUILD/bench/train_bench" --config "configs/train_config_$name.json" --batch "$batch" --seq "$seq" \
           --steps "$STEPS" --bf16 1 --fused "$fused" --no-checkpoint --dir "/tmp/dsv3_gpu_bench" >"$log" 2>&1; then
        $PY - "$log" "$name" "$batch" "$seq" "$fused" >>"$OUT/bench.csv" <<'PYEOF'
import json, sys
log, name, batch, seq, fused = sys.argv[1:]
r = json.loads([l for l in open(log) if l.startswith("{")][-1])
print(f"{name},{batch},{seq},{fused},{r['tokens_per_s']:.0f},{r['mfu']:.4f},{r['peak_device_mib']:.0f},"
      f"{r['forward_ms']:.1f},{r['backward_ms']:.1f},{r['optimizer_ms']:.1f},{r['loss']:.4f}")
PYEOF
      else
        fail "train_bench $name fused=$fused (see $(basename "$log"))"
        tail -5 "$log"
      fi
    done
  done
  note "bench (bf16, one GPU):"
  while IFS= read -r line; do summary+=("   $line"); done <"$OUT/bench.csv"
fi

echo
echo "==== summary"
printf '%s\n' "${summary[@]}"
exit $status
