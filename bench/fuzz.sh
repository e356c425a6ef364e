#!/usr/bin/env bash
# Runs every libFuzzer target longer than the test suite does (which gives each 15-20 s),
# on a copy of its seed corpus, and prints executions, coverage and corpus growth per target.
#
#   bench/fuzz.sh [SECONDS_PER_TARGET] [BUILD_DIR...]
#
# Default: 300 s each, over build/ (the g++ build: fuzzers compiled by clang++ from sources)
# and build-asan/ (the clang sanitizer build, which also has controller_request_fuzz).
# A crash leaves its input as crash-* in the scratch folder and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
shift || true
dirs=("$@")
[ ${#dirs[@]} -gt 0 ] || dirs=(build build-asan)

declare -A corpus=(
  [config_parser_fuzz]=configs [dolma_line_fuzz]=tests/fuzz/dolma_seeds
  [checkpoint_fuzz]=tests/fuzz/checkpoint_seeds [http_request_fuzz]=tests/fuzz/http_seeds
  [controller_request_fuzz]=tests/fuzz/controller_seeds)
declare -A done_targets=()
status=0
for dir in "${dirs[@]}"; do
  for name in "${!corpus[@]}"; do
    [ -z "${done_targets[$name]:-}" ] || continue
    exe=$(find "$dir" -type f -name "$name" -perm -u+x 2>/dev/null | head -1)
    [ -n "$exe" ] || continue
    done_targets[$name]=1
    scratch=$(mktemp -d "/tmp/dsv3-fuzz-$name-XXXX")
    cp -r "${corpus[$name]}/." "$scratch/"
    seeds=$(ls "$scratch" | wc -l)
    log="$scratch/fuzz.log"
    if (cd "$scratch" && ASAN_OPTIONS=detect_leaks=1 "$OLDPWD/$exe" -max_total_time="$seconds" -timeout=10 \
          -rss_limit_mb=2048 -print_final_stats=1 "$scratch" > "$log" 2>&1); then
      result=ok
    else
      result="CRASH (input in $scratch)"
      status=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
    grown=$(( $(ls "$scratch" | wc -l) - seeds - 1 ))
    printf '%-26s %6ss %12s execs %8.0f/s  cov %6s  corpus %4s -> %5s  %s\n' "$name" "$seconds" "$execs" \
      "$(awk -v e="$execs" -v s="$seconds" 'BEGIN { print (e ~ /^[0-9]+$/) ? e / s : 0 }')" "$cov" "$seeds" "$((seeds + grown))" "$result"
    [ "$result" != ok ] || rm -rf "$scratch"
  done
done
exit $status
