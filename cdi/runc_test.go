package cdi

import (
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2/ktesting"
)

// TestRuncContainer runs a real container with runc and a busybox rootfs,
// after injecting gpublocks.io/gpu=0 the way containerd does, and checks what
// the container sees: its GPU node and the control nodes, not another GPU's
// node, and the driver library under its soname.
func TestRuncContainer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run runc")
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("runc not installed (apt-get install runc)")
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil || !isStatic(busybox) {
		t.Skip("a static busybox is needed for the rootfs (apt-get install busybox-static)")
	}

	_, ctx := ktesting.NewTestContext(t)
	driverRoot := t.TempDir()
	makeTree(t, driverRoot, debianDriver)
	files, err := findDriverFiles(ctx, driverRoot, "amd64")
	require.NoError(t, err)
	spec, _, err := BuildSpec(ctx, SpecInput{Inventory: testInventory(), Offered: []string{uuidGPU0, uuidGPU1}, Driver: files})
	require.NoError(t, err)
	cdiDir := t.TempDir()
	w, err := NewWriter(cdiDir, DefaultKind)
	require.NoError(t, err)
	_, err = w.Write(ctx, spec)
	require.NoError(t, err)
	cache := loadCache(t, cdiDir)

	bundle := t.TempDir()
	rootfs := filepath.Join(bundle, "rootfs")
	for _, d := range []string{"bin", "proc", "dev", "sys", "tmp"} {
		require.NoError(t, os.MkdirAll(filepath.Join(rootfs, d), 0o755))
	}
	data, err := os.ReadFile(busybox)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), data, 0o755))
	out, err := exec.Command(runc, "spec", "--bundle", bundle).CombinedOutput()
	require.NoError(t, err, string(out))

	var config oci.Spec
	raw, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(raw, &config))
	config.Root = &oci.Root{Path: "rootfs"}
	config.Process.Terminal = false
	config.Process.Args = []string{"/bin/busybox", "sh", "-c", strings.Join([]string{
		"test -c /dev/nvidia0", "test -c /dev/nvidiactl", "test -c /dev/nvidia-uvm",
		"test ! -e /dev/nvidia1", "test ! -e /dev/nvidia2",
		"/bin/busybox cat /usr/lib/x86_64-linux-gnu/libcuda.so.1 /usr/lib64/libnvidia-ml.so.1",
		"echo; echo $NVIDIA_VISIBLE_DEVICES",
	}, " && ")}
	unresolved, err := cache.InjectDevices(&config, DefaultKind.QualifiedName("0"))
	require.NoError(t, err)
	require.Empty(t, unresolved)
	raw, err = json.Marshal(&config)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(bundle, "config.json"), raw, 0o644))

	runCtx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	id := fmt.Sprintf("gpublocks-cdi-test-%d", os.Getpid())
	cmd := exec.CommandContext(runCtx, runc, "--root", filepath.Join(t.TempDir(), "state"), "run", "--bundle", bundle, id)
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "runc run: %s", out)
	// The libraries are minimal ELF files (so) ending in their markers.
	require.Equal(t, so("fake libcuda")+so("fake nvml")+"\nvoid\n", string(out))
}

// isStatic reports whether an executable has no program interpreter, so it
// runs in a rootfs without a dynamic loader.
func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}
