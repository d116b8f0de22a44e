# Kueue beside testenv's control plane (testenv up --with-kueue), for side-by-side benchmarks: functions only,
# sourced by testenv. Kueue v0.17.0's controller manager runs as a local process; its CRDs come from its own module;
# the API server calls its webhooks at https://127.0.0.1:PORT/... with a serving certificate from testenv's CA (there
# is no Service to route to); batch/v1 Jobs are its only integration, and kube-scheduler binds their pods.
# shellcheck shell=bash

KUEUE_VERSION="v0.17.0"

# kueue_module_dir: where the Go module cache holds sigs.k8s.io/kueue (downloading it if needed).
kueue_module_dir() {
  local dir
  dir="$(cd "$HERE/kueue" && go list -mod=readonly -m -f '{{.Dir}}' sigs.k8s.io/kueue 2>/dev/null || true)"
  if [[ -z "$dir" || ! -d "$dir/config/components" ]]; then
    (cd "$HERE/kueue" && go mod download sigs.k8s.io/kueue) >&2 || die "downloading sigs.k8s.io/kueue failed"
    dir="$(cd "$HERE/kueue" && go list -mod=readonly -m -f '{{.Dir}}' sigs.k8s.io/kueue)"
  fi
  [[ -d "$dir/config/components/crd/bases" ]] || die "Kueue's CRDs not found under $dir/config/components/crd/bases"
  echo "$dir"
}

# kueue_cert: a serving certificate for 127.0.0.1 signed by testenv's CA, where Kueue's webhook server looks.
kueue_cert() {
  local certs="$DIR/kueue/certs"
  mkdir -p "$certs"
  (
    cd "$certs"
    umask 077
    openssl req -newkey rsa:2048 -nodes -keyout tls.key -out tls.csr -subj "/CN=kueue-webhook" >/dev/null 2>&1
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > tls.ext
    openssl x509 -req -in tls.csr -CA "$DIR/pki/ca.crt" -CAkey "$DIR/pki/ca.key" -CAcreateserial -days 3650 \
      -extfile tls.ext -out tls.crt >/dev/null 2>&1
    rm -f tls.csr tls.ext "$DIR/pki/ca.srl"
  ) || die "generating Kueue's webhook certificate failed"
  # Without its internal certificate management Kueue reads its metrics server's certificate from this fixed path
  # and exits if there is none, even with the metrics server off; it gets the same one.
  local metrics=/etc/kueue/metrics/certs
  mkdir -p "$metrics" 2>/dev/null && cp "$certs/tls.crt" "$certs/tls.key" "$metrics/" 2>/dev/null \
    || die "--with-kueue writes a certificate to $metrics, which Kueue reads from there: run as root"
}

# kueue_webhooks MODULE_DIR PORT: Kueue's webhook configurations for its own kinds and batch/v1 Jobs, each pointed
# at https://127.0.0.1:PORT/<path> with testenv's CA. Webhooks of integrations that are off are left out: the
# server would answer their paths with 404, and their Fail policy would refuse every Pod or Deployment.
kueue_webhooks() {
  python3 - "$1/config/components/webhook/manifests.yaml" "$2" "$DIR/pki/ca.crt" <<'EOF'
import base64, json, sys
import yaml
src, port, ca = sys.argv[1], sys.argv[2], sys.argv[3]
bundle = base64.b64encode(open(ca, "rb").read()).decode()
out = []
for doc in yaml.safe_load_all(open(src)):
    if not doc:
        continue
    kept = []
    for hook in doc.get("webhooks", []):
        path = hook["clientConfig"]["service"]["path"]
        if "kueue-x-k8s-io" not in path and path not in ("/mutate-batch-v1-job", "/validate-batch-v1-job"):
            continue
        hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle}
        kept.append(hook)
    doc["webhooks"] = kept
    doc["metadata"]["name"] = "kueue-" + doc["metadata"]["name"]
    out.append(doc)
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": out}))
EOF
}

# start_kueue WEBHOOK_PORT HEALTH_PORT: installs Kueue's CRDs and webhooks, starts its controller manager and waits
# until it is ready and its webhooks answer.
start_kueue() {
  local port="$1" health="$2" mod
  mod="$(kueue_module_dir)"
  python3 -c 'import yaml' 2>/dev/null || die "--with-kueue needs python3's yaml module (Debian: python3-yaml)"
  kueue_cert
  kc create namespace kueue-system >/dev/null
  local crd
  for crd in "$mod"/config/components/crd/bases/*.yaml; do
    kc apply --server-side --force-conflicts -f "$crd" >/dev/null || die "applying Kueue CRD $crd failed"
  done
  # shellcheck disable=SC2046
  kc wait --for condition=Established --timeout 60s $(kc get crd -o name | grep 'kueue\.x-k8s\.io$') >/dev/null \
    || die "Kueue's CRDs were not established within 60 s"
  cat > "$DIR/kueue/config.yaml" <<EOF
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health:
  healthProbeBindAddress: 127.0.0.1:$health
metrics:
  bindAddress: "0"
webhook:
  host: 127.0.0.1
  port: $port
  certDir: $DIR/kueue/certs
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
controller:
  groupKindConcurrency:
    Job.batch: 5
    Pod: 5
    Workload.kueue.x-k8s.io: 5
    LocalQueue.kueue.x-k8s.io: 1
    Cohort.kueue.x-k8s.io: 1
    ClusterQueue.kueue.x-k8s.io: 1
    ResourceFlavor.kueue.x-k8s.io: 1
clientConnection:
  qps: $KUEUE_QPS
  burst: $((KUEUE_QPS * 2))
integrations:
  frameworks: ["batch/job"]
EOF
  KUBECONFIG="$DIR/kubeconfig" start kueue --config "$DIR/kueue/config.yaml" \
    --feature-gates VisibilityOnDemand=false --zap-log-level "${TESTENV_KUEUE_LOG_LEVEL:-error}"
  wait_for "Kueue /readyz" 120 kueue curl -fsS "http://127.0.0.1:$health/readyz"
  kueue_webhooks "$mod" "$port" > "$DIR/kueue/webhooks.json" || die "rendering Kueue's webhooks failed"
  kc apply --server-side --force-conflicts -f "$DIR/kueue/webhooks.json" >/dev/null \
    || die "applying Kueue's webhook configurations failed"
  # The webhooks answer once a dry-run ResourceFlavor passes through them.
  cat > "$DIR/kueue/probe.yaml" <<EOF
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {name: testenv-probe}
EOF
  wait_for "Kueue's webhooks to answer" 60 kueue kc create --dry-run=server -o name -f "$DIR/kueue/probe.yaml"
}
