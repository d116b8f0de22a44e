#!/usr/bin/env bash
# Kueue v0.17.0 and Haiyun side by side: for each run a fresh testenv (kwok nodes, kube-controller-manager; for
# Kueue also kube-scheduler and Kueue), the same batch/v1 Jobs through haiyun-kueue-bench to Kueue and to Haiyun,
# then the same shapes as ComputeJobs to Haiyun (its second row), one JSON line each.
# As root (Kueue's testenv needs it). Usage: scripts/kueue-side-by-side.sh [NODES] [bench flags...], e.g.
#   scripts/kueue-side-by-side.sh 75 --jobs 3000
# RUNS picks and orders the runs (default "kueue haiyun haiyun-compute-jobs").
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/haiyun/target}"
export TESTENV_BIN="${TESTENV_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/haiyun/testenv-bin}"
nodes="${1:-75}"
shift || true
cargo build --release --quiet -p haiyun-operator --bin haiyun-kueue-bench --bin haiyun-operator
bench="$CARGO_TARGET_DIR/release/haiyun-kueue-bench"
dir="$(mktemp -d /tmp/kueue-side-by-side.XXXXXX)"
trap 'testenv/testenv down --dir "$dir" --purge >/dev/null 2>&1 || true; rmdir "$dir" 2>/dev/null || true' EXIT
for run in ${RUNS:-kueue haiyun haiyun-compute-jobs}; do
  case "$run" in kueue | haiyun | haiyun-compute-jobs) ;; *) echo "RUNS: unknown run '$run' (kueue, haiyun, haiyun-compute-jobs)" >&2; exit 2 ;; esac
  extra=(--with-controller-manager)
  [[ "$run" == kueue ]] && extra=(--with-kueue)
  flags=(--controller "${run%%-*}")
  [[ "$run" == haiyun-compute-jobs ]] && flags+=(--compute-jobs)
  testenv/testenv up --dir "$dir" --nodes "$nodes" --gpus-per-node 8 "${extra[@]}" >&2
  KUBECONFIG="$dir/kubeconfig" "$bench" "${flags[@]}" --json "$@"
  testenv/testenv down --dir "$dir" --purge >&2
done
