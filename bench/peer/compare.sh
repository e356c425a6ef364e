#!/usr/bin/env bash
# dsv3 with fused kernels on and off against the PyTorch-eager peer (bench/peer/dsv3_peer.py)
# on the same model, batch, sequence, threads and OpenBLAS kernels, in one run: forward +
# backward + optimizer step, tokens/s and the ratios. The peer runs twice: with one OpenBLAS
# thread (dsv3's setting) and with OpenBLAS's default (one per core); the better counts.
#
#   bench/peer/compare.sh [BUILD_DIR]     (BUILD_DIR defaults to build)
#   CONFIGS="nano:16:128:10 tiny:4:1024:2" THREADS=2 WARMUP=1 bench/peer/compare.sh
#
# Each CONFIGS entry is name:batch:seq:steps for configs/train_config_<name>.json. Needs
# Debian's python3-torch (deploy/install-deps.sh); runs /usr/bin/python3 so that a pyenv or
# venv python without torch does not shadow it.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
THREADS=${THREADS:-2}
CONFIGS=${CONFIGS:-"nano:16:128:10 tiny:4:1024:2"}
PY=${PYTHON:-/usr/bin/python3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

last_json() { grep '^{' "$1" | tail -1; }

for entry in $CONFIGS; do
  IFS=: read -r name batch seq steps <<<"$entry"
  cfg=configs/train_config_$name.json
  for fused in 1 0; do
    "$BUILD/bench/train_bench" --config "$cfg" --batch "$batch" --seq "$seq" --steps "$steps" --threads "$THREADS" \
      --fused "$fused" --no-checkpoint --dir "$out/tb" >"$out/$name.dsv3.$fused" 2>&1
  done
  for blas in 1 "$THREADS"; do
    OPENBLAS_NUM_THREADS=$blas "$PY" bench/peer/dsv3_peer.py --config "$cfg" --batch "$batch" --seq "$seq" \
      --steps "$steps" --warmup "${WARMUP:-1}" --threads "$THREADS" >"$out/$name.peer.$blas" 2>&1
  done
done

"$PY" - "$out" "$THREADS" "${OPENBLAS_CORETYPE:-auto}" $CONFIGS <<'PYEOF'
import json, sys
out, threads, coretype, entries = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def last(path):
    lines = [l for l in open(path) if l.startswith("{")]
    if not lines:
        sys.exit(f"no figures in {path}:\n" + open(path).read()[-2000:])
    return json.loads(lines[-1])
print(f"threads {threads}, OPENBLAS_CORETYPE {coretype}; fp32, forward + backward + AdamW step")
print("| config | batch x seq | dsv3 fused tok/s | dsv3 unfused tok/s | peer tok/s (OpenBLAS 1 / %s thr) | fused / unfused | fused / best peer | unfused / best peer | params (dsv3 = peer) |" % threads)
print("|---|---|---|---|---|---|---|---|---|")
for entry in entries:
    name, batch, seq, _ = entry.split(":")
    f, u = last(f"{out}/{name}.dsv3.1"), last(f"{out}/{name}.dsv3.0")
    p1, pn = last(f"{out}/{name}.peer.1"), last(f"{out}/{name}.peer.{threads}")
    best = max(p1["tokens_per_s"], pn["tokens_per_s"])
    same = "yes" if f["parameters"] == p1["parameters"] else f"NO ({f['parameters']} vs {p1['parameters']})"
    print(f"| {name} | {batch} x {seq} | {f['tokens_per_s']:.0f} | {u['tokens_per_s']:.0f} | "
          f"{p1['tokens_per_s']:.0f} / {pn['tokens_per_s']:.0f} | {f['tokens_per_s'] / u['tokens_per_s']:.2f}x | "
          f"{f['tokens_per_s'] / best:.2f}x | {u['tokens_per_s'] / best:.2f}x | {f['parameters']} ({same}) |")
print()
print("| config | run | forward ms | backward ms | optimizer ms | peak RSS MiB |")
print("|---|---|---|---|---|---|")
for entry in entries:
    name = entry.split(":")[0]
    for label, path in (("dsv3 fused", f"{out}/{name}.dsv3.1"), ("dsv3 unfused", f"{out}/{name}.dsv3.0"),
                        ("peer, OpenBLAS 1", f"{out}/{name}.peer.1"),
                        (f"peer, OpenBLAS {threads}", f"{out}/{name}.peer.{threads}")):
        r = last(path)
        print(f"| {name} | {label} | {r['forward_ms']:.0f} | {r['backward_ms']:.0f} | {r['optimizer_ms']:.0f} | "
              f"{r['peak_rss_mib']:.0f} |")
PYEOF
