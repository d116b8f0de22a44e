#!/usr/bin/env bash
# Runs every check and test of the project: house rules, lint, unit/property/integration tests, and the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Build caches outside the clone (a fresh clone on the same machine reuses them).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/haiyun/target}"
export TESTENV_BIN="${TESTENV_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/haiyun/testenv-bin}"

echo "== haiyun-scheduler stays pure (no tokio, kube, tonic, nvml-wrapper, axum, hyper)"
bad=$(cargo tree -p haiyun-scheduler -e normal --prefix none | grep -E '^(tokio|kube|kube-runtime|kube-client|tonic|nvml-wrapper|axum|hyper) ' || true)
if [ -n "$bad" ]; then
  echo "haiyun-scheduler must not depend on:"; echo "$bad"; exit 1
fi

echo "== haiyun-agent holds no Kubernetes client (the GPU driver that needs one is haiyun-dra)"
bad=$(cargo tree -p haiyun-agent -e normal --prefix none | grep -E '^(kube-client|kube-runtime) ' || true)
if [ -n "$bad" ]; then
  echo "haiyun-agent must not depend on:"; echo "$bad"; exit 1
fi

echo "== rustfmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== main job (the README's command, for 20 seconds on a free port)"
cargo run --release --quiet -p haiyun-cli -- demo --duration 20s --addr 127.0.0.1:0

echo "== placement benchmark (one seed)"
cargo run --release --quiet -p haiyun-benches --bin haiyun-bench -- fgd --policy haiyun --seeds 42

echo "== test control plane (testenv: etcd, kube-apiserver, kwok with 4 fake 8-GPU nodes)"
testenv_dir=$(mktemp -d)
real_dir=$(mktemp -d)
dra_dir=$(mktemp -d)
slurm_dir=$(mktemp -d)
remote_a=$(mktemp -d)
remote_b=$(mktemp -d)
pg_dir=$(mktemp -d)
kueue_dir=$(mktemp -d)
log=$(mktemp)
cleanup() {
  testenv/testenv down --dir "$testenv_dir" --purge >/dev/null 2>&1 || true
  testenv/testenv down --dir "$real_dir" --purge >/dev/null 2>&1 || true
  testenv/testenv down --dir "$dra_dir" --purge >/dev/null 2>&1 || true
  testenv/testenv down --dir "$remote_a" --purge >/dev/null 2>&1 || true
  testenv/testenv down --dir "$remote_b" --purge >/dev/null 2>&1 || true
  testenv/testenv down --dir "$kueue_dir" --purge >/dev/null 2>&1 || true
  testenv/slurm/slurm-down.sh "$slurm_dir/cluster" --purge >/dev/null 2>&1 || true
  if [ -f "$pg_dir/data/postmaster.pid" ]; then
    su postgres -s /bin/sh -c "$pg_bin/pg_ctl -D $pg_dir/data stop -m immediate" >/dev/null 2>&1 || true
  fi
  rm -rf "$testenv_dir" "$real_dir" "$dra_dir" "$slurm_dir" "$remote_a" "$remote_b" "$pg_dir" "$kueue_dir" "$log"
}
trap cleanup EXIT
testenv/testenv up --dir "$testenv_dir" --nodes 4 --gpus-per-node 8 --gpu-model H100
export HAIYUN_TEST_KUBECONFIG="$testenv_dir/kubeconfig" HAIYUN_REQUIRE_TESTENV=1

echo "== two remote clusters for the federation tests (more control planes with kwok; the tests make their nodes)"
testenv/testenv up --dir "$remote_a" --nodes 0
testenv/testenv up --dir "$remote_b" --nodes 0
export HAIYUN_TEST_REMOTE_KUBECONFIGS="$remote_a/kubeconfig,$remote_b/kubeconfig" HAIYUN_REQUIRE_REMOTES=1

echo "== real nodes (a second control plane: 3 kubelets with containerd and runc, controller manager, kube-scheduler, kube-proxy, CoreDNS)"
if [ "$(id -u)" = 0 ]; then
  testenv/testenv up --dir "$real_dir" --nodes 0 --real-nodes 3 --gpu-model H100 --real-gpus-per-node 2 --with-scheduler
  busybox=$(sed -n 's/^TESTENV_BUSYBOX_IMAGE=//p' "$real_dir/testenv.env" | tr -d '"')
  export HAIYUN_TEST_REAL_KUBECONFIG="$real_dir/kubeconfig" HAIYUN_REQUIRE_REAL_NODES=1 TESTENV_REAL_DIR="$real_dir"
  export TESTENV_BUSYBOX_IMAGE="${busybox:-localhost/testenv/busybox:latest}"
  echo "== Haiyun's images (scripts/images.sh: release binaries, assembled without a container engine), loaded into the real nodes"
  scripts/images.sh --load "$real_dir"
  tag=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/haiyun/Chart.yaml)
  export HAIYUN_TEST_IMAGES="ghcr.io/haiyun:$tag"
  echo "== a second build for helm upgrade (the operator reports another version; only its main.rs is rebuilt)"
  scripts/images.sh --version "$tag-next" --tag "$tag-next" --out "$CARGO_TARGET_DIR/images-next" --load "$real_dir"
  export HAIYUN_TEST_UPGRADE_IMAGES="ghcr.io/haiyun:$tag-next"
else
  echo "skipped: real nodes need root; the real-node tests will be skipped"
fi

echo "== real GPU nodes (a third control plane: 2 kubelets whose GPUs Haiyun's DRA driver serves: 8 H100 in two NVLink domains, 4 A100 two of them in MIG mode; kube-scheduler for plain pods)"
if [ "$(id -u)" = 0 ]; then
  cargo build --quiet -p haiyun-dra
  testenv/testenv up --dir "$dra_dir" --nodes 0 --real-nodes 2 --real-node-prefix gpu-node \
    --agent fake:hgx-h100-2x4,fake:a100-mig --with-scheduler
  export HAIYUN_TEST_DRA_KUBECONFIG="$dra_dir/kubeconfig" HAIYUN_REQUIRE_DRA=1 TESTENV_DRA_DIR="$dra_dir"
else
  echo "skipped: real nodes need root; the GPU driver's tests will be skipped"
fi

echo "== Kueue v0.17.0 beside a control plane of its own (2 kwok nodes, kube-scheduler, controller manager), for the side-by-side harness"
if [ "$(id -u)" = 0 ]; then
  testenv/testenv up --dir "$kueue_dir" --nodes 2 --gpus-per-node 8 --gpu-model H100 --with-kueue
  export HAIYUN_TEST_KUEUE_KUBECONFIG="$kueue_dir/kubeconfig" HAIYUN_REQUIRE_KUEUE=1
else
  echo "skipped: Kueue needs root (its fixed metrics certificate path); the Kueue test will be skipped"
fi

echo "== Slurm 22.05 on loopback (munge, slurmctld, 4 slurmd with 8 fake H100 each, slurmrestd with JWT)"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  chmod 755 "$slurm_dir"   # slurmrestd runs unprivileged and must reach its config
  testenv/slurm/slurm-up.sh "$slurm_dir/cluster"
  export HAIYUN_TEST_SLURM="$slurm_dir/cluster/slurm-env.sh" HAIYUN_REQUIRE_SLURM=1
else
  echo "skipped: starting Slurm needs root and Debian's packages; the Slurm tests will be skipped"
fi

# Installs Debian packages quietly, refreshing the package lists once if the first try fails.
debian_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

echo "== PostgreSQL (Debian's package) on loopback, for the usage ledger's tests"
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if [ ! -x "$pg_bin/initdb" ]; then
    debian_install postgresql
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  chown postgres "$pg_dir"
  su postgres -s /bin/sh -c "$pg_bin/initdb -D $pg_dir/data -A trust -U postgres" >/dev/null
  # A port below the kernel's ephemeral range (32768-60999 by default): a port inside it can be held by any
  # outgoing connection of the control planes started above, which no probe sees. A server left by an earlier,
  # killed run is stepped over too, and a failed start tries the next port.
  pg_port=25432
  pg_started=
  for _ in 1 2 3 4 5 6 7 8; do
    while (exec 3<>"/dev/tcp/127.0.0.1/$pg_port") 2>/dev/null; do pg_port=$((pg_port + 1)); done
    if su postgres -s /bin/sh -c "$pg_bin/pg_ctl -D $pg_dir/data -l $pg_dir/log -w start \
      -o '-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1'" >/dev/null; then
      pg_started=1; break
    fi
    echo "PostgreSQL did not start on port $pg_port; trying the next one"
    pg_port=$((pg_port + 1))
  done
  if [ -z "$pg_started" ]; then
    echo "PostgreSQL did not start; its log:"; cat "$pg_dir/log" || true
    exit 1
  fi
  export HAIYUN_TEST_POSTGRES="postgres://postgres@127.0.0.1:$pg_port/postgres" HAIYUN_REQUIRE_POSTGRES=1
else
  echo "skipped: PostgreSQL needs root and Debian's packages; the ledger's PostgreSQL test will be skipped"
fi

echo "== Prometheus (Debian's package) for the chart's dashboards and alert rules"
if [ ! -x /usr/bin/prometheus ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  debian_install prometheus
fi
if [ -x /usr/bin/prometheus ]; then
  export HAIYUN_REQUIRE_PROMETHEUS=1
else
  echo "skipped: the monitoring test needs Debian's prometheus package"
fi

echo "== browser (headless Chromium from Debian, playwright-core from npm) for the dashboard's test"
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  debian_install chromium
fi
if [ -x /usr/bin/chromium ] && command -v npm >/dev/null 2>&1; then
  (cd browser && npm ci --no-audit --no-fund --silent)
  export HAIYUN_REQUIRE_BROWSER=1
else
  echo "skipped: the dashboard's browser check needs Debian's chromium and npm"
fi

echo "== tests"
status=0
cargo test --workspace --lib --bins --tests 2>&1 | tee "$log" || status=$?
passed=$(grep -oE '^test result: .* ([0-9]+) passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
