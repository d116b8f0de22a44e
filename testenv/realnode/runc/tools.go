//go:build tools

// Package tools pins runc, the OCI runtime containerd's shim calls. Debian's
// runc 1.1.5 and crun 1.8.1 fail under containerd 2.4; runc v1.5.3 built with
// -tags seccomp works (see testenv/README.md).
package tools

import (
	_ "github.com/opencontainers/runc"
)
