#!/usr/bin/env bash
# From the project's proven recipe (shared/testing/slurm), kept here so tests and CI start the same Slurm.
# slurm-down.sh DIR [--purge] — stop a cluster started by slurm-up.sh DIR.
#
# Order: cancel all jobs (so slurmstepd and job processes exit cleanly), then stop
# slurmrestd, every slurmd, slurmctld and munged by the PIDs recorded under DIR,
# SIGTERM first, SIGKILL after a grace period. A PID is only signalled if its command
# line mentions DIR (protects against PID reuse). Finally any stray slurm/munge process
# that carries the SLURM_LB_DAEMON_OF=DIR marker in its environment (e.g. an orphaned
# slurmstepd) is stopped too. --purge also deletes DIR.
set -uo pipefail

DIR=${1:?usage: slurm-down.sh DIR [--purge]}
PURGE=${2:-}
[ -d "$DIR" ] || { echo "slurm-down: no such directory $DIR" >&2; exit 1; }
DIR=$(cd "$DIR" && pwd -P)
export SLURM_CONF="$DIR/etc/slurm.conf"
GRACE=${SLURM_LB_STOP_GRACE:-10}    # seconds between SIGTERM and SIGKILL

T0=$(date +%s%N)
ts()    { printf '[slurm-down %6.2fs]' "$(( ($(date +%s%N) - T0) / 1000000 ))e-3"; }
# alive: exists and is not a zombie (an exited daemon stays a zombie until PID 1 reaps it)
alive() { local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) && [ "${st%% *}" != Z ]; }
ours()  { { tr '\0' ' ' < "/proc/$1/cmdline"; } 2>/dev/null | grep -qF -- "$DIR"; }

# stop_pid NAME PID : TERM, wait up to GRACE s, then KILL
stop_pid() {
    local name=$1 pid=$2 i
    alive "$pid" || return 0
    if ! ours "$pid"; then echo "slurm-down: pid $pid ($name) is not ours any more, skipped"; return 0; fi
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 $(( GRACE * 10 ))); do alive "$pid" || { echo "$(ts) stopped $name (pid $pid)"; return 0; }; sleep 0.1; done
    echo "slurm-down: $name (pid $pid) ignored SIGTERM, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null; sleep 0.2
}

# stop_pidfile NAME FILE
stop_pidfile() { [ -s "$2" ] && stop_pid "$1" "$(cat "$2")"; rm -f "$2"; }

# 1. cancel every job while slurmctld is still up (bounded wait)
ctld_pid=$(cat "$DIR/run/slurmctld.pid" 2>/dev/null || true)
if [ -n "$ctld_pid" ] && alive "$ctld_pid" && [ -S "$DIR/munge/munge.socket.2" ]; then
    jobs=$(timeout 15 squeue -h -o '%A' 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        echo "$(ts) cancelling jobs: $jobs"
        timeout 15 scancel $jobs 2>/dev/null
        for i in $(seq 1 50); do      # <= ~10 s: a job on a dead slurmd never leaves CG
            [ -z "$(timeout 5 squeue -h -o '%A' 2>/dev/null)" ] && break; sleep 0.2
        done
    fi
fi

# 2. daemons, front to back
for f in "$DIR"/run/slurmrestd*.pid; do [ -e "$f" ] && stop_pidfile "$(basename "$f" .pid)" "$f"; done
for f in "$DIR"/run/slurmd-*.pid;   do [ -e "$f" ] && stop_pidfile "$(basename "$f" .pid)" "$f"; done
stop_pidfile slurmctld "$DIR/run/slurmctld.pid"
stop_pidfile munged "$DIR/munge/munged.pid"

# 3. strays: slurm*/munged processes whose environment carries our marker (set only by
#    DIR/bin/start-*.sh; slurmstepd inherits it from slurmd). Happens when a slurmd died
#    while a job ran. Such a process and its descendants (the job's tasks) get SIGKILL.
kill_tree() { local c; for c in $(pgrep -P "$1"); do kill_tree "$c"; done; kill -KILL "$1" 2>/dev/null; }
for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$$" ] && continue
    case "$(cat "$p/comm" 2>/dev/null)" in slurm*|munged) ;; *) continue ;; esac
    if { tr '\0' '\n' < "$p/environ"; } 2>/dev/null | grep -qxF "SLURM_LB_DAEMON_OF=$DIR"; then
        echo "$(ts) stray pid $pid: $({ tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | cut -c1-60), killing it and its children"
        kill_tree "$pid"
    fi
done

if [ "$PURGE" = "--purge" ]; then rm -rf "$DIR"; echo "removed $DIR"; fi
echo "$(ts) done"
