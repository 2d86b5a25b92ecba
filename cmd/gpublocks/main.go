// Command gpublocks is the gpublocks node agent: a Kubernetes device plugin
// and CDI provider that offers each NVIDIA GPU whole, as MIG devices or as
// 100 time-sliced blocks, and the tools around it. DRA mode
// (--kubelet-api dra) is served by its sibling gpublocks-dra. See
// README.md.
package main

import (
	"os"

	"github.com/gpublocks/gpublocks/internal/cli"
)

func main() { os.Exit(cli.Main(nil)) }
