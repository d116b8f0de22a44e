#!/usr/bin/env bash
# Builds Haiyun's OCI images (operator, agent, GPU driver, CLI) from the workspace's release binaries, without a
# container engine: scripts/oci_image.py assembles each image over the OCI image layout.
#
#   scripts/images.sh [--out DIR] [--registry REG] [--tag TAG] [--version V] [--load TESTENV_DIR] [--no-build]
#
#   --out DIR        where the archives go (default: $CARGO_TARGET_DIR/images)
#   --registry REG   image names REG/haiyun-…  (default: ghcr.io/haiyun, the chart's default)
#   --tag TAG        (default: the chart's appVersion)
#   --version V      the version the operator reports (default: the crate's); for a second build of one commit
#   --load DIR       also import them into every real node of the testenv at DIR (ctr images import)
#   --no-build       use the release binaries already built
#
# Reproducible: the binaries are built with a fixed SOURCE_DATE_EPOCH (the commit's time) and the build paths
# remapped (the cargo home to /cargo, the target directory to /target; workspace crates are compiled from relative
# paths), in a target directory of their own so the flags never invalidate other builds; the assembler writes fixed
# mtimes and owners. The same commit and toolchain give the same digests.
set -euo pipefail
cd "$(dirname "$0")/.."

out="" registry="ghcr.io/haiyun" tag="" load="" build=1 version=""
while (($#)); do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift ;;
    --registry) registry="${2:?--registry needs a value, e.g. registry.example.com/haiyun}"; shift ;;
    --tag) tag="${2:?--tag needs a value}"; shift ;;
    --version) version="${2:?--version needs a value, e.g. 0.1.1}"; shift ;;
    --load) load="${2:?--load needs a testenv directory}"; shift ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "images.sh: unknown flag '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
tag="${tag:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/haiyun/Chart.yaml)}"
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || { echo "images.sh: '$tag' is not a valid image tag" >&2; exit 2; }
[[ -z "$version" || "$version" =~ ^[0-9A-Za-z.+-]{1,64}$ ]] || { echo "images.sh: --version '$version' is not a version like 0.1.1-rc1" >&2; exit 2; }

base="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/haiyun/target}"
target="$base/images-build"
out="${out:-$base/images}"
mkdir -p "$out"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || echo 0)"
export SOURCE_DATE_EPOCH

if ((build)); then
  t0=$SECONDS
  # HAIYUN_VERSION is read only by the operator's main.rs: a second version rebuilds that one file.
  env ${version:+HAIYUN_VERSION="$version"} \
  RUSTFLAGS="--remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$target=/target" \
    CARGO_TARGET_DIR="$target" cargo build --release --locked --quiet \
      -p haiyun-operator --bin haiyun-operator -p haiyun-agent --bin haiyun-agent \
      -p haiyun-dra --bin haiyun-dra -p haiyun-cli --bin haiyun
  echo "images.sh: release binaries built in $((SECONDS - t0)) s"
fi
bin="$target/release"
for b in haiyun-operator haiyun-agent haiyun-dra haiyun; do
  [[ -x "$bin/$b" ]] || { echo "images.sh: $bin/$b is missing: run without --no-build" >&2; exit 1; }
done

# The symbols and line tables go, for size; so does the linker's build id, a hash over them that differs between
# clones even when the code does not.
stripped="$out/bin"
mkdir -p "$stripped"
for b in haiyun-operator haiyun-agent haiyun-dra haiyun; do
  if command -v objcopy >/dev/null 2>&1; then
    objcopy --strip-all --remove-section=.note.gnu.build-id "$bin/$b" "$stripped/$b"
  else
    cp "$bin/$b" "$stripped/$b"
  fi
done

image() {
  local name="$1" binary="$2"
  python3 scripts/oci_image.py --out "$out/$name.tar" --name "$registry/$name:$tag" \
    --entrypoint "/usr/local/bin/$binary" --file "$stripped/$binary:/usr/local/bin/$binary"
}
image haiyun-operator haiyun-operator
image haiyun-agent haiyun-agent
image haiyun-dra haiyun-dra
image haiyun-cli haiyun

if [[ -n "$load" ]]; then
  ctr="${TESTENV_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/haiyun/testenv-bin}/ctr"
  [[ -f "$load/real/nodes" ]] || { echo "images.sh: $load has no real nodes (testenv up --real-nodes N)" >&2; exit 1; }
  while read -r node; do
    for name in haiyun-operator haiyun-agent haiyun-dra haiyun-cli; do
      "$ctr" --address "$load/real/$node/containerd.sock" -n k8s.io images import --local "$out/$name.tar" >/dev/null
    done
    echo "images.sh: loaded into $node"
  done < "$load/real/nodes"
fi
