#!/usr/bin/env bash
# Stop the single-node SLURM that slurm-up.sh started: cancel its jobs, stop exactly the daemons
# recorded in $MSGPROF_SLURM_STATE (default /run/msgprof-slurm), put back the slurm.conf that was
# there before (or remove the one slurm-up.sh wrote). Safe to run twice, or when nothing is up.
# Logs stay in the state directory. Packages stay installed.
set -uo pipefail

state=${MSGPROF_SLURM_STATE:-/run/msgprof-slurm}
conf=/etc/slurm/slurm.conf
marker="# msgprof single-node test cluster (tests/cluster/slurm-up.sh)"

say() { echo "slurm-down: $*" >&2; }

[ "$(id -u)" -eq 0 ] || { say "must run as root"; exit 1; }
[ -d "$state" ] || { say "nothing to stop ($state does not exist)"; exit 0; }

ours() {  # ours NAME: print the recorded pid of NAME if it still runs that daemon (slurmd-2: slurmd)
  local pid
  pid=$(cat "$state/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${1%%-*}" ] && echo "$pid"
}

# Jobs first, while slurmctld and slurmd can still end them (their steps run under slurmstepd,
# which would outlive slurmd).
if ours slurmctld > /dev/null && [ "$(head -n1 "$conf" 2>/dev/null)" = "$marker" ]; then
  jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 60); do
      [ -z "$(timeout 10 squeue -h -t running,completing,pending -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
fi

slurmds=()
for f in "$state"/slurmd-*.pid; do
  [ -e "$f" ] && slurmds+=("$(basename "$f" .pid)")
done
for name in "${slurmds[@]}" slurmctld munged; do
  pid=$(ours "$name") || { rm -f "$state/$name.pid"; continue; }
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 60); do
    [ -d "/proc/$pid" ] || break
    sleep 0.25
  done
  if [ -d "/proc/$pid" ]; then
    say "$name (pid $pid) ignored SIGTERM for 15 s: killing it"
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$state/$name.pid"
  say "stopped $name (pid $pid)"
done

if [ "$(head -n1 "$conf" 2>/dev/null)" = "$marker" ]; then
  if [ -e "$state/slurm.conf.orig" ]; then
    mv "$state/slurm.conf.orig" "$conf"
    say "put back the original $conf"
  else
    rm -f "$conf"
  fi
fi
left=$(pgrep -x slurmstepd | tr '\n' ' ')
[ -z "$left" ] || say "warning: slurmstepd processes still running: $left"
exit 0
