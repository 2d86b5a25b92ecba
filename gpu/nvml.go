package gpu

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"
)

// nvmlLibrary is the file name of the NVML library the driver installs.
const nvmlLibrary = "libnvidia-ml.so.1"

// KernelVersionPath is where the loaded kernel module reports its version,
// relative to the dev root.
const KernelVersionPath = "/proc/driver/nvidia/version"

// noDriverHint ends every ErrNoDriver message.
const noDriverHint = "set --driver-root to the root holding the NVIDIA driver (e.g. /run/nvidia/driver), " +
	"or run with --simulate dgxa100 to try without a GPU"

// nvmlBackend is the real NVML library plus the real host.
type nvmlBackend struct {
	lib  nvml.Interface
	host Host
	name string
}

// NewNVMLBackend loads and initialises NVML from the driver installed under
// driverRoot, and reads device nodes and /proc under devRoot. Both default to
// "/".
//
// The candidates are the libnvidia-ml.so.1 files in DriverLibraryDirs under
// driverRoot, those whose version matches the loaded kernel module
// (<devRoot>/proc/driver/nvidia/version) first; when driverRoot is "/", the
// dynamic loader's own search comes last. A candidate that cannot even be
// loaded is passed over. The first one that loads is the one used, whether
// or not it initialises: go-nvml keeps a loaded library loaded and binds
// every call to it, so trying another one after a failed nvmlInit would only
// call the first again. Any failure wraps ErrNoDriver and says what was
// found and tried.
func NewNVMLBackend(ctx context.Context, driverRoot, devRoot string) (Backend, error) {
	logger := klog.FromContext(ctx)
	if driverRoot == "" {
		driverRoot = "/"
	}
	if devRoot == "" {
		devRoot = "/"
	}
	kernel := KernelModuleVersion(devRoot)
	candidates := preferVersion(findNVML(driverRoot), kernel)
	if kernel != "" && len(candidates) > 0 && !matchesVersion(candidates[0], kernel) {
		logger.Info("No NVML library under the driver root matches the kernel module; NVML will likely fail with a version mismatch",
			"kernelModule", kernel, "driverRoot", driverRoot, "candidates", candidates)
	}
	if filepath.Clean(driverRoot) == "/" {
		candidates = append(candidates, nvmlLibrary) // the loader's search path
	}
	describe := func(p string) string {
		if p == nvmlLibrary {
			return nvmlLibrary + " via the dynamic loader"
		}
		return p
	}
	var tried []string
	for i, p := range candidates {
		lib := nvml.New(nvml.WithLibraryPath(p))
		ret := lib.Init()
		if ret == nvml.SUCCESS {
			logger.Info("Loaded NVML", "library", describe(p), "kernelModule", kernel, "devRoot", devRoot)
			return &nvmlBackend{
				lib:  lib,
				host: NewHost(devRoot),
				name: fmt.Sprintf("nvml (driver root %s, dev root %s)", driverRoot, devRoot),
			}, nil
		}
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND && lib.Extensions().LookupSymbol("nvmlInit_v2") != nil {
			// dlopen failed (not a library, another architecture):
			// nothing stays loaded, so the next candidate is a clean try.
			tried = append(tried, fmt.Sprintf("%s: cannot be loaded", describe(p)))
			logger.V(1).Info("Cannot load NVML library", "library", describe(p))
			continue
		}
		msg := fmt.Sprintf("%s loaded but did not initialise: %v", describe(p), ret)
		if kernel != "" {
			msg += fmt.Sprintf(" (kernel module %s)", kernel)
		}
		if rest := candidates[i+1:]; len(rest) > 0 {
			others := make([]string, len(rest))
			for j, o := range rest {
				others[j] = describe(o)
			}
			msg += fmt.Sprintf("; not tried, since the first library loaded stays in use: %s", strings.Join(others, ", "))
		}
		tried = append(tried, msg)
		return nil, fmt.Errorf("%w: cannot load NVML (%s); %s", ErrNoDriver, strings.Join(tried, "; "), noDriverHint)
	}
	if len(tried) == 0 {
		tried = append(tried, fmt.Sprintf("no %s in %s under %s", nvmlLibrary, strings.Join(DriverLibraryDirs, ", "), driverRoot))
	}
	return nil, fmt.Errorf("%w: cannot load NVML (%s); %s", ErrNoDriver, strings.Join(tried, "; "), noDriverHint)
}

// findNVML lists the NVML libraries that exist under root, in search order,
// as host paths of real files. Symlinks are resolved within the root, so a
// driver container's absolute links still point into it.
func findNVML(root string) []string {
	var found []string
	for _, dir := range DriverLibraryDirs {
		rel, err := ResolveInRoot(root, path.Join(dir, nvmlLibrary))
		if err != nil {
			continue
		}
		p := filepath.Join(root, filepath.FromSlash(rel))
		if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() || slices.Contains(found, p) {
			continue
		}
		found = append(found, p)
	}
	return found
}

// preferVersion moves the libraries built for kernel module version to the
// front, keeping the search order otherwise.
func preferVersion(libs []string, version string) []string {
	if version == "" {
		return libs
	}
	out := slices.Clone(libs)
	slices.SortStableFunc(out, func(a, b string) int {
		ma, mb := matchesVersion(a, version), matchesVersion(b, version)
		switch {
		case ma && !mb:
			return -1
		case mb && !ma:
			return 1
		}
		return 0
	})
	return out
}

// matchesVersion reports whether lib is libnvidia-ml.so.<version>.
func matchesVersion(lib, version string) bool {
	return filepath.Base(lib) == "libnvidia-ml.so."+version
}

// kernelVersionRE finds the driver version on the NVRM line, e.g.
// "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar …" or
// "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build …".
var kernelVersionRE = regexp.MustCompile(`^NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s`)

// KernelModuleVersion returns the version of the loaded NVIDIA kernel module
// from <devRoot>/proc/driver/nvidia/version, or "" when it cannot be read.
func KernelModuleVersion(devRoot string) string {
	data, err := os.ReadFile(filepath.Join(devRoot, KernelVersionPath))
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(data)) {
		if m := kernelVersionRE.FindStringSubmatch(line); m != nil {
			return m[1]
		}
	}
	return ""
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
