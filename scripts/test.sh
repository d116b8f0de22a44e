#!/usr/bin/env bash
# Runs every check and test of the project: house rules, lint, unit/property/integration tests, and the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== haiyun-scheduler stays pure (no tokio, kube, tonic, nvml-wrapper, axum, hyper)"
bad=$(cargo tree -p haiyun-scheduler -e normal --prefix none | grep -E '^(tokio|kube|kube-runtime|kube-client|tonic|nvml-wrapper|axum|hyper) ' || true)
if [ -n "$bad" ]; then
  echo "haiyun-scheduler must not depend on:"; echo "$bad"; exit 1
fi

echo "== rustfmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== tests"
cargo test --workspace --quiet

echo "== main job (one seed of the placement benchmark)"
cargo run --release --quiet -p haiyun-benches --bin haiyun-bench -- fgd --policy haiyun --seeds 42
