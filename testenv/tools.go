//go:build tools

// Package tools pins the upstream Kubernetes commands that testenv builds
// (kubelet, kube-controller-manager and kube-proxy only for real nodes;
// kubectl where .ci/run has to build one).
// Nothing here is compiled into a program; the blank imports keep the
// commands' packages (and their dependency versions) in go.mod and go.sum.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
