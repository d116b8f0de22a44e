// Command coredns is CoreDNS v1.15.0 with only the plugins testenv's cluster
// DNS uses. CoreDNS supports this way of choosing plugins at compile time
// (its own main only imports core/plugin, which pulls in every plugin, with
// the cloud SDKs of route53, azure, clouddns, ...); the plugins themselves and
// coremain are the release's, unchanged.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// The order is the release's (core/dnsserver/zdirectives.go), restricted
	// to the plugins imported above.
	dnsserver.Directives = []string{
		"bind",
		"ready",
		"health",
		"errors",
		"log",
		"loadbalance",
		"cache",
		"kubernetes",
	}
}

func main() {
	coremain.Run()
}
