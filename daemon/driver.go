package daemon

import (
	"context"
	"path/filepath"
	"strings"

	"github.com/gpublocks/gpublocks/cdi"
)

// FindDriverFiles finds the driver's files under --driver-root and records
// where the container runtime sees that root.
func FindDriverFiles(ctx context.Context, o Options) (cdi.DriverFiles, error) {
	files, err := cdi.FindDriverFiles(ctx, o.DriverRoot)
	if err != nil {
		return files, err
	}
	files.Root = RuntimeDriverRoot(o.DriverRoot, o.DevRoot)
	return files, nil
}

// RuntimeDriverRoot is the driver root as the container runtime (on the
// host) sees it. --dev-root is the host's / as this process sees it, so a
// driver root below it is a host path with that prefix removed: a DaemonSet
// that mounts the host's / at /host and runs with --dev-root=/host
// --driver-root=/host/run/nvidia/driver publishes mounts from
// /run/nvidia/driver. Any other driver root is taken to be at the same path
// on the host.
func RuntimeDriverRoot(driverRoot, devRoot string) string {
	driverRoot, devRoot = filepath.Clean(driverRoot), filepath.Clean(devRoot)
	if devRoot == "/" || driverRoot == "." {
		return driverRoot
	}
	if driverRoot == devRoot {
		return "/"
	}
	if rest, ok := strings.CutPrefix(driverRoot, devRoot+"/"); ok {
		return "/" + rest
	}
	return driverRoot
}
