#!/usr/bin/env bash
# Start a real single-node SLURM on this host, for the cluster tests and for trying the
# profiles/slurm profile by hand. Needs root; Debian/Ubuntu (apt). Stop it with slurm-down.sh.
#
#   sudo tests/cluster/slurm-up.sh      # installs slurmctld slurmd slurm-client munge if missing,
#                                       # writes /etc/slurm/slurm.conf, starts munged, slurmctld
#                                       # and slurmd by hand (no systemd), waits for an idle node
#
# The node is this host under its short hostname, reached at 127.0.0.1; its CPUs, sockets, cores,
# threads and memory are what `slurmd -C` reads from the machine. select/cons_tres, no accounting
# (so Snakemake's slurm executor must use `squeue` for job status, which MinJobAge=300 makes
# reliable). The daemons started here are recorded in $MSGPROF_SLURM_STATE (default
# /run/msgprof-slurm), and slurm-down.sh stops exactly those. An existing /etc/slurm/slurm.conf
# is kept aside there and put back by slurm-down.sh. Running this again while the cluster it
# started is up only waits for the nodes. Exit status: 0 up, 3 SLURM cannot be installed here
# (no apt-get, or the install failed), 1 anything else.
#
# MSGPROF_SLURM_NODES=N (default 1) emulates N nodes on this host: one slurmd per node, named
# HOST1..HOSTN, each on its own port with an equal share of the CPUs and memory, all at
# 127.0.0.1. That is how `msgprof point --launcher srun` is tested with its clients on a node
# other than the server's (the network path is loopback; everything SLURM does is real).
set -euo pipefail

state=${MSGPROF_SLURM_STATE:-/run/msgprof-slurm}
wait_s=${MSGPROF_SLURM_WAIT_S:-90}
count=${MSGPROF_SLURM_NODES:-1}
conf=/etc/slurm/slurm.conf
marker="# msgprof single-node test cluster (tests/cluster/slurm-up.sh)"
here=$(cd "$(dirname "$0")" && pwd)

say() { echo "slurm-up: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"
[ "$(uname -s)" = Linux ] || die "needs Linux"
started=$(date +%s.%N)

alive() {  # alive NAME: the recorded pid of daemon NAME (slurmd-2: a slurmd) still runs it
  local pid
  pid=$(cat "$state/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${1%%-*}" ]
}

wait_idle() {  # wait until every node is idle; resume them once if slurm marked one down
  local deadline=$(( $(date +%s) + wait_s )) resumed=0 s d
  while [ "$(date +%s)" -lt "$deadline" ]; do
    s=$(timeout 10 sinfo -h -N -o %t 2>/dev/null | sort -u | tr '\n' ' ' || true)
    [ "$s" = "idle " ] && [ "$(timeout 10 sinfo -h -N -o %N | wc -l)" -eq "$count" ] && return 0
    case "$s" in
      *down*|*drain*|*inval*)
        if [ "$resumed" -eq 0 ]; then
          timeout 10 scontrol update nodename="$nodes" state=resume 2>/dev/null || true
          resumed=1
        fi ;;
    esac
    for d in "${daemons[@]}"; do
      alive "$d" || { say "$d exited; its output:"; tail -n 30 "$state/$d.out" >&2 || true; return 1; }
    done
    sleep 0.5
  done
  say "nodes $nodes not idle after ${wait_s}s (states: ${s:-none})"
  return 1
}

[[ "$count" =~ ^[1-9][0-9]?$ ]] || die "MSGPROF_SLURM_NODES must be a number from 1 to 99"
host=$(hostname -s)
if [ "$count" -eq 1 ]; then
  names=("$host")
else
  names=()
  for i in $(seq 1 "$count"); do names+=("$host$i"); done
fi
nodes=$(IFS=,; echo "${names[*]}")
daemons=(slurmctld)  # names of the pid files in $state this script writes (and munged, if it starts it)
for i in "${!names[@]}"; do daemons+=("slurmd-$((i + 1))"); done

# 1. Packages (no recommends). Keep package scripts from starting services (policy-rc.d: 101),
#    so nothing runs that this script did not start.
need=()
for pkg in slurmctld slurmd slurm-client munge; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  command -v apt-get > /dev/null || { say "no apt-get to install ${need[*]} with"; exit 3; }
  say "installing ${need[*]}"
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && own_policy=1
  fi
  apt_install() {
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
      "${need[@]}" > "/tmp/msgprof-slurm-apt.log" 2>&1
  }
  ok=1
  apt_install || { timeout 600 apt-get update -qq > /dev/null 2>&1 || true; apt_install; } || ok=0
  [ "$own_policy" -eq 0 ] || rm -f "$policy"
  [ "$ok" -eq 1 ] || { tail -n 20 /tmp/msgprof-slurm-apt.log >&2; say "apt-get install failed"; exit 3; }
fi

# 2. Already up (started by this script earlier)?
if alive slurmctld && [ "$(head -n1 "$conf" 2>/dev/null)" = "$marker" ]; then
  running=$(cat "$state/nodes" 2>/dev/null || echo 1)
  [ "$running" = "$count" ] || die "running with $running node(s), not $count: run slurm-down.sh first"
  say "already running (state in $state); waiting for nodes $nodes"
  wait_idle || exit 1
  exit 0
fi
if compgen -G "$state/*.pid" > /dev/null; then  # a cluster half up: stop what is left of it
  "$here/slurm-down.sh" || true
fi
for d in slurmctld slurmd; do
  if pgrep -x "$d" > /dev/null; then
    die "a $d not started by this script is running (pid $(pgrep -x "$d" | tr '\n' ' ')); stop it first"
  fi
done

mkdir -p "$state/daemon"
chmod 755 "$state"
echo "$count" > "$state/nodes"

# 3. Configuration for this host.
hw=$(slurmd -C | head -n1)
field() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<< "$hw"; }
cpus=$(field CPUs); boards=$(field Boards); sockets=$(field SocketsPerBoard)
cores=$(field CoresPerSocket); threads=$(field ThreadsPerCore); mem=$(field RealMemory)
if [ -z "$cpus" ] || [ -z "$mem" ]; then die "could not read the hardware from 'slurmd -C': $hw"; fi
if [ "$count" -eq 1 ]; then
  geometry="CPUs=$cpus Boards=${boards:-1} SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1}"
else  # an equal share of the machine per emulated node
  share=$(( cpus / count )); [ "$share" -ge 1 ] || share=1
  geometry="CPUs=$share"
  mem=$(( mem / count ))
fi

mkdir -p /etc/slurm "$state/ctld" "$state/d"
if [ -e "$conf" ] && [ "$(head -n1 "$conf")" != "$marker" ]; then
  [ -e "$state/slurm.conf.orig" ] || cp -p "$conf" "$state/slurm.conf.orig"
  say "kept the existing $conf as $state/slurm.conf.orig (slurm-down.sh puts it back)"
fi
touch "$state/slurmctld.log"
chown slurm:slurm "$state/ctld" "$state/slurmctld.log"
tmp=$(mktemp "$conf.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cat > "$tmp" <<EOF
$marker
# Written $(date -u +%Y-%m-%dT%H:%M:%SZ); slurm-down.sh removes it.
ClusterName=msgprof
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d/%n
SlurmctldPidFile=$state/daemon/slurmctld.pid
SlurmdPidFile=$state/daemon/slurmd.%n.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.%n.log
# No cgroups: processes tracked by parentage, tasks pinned with sched_setaffinity, so inside a
# job nproc and sched_getaffinity show the allocation.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# No accounting: job state comes from slurmctld only, kept MinJobAge seconds after a job ends.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
ReturnToService=2
SlurmdTimeout=120
InactiveLimit=0
KillWait=10
$(for i in "${!names[@]}"; do
  port=""; [ "$count" -eq 1 ] || port=" NodeHostname=$host Port=$((6818 + i))"
  echo "NodeName=${names[$i]} NodeAddr=127.0.0.1$port $geometry RealMemory=$mem State=UNKNOWN"
done)
PartitionName=main Nodes=$nodes Default=YES MaxTime=INFINITE State=UP
EOF
chmod 644 "$tmp"
mv "$tmp" "$conf"
trap - EXIT
say "wrote $conf: node(s) $nodes; this host has $cpus CPUs, $(field RealMemory) MB"

# 4. Daemons, each in the foreground of its own session; their pids go to $state.
start() {  # start NAME ARGV...: run ARGV in the background, record its pid as NAME
  local name=$1; shift
  setsid "$@" > "$state/$name.out" 2>&1 < /dev/null &
  echo $! > "$state/$name.pid"
  sleep 0.3
  alive "$name" || { tail -n 20 "$state/$name.out" >&2; "$here/slurm-down.sh" || true; die "$name did not start"; }
}
if timeout 10 munge -n 2>/dev/null | timeout 10 unmunge > /dev/null 2>&1; then
  say "munged already running: using it (slurm-down.sh leaves it alone)"
else
  install -d -o munge -g munge -m 755 /run/munge
  daemons+=(munged)
  start munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
  deadline=$(( $(date +%s) + 20 ))
  until timeout 10 munge -n 2>/dev/null | timeout 10 unmunge > /dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { "$here/slurm-down.sh" || true; die "munged does not answer"; }
    sleep 0.2
  done
fi
start slurmctld slurmctld -D -i
for i in "${!names[@]}"; do
  mkdir -p "$state/d/${names[$i]}"
  start "slurmd-$((i + 1))" slurmd -D -N "${names[$i]}"
done

if ! wait_idle; then
  "$here/slurm-down.sh" || true
  exit 1
fi
say "node(s) $nodes idle after $(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}') s"
timeout 10 sinfo -N -l >&2 || true
