#!/usr/bin/env bash
# Stop the single-node test cluster started by tests/slurm/start.sh: cancel its jobs, then stop slurmd,
# slurmctld and (when start.sh started it) munged, each by the pid it recorded. Leaves the packages,
# /etc/slurm/slurm.conf and the state directory in place (start.sh reuses them).
set -euo pipefail

STATE=${KDLM_SLURM_STATE:-/var/spool/kdlm-slurm}
export PATH="$PATH:/usr/sbin:/sbin"

say() { echo "[slurm/stop] $*"; }
# the process of a pid file is running (by /proc, which works for non-root callers too)
alive() { [ -s "$1" ] && [ -d "/proc/$(cat "$1")" ]; }

stop() {  # name pidfile
    if alive "$2"; then
        local pid
        pid=$(cat "$2")
        say "stopping $1 (pid $pid)"
        kill "$pid"
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
        say "$1 (pid $pid) still running after 15s; sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    else
        say "$1 not running"
    fi
}

if command -v squeue >/dev/null 2>&1 && scontrol ping >/dev/null 2>&1; then
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        say "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
        # shellcheck disable=SC2086
        scancel $jobs || true
    fi
fi
stop slurmd "$STATE/slurmd.pid"
stop slurmctld "$STATE/slurmctld.pid"
if [ -f "$STATE/munged.started-by-kdlm" ]; then
    stop munged /run/munge/munged.pid
    rm -f "$STATE/munged.started-by-kdlm"
else
    say "munged was not started by start.sh; leaving it running"
fi
