//go:build tools

// Package tools pins kwok, which simulates nodes and pod lifecycles. It is a
// separate module so that kwok keeps the dependency versions of its release.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
