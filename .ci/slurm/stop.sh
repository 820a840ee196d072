#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by start.sh: slurmd, slurmctld, then munged,
# each by its pid file. Tolerates daemons that are not running. Deletes nothing but
# stale pid files: state, logs and /etc/slurm/slurm.conf stay for the next start.sh.
set -euo pipefail
STATE="${VOXFLIP_SLURM_STATE:-/tmp/voxflip-slurm}"

# alive NAME PID: a live process called NAME. A zombie (dead, not yet reaped when PID 1
# is not a real init) counts as gone; the name guards against a reused pid.
alive() {
    [ -r "/proc/$2/stat" ] || return 1
    [ "$(sed 's/.*) //' "/proc/$2/stat" 2>/dev/null | cut -d' ' -f1)" != Z ] || return 1
    [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ]
}

# stop NAME PIDFILE: TERM, wait up to 10 s, then KILL.
stop() {
    local name="$1" pidfile="$2" pid
    if [ ! -s "$pidfile" ]; then
        echo "stop.sh: $name not running (no pid file)"
        return 0
    fi
    pid="$(cat "$pidfile")"
    if ! alive "$name" "$pid"; then
        echo "stop.sh: $name not running (stale pid $pid)"
        rm -f "$pidfile"
        return 0
    fi
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        alive "$name" "$pid" || break
        sleep 0.1
    done
    if alive "$name" "$pid"; then
        echo "stop.sh: $name (pid $pid) ignored SIGTERM for 10 s, killing it"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    echo "stop.sh: stopped $name (pid $pid)"
}

# slurmd first so it does not log a lost controller; munged last since both use it.
stop slurmd "$STATE/run/slurmd.pid"
stop slurmctld "$STATE/run/slurmctld.pid"
stop munged /run/munge/munged.pid
