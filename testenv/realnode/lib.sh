# shellcheck shell=bash
# Real nodes for testenv: sourced by testenv/testenv, not run on its own.
#
# A real node is a kubelet v1.36.3 with a containerd of its own (own root,
# state, socket, CNI/CDI/pod-log folders), runc and the CNI bridge plugin,
# all as local processes. Every real node of an environment lives in one
# network namespace, "testenv-R" (R = 200..249, picked free at up time), so
# that kube-proxy's iptables rules, the CNI bridges and the sysctls they need
# never touch the machine's own network:
#
#   host netns                         | netns testenv-R
#   tenvR 10.R.0.1/24  <--- veth --->  | eth0 10.R.0.2 (+ .3 CoreDNS, .10+n node n)
#   kube-apiserver binds 10.R.0.1      | kubelet n binds 10.R.0.(10+n):10250
#   route 10.R.128.0/17 via 10.R.0.2   | bridge cni<n> 10.R.(128+n).1/24, pods of node n
#                                      | kube-proxy (iptables), CoreDNS on 10.R.0.3:53
#
# Pods reach the API server at 10.96.0.1:443 (kube-proxy DNATs it to
# 10.R.0.1) and cluster DNS at 10.96.0.10 (a selector-less kube-dns Service
# whose EndpointSlice points at 10.R.0.3). The host forwards nothing
# (ip_forward stays as it is); only the namespace forwards.

RN_HERE="$HERE/realnode"
CONTAINERD_VERSION="v2.4.2"
RUNC_VERSION="v1.5.3"
CNI_PLUGINS_VERSION="v1.10.0"
COREDNS_VERSION="v1.15.0"

REAL_LABEL="testenv.io/real"
BUSYBOX_IMAGE="localhost/testenv/busybox:latest"
# containerd 2.4's default sandbox image; we build it locally (busybox sleep).
PAUSE_IMAGE="registry.k8s.io/pause:3.10.2"
SERVICE_CIDR="10.96.0.0/16"
CLUSTER_DNS_IP="10.96.0.10"
CLUSTER_DOMAIN="cluster.local"

# ------------------------------------------------------------ packages ----

# deb_missing PKG...: prints the packages of the list that are not installed.
deb_missing() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

# ensure_debs PKG...: installs missing Debian packages with apt-get (as root;
# 'apt-get update' once first). Elsewhere it says what to install.
ensure_debs() {
  local missing
  missing="$(deb_missing "$@" | tr '\n' ' ')"
  [[ -z "${missing// /}" ]] && return 0
  command -v apt-get >/dev/null 2>&1 && ((EUID == 0)) \
    || die "real nodes need these Debian packages: $missing(install them, or run as root on Debian/Ubuntu)"
  log "installing Debian packages: $missing"
  if [[ -z "${TESTENV_APT_UPDATED:-}" ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    TESTENV_APT_UPDATED=1
  fi
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2 \
    || die "apt-get install $missing failed"
}

# What building the real-node parts needs: cgo and libseccomp for runc, and
# Debian's static busybox for the images.
BUILD_DEBS=(gcc libc6-dev libseccomp-dev pkg-config busybox-static)
# What running them needs: ip/nsenter, iptables for kube-proxy, conntrack,
# libseccomp for runc.
RUN_DEBS=(iproute2 util-linux iptables conntrack libseccomp2)

# --------------------------------------------------------------- build ----

build_real_binaries() {
  local kver="$1"
  ensure_debs "${BUILD_DEBS[@]}"
  build_one kubelet "$HERE" k8s.io/kubernetes/cmd/kubelet "$kver"
  build_one kube-proxy "$HERE" k8s.io/kubernetes/cmd/kube-proxy "$kver"
  local cver="-X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION#v}"
  build_one containerd "$RN_HERE/containerd" github.com/containerd/containerd/v2/cmd/containerd "$cver"
  build_one containerd-shim-runc-v2 "$RN_HERE/containerd" github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 "$cver"
  build_one ctr "$RN_HERE/containerd" github.com/containerd/containerd/v2/cmd/ctr "$cver"
  local cniver="-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION"
  build_one cni/bridge "$RN_HERE/containerd" github.com/containernetworking/plugins/plugins/main/bridge "$cniver"
  build_one cni/host-local "$RN_HERE/containerd" github.com/containernetworking/plugins/plugins/ipam/host-local "$cniver"
  build_one cni/loopback "$RN_HERE/containerd" github.com/containernetworking/plugins/plugins/main/loopback "$cniver"
  # runc with seccomp: containerd gives pod sandboxes its default seccomp
  # profile, which a runc built without libseccomp cannot apply. Needs cgo
  # and libseccomp-dev.
  BUILD_CGO=1 BUILD_TAGS=seccomp build_one runc "$RN_HERE/runc" github.com/opencontainers/runc ""
  build_one coredns "$RN_HERE/coredns" haiyun.io/testenv/realnode/coredns ""
  build_images
}

# The busybox and pause images, as OCI archives built from Debian's
# busybox-static (no registry). Rebuilt when busybox or the script changes.
build_images() {
  local stamp_file="$BIN/.images.stamp" stamp
  stamp="$( { cat "$RN_HERE/build-image.py"; dpkg-query -W busybox-static; echo "$BUSYBOX_IMAGE $PAUSE_IMAGE"; } | sha256sum | cut -d' ' -f1)"
  if [[ -f "$BIN/images/busybox.tar" && -f "$BIN/images/pause.tar" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
    return 0
  fi
  mkdir -p "$BIN/images"
  python3 "$RN_HERE/build-image.py" "$BIN/images/busybox.tar" "$BUSYBOX_IMAGE" >/dev/null \
    && python3 "$RN_HERE/build-image.py" "$BIN/images/pause.tar" "$PAUSE_IMAGE" --pause >/dev/null \
    || die "building the images failed"
  echo "$stamp" > "$stamp_file"
  log "built images $BUSYBOX_IMAGE and $PAUSE_IMAGE"
}

# ------------------------------------------------------------- network ----

# The environment's state lives in $DIR/real: 'index' holds R, 'nodes' the
# node names, one a line.
RD() { echo "$DIR/real"; }
netns_name() { echo "testenv-$RIDX"; }
netns_path() { echo "/run/netns/testenv-$RIDX"; }
host_if() { echo "tenv$RIDX"; }
api_host() { echo "10.$RIDX.0.1"; }
ns_ip() { echo "10.$RIDX.0.2"; }
dns_ip() { echo "10.$RIDX.0.3"; }
node_ip() { echo "10.$RIDX.0.$((10 + $1))"; }
pod_cidr() { echo "10.$RIDX.$((128 + $1)).0/24"; }
cluster_cidr() { echo "10.$RIDX.128.0/17"; }

# in_ns CMD...: runs CMD in the environment's network namespace (only the
# network namespace: mounts and cgroups stay the machine's, which containerd
# and the kubelet need).
in_ns() { nsenter --net="$(netns_path)" -- "$@"; }

# setup_network: picks a free R, creates the namespace, the veth pair and
# the addresses. Sets RIDX.
setup_network() {
  local r
  note_missing_dirs /run/netns /run/containerd /run/containerd/s /var/lib/cni \
    /var/lib/cni/results /var/lib/kubelet /var/lib/kubelet/device-plugins /var/log/containers
  for ((r = 200; r < 250; r++)); do
    ip link show "tenv$r" >/dev/null 2>&1 && continue
    ip -4 addr show | grep -q " 10\.$r\." && continue
    ip -4 route show | grep -q "^10\.$r\." && continue
    # ip netns add fails if the name is taken: that is our lock.
    ip netns add "testenv-$r" 2>/dev/null || continue
    RIDX=$r
    break
  done
  [[ -n "${RIDX:-}" ]] || die "no free network index in 200..249 (is 'ip netns add' allowed here?)"
  mkdir -p "$(RD)"
  echo "$RIDX" > "$(RD)/index"
  ip link add "$(host_if)" type veth peer name eth0 netns "$(netns_name)" \
    && ip addr add "$(api_host)/24" dev "$(host_if)" \
    && ip link set "$(host_if)" up \
    || die "creating veth $(host_if) failed"
  local n
  in_ns sh -ec "
    ip link set lo up
    ip addr add $(ns_ip)/24 dev eth0
    ip addr add $(dns_ip)/24 dev eth0
    $(for ((n = 0; n < REAL_NODES; n++)); do echo "ip addr add $(node_ip "$n")/24 dev eth0"; done)
    ip link set eth0 up
    ip route add default via $(api_host)
    sysctl -qw net.ipv4.ip_forward=1
    if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then sysctl -qw net.bridge.bridge-nf-call-iptables=1; fi
  " || die "configuring network namespace $(netns_name) failed"
  # The API server answers pods directly (pod sources are not NATed).
  ip route add "$(cluster_cidr)" via "$(ns_ip)" dev "$(host_if)" || die "adding the route to $(cluster_cidr) failed"
}

teardown_network() {
  if [[ -z "${RIDX:-}" ]]; then
    cleanup_machine_dirs
    return 0
  fi
  if [[ -e "$(netns_path)" ]]; then
    ip netns delete "$(netns_name)" 2>/dev/null || umount -l "$(netns_path)" 2>/dev/null || true
    rm -f "$(netns_path)" 2>/dev/null || true
  fi
  # The veth goes with the namespace, but asynchronously; and if a process we
  # did not stop still holds the namespace, delete the host end ourselves.
  local i
  for ((i = 0; i < 50; i++)); do
    ip link show "$(host_if)" >/dev/null 2>&1 || break
    sleep 0.1
  done
  ip link delete "$(host_if)" 2>/dev/null || true
  # The index is what marks DIR as holding a network; it is free again.
  rm -f "$(RD)/index"
  cleanup_machine_dirs
}

# Directories outside DIR that real nodes need or that containerd's shims,
# libcni, the kubelet and 'ip netns add' create: /run/netns (a bind mount of
# itself), /run/containerd/s (shim sockets), /var/lib/cni/results (libcni's
# cache), /var/log/containers (the kubelet's log symlinks),
# /var/lib/kubelet/device-plugins (a mount point, see start_kubelet). Those
# that did not exist before the first environment with real nodes are listed
# in $MACHINE_STATE/created-dirs; the last environment to go removes them
# (when empty), so that nothing is left and nothing that was there is taken.
MACHINE_STATE=/run/testenv-real-nodes

note_missing_dirs() {
  local d
  mkdir -p "$MACHINE_STATE"
  for d in "$@"; do
    [[ -e "$d" ]] && continue
    grep -qsx "$d" "$MACHINE_STATE/created-dirs" || echo "$d" >> "$MACHINE_STATE/created-dirs"
  done
}

cleanup_machine_dirs() {
  # Another environment still runs: a directory it uses may look empty
  # (a mount point in its kubelet's namespace), removing it would detach that.
  [[ -d "$MACHINE_STATE" ]] || return 0
  compgen -G "/run/netns/testenv-*" >/dev/null && return 0
  local d
  for d in /sys/fs/cgroup/*/k8s.io; do rmdir "$d" 2>/dev/null || true; done
  if [[ -f "$MACHINE_STATE/created-dirs" ]]; then
    while read -r d; do
      [[ -d "$d" && -z "$(ls -A "$d" 2>/dev/null)" ]] || continue
      if [[ "$d" == /run/netns ]]; then umount "$d" 2>/dev/null || true; fi
      rmdir "$d" 2>/dev/null || true
    done < <(tac "$MACHINE_STATE/created-dirs")
  fi
  rm -rf "$MACHINE_STATE"
}

# -------------------------------------------------------------- certs -----

# client_cert NAME CN [O]: a client certificate signed by the environment's CA.
client_cert() {
  local name="$1" cn="$2" o="${3:-}" subj
  subj="${o:+/O=$o}/CN=$cn"
  (
    cd "$DIR/pki"
    umask 077
    openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" >/dev/null 2>&1
    printf 'extendedKeyUsage=clientAuth\n' > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile "$name.ext" -out "$name.crt" >/dev/null 2>&1
    rm -f "$name.csr" "$name.ext" ca.srl
  ) || die "signing a certificate for $cn failed"
}

# kubeconfig_for OUT NAME: a kubeconfig with client certificate pki/NAME.crt.
kubeconfig_for() {
  local out="$1" name="$2"
  cat > "$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: https://$API_ADDR:$API_PORT
    certificate-authority: $DIR/pki/ca.crt
users:
- name: $name
  user:
    client-certificate: $DIR/pki/$name.crt
    client-key: $DIR/pki/$name.key
contexts:
- name: testenv
  context: {cluster: testenv, user: $name}
current-context: testenv
EOF
  chmod 600 "$out"
}

# ------------------------------------------------------ node processes ----

# start_in_ns LABEL BINARY ARGS...: like start, inside the namespace. LABEL is
# BINARY@NODE for per-node processes (the pid file is pids/LABEL.pid).
start_in_ns() {
  local label="$1" bin="$2"; shift 2
  [[ "$bin" == /* ]] || bin="$BIN/$bin"
  PATH="$BIN:$PATH" setsid nsenter --net="$(netns_path)" -- "$bin" "$@" \
    > "$DIR/logs/$label.log" 2>&1 < /dev/null &
  echo $! > "$DIR/pids/$label.pid"
  await_exec "$label"
}

node_dir() { echo "$(RD)/$1"; }

write_containerd_config() {
  local name="$1" n="$2" nd
  nd="$(node_dir "$name")"
  mkdir -p "$nd"/{root,state,cni,cni-ipam,cdi,runc,opt,pod-logs,volume-plugins}
  cat > "$nd/containerd.toml" <<EOF
# containerd for real node $name (testenv). Everything it writes is under $nd.
version = 3
root = "$nd/root"
state = "$nd/state"
# NRI would listen on the machine-wide /var/run/nri/nri.sock.
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = "$nd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$nd/opt"
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "$PAUSE_IMAGE"
[plugins."io.containerd.cri.v1.runtime"]
  # The sandbox's root lacks CAP_SYS_RESOURCE: negative oom_score_adj values
  # (the kubelet asks -998 for sandboxes) are clamped instead of refused.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  enable_unprivileged_icmp = false
  netns_mounts_under_state_dir = true
  enable_cdi = true
  cdi_spec_dirs = ["$nd/cdi"]
[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["$BIN/cni"]
  conf_dir = "$nd/cni"
  max_conf_num = 1
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  BinaryName = "$BIN/runc"
  Root = "$nd/runc"
  SystemdCgroup = false
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
  # One bridge per node (cni<n>): the bridge plugin allows one IPv4 address
  # per bridge, so disjoint /24s on separate bridges, routed by the namespace.
  cat > "$nd/cni/10-testenv.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "testenv$RIDX-$n", "plugins": [
 {"type": "bridge", "bridge": "cni$n", "isGateway": true, "ipMasq": false, "hairpinMode": true,
  "ipam": {"type": "host-local", "dataDir": "$nd/cni-ipam",
           "ranges": [[{"subnet": "$(pod_cidr "$n")"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
 {"type": "loopback"}]}
EOF
}

write_kubelet_config() {
  local name="$1" n="$2" nd
  nd="$(node_dir "$name")"
  mkdir -p "$nd/kubelet" "$nd/pki"
  cat > "$nd/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This sandbox mounts cgroup v1; kubelet 1.36 refuses it unless told not to.
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
# No QoS cgroups and no node-allocatable enforcement: several kubelets share
# one machine's cgroups.
cgroupsPerQOS: false
enforceNodeAllocatable: []
containerRuntimeEndpoint: unix://$nd/containerd.sock
address: $(node_ip "$n")
port: 10250
readOnlyPort: 0
healthzBindAddress: $(node_ip "$n")
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization: {mode: AlwaysAllow}
clusterDomain: $CLUSTER_DOMAIN
clusterDNS: [$CLUSTER_DNS_IP]
# No upstream resolver: pods with dnsPolicy Default get an empty resolv.conf.
resolvConf: ""
podLogsDir: $nd/pod-logs
volumePluginDir: $nd/volume-plugins
staticPodPath: ""
maxPods: $PODS_PER_NODE
localStorageCapacityIsolation: false
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
}

start_real_node() {
  local name="$1" n="$2" nd
  nd="$(node_dir "$name")"
  write_containerd_config "$name" "$n"
  write_kubelet_config "$name" "$n"
  client_cert "kubelet-$name" "system:node:$name" "system:nodes"
  kubeconfig_for "$nd/kubeconfig" "kubelet-$name"
  start_in_ns "containerd@$name" containerd --config "$nd/containerd.toml"
}

import_images() {
  local name="$1" nd img
  nd="$(node_dir "$name")"
  wait_for "containerd of $name" 60 "containerd@$name" \
    "$BIN/ctr" --address "$nd/containerd.sock" version
  for img in pause busybox; do
    "$BIN/ctr" --address "$nd/containerd.sock" -n k8s.io images import --local "$BIN/images/$img.tar" \
      > "$DIR/logs/import@$name.log" 2>&1 || { cat "$DIR/logs/import@$name.log" >&2; die "importing $img into $name failed"; }
  done
}

# The kubelet runs in a mount namespace of its own, for one reason: kubelet
# 1.36 hard-codes its device-plugin directory (/var/lib/kubelet/device-plugins,
# kubelet.sock and its checkpoint), which several kubelets on one machine
# would share; there it is NODE_DIR/device-plugins. Its root directory is a
# shared bind mount made beforehand, so the volume mounts the kubelet makes
# (secrets, service-account tokens) reach containerd in the machine's
# namespace.
start_kubelet() {
  local name="$1" n="$2" nd
  nd="$(node_dir "$name")"
  mkdir -p "$nd/device-plugins" "$nd/kubelet" /var/lib/kubelet/device-plugins
  # With Haiyun's GPU driver the model of each GPU is in its ResourceSlice; no node-wide label overrides it.
  local labels="$REAL_LABEL=true,type=real"
  [[ -n "${AGENT:-}" ]] || labels+=",$GPU_MODEL_LABEL=$GPU_MODEL"
  mount --bind "$nd/kubelet" "$nd/kubelet" && mount --make-shared "$nd/kubelet" \
    || die "making $nd/kubelet a shared mount failed"
  start_in_ns "kubelet@$name" "$RN_HERE/kubelet-ns" "$nd/device-plugins" "$BIN/kubelet" \
    --config "$nd/kubelet.yaml" \
    --kubeconfig "$nd/kubeconfig" --hostname-override "$name" --node-ip "$(node_ip "$n")" \
    --root-dir "$nd/kubelet" --cert-dir "$nd/pki" \
    --node-labels "$labels" \
    --v "${TESTENV_KUBELET_V:-1}"
}

# ------------------------------------------------ kube-proxy and CoreDNS ----

start_kube_proxy() {
  local first="$1"
  client_cert kube-proxy system:kube-proxy
  kubeconfig_for "$(RD)/kube-proxy.kubeconfig" kube-proxy
  cat > "$(RD)/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $(RD)/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: $first
clusterCIDR: $(cluster_cidr)
# NodePorts only on the nodes' addresses inside the namespace.
nodePortAddresses: [$(ns_ip)/24]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the machine-wide conntrack table size alone.
conntrack: {maxPerCore: 0, min: 0}
iptables: {minSyncPeriod: 0s, syncPeriod: 30s}
EOF
  start_in_ns kube-proxy kube-proxy --config "$(RD)/kube-proxy.yaml" --v 1
}

start_coredns() {
  client_cert coredns testenv:coredns
  kubeconfig_for "$(RD)/coredns.kubeconfig" coredns
  # The API server creates kube-system just after it first answers.
  wait_for "namespace kube-system" 60 kube-apiserver kc get namespace kube-system
  kc apply -f - >/dev/null <<EOF || die "creating CoreDNS's RBAC and the kube-dns Service failed"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "testenv:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "testenv:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "testenv:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "testenv:coredns"}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  clusterIP: $CLUSTER_DNS_IP
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
# CoreDNS runs as a process in the nodes' namespace, not as a pod: the
# Service has no selector and this slice points at it.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-testenv
  namespace: kube-system
  labels:
    kubernetes.io/service-name: kube-dns
    endpointslice.kubernetes.io/managed-by: testenv.io
addressType: IPv4
endpoints:
- addresses: ["$(dns_ip)"]
  conditions: {ready: true}
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
EOF
  cat > "$(RD)/Corefile" <<EOF
.:53 {
    bind $(dns_ip)
    errors
    health $(dns_ip):8080
    ready $(dns_ip):8181
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $(RD)/coredns.kubeconfig testenv
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
    loadbalance
}
EOF
  # No 'forward': names outside the cluster get no answer (nothing leaves
  # this machine).
  start_in_ns coredns coredns -conf "$(RD)/Corefile"
}

# ------------------------------------------------------------------ up ----

# up_real_nodes: after the API server (and controller manager) run.
up_real_nodes() {
  local n name names=()
  for ((n = 0; n < REAL_NODES; n++)); do
    names+=("$REAL_NODE_PREFIX-$n")
  done
  printf '%s\n' "${names[@]}" > "$(RD)/nodes"
  for ((n = 0; n < REAL_NODES; n++)); do start_real_node "${names[n]}" "$n"; done
  for ((n = 0; n < REAL_NODES; n++)); do import_images "${names[n]}"; done
  for ((n = 0; n < REAL_NODES; n++)); do start_kubelet "${names[n]}" "$n"; done
  start_kube_proxy "${names[0]}"
  start_coredns
  wait_for "CoreDNS" 60 coredns curl -fsS "http://$(dns_ip):8181/ready"
}

# finish_real_nodes: once registered, each real node gets in its spec the
# pod CIDR its CNI config uses (node IPAM is off; this is what it would have
# set), and advertises nvidia.com/gpu (an extended resource no device plugin
# manages: the kubelet keeps it in capacity and admits pods that request it;
# no device is given to the container).
finish_real_nodes() {
  local name n=0
  while read -r name; do
    kc patch node "$name" --type=merge \
      -p "{\"spec\":{\"podCIDR\":\"$(pod_cidr "$n")\",\"podCIDRs\":[\"$(pod_cidr "$n")\"]}}" \
      >/dev/null || die "setting the pod CIDR of $name failed"
    # With Haiyun's GPU driver (--agent) the GPUs are DRA devices, not an
    # extended resource: one owner of the node's GPUs.
    if ((REAL_GPUS_PER_NODE > 0)) && [[ -z "${AGENT:-}" ]]; then
      kc patch node "$name" --subresource=status --type=merge \
        -p "{\"status\":{\"capacity\":{\"nvidia.com/gpu\":\"$REAL_GPUS_PER_NODE\"},\"allocatable\":{\"nvidia.com/gpu\":\"$REAL_GPUS_PER_NODE\"}}}" \
        >/dev/null || die "advertising nvidia.com/gpu on $name failed"
    fi
    n=$((n + 1))
  done < "$(RD)/nodes"
}

# ------------------------------------------------- Haiyun's GPU driver ----

# The driver binary: $HAIYUN_DRA_BIN, else cargo's debug build.
dra_bin() {
  local b="${HAIYUN_DRA_BIN:-${CARGO_TARGET_DIR:-$HERE/../target}/debug/haiyun-dra}"
  [[ -x "$b" ]] || die "--agent needs Haiyun's GPU driver at $b: run 'cargo build -p haiyun-dra' (or set HAIYUN_DRA_BIN)"
  echo "$b"
}

# start_gpu_drivers: haiyun-dra on each real node, as the chart's DaemonSet
# would run it: its own identity with its own narrow RBAC, the node's kubelet
# root and CDI directory, and a fault file tests append to (fake probes).
# Returns once every node's ResourceSlice is published.
start_gpu_drivers() {
  local bin name nd
  bin="$(dra_bin)"
  kc apply -f - >/dev/null <<EOF || die "creating the GPU driver's RBAC and DeviceClass failed"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "testenv:haiyun-dra"}
rules:
- {apiGroups: [resource.k8s.io], resources: [resourceslices], verbs: [get, list, watch, create, update, patch, delete]}
- {apiGroups: [resource.k8s.io], resources: [resourceclaims], verbs: [get]}
- {apiGroups: [""], resources: [nodes, pods], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "testenv:haiyun-dra"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "testenv:haiyun-dra"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "testenv:haiyun-dra"}]
---
apiVersion: resource.k8s.io/v1
kind: DeviceClass
metadata: {name: gpu.haiyun.io}
spec:
  selectors:
  - cel: {expression: 'device.driver == "gpu.haiyun.io"'}
  # Pods that ask nvidia.com/gpu get these devices from kube-scheduler (DRA extended resources).
  extendedResourceName: nvidia.com/gpu
EOF
  local -a probes
  IFS=, read -r -a probes <<< "$AGENT"
  local n=0
  while read -r name; do
    nd="$(node_dir "$name")"
    mkdir -p "$nd/dra"
    : > "$nd/faults"
    client_cert "haiyun-dra-$name" "haiyun-dra:$name" "testenv:haiyun-dra"
    kubeconfig_for "$nd/dra.kubeconfig" "haiyun-dra-$name"
    # Node n gets the n-th probe of the list, round robin.
    KUBECONFIG="$nd/dra.kubeconfig" start_in_ns "haiyun-dra@$name" "$bin" \
      --probe "${probes[n % ${#probes[@]}]}" --faults "$nd/faults" --node-name "$name" \
      --kubelet-dir "$nd/kubelet" --cdi-dir "$nd/cdi" --state-dir "$nd/dra"
    n=$((n + 1))
  done < "$(RD)/nodes"
  while read -r name; do
    wait_for "the ResourceSlice of $name" 60 "haiyun-dra@$name" kc get resourceslice "$name-gpu.haiyun.io"
  done < "$(RD)/nodes"
}

# ---------------------------------------------------------------- down ----

real_node_names() { [[ -f "$(RD)/nodes" ]] && cat "$(RD)/nodes"; }

# stop_label LABEL [SIGNAL]: TERM (or SIGNAL), then KILL after 10 s.
stop_label() {
  local label="$1" sig="${2:-TERM}" pid i
  alive "$label" || { rm -f "$DIR/pids/$label.pid"; return 0; }
  pid="$(cat "$DIR/pids/$label.pid")"
  kill -"$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive "$label" || break
    sleep 0.1
  done
  if alive "$label"; then
    log "$label (pid $pid) did not stop in 10s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$DIR/pids/$label.pid"
}

# shim_pids NODE_DIR: the containerd shims serving that node's containerd.
shim_pids() {
  pgrep -f -- "containerd-shim-runc-v2 .*-address $1/containerd\.sock( |\$)" || true
}

# shim_sockets PID...: the unix socket files the shims listen on (under
# /run/containerd/s, named by a hash; they stay behind when a shim is killed).
shim_sockets() {
  local pid inode
  for pid in "$@"; do
    for inode in $(ls -l "/proc/$pid/fd" 2>/dev/null | sed -n 's/.*socket:\[\([0-9]*\)\]$/\1/p'); do
      awk -v i="$inode" '$7 == i && $8 ~ /^\/run\/containerd\/s\// {print $8}' "/proc/$pid/net/unix" 2>/dev/null
    done
  done | sort -u
}

# kill_node_containers NODE_DIR: every container runc started for this node,
# with all its processes (runc kill --all uses the container's cgroup).
# (The shim runs runc with --root <Root>/<containerd namespace>.) While the
# shims live they reap what dies; killed later, the machine's init would.
kill_node_containers() {
  local nd="$1" root id
  for root in "$nd"/runc/*/; do
    [[ -d "$root" ]] || continue
    for id in $("$BIN/runc" --root "$root" list -q 2>/dev/null); do
      "$BIN/runc" --root "$root" kill --all "$id" KILL 2>/dev/null || true
    done
  done
}

# delete_node_containers NODE_DIR: runc's state and the containers' cgroups.
delete_node_containers() {
  local nd="$1" root id
  for root in "$nd"/runc/*/; do
    [[ -d "$root" ]] || continue
    for id in $("$BIN/runc" --root "$root" list -q 2>/dev/null); do
      "$BIN/runc" --root "$root" delete --force "$id" >/dev/null 2>&1 || true
    done
  done
}

# unmount_under PATH: every mount below PATH, deepest first (container
# rootfs overlays, pod network namespaces, secret and token tmpfs).
unmount_under() {
  local base="$1" m i
  local -a mounts
  for ((i = 0; i < 5; i++)); do
    mapfile -t mounts < <(awk -v b="$base/" 'index($5, b) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    ((${#mounts[@]})) || return 0
    for m in "${mounts[@]}"; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
  done
  log "some mounts under $base could not be unmounted"
}

# stop_real: everything of the real nodes, in an order that leaves nothing:
# kubelets first (they would restart containers), then the containers and
# their shims, containerd, kube-proxy and CoreDNS, then mounts and the files
# the kubelet and CNI keep outside DIR. The network namespace goes last
# (teardown_network, after the API server, which listens on its veth).
stop_real() {
  [[ -f "$(RD)/index" ]] || return 0
  RIDX="$(cat "$(RD)/index")"
  local name nd sockets=() shims
  local -a names
  mapfile -t names < <(real_node_names)
  for name in "${names[@]}"; do stop_label "haiyun-dra@$name"; done
  for name in "${names[@]}"; do stop_label "kubelet@$name"; done
  for name in "${names[@]}"; do
    nd="$(node_dir "$name")"
    kill_node_containers "$nd"
    shims="$(shim_pids "$nd" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    [[ -n "${shims// /}" ]] && mapfile -t -O "${#sockets[@]}" sockets < <(shim_sockets $shims)
  done
  for name in "${names[@]}"; do stop_label "containerd@$name"; done
  stop_label kube-proxy
  stop_label coredns
  for name in "${names[@]}"; do
    nd="$(node_dir "$name")"
    shims="$(shim_pids "$nd" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    [[ -n "${shims// /}" ]] && kill -KILL $shims 2>/dev/null
    delete_node_containers "$nd"
  done
  ((${#sockets[@]})) && rm -f "${sockets[@]}"
  [[ -f "$(RD)/shim-sockets" ]] && xargs -r rm -f < "$(RD)/shim-sockets"
  unmount_under "$(RD)"
  # Outside DIR: the kubelet's /var/log/containers symlinks and CNI's result
  # cache (libcni's /var/lib/cni, which containerd does not let us move).
  local l
  for l in /var/log/containers/*; do
    [[ -L "$l" && "$(readlink "$l")" == "$(RD)/"* ]] && rm -f "$l"
  done
  # libcni's result cache: one file per sandbox and network, naming the
  # sandbox's network namespace, which lives under DIR.
  { grep -l -s -F "$(RD)/" /var/lib/cni/results/* 2>/dev/null || true; } | xargs -r rm -f
}

# kill_node NAME: what a crashed machine looks like to the control plane:
# SIGKILL to the node's kubelet, its containerd and its shims. Its containers
# keep running (as they do when only the node agent dies) until 'down'.
cmd_kill_node() {
  local node="" args=()
  while (($#)); do
    case "$1" in
      --node) node="${2:?--node needs a value}"; shift ;;
      *) args+=("$1") ;;
    esac
    shift
  done
  parse_node_flags "${args[@]}"
  [[ -n "$node" ]] || die "kill-node: --node NAME is required"
  [[ -f "$(RD)/index" ]] || die "$DIR has no real nodes"
  RIDX="$(cat "$(RD)/index")"
  real_node_names | grep -qx "$node" || die "kill-node: $node is not a real node of $DIR"
  local nd shims
  nd="$(node_dir "$node")"
  shims="$(shim_pids "$nd" | tr '\n' ' ')"
  # Their sockets would outlive them; down removes them.
  # shellcheck disable=SC2086
  [[ -n "${shims// /}" ]] && shim_sockets $shims >> "$(RD)/shim-sockets"
  stop_label "kubelet@$node" KILL
  stop_label "containerd@$node" KILL
  # shellcheck disable=SC2086
  [[ -n "${shims// /}" ]] && kill -KILL $shims 2>/dev/null
  log "killed kubelet, containerd and shims of $node; its containers still run"
}
