//go:build tools

// Package tools pins helm, which lints and renders charts/haiyun in CI. It is a
// separate module so that helm keeps the dependency versions of its release.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
