//go:build tools

// Package tools pins Kueue v0.17.0, which `testenv up --with-kueue` runs beside Haiyun for side-by-side
// benchmarks. It is a separate module so that Kueue keeps the Kubernetes libraries of its release (v0.35), which
// differ from testenv's own (v1.36).
package tools

import (
	_ "sigs.k8s.io/kueue/cmd/kueue"
)
