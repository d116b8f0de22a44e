#!/usr/bin/env bash
# Kueue v0.17.0 and Haiyun side by side: for each controller a fresh testenv (kwok nodes, kube-controller-manager;
# for Kueue also kube-scheduler and Kueue), the same batch/v1 Jobs through haiyun-kueue-bench, one JSON line each.
# As root (Kueue's testenv needs it). Usage: scripts/kueue-side-by-side.sh [NODES] [bench flags...], e.g.
#   scripts/kueue-side-by-side.sh 75 --jobs 3000
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
for controller in kueue haiyun; do
  extra=(--with-controller-manager)
  [[ "$controller" == kueue ]] && extra=(--with-kueue)
  testenv/testenv up --dir "$dir" --nodes "$nodes" --gpus-per-node 8 "${extra[@]}" >&2
  KUBECONFIG="$dir/kubeconfig" "$bench" --controller "$controller" --json "$@"
  testenv/testenv down --dir "$dir" --purge >&2
done
