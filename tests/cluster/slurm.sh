#!/usr/bin/env bash
# A one-node Slurm cluster on localhost runs samples/slurm/qmoe-extract.sbatch
# as a job array of 4 tasks (sbatch --array=0-3 --wait); the result is
# verified against the source.
#
# As root: installs munge, slurmctld, slurmd and slurm-client when missing,
# writes a private slurm.conf (this host, its CPUs and RealMemory from
# `slurmd -C`, ports 16817/16818, everything under one scratch directory,
# found by the clients through SLURM_CONF), makes a munge key, starts
# munged, slurmctld and slurmd in the foreground, and stops exactly those
# on exit. Nothing under /etc is changed.
. "$(dirname "$0")/../cli/lib.sh"
. "$(dirname "$0")/lib.sh"
need_root slurm
apt_need munge slurmctld slurmd slurm-client ||
    { fail slurm-installed "apt-get install munge slurmctld slurmd slurm-client failed: $(tail -3 "$T/apt.log")"; exit 0; }
ok slurm-installed
slurmctld -V | sed "s/^/# /"

# munged wants every directory up to its socket searchable by all and
# refuses group/world-writable ones: a fresh 0755 directory of our own.
W=$(mktemp -d /tmp/qmoe-slurm.XXXXXX)
chmod 755 "$W"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    rm -rf "$W"
}
trap cleanup EXIT
# show_logs NAME: the daemons' logs, for a failure report
show_logs() {
    local f
    for f in "$W"/*.log; do [ -f "$f" ] && { echo "# --- $(basename "$f") (last lines)"; tail -n 15 "$f" | sed 's/^/#   /'; }; done
}

# -- munge: key, daemon
dd if=/dev/urandom of="$W/munge.key" bs=1024 count=1 status=none
chmod 400 "$W/munge.key"
munged -F --key-file="$W/munge.key" --socket="$W/munge.socket" --pid-file="$W/munged.pid" \
    --log-file="$W/munged.log" --seed-file="$W/munged.seed" 2>>"$W/munged.log" &
PIDS+=($!)
for _ in $(seq 50); do [ -S "$W/munge.socket" ] && break; sleep 0.1; done
if munge -S "$W/munge.socket" -n | unmunge -S "$W/munge.socket" >/dev/null 2>&1; then
    ok munged-started
else
    fail munged-started "munge credential round trip failed"; show_logs; exit 0
fi

# -- slurm.conf for this host
host=$(hostname -s)
node=$(slurmd -C | head -1)
cpus=$(printf %s "$node" | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')
mem=$(printf %s "$node" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
echo "# node: $host CPUs=$cpus RealMemory=$mem"
mkdir -p "$W/state" "$W/spool"
cat >"$W/slurm.conf" <<EOF
ClusterName=qmoe
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$W/munge.socket
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool
SlurmctldPidFile=$W/slurmctld.pid
SlurmdPidFile=$W/slurmd.pid
SlurmctldLogFile=$W/slurmctld.log
SlurmdLogFile=$W/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
InactiveLimit=0
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=qmoe Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$W/slurm.conf"

# -- daemons
slurmctld -D -i -f "$SLURM_CONF" >>"$W/slurmctld.out.log" 2>&1 &
PIDS+=($!)
slurmd -D -N "$host" -f "$SLURM_CONF" >>"$W/slurmd.out.log" 2>&1 &
PIDS+=($!)
state=
for _ in $(seq 100); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null)
    case $state in idle*|mix*|alloc*) break ;; esac
    sleep 0.2
done
case $state in
    idle*|mix*|alloc*) ok slurm-node-up ;;
    *) fail slurm-node-up "node '$host' state '${state:-none}' after 20 s: $(sinfo 2>&1 | tail -2)"; show_logs; exit 0 ;;
esac

# -- the job array
make_sample "$T/src" || { fail sample "cannot make the sample"; exit 0; }
mkdir -p "$T/jobs"
run timeout 180 sbatch --array=0-3 --wait --chdir="$T/jobs" --output="$T/jobs/task-%a.out" \
    --export=ALL,QMOE_BIN="$QMOE_BIN" "$QMOE_ROOT/samples/slurm/qmoe-extract.sbatch" "$T/src" "$T/out"
if ! expect sbatch-array-wait 0 "Submitted batch job" stdout; then
    for f in "$T"/jobs/*.out; do [ -f "$f" ] && sed "s|^|# $(basename "$f"): |" "$f"; done
    show_logs
fi
for i in 0 1 2 3; do
    grep -q "part $i/4" "$T/jobs/task-$i.out" 2>/dev/null && grep -q "files complete" "$T/jobs/task-$i.out" ||
        fail "slurm-task-$i" "$(cat "$T/jobs/task-$i.out" 2>/dev/null)"
    grep -q '"state":"finished"' "$T/out/.qmoe/shard-$i-of-4/progress.json" 2>/dev/null ||
        fail "slurm-part-$i-finished"
done
ok slurm-tasks-map-to-parts
verify_out slurm "$T/src" "$T/out"
run qmoe-extract --no-progress "$T/src" "$T/one"
[ "$(tree_sum "$T/out")" = "$(tree_sum "$T/one")" ] && ok slurm-equals-one-process \
    || fail slurm-equals-one-process "$(diff <(tree_sum "$T/one") <(tree_sum "$T/out") | head -4)"

# -- the job script refuses an array with a step, and a plain job
run timeout 60 sbatch --array=0-2:2 --wait --chdir="$T/jobs" --output="$T/jobs/step-%a.out" \
    --export=ALL,QMOE_BIN="$QMOE_BIN" "$QMOE_ROOT/samples/slurm/qmoe-extract.sbatch" "$T/src" "$T/out2"
[ "$rc" != 0 ] && grep -q "one range with step 1" "$T/jobs/step-0.out" && ok sbatch-refuses-step \
    || fail sbatch-refuses-step "rc=$rc $(cat "$T"/jobs/step-*.out 2>/dev/null)"
run timeout 60 sbatch --wait --chdir="$T/jobs" --output="$T/jobs/plain.out" \
    --export=ALL,QMOE_BIN="$QMOE_BIN" "$QMOE_ROOT/samples/slurm/qmoe-extract.sbatch" "$T/src" "$T/out3"
[ "$rc" != 0 ] && grep -q "not an array task" "$T/jobs/plain.out" && ok sbatch-refuses-plain-job \
    || fail sbatch-refuses-plain-job "rc=$rc $(cat "$T/jobs/plain.out" 2>/dev/null)"
