//go:build tools

// Package tools pins the upstream Kubernetes commands that testenv builds.
// Nothing here is compiled into a program; the blank imports keep the
// commands' packages (and their dependency versions) in go.mod and go.sum.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
