#!/usr/bin/env bash
# dsv3-worker's hand-written man page: groff renders it without a warning, and it documents
# every flag the program's --help names and every exit status in common/exit_codes.h.
# usage: worker_man_page_test.sh SOURCE_DIR DSV3_WORKER
set -euo pipefail
src=$1 worker=$2
page="$src/worker/docs/dsv3-worker.1"
fail() { echo "worker_man_page: $*" >&2; exit 1; }

warnings=$(groff -man -Tutf8 -ww -z "$page" 2>&1) || fail "groff failed: $warnings"
[ -z "$warnings" ] || fail "groff warns: $warnings"
text=$(groff -man -Tutf8 "$page" 2>/dev/null | sed 's/.\x08//g')

usage=$("$worker" --help 2>&1 || true)
flags=$(grep -o -- '--[a-z][a-z-]*' <<< "$usage" | sort -u)
[ -n "$flags" ] || fail "dsv3-worker --help names no flags: $usage"
for f in $flags; do
  grep -q -- "$f" <<< "$text" || fail "the page does not document $f"
done
statuses=$(sed -n 's/^inline constexpr int k[A-Za-z]* = \([0-9]*\);.*/\1/p' "$src/common/include/dsv3/common/exit_codes.h")
for n in $statuses; do
  grep -qE "^ {7}$n( |\$)" <<< "$text" || fail "the page does not document exit status $n"
done
echo "worker_man_page: $(wc -w <<< "$flags") flags and $(wc -w <<< "$statuses") exit statuses documented"
