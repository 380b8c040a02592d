// CoreDNS for the one-node cluster (`kube-drac local-cluster --node`): the real server, built
// with only the plugins a cluster's DNS uses (the way CoreDNS documents a custom build), so the
// build skips the cloud providers' SDKs that the full plugin set pulls in.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// The order in which the plugins see a query (a subset of CoreDNS's plugin.cfg, in its order).
var directives = []string{
	"reload",
	"health",
	"ready",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"kubernetes",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
