// Command gpublocks-dra is gpublocks with DRA mode (DESIGN §9): the same
// commands and flags, plus `serve --kubelet-api dra` and `inspect
// --kubelet-api dra`, which link client-go and the Kubernetes API types.
// `gpublocks` runs it for DRA mode; it is installed beside it.
package main

import (
	"os"

	"github.com/gpublocks/gpublocks/internal/cli"
	"github.com/gpublocks/gpublocks/internal/draserve"
)

func main() { os.Exit(cli.Main(draserve.CLI())) }
