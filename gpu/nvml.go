package gpu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"
)

// nvmlLibrary is the file name of the NVML library the driver installs.
const nvmlLibrary = "libnvidia-ml.so.1"

// libDirs are the directories, relative to the driver root, where
// distributions and the GPU operator's driver container put NVML.
var libDirs = []string{
	"usr/lib/x86_64-linux-gnu",
	"usr/lib/aarch64-linux-gnu",
	"usr/lib64",
	"usr/lib",
	"lib/x86_64-linux-gnu",
	"lib/aarch64-linux-gnu",
	"lib64",
	"lib",
	"usr/lib/x86_64-linux-gnu/nvidia/current",
	"usr/lib/aarch64-linux-gnu/nvidia/current",
	"usr/local/nvidia/lib64",
	"usr/local/nvidia/lib",
}

// nvmlBackend is the real NVML library plus the real host.
type nvmlBackend struct {
	lib  nvml.Interface
	host Host
	name string
}

// NewNVMLBackend loads and initialises NVML from the driver installed under
// driverRoot, and reads device nodes and /proc under devRoot. Both default to
// "/". When driverRoot is "/" and no library is found in the usual
// directories, the dynamic loader's own search is tried last. Any failure to
// load or initialise the library wraps ErrNoDriver, and says what was tried.
func NewNVMLBackend(ctx context.Context, driverRoot, devRoot string) (Backend, error) {
	logger := klog.FromContext(ctx)
	if driverRoot == "" {
		driverRoot = "/"
	}
	if devRoot == "" {
		devRoot = "/"
	}
	candidates := findNVML(driverRoot)
	if filepath.Clean(driverRoot) == "/" {
		candidates = append(candidates, nvmlLibrary) // the loader's search path
	}
	var tried []string
	for _, path := range candidates {
		lib := nvml.New(nvml.WithLibraryPath(path))
		ret := lib.Init()
		if ret == nvml.SUCCESS {
			logger.Info("Loaded NVML", "library", path, "devRoot", devRoot)
			return &nvmlBackend{
				lib:  lib,
				host: NewHost(devRoot),
				name: fmt.Sprintf("nvml (driver root %s, dev root %s)", driverRoot, devRoot),
			}, nil
		}
		what := path
		if path == nvmlLibrary {
			what = nvmlLibrary + " via the dynamic loader"
		}
		tried = append(tried, fmt.Sprintf("%s: %v", what, ret))
		logger.V(1).Info("Cannot use NVML library", "library", what, "err", ret)
	}
	if len(tried) == 0 {
		tried = append(tried, fmt.Sprintf("no %s in %s under %s", nvmlLibrary, strings.Join(libDirs, ", "), driverRoot))
	}
	return nil, fmt.Errorf("%w: cannot load NVML (%s); set --driver-root to the root "+
		"holding the NVIDIA driver (e.g. /run/nvidia/driver), or run with --simulate dgxa100 to try without a GPU",
		ErrNoDriver, strings.Join(tried, "; "))
}

// findNVML lists the NVML libraries that exist under root, in search order.
// Symlinks are resolved within the root, so a driver container's absolute
// links still point into it.
func findNVML(root string) []string {
	var found []string
	seen := map[string]bool{}
	for _, dir := range libDirs {
		p, err := resolveIn(root, filepath.Join(dir, nvmlLibrary))
		if err != nil || seen[p] {
			continue
		}
		seen[p] = true
		found = append(found, p)
	}
	return found
}

// resolveIn follows symlinks of rel (relative to root) as if root were "/",
// and returns the host path of a regular file.
func resolveIn(root, rel string) (string, error) {
	p := filepath.Join(root, rel)
	for range 16 {
		fi, err := os.Lstat(p)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if !fi.Mode().IsRegular() {
				return "", fmt.Errorf("%s is not a regular file", p)
			}
			return p, nil
		}
		target, err := os.Readlink(p)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			p = filepath.Join(root, target)
		} else {
			p = filepath.Join(filepath.Dir(p), target)
		}
	}
	return "", errors.New("too many symlinks")
}

// NVML returns the initialised library.
func (b *nvmlBackend) NVML() nvml.Interface { return b.lib }

// Host returns the host below the dev root.
func (b *nvmlBackend) Host() Host { return b.host }

// Name describes the backend for logs.
func (b *nvmlBackend) Name() string { return b.name }

// Close shuts NVML down.
func (b *nvmlBackend) Close() error {
	if ret := b.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("shutting down NVML: %w", ret)
	}
	return nil
}
