#!/usr/bin/env bash
# Tear down the single-node SLURM cluster that tests/slurm/start-cluster.sh brought up:
# cancels its jobs, then stops slurmd, slurmctld, slurmdbd, mariadb and munged, each by the
# pid it recorded (nothing is killed by name). Safe to run when nothing is up.
#
#   tests/slurm/stop-cluster.sh               # everything
#   tests/slurm/stop-cluster.sh --slurm-only  # keep munged and mariadb (used on a config change)
#
# The generated /etc/slurm/*.conf and the accounting database are kept (a later start reuses
# them); the job state is not (start-cluster.sh runs `slurmctld -i`).
set -uo pipefail

STATE=/run/vmpower-slurm
ONLY_SLURM=0
[ "${1:-}" = "--slurm-only" ] && ONLY_SLURM=1

stop_pidfile() { # stop_pidfile NAME PIDFILE: TERM, wait up to 15 s, then KILL
  local name=$1 pf=$2 pid i
  [ -s "$pf" ] || return 0
  pid=$(cat "$pf" 2>/dev/null)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    echo "stop-cluster: stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "stop-cluster: $name did not stop, killing it"
      kill -KILL "$pid" 2>/dev/null
    fi
  fi
  rm -f "$pf"
}

# Jobs of this cluster would otherwise be left as orphans of the slurmd they ran under.
if [ -s "$STATE/slurmctld.pid" ] && command -v scancel >/dev/null; then
  timeout 10 scancel --full --cluster=vmpower --user="$(id -un)" 2>/dev/null || true
  timeout 10 scancel --full 2>/dev/null || true
fi

stop_pidfile slurmd    "$STATE/slurmd.pid"
stop_pidfile slurmctld "$STATE/slurmctld.pid"
stop_pidfile slurmdbd  "$STATE/slurmdbd.pid"
[ "$ONLY_SLURM" -eq 1 ] && exit 0
stop_pidfile mariadb   "$STATE/mysql/mariadb.pid"
stop_pidfile munged    /run/munge/munged.pid
echo "stop-cluster: down"
