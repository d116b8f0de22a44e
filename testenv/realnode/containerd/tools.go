//go:build tools

// Package tools pins what a real testenv node runs beside the kubelet:
// containerd 2.x with its ctr client and runc shim, and the CNI plugins
// (bridge, host-local, loopback) that give pods an address. A module of its
// own so that containerd keeps the dependency versions of its release.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
)
