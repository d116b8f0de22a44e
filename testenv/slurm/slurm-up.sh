#!/usr/bin/env bash
# From the project's proven recipe (shared/testing/slurm), kept here so tests and CI start the same Slurm.
# slurm-up.sh DIR — start a throw-away, single-host Slurm 22.05 cluster on loopback.
#
# What you get (defaults, all overridable with the SLURM_LB_* variables below):
#   * munged            private key + socket under DIR/munge (does not touch /etc/munge)
#   * slurmctld         127.0.0.1:16817, state in DIR/state (survives a restart)
#   * 4 x slurmd        nodes n1..n4, one daemon each, 127.0.0.1:17001..17004
#                       (Debian's 22.05 build has --enable-multiple-slurmd)
#   * fake GPUs         gres gpu:h100:8 per node; the "device files" are symlinks to
#                       /dev/null (22.05 drops File-less GPUs, so File= is mandatory)
#   * slurmrestd        http://127.0.0.1:16820, OpenAPI plugin openapi/v0.0.38,
#                       JWT auth (X-SLURM-USER-NAME + X-SLURM-USER-TOKEN headers)
#   * DIR/slurm-env.sh  source it: SLURM_CONF, SLURM_LB_REST_URL, SLURM_LB_TOKEN, ...
#   * DIR/bin/*.sh      the exact start commands, so tests can restart a daemon
#
# Must run as root on Debian 12 (bookworm). Installs the Debian packages if missing.
# Everything listens on 127.0.0.1 only. Stop it with slurm-down.sh DIR.
set -euo pipefail

DIR=${1:?usage: slurm-up.sh DIR   (DIR is created; use a fresh one per cluster)}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd -P)          # absolute, symlink-free path (it ends up in configs)

# ---- knobs ---------------------------------------------------------------------------
NODES=${SLURM_LB_NODES:-4}                  # number of slurmd daemons / nodes n1..nN
CPUS=${SLURM_LB_CPUS_PER_NODE:-8}           # advertised CPUs per node (fake, see config_overrides)
MEM_MB=${SLURM_LB_MEM_MB:-16000}            # advertised RealMemory per node
GPUS=${SLURM_LB_GPUS_PER_NODE:-8}           # fake GPUs per node; 0 = no GRES at all
GPU_TYPE=${SLURM_LB_GPU_TYPE:-h100}
CTLD_PORT=${SLURM_LB_CTLD_PORT:-16817}
SLURMD_PORT_BASE=${SLURM_LB_SLURMD_PORT_BASE:-17001}   # node i listens on BASE+i-1
REST_PORT=${SLURM_LB_REST_PORT:-16820}
REST_USER=${SLURM_LB_REST_USER:-slurm}      # slurmrestd refuses to run as root/SlurmUser
TOKEN_USER=${SLURM_LB_TOKEN_USER:-root}     # user the JWT in slurm-env.sh is minted for
TOKEN_LIFESPAN=${SLURM_LB_TOKEN_LIFESPAN:-86400}
MIN_JOB_AGE=${SLURM_LB_MIN_JOB_AGE:-300}    # seconds a finished job stays visible (no slurmdbd!)
REST_LOCAL_SOCKET=${SLURM_LB_REST_LOCAL_SOCKET:-0}  # 1 = also start a rest_auth/local unix socket
READY_TIMEOUT=${SLURM_LB_READY_TIMEOUT:-60}

[ "$(id -u)" = 0 ] || { echo "slurm-up: must run as root" >&2; exit 1; }
[ "$NODES" -ge 1 ] || { echo "slurm-up: SLURM_LB_NODES must be >= 1" >&2; exit 1; }

T0=$(date +%s%N)
step() { printf '[slurm-up %6.2fs] %s\n' "$(( ($(date +%s%N) - T0) / 1000000 ))e-3" "$*"; }
die()  { echo "slurm-up: ERROR: $*" >&2; exit 1; }

# If anything below fails, stop whatever this run already started (via slurm-down.sh).
READY=0
on_exit() {
    if [ "$READY" != 1 ] && [ -x "$(dirname "$0")/slurm-down.sh" ]; then
        echo "slurm-up: failed; stopping what was started (logs stay in $DIR/log)" >&2
        "$(dirname "$0")/slurm-down.sh" "$DIR" >&2 || true
    fi
}
trap on_exit EXIT

# wait_for TIMEOUT_S DESCRIPTION COMMAND... : poll every 0.2 s until COMMAND succeeds
wait_for() {
    local timeout=$1 what=$2; shift 2
    local deadline=$(( $(date +%s) + timeout ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${timeout}s waiting for: $what"
        sleep 0.2
    done
}

# ---- 0. packages ---------------------------------------------------------------------
# slurm-wlm-jwt-plugin provides auth_jwt.so (NOT pulled in by slurm-wlm); without it
# AuthAltTypes=auth/jwt makes slurmctld fail. jq/curl are only for tests/humans.
need_pkgs=()
for pair in slurmctld:slurmctld slurmd:slurmd slurmrestd:slurmrestd scontrol:slurm-client \
            munged:munge curl:curl jq:jq; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair#*:}")
done
dpkg -s slurm-wlm-jwt-plugin >/dev/null 2>&1 || need_pkgs+=(slurm-wlm-jwt-plugin)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    step "installing Debian packages: ${need_pkgs[*]}"
    # Keep the packages' init scripts from starting system-wide munged/slurmd/slurmctld.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need_pkgs[@]}" >/dev/null
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    T0=$(date +%s%N)   # report cluster start-up time without the install
fi

# ---- 1. preflight --------------------------------------------------------------------
for f in run/slurmctld.pid munge/munged.pid; do
    if [ -s "$DIR/$f" ] && kill -0 "$(cat "$DIR/$f")" 2>/dev/null; then
        die "$DIR already has a running cluster ($f); run slurm-down.sh first"
    fi
done
LAST_PORT=$(( SLURMD_PORT_BASE + NODES - 1 ))
for p in "$CTLD_PORT" "$REST_PORT" $(seq "$SLURMD_PORT_BASE" "$LAST_PORT"); do
    if ss -Hltn "sport = :$p" | grep -q .; then die "port $p is already in use"; fi
done
if ! id "$REST_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$REST_USER"
fi
REST_GROUP=$(id -gn "$REST_USER")

# ---- 2. directory layout -------------------------------------------------------------
# DIR/etc    slurm.conf, gres.conf, jwt key      DIR/state  slurmctld StateSaveLocation
# DIR/spool  per-node SlurmdSpoolDir (n1, ...)   DIR/log    all daemon logs
# DIR/run    pid files                           DIR/munge  munged socket (+ key/ 0700)
# DIR/dev    fake GPU device nodes               DIR/rest   unix socket for rest_auth/local
# DIR/jobs   a world-writable scratch dir for job output
mkdir -p "$DIR"/{etc,state,spool,log,run,bin,dev,rest,jobs} "$DIR/munge/key"
chmod 755 "$DIR" "$DIR"/{etc,state,spool,log,run,bin,dev} "$DIR/munge"
chmod 700 "$DIR/munge/key"                 # munged insists: key dir private, socket dir 755
chmod 1777 "$DIR/jobs"
chown "$REST_USER:$REST_GROUP" "$DIR/rest"
for i in $(seq 1 "$NODES"); do mkdir -p "$DIR/spool/n$i"; done   # slurmd won't create it

# ---- 3. munge ------------------------------------------------------------------------
step "starting munged"
[ -s "$DIR/munge/key/munge.key" ] || mungekey --create --bits=1024 --keyfile="$DIR/munge/key/munge.key"
chmod 600 "$DIR/munge/key/munge.key"
MUNGE_SOCKET="$DIR/munge/munge.socket.2"
cat > "$DIR/bin/start-munged.sh" <<EOF
#!/bin/sh
# munged daemonizes itself; it runs as root here (fine for a test cluster).
exec env SLURM_LB_DAEMON_OF="$DIR" /usr/sbin/munged \\
  --key-file="$DIR/munge/key/munge.key" --socket="$MUNGE_SOCKET" \\
  --pid-file="$DIR/munge/munged.pid" --seed-file="$DIR/munge/key/munged.seed" \\
  --log-file="$DIR/log/munged.log" --num-threads=4
EOF
chmod 755 "$DIR/bin/start-munged.sh"
"$DIR/bin/start-munged.sh"
munge_ok() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }
wait_for 10 "munged socket" munge_ok

# ---- 4. JWT key (HS256; slurmctld reads it, nobody else needs it) --------------------
[ -s "$DIR/etc/jwt_hs256.key" ] || dd if=/dev/urandom of="$DIR/etc/jwt_hs256.key" bs=32 count=1 status=none
chmod 600 "$DIR/etc/jwt_hs256.key"

# ---- 5. fake GPU devices + slurm.conf + gres.conf ------------------------------------
GRES_NODE="" GRES_TYPES=""
if [ "$GPUS" -gt 0 ]; then
    # 22.05 removes every gpu line without File= and stat()s each file: it must be a
    # char/block device. A symlink to /dev/null passes; nothing ever opens it (task/none).
    for g in $(seq 0 $(( GPUS - 1 ))); do ln -sfn /dev/null "$DIR/dev/nvidia$g"; done
    GRES_NODE="Gres=gpu:$GPU_TYPE:$GPUS"
    GRES_TYPES="GresTypes=gpu"
    cat > "$DIR/etc/gres.conf" <<EOF
# No NVML autodetection; fake devices (see slurm-up.sh). Jobs get CUDA_VISIBLE_DEVICES.
AutoDetect=off
NodeName=n[1-$NODES] Name=gpu Type=$GPU_TYPE File=$DIR/dev/nvidia[0-$(( GPUS - 1 ))]
EOF
else
    rm -f "$DIR/etc/gres.conf"
fi

cat > "$DIR/etc/slurm.conf" <<EOF
# Generated by slurm-up.sh — single-host loopback test cluster, Slurm 22.05.
ClusterName=loopback
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT_BASE
# Bind every daemon to the resolved address (127.0.0.1) instead of 0.0.0.0.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
# Everything as root: simplest on a CI box. (slurmrestd must NOT be root/SlurmUser.)
SlurmUser=root
SlurmdUser=root
# munge for daemons/CLI, JWT as alternate type for slurmrestd (needs slurm-wlm-jwt-plugin)
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$DIR/etc/jwt_hs256.key
# State and spool (restart-safe: slurmctld reloads jobs from StateSaveLocation)
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups anywhere
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd (note: finished jobs vanish from the API after MinJobAge seconds)
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=$MIN_JOB_AGE
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Trust the node definitions below even though this box has fewer CPUs / less memory.
SlurmdParameters=config_overrides
ReturnToService=2
$GRES_TYPES
NodeName=n[1-$NODES] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[$SLURMD_PORT_BASE-$LAST_PORT] CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM_MB $GRES_NODE State=UNKNOWN
PartitionName=batch Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
chmod 644 "$DIR/etc/slurm.conf"
export SLURM_CONF="$DIR/etc/slurm.conf"
# slurmrestd runs unprivileged: every parent of DIR must be traversable (mktemp -d gives 0700!)
setpriv --reuid="$REST_USER" --regid="$REST_GROUP" --clear-groups test -r "$SLURM_CONF" \
    || die "user $REST_USER cannot read $SLURM_CONF: make every parent directory of $DIR o+x"

# ---- 6. start scripts (reused by tests to restart a single daemon) -------------------
# SLURM_LB_DAEMON_OF is a marker (never exported to users): slurmstepd inherits it from
# slurmd, so slurm-down.sh can find strays.
cat > "$DIR/bin/start-slurmctld.sh" <<EOF
#!/bin/sh
# Daemonizes; no -c, so a restart recovers jobs from $DIR/state.
cd "$DIR/log" && exec env SLURM_LB_DAEMON_OF="$DIR" SLURM_CONF="$DIR/etc/slurm.conf" /usr/sbin/slurmctld -f "$DIR/etc/slurm.conf"
EOF
cat > "$DIR/bin/start-slurmd.sh" <<EOF
#!/bin/sh
# usage: start-slurmd.sh NODENAME   (one slurmd per node name; multiple-slurmd build)
cd "$DIR/log" && exec env SLURM_LB_DAEMON_OF="$DIR" SLURM_CONF="$DIR/etc/slurm.conf" /usr/sbin/slurmd -f "$DIR/etc/slurm.conf" -N "\${1:?node name}"
EOF
cat > "$DIR/bin/start-slurmrestd.sh" <<EOF
#!/bin/sh
# Foreground process (no daemon mode): run it in the background and record \$!.
# SLURM_JWT=daemon makes slurmrestd use auth/jwt towards slurmctld, i.e. it forwards the
# caller's token; rest_auth/local does not work on TCP sockets at all.
cd "$DIR/log" && exec env SLURM_LB_DAEMON_OF="$DIR" SLURM_CONF="$DIR/etc/slurm.conf" SLURM_JWT=daemon \\
  setpriv --reuid="$REST_USER" --regid="$REST_GROUP" --clear-groups \\
  /usr/sbin/slurmrestd -f "$DIR/etc/slurm.conf" -a rest_auth/jwt -s openapi/v0.0.38 127.0.0.1:$REST_PORT
EOF
cat > "$DIR/bin/start-slurmrestd-local.sh" <<EOF
#!/bin/sh
# Optional second instance: rest_auth/local on a unix socket (curl --unix-socket ...).
# Requests run as $REST_USER (or as X-SLURM-USER-NAME only if the caller is root).
cd "$DIR/log" && exec env SLURM_LB_DAEMON_OF="$DIR" SLURM_CONF="$DIR/etc/slurm.conf" \\
  setpriv --reuid="$REST_USER" --regid="$REST_GROUP" --clear-groups \\
  /usr/sbin/slurmrestd -f "$DIR/etc/slurm.conf" -a rest_auth/local -s openapi/v0.0.38 unix:$DIR/rest/slurmrestd.sock
EOF
chmod 755 "$DIR"/bin/*.sh

# ---- 7. slurmctld --------------------------------------------------------------------
step "starting slurmctld"
"$DIR/bin/start-slurmctld.sh"
wait_for 30 "slurmctld to answer" scontrol ping

# ---- 8. slurmd x N -------------------------------------------------------------------
step "starting $NODES slurmd"
for i in $(seq 1 "$NODES"); do "$DIR/bin/start-slurmd.sh" "n$i"; done
all_idle() { [ "$(sinfo -h -N -o '%T' | grep -c '^idle$')" -eq "$NODES" ]; }
wait_for "$READY_TIMEOUT" "all $NODES nodes idle" all_idle

# ---- 9. slurmrestd -------------------------------------------------------------------
step "starting slurmrestd on 127.0.0.1:$REST_PORT"
nohup "$DIR/bin/start-slurmrestd.sh" > "$DIR/log/slurmrestd.log" 2>&1 < /dev/null &
echo $! > "$DIR/run/slurmrestd.pid"
if [ "$REST_LOCAL_SOCKET" = 1 ]; then
    nohup "$DIR/bin/start-slurmrestd-local.sh" > "$DIR/log/slurmrestd-local.log" 2>&1 < /dev/null &
    echo $! > "$DIR/run/slurmrestd-local.pid"
fi

TOKEN=$(scontrol token username="$TOKEN_USER" lifespan="$TOKEN_LIFESPAN" | sed -n 's/^SLURM_JWT=//p')
[ -n "$TOKEN" ] || die "could not mint a JWT with scontrol token"
REST_URL="http://127.0.0.1:$REST_PORT"
rest_ok() {
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "X-SLURM-USER-NAME: $TOKEN_USER" \
         -H "X-SLURM-USER-TOKEN: $TOKEN" "$REST_URL/slurm/v0.0.38/ping")" = 200 ]
}
wait_for 30 "slurmrestd ping" rest_ok
if [ "$REST_LOCAL_SOCKET" = 1 ]; then
    local_ok() { curl -sf -o /dev/null --unix-socket "$DIR/rest/slurmrestd.sock" http://localhost/slurm/v0.0.38/ping; }
    wait_for 30 "slurmrestd (local) ping" local_ok
fi

# ---- 10. environment file for tests --------------------------------------------------
# Deliberately NOT named SLURM_JWT: if SLURM_JWT is set, Slurm CLIs switch to auth/jwt.
cat > "$DIR/slurm-env.sh" <<EOF
export SLURM_CONF="$DIR/etc/slurm.conf"
export SLURM_LB_DIR="$DIR"
export SLURM_LB_REST_URL="$REST_URL"
export SLURM_LB_API="$REST_URL/slurm/v0.0.38"
export SLURM_LB_USER="$TOKEN_USER"
export SLURM_LB_TOKEN="$TOKEN"
export SLURM_LB_JWT_KEY="$DIR/etc/jwt_hs256.key"
export SLURM_LB_JOBS_DIR="$DIR/jobs"
export SLURM_LB_REST_SOCKET="$( [ "$REST_LOCAL_SOCKET" = 1 ] && echo "$DIR/rest/slurmrestd.sock" )"
EOF

READY=1
step "cluster ready: $NODES nodes idle, REST at $REST_URL/slurm/v0.0.38 (source $DIR/slurm-env.sh)"
echo "pids: munged=$(cat "$DIR/munge/munged.pid") slurmctld=$(cat "$DIR/run/slurmctld.pid")" \
     "slurmd=$(cat "$DIR"/run/slurmd-n*.pid | tr '\n' ' ')slurmrestd=$(cat "$DIR/run/slurmrestd.pid")" \
     "$( [ -s "$DIR/run/slurmrestd-local.pid" ] && echo "slurmrestd-local=$(cat "$DIR/run/slurmrestd-local.pid")" )"
