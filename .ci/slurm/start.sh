#!/usr/bin/env bash
# Bring up a real one-node SLURM cluster (munged + slurmctld + slurmd) on this Debian 12
# machine, for CI tests that call sbatch. Run as root; no systemd needed. Idempotent:
# a second run with the daemons already up only checks that the node is idle.
#
# The config is written to /etc/slurm/slurm.conf (Debian's compiled-in default), so
# callers need no SLURM_CONF in their environment. All state, spool, logs and pid files
# live under $VOXFLIP_SLURM_STATE (default /tmp/voxflip-slurm). Stop with stop.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
STATE="${VOXFLIP_SLURM_STATE:-/tmp/voxflip-slurm}"
CONF=/etc/slurm/slurm.conf
WAIT_S="${VOXFLIP_SLURM_WAIT_S:-60}"
export DEBIAN_FRONTEND=noninteractive

[ "$(id -u)" -eq 0 ] || { echo "start.sh: must run as root" >&2; exit 1; }

# Install only when missing; apt-get update only if the first install attempt fails
# (stale or absent package lists), so a machine with fresh lists skips it.
if ! command -v sbatch >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1 \
    || ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1; then
    echo "start.sh: installing slurm-wlm and munge"
    # Keep the packages' init scripts from starting daemons before our config exists
    # (Docker-style images already have this policy-rc.d; remove it only if ours).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    if ! apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq slurm-wlm munge >/dev/null
    fi
fi

# alive NAME PIDFILE: true when the pid file names a live process called NAME. A zombie
# (killed but not yet reaped; common when PID 1 is not a real init) counts as dead, and
# the name check guards against a pid reused after a crash.
alive() {
    local pid
    [ -s "$2" ] || return 1
    pid="$(cat "$2")"
    [ -r "/proc/$pid/stat" ] || return 1
    [ "$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)" != Z ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

# slurmd matches its short hostname against NodeName.
HOST="$(hostname -s)"
CPUS="$(nproc)"
# Leave 10% of RAM as margin: RealMemory above what slurmd sees would drain the node.
MEM_MB="$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)"

mkdir -p "$STATE"/ctld "$STATE"/spool "$STATE"/log "$STATE"/run /etc/slurm
new_conf="$(sed -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" \
    -e "s|@MEM_MB@|$MEM_MB|g" -e "s|@STATE@|$STATE|g" "$here/slurm.conf.in")"
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
    # A running cluster would keep the old config: restart it on the new one.
    if alive slurmctld "$STATE/run/slurmctld.pid" || alive slurmd "$STATE/run/slurmd.pid"; then
        echo "start.sh: slurm.conf changed, restarting the daemons"
        bash "$here/stop.sh"
    fi
    printf '%s\n' "$new_conf" >"$CONF"
fi

# munge: key (the package's postinst normally made one), dirs owned by munge; /run is a
# tmpfs on some machines so /run/munge may be gone.
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if [ -x /usr/sbin/mungekey ]; then
        /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! alive munged /run/munge/munged.pid; then
    # --force: tolerate a stale socket left by a killed munged.
    runuser -u munge -- /usr/sbin/munged --force
fi
# munged forks once it is listening, but check a round trip before slurm relies on it;
# timeout because the munge client itself retries a refused socket for a long time.
munge_ok() { timeout 3 munge -n </dev/null 2>/dev/null | timeout 3 unmunge >/dev/null 2>&1; }
for _ in $(seq 1 20); do
    munge_ok && break
    sleep 0.5
done
munge_ok || {
    echo "start.sh: munged does not answer on /run/munge/munge.socket.2" >&2
    tail -n 20 /var/log/munge/munged.log >&2 || true
    exit 1
}

# Daemons fork into the background themselves and write pid files given in slurm.conf.
alive slurmctld "$STATE/run/slurmctld.pid" || /usr/sbin/slurmctld
alive slurmd "$STATE/run/slurmd.pid" || /usr/sbin/slurmd

dump_logs() {
    echo "start.sh: SLURM did not come up within ${WAIT_S}s (node state: ${1:-?})" >&2
    timeout 5 sinfo -N -l >&2 || true
    for f in "$STATE"/log/slurmctld.log "$STATE"/log/slurmd.log /var/log/munge/munged.log; do
        echo "---- tail $f" >&2
        tail -n 30 "$f" >&2 2>/dev/null || true
    done
}

# Wait, bounded, until the node is idle (or already running jobs), resuming it if a
# previous run left it down or drained.
deadline=$(( $(date +%s) + WAIT_S ))
state=""
while :; do
    # timeout: a client talking to a controller that is not up yet can block for long.
    state="$(timeout 5 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1 || true)"
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down|drained|draining|drain|fail)
            timeout 5 scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        dump_logs "$state"
        exit 1
    fi
    sleep 1
done
echo "start.sh: SLURM up: node $HOST ($CPUS CPUs, ${MEM_MB} MB) is $state in partition debug"
