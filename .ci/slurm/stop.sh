#!/usr/bin/env bash
# Stop exactly the daemons .ci/slurm/start.sh started (by their pid files), cancel leftover jobs,
# and remove the /etc/slurm/slurm.conf symlink if start.sh created it. Safe to run twice.
set -uo pipefail

DIR="${SLURM_CI_DIR:-/tmp/autopipec-slurm}"
[[ -d "$DIR" ]] || { echo "slurm-ci: nothing to stop ($DIR missing)"; exit 0; }
export SLURM_CONF="$DIR/slurm.conf"

# Jobs first, so slurmd's step daemons (slurmstepd) and the job processes exit with them.
if [[ -f "$DIR/slurmctld.pid" ]] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 40); do [[ -z "$(squeue -h 2>/dev/null)" ]] && break; sleep 0.25; done
fi

stop_pidfile() {  # name pidfile
    local name=$1 pidfile=$2 pid
    [[ -s "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "slurm-ci: $name ($pid) ignored SIGTERM; killing" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
        echo "slurm-ci: stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}

# slurmstepd processes belong to slurmd's jobs; after scancel they should be gone. Any left
# (a job that ignored SIGTERM) are children of our slurmd's session: stop them by pid.
stop_pidfile slurmd "$DIR/slurmd.pid"
for pid in $(pgrep -x slurmstepd 2>/dev/null); do
    if grep -qs -- "$DIR" "/proc/$pid/cmdline" "/proc/$pid/environ" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null && echo "slurm-ci: killed leftover slurmstepd ($pid)"
    fi
done
stop_pidfile slurmctld "$DIR/slurmctld.pid"
# Only the munged this script started (munged.pid is written only then).
stop_pidfile munged "$DIR/munged.pid"

if [[ -f "$DIR/etc-symlink" ]] && [[ "$(readlink /etc/slurm/slurm.conf)" == "$DIR/slurm.conf" ]]; then
    rm -f /etc/slurm/slurm.conf "$DIR/etc-symlink"
fi
exit 0
