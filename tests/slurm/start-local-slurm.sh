#!/usr/bin/env bash
# Brings up a real single-node Slurm (munged, slurmctld, slurmd) on localhost for the
# Slurm tests, without systemd. Idempotent: daemons already running from an earlier call
# are kept. Needs root (munge runs as its own user) and the packages of
# deploy/install-deps.sh. Everything lives under $DSV3_SLURM_BASE (default /tmp/dsv3-slurm),
# the config too: a machine's own /etc/slurm is never touched. Clients find the cluster with
#   export SLURM_CONF=$DSV3_SLURM_BASE/slurm.conf
# Stop it with tests/slurm/stop-local-slurm.sh.
#
# Pitfalls met (see also ../shared/slurm-localhost/README.md):
#  - munged needs /run/munge, owned by munge (systemd would create it);
#  - the node is called "localhost" (slurmd -N) with NodeAddr 127.0.0.1;
#  - batch_sched_delay=0, else every sbatch waits for a 3 s scheduling tick.
set -euo pipefail

BASE=${DSV3_SLURM_BASE:-/tmp/dsv3-slurm}
CONF="$BASE/slurm.conf"
export SLURM_CONF="$CONF"
WAIT=${DSV3_SLURM_WAIT:-90}
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

say() { echo "[start-local-slurm] $*"; }
fail() {
  echo "[start-local-slurm] error: $*" >&2
  for f in "$BASE"/log/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
  exit 1
}
# alive PIDFILE COMM: the pid in the file runs and is COMM (not a zombie, not a reused pid)
alive() {
  local pid state
  [ -s "$1" ] || return 1
  pid=$(tr -dc 0-9 <"$1")
  [ -n "$pid" ] || return 1
  state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$state" ] && [ "$state" != Z ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

[ "$(id -u)" = 0 ] || fail "needs root (it installs packages and starts munged as the munge user)"
mkdir -p "$BASE/run" "$BASE/log" "$BASE/state" "$BASE/spool/slurmd"

for tool in munged slurmctld slurmd sbatch srun squeue scontrol; do
  command -v "$tool" >/dev/null || fail "$tool is missing: install the packages with deploy/install-deps.sh"
done

# munge: the key, its folders, the daemon.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key && chmod 700 /etc/munge && chmod 600 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged </dev/null >>"$BASE/log/munged.log" 2>&1 || fail "munged did not start"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || fail "munge does not answer"
  cp /run/munge/munged.pid "$BASE/run/munged.pid"
fi

cpus=$(nproc)
mem=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 512 ))
conf=$(cat <<CONF
# Written by dsv3 tests/slurm/start-local-slurm.sh: a one-node test cluster.
ClusterName=dsv3test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
KillWait=10
InactiveLimit=0
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/slurmd
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
)
changed=0
if [ "$(cat "$CONF" 2>/dev/null)" != "$conf" ]; then
  printf '%s\n' "$conf" >"$CONF"
  changed=1
fi
chmod 644 "$CONF"

if alive "$BASE/run/slurmctld.pid" slurmctld; then
  [ "$changed" = 1 ] && scontrol reconfigure || true
else
  rm -rf "${BASE:?}/state/"*
  slurmctld -f "$CONF" -i </dev/null >>"$BASE/log/slurmctld.stdout" 2>&1 || fail "slurmctld did not start"
fi
for _ in $(seq $((WAIT * 5))); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
scontrol ping | grep -q 'is UP' || fail "slurmctld does not answer"

if ! alive "$BASE/run/slurmd.pid" slurmd; then
  slurmd -f "$CONF" -N localhost </dev/null >>"$BASE/log/slurmd.stdout" 2>&1 || fail "slurmd did not start"
fi
state=""
for i in $(seq $((WAIT * 5))); do
  state=$(sinfo -h -N -n localhost -o '%t' 2>/dev/null | head -n1 || true)
  case "$state" in
    idle|mix|alloc) break ;;
    down*|drain*|fail*|inval*) [ $((i % 10)) = 1 ] && scontrol update NodeName=localhost State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.2
done
case "$state" in idle|mix|alloc) ;; *) sinfo -N -l >&2 || true; fail "node localhost is '$state', not idle" ;; esac
say "Slurm is up: partition debug, node localhost ($cpus CPUs, ${mem} MB); export SLURM_CONF=$CONF"
