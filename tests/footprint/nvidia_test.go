package footprint

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// mockPackages are the go-nvml mock packages the wrapper needs; NVIDIA's
// vendor directory has only the ones its plugin imports.
var mockPackages = []string{"mock", "mock/dgxa100", "mock/gpus", "mock/server"}

// nvmlNew is the one call in NVIDIA's startPlugins (v0.20.0) that the
// wrapper replaces with the mock.
const nvmlNew = `	nvmllib := nvml.New(
		nvml.WithLibraryPath(driverRoot.tryResolveLibrary("libnvidia-ml.so.1")),
	)
`

// buildNvidia builds NVIDIA's device plugin from the checkout named by
// NVIDIA_DEVICE_PLUGIN_SRC with the wrapper in nvidia/mock_nvml.go, in a
// copy of the tree (the checkout is left as it is), and returns the binary.
// The error says why it cannot, for the skip line.
func buildNvidia(b *testing.B) (string, error) {
	src := os.Getenv("NVIDIA_DEVICE_PLUGIN_SRC")
	if src == "" {
		return "", errors.New("NVIDIA_DEVICE_PLUGIN_SRC is not set: point it at a checkout of github.com/NVIDIA/k8s-device-plugin v0.20.0 with its vendor/ directory (the Go module proxy refuses that module)")
	}
	if os.Geteuid() != 0 {
		return "", errors.New("needs root: NVIDIA's plugin serves from the fixed /var/lib/kubelet/device-plugins, which the benchmark replaces in a mount namespace of the plugin's own")
	}
	modules, err := os.ReadFile(filepath.Join(src, "vendor", "modules.txt"))
	if err != nil {
		return "", fmt.Errorf("NVIDIA_DEVICE_PLUGIN_SRC=%s: no vendor directory (%w)", src, err)
	}
	m := regexp.MustCompile(`(?m)^# github\.com/NVIDIA/go-nvml (v\S+)$`).FindSubmatch(modules)
	if m == nil {
		return "", fmt.Errorf("NVIDIA_DEVICE_PLUGIN_SRC=%s: vendor/modules.txt names no go-nvml version", src)
	}
	nvmlVersion := string(m[1])
	wrapper, err := os.ReadFile("nvidia/mock_nvml.go")
	if err != nil {
		return "", err
	}

	// A fixed place, so that the build cache serves the next run.
	work := filepath.Join(os.TempDir(), "gpublocks-footprint-nvidia")
	if err := os.RemoveAll(work); err != nil {
		return "", err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return "", err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if e.Name() == ".git" || e.Name() == "tests" {
			continue
		}
		if out, err := exec.Command("cp", "-a", filepath.Join(src, e.Name()), work).CombinedOutput(); err != nil {
			return "", fmt.Errorf("copying %s: %w: %s", e.Name(), err, out)
		}
	}

	// The mock packages, from the go-nvml version NVIDIA vendors.
	out, err := goCmd(work, "mod", "download", "-json", "github.com/NVIDIA/go-nvml@"+nvmlVersion)
	if err != nil {
		return "", fmt.Errorf("downloading go-nvml %s for its mock: %w: %s", nvmlVersion, err, out)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		return "", fmt.Errorf("go mod download go-nvml %s: no directory in %q", nvmlVersion, out)
	}
	var listed strings.Builder
	for _, p := range mockPackages {
		dst := filepath.Join(work, "vendor/github.com/NVIDIA/go-nvml/pkg/nvml", p)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return "", err
		}
		files, err := filepath.Glob(filepath.Join(mod.Dir, "pkg/nvml", p, "*.go"))
		if err != nil {
			return "", err
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			data, err := os.ReadFile(f)
			if err != nil {
				return "", err
			}
			if err := os.WriteFile(filepath.Join(dst, filepath.Base(f)), data, 0o644); err != nil {
				return "", err
			}
		}
		listed.WriteString("github.com/NVIDIA/go-nvml/pkg/nvml/" + p + "\n")
	}
	const nvmlPkg = "github.com/NVIDIA/go-nvml/pkg/nvml\n"
	if !strings.Contains(string(modules), nvmlPkg) {
		return "", fmt.Errorf("vendor/modules.txt does not list %s", strings.TrimSpace(nvmlPkg))
	}
	modules = []byte(strings.Replace(string(modules), nvmlPkg, nvmlPkg+listed.String(), 1))
	if err := os.WriteFile(filepath.Join(work, "vendor/modules.txt"), modules, 0o644); err != nil {
		return "", err
	}

	// The wrapper: NVIDIA's main with the mock in place of the library.
	mainGo := filepath.Join(work, "cmd/nvidia-device-plugin/main.go")
	main, err := os.ReadFile(mainGo)
	if err != nil {
		return "", err
	}
	if !strings.Contains(string(main), nvmlNew) {
		return "", fmt.Errorf("%s has no nvml.New call as in v0.20.0: is NVIDIA_DEVICE_PLUGIN_SRC v0.20.0?", filepath.Join(src, "cmd/nvidia-device-plugin/main.go"))
	}
	main = []byte(strings.Replace(string(main), nvmlNew, "\tnvmllib := newMockNVML()\n\t_ = nvml.New\n", 1))
	if err := os.WriteFile(mainGo, main, 0o644); err != nil {
		return "", err
	}
	wrapper = []byte(strings.Replace(string(wrapper), "//go:build ignore\n", "", 1))
	if err := os.WriteFile(filepath.Join(work, "cmd/nvidia-device-plugin/zz_mock_nvml.go"), wrapper, 0o644); err != nil {
		return "", err
	}

	bin := filepath.Join(work, "nvidia-device-plugin-mock")
	b.Logf("building NVIDIA's plugin from %s (several minutes the first time)", src)
	if out, err := goCmd(work, "build", "-mod=vendor", "-o", bin, "./cmd/nvidia-device-plugin"); err != nil {
		return "", fmt.Errorf("building NVIDIA's plugin: %w: %s", err, tail(string(out), 3000))
	}
	return bin, nil
}

// goCmd runs the go command in dir, outside any workspace, and returns its
// standard output (and standard error on failure).
func goCmd(dir string, args ...string) ([]byte, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=", "CGO_ENABLED=1", "CGO_CFLAGS=-O2 -g -Wno-deprecated-declarations")
	out, err := cmd.Output()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		out = append(out, ee.Stderr...)
	}
	return out, err
}
