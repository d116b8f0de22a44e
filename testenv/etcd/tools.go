//go:build tools

// Package tools pins the etcd server that testenv builds. It is a separate
// module so that etcd keeps the dependency versions its release was tested
// with instead of being unified with Kubernetes' own.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
