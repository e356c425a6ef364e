#!/usr/bin/env bash
# The quickstart (README): on a fresh Debian 12, install what is missing, build dsv3d,
# dsv3-worker and dsv3ctl, start dsv3d with its embedded store, synthesize the sample corpus,
# submit configs/train_config_nano.json and follow it to the end; then print its status,
# final metrics and where its checkpoints and TensorBoard files are. dsv3d keeps running
# afterwards so the job verbs can be tried against it.
#
# DSV3_CONTROLLER (default 127.0.0.1:50051) and DSV3_STATE_DIR (default ./var/dsv3) move
# the controller; DSV3_BUILD_DIR (default build) the build.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh

build_dir=${DSV3_BUILD_DIR:-build}
state_dir=${DSV3_STATE_DIR:-./var/dsv3}
export DSV3_CONTROLLER=${DSV3_CONTROLLER:-127.0.0.1:50051}
ctl="$build_dir/cli/dsv3ctl"

echo "== building dsv3d, dsv3-worker and dsv3ctl in $build_dir"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$build_dir" -j "$(nproc)" --target dsv3d dsv3-worker dsv3ctl

mkdir -p "$state_dir"
if "$ctl" list --limit 1 > /dev/null 2>&1; then
  echo "== dsv3d is already running at $DSV3_CONTROLLER"
else
  echo "== starting dsv3d at $DSV3_CONTROLLER (state in $state_dir, log $state_dir/dsv3d.log)"
  rm -f "$state_dir/dsv3d.json"
  # One slot: the nano job gets every core of this machine.
  nohup "$build_dir/server/dsv3d" --listen "$DSV3_CONTROLLER" --state-dir "$state_dir" --slots 1 \
    > "$state_dir/dsv3d.log" 2>&1 &
  dsv3d_pid=$!
  for _ in $(seq 100); do
    [ -s "$state_dir/dsv3d.json" ] && break
    if ! kill -0 "$dsv3d_pid" 2> /dev/null; then
      cat "$state_dir/dsv3d.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "$dsv3d_pid" > "$state_dir/dsv3d.pid"
fi

if [ ! -d data/sample ]; then
  echo "== synthesizing the sample corpus in data/sample"
  "$ctl" data synth data/sample
fi

echo "== submitting configs/train_config_nano.json"
log="$state_dir/quickstart.log"
set +e
"$ctl" submit configs/train_config_nano.json --follow | tee "$log"
outcome=${PIPESTATUS[0]}
set -e
job=$(sed -n 's/^submitted job \([0-9]*\).*/\1/p' "$log" | head -n 1)
if [ -n "$job" ]; then
  echo
  echo "== final metrics of job $job"
  "$ctl" metrics "$job" --name loss --name val_loss --name tokens_per_s --name lr --name mfu
  echo
  echo "== checkpoints of job $job"
  "$ctl" checkpoints "$job"
fi
echo
echo "dsv3d keeps running (pid $(cat "$state_dir/dsv3d.pid" 2> /dev/null || echo '?')): try"
echo "  $ctl status; $ctl logs ${job:-JOB} --tail 5; $ctl submit configs/train_config_nano.json"
echo "  the web dashboard: http://$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"])' \
  "$state_dir/dsv3d.json" 2> /dev/null || echo 127.0.0.1:9400)/"
echo "  tensorboard --logdir $state_dir/jobs   # if TensorBoard is installed"
echo "stop it with: kill \$(cat $state_dir/dsv3d.pid)"
exit "$outcome"
