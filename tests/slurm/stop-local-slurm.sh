#!/usr/bin/env bash
# Stops the daemons tests/slurm/start-local-slurm.sh started (by its pid files only), after
# cancelling any job still queued or running.
set -uo pipefail
BASE=${DSV3_SLURM_BASE:-/tmp/dsv3-slurm}
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export SLURM_CONF="$BASE/slurm.conf"
stop() {
  local f=$BASE/run/$1.pid pid
  [ -s "$f" ] || return 0
  pid=$(tr -dc 0-9 <"$f")
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
    [ -e "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
}
if [ -s "$BASE/run/slurmctld.pid" ]; then
  jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  # shellcheck disable=SC2086
  [ -n "${jobs// /}" ] && scancel $jobs 2>/dev/null
fi
stop slurmd
stop slurmctld
stop munged
echo "[stop-local-slurm] stopped"
