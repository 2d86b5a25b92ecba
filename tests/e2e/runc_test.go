package e2e

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
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

// defaultOCISpec is what `runc spec` writes, trimmed to what a busybox
// container needs: fresh namespaces, a private /dev, and a devices cgroup
// that denies everything the spec does not explicitly allow.
func defaultOCISpec(rootfs string, args ...string) *oci.Spec {
	return &oci.Spec{
		Version: oci.Version,
		Root:    &oci.Root{Path: rootfs, Readonly: true},
		Process: &oci.Process{
			Args: args,
			Env:  []string{"PATH=/bin"},
			Cwd:  "/",
			Capabilities: &oci.LinuxCapabilities{
				Bounding:  []string{"CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"},
				Effective: []string{"CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"},
				Permitted: []string{"CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"},
			},
			Rlimits:         []oci.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Hostname: "gpublocks-e2e",
		Mounts: []oci.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &oci.Linux{
			Resources: &oci.LinuxResources{
				Devices: []oci.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			Namespaces: []oci.LinuxNamespace{
				{Type: oci.PIDNamespace}, {Type: oci.NetworkNamespace}, {Type: oci.IPCNamespace},
				{Type: oci.UTSNamespace}, {Type: oci.MountNamespace},
			},
			MaskedPaths:   []string{"/proc/kcore", "/proc/keys", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}

// requireRuncPrerequisites skips unless the test can start real containers.
func requireRuncPrerequisites(t *testing.T) (runc, busybox string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: running a container with runc needs root")
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("skipping: runc not installed (apt-get install -y runc)")
	}
	busybox, err = exec.LookPath("busybox")
	if err != nil {
		t.Skip("skipping: busybox not installed (apt-get install -y busybox-static)")
	}
	f, err := elf.Open(busybox)
	if err != nil {
		t.Skipf("skipping: cannot read %s: %v", busybox, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Skipf("skipping: %s is dynamically linked; the rootfs needs busybox-static", busybox)
		}
	}
	return runc, busybox
}

// TestRuncContainer runs a real container from a CDI-injected spec and checks
// from inside that it sees the allocated GPUs' nodes and no other GPU.
func TestRuncContainer(t *testing.T) {
	runc, busybox := requireRuncPrerequisites(t)
	ctx, _ := testContext(t)
	s := startStack(ctx, t)
	ids := deviceIDs(s.devices)

	cache, err := cdi.NewCache(cdi.WithSpecDirs(s.opts.cdiDir), cdi.WithAutoRefresh(false))
	require.NoError(t, err)
	require.Empty(t, cache.GetErrors())
	minors := gpuMinors(t, cache, ids)

	allocated := []string{ids[0], ids[7]}
	resp := allocate(ctx, t, s.client, allocated...)

	// Shell checks, each echoing what failed so the log explains a non-zero exit.
	var checks []string
	check := func(cond, what string) {
		checks = append(checks, fmt.Sprintf("if %s; then echo 'ok: %s'; else echo 'FAIL: %s'; rc=1; fi", cond, what, what))
	}
	isAllocated := map[int]bool{}
	for _, id := range allocated {
		m := minors[id]
		isAllocated[m] = true
		node := fmt.Sprintf("/dev/nvidia%d", m)
		check("test -c "+node, node+" is a character device")
		// busybox stat prints major:minor in hex; 195 is 0xc3.
		check(fmt.Sprintf(`[ "$(stat -c %%t:%%T %s)" = "%x:%x" ]`, node, nvidiaMajor, m), node+" has major:minor 195:"+fmt.Sprint(m))
	}
	// The devices cgroup must let the container open what it was given:
	// without a driver the open fails with ENXIO, never with EPERM.
	for _, node := range append([]string{fmt.Sprintf("/dev/nvidia%d", minors[allocated[0]])}, controlNodes[0]) {
		check(fmt.Sprintf(`! cat %s 2>&1 </dev/null | grep -q "Operation not permitted"`, node), node+" is allowed by the devices cgroup")
	}
	for _, m := range minors {
		if !isAllocated[m] {
			node := fmt.Sprintf("/dev/nvidia%d", m)
			check("! test -e "+node, node+" (not allocated) is absent")
		}
	}
	for _, node := range controlNodes {
		check("test -c "+node, node+" is a character device")
	}
	check(`[ "$NVIDIA_VISIBLE_DEVICES" = void ]`, "NVIDIA_VISIBLE_DEVICES=void")
	script := "rc=0\n" + strings.Join(checks, "\n") + "\nexit $rc\n"

	bundle := shortTempDir(t)
	rootfs := filepath.Join(bundle, "rootfs")
	buildBusyboxRootfs(t, rootfs, busybox)
	spec := defaultOCISpec(rootfs, "/bin/sh", "-c", script)
	unresolved, err := cache.InjectDevices(spec, cdiNames(resp.CdiDevices)...)
	require.NoError(t, err, "unresolved: %v", unresolved)
	data, err := json.MarshalIndent(spec, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644))

	stateDir := filepath.Join(bundle, "state")
	id := fmt.Sprintf("gpublocks-e2e-%d-%d", os.Getpid(), time.Now().UnixNano())
	runCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(runCtx, runc, "--root", stateDir, "run", "--bundle", bundle, id)
	t.Cleanup(func() {
		_ = exec.Command(runc, "--root", stateDir, "delete", "--force", id).Run()
	})
	out, err := cmd.CombinedOutput()
	t.Logf("runc run %s:\n%s", id, out)
	require.NoError(t, err, "the container's checks failed")
	require.NotContains(t, string(out), "FAIL")
}

// buildBusyboxRootfs makes a minimal root filesystem: a static busybox and
// the applet links the checks use.
func buildBusyboxRootfs(t *testing.T, rootfs, busybox string) {
	t.Helper()
	bin := filepath.Join(rootfs, "bin")
	require.NoError(t, os.MkdirAll(bin, 0o755))
	for _, d := range []string{"proc", "sys", "dev", "tmp"} {
		require.NoError(t, os.MkdirAll(filepath.Join(rootfs, d), 0o755))
	}
	data, err := os.ReadFile(busybox)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(bin, "busybox"), data, 0o755))
	for _, applet := range []string{"sh", "test", "[", "stat", "echo", "cat", "grep"} {
		require.NoError(t, os.Symlink("busybox", filepath.Join(bin, applet)))
	}
}
