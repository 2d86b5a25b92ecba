package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/stretchr/testify/require"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"
)

// gpuNodePath matches a GPU's device node, not the control nodes.
var gpuNodePath = regexp.MustCompile(`^/dev/nvidia([0-9]+)$`)

// controlNodes are the spec-wide nodes every GPU container receives.
var controlNodes = []string{"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"}

// gpuMinors maps every GPU UUID in the CDI spec to the minor of its
// /dev/nvidia<N> node, and checks on the way that the index devices agree:
// on the simulated dgxa100 the minor equals the index.
func gpuMinors(t *testing.T, cache *cdi.Cache, uuids []string) map[string]int {
	t.Helper()
	minors := map[string]int{}
	for _, uuid := range uuids {
		dev := cache.GetDevice(cdiName(uuid))
		require.NotNil(t, dev, "CDI device %s missing", cdiName(uuid))
		nodes := dev.ContainerEdits.DeviceNodes
		require.Len(t, nodes, 1, "GPU %s should carry exactly its own node", uuid)
		m := gpuNodePath.FindStringSubmatch(nodes[0].Path)
		require.NotNil(t, m, "GPU %s node path %q", uuid, nodes[0].Path)
		minor, _ := strconv.Atoi(m[1])
		require.Equal(t, "c", nodes[0].Type, "GPU %s node type", uuid)
		require.Equal(t, int64(nvidiaMajor), nodes[0].Major, "GPU %s node major", uuid)
		require.Equal(t, int64(minor), nodes[0].Minor, "GPU %s node minor vs path %s", uuid, nodes[0].Path)
		minors[uuid] = minor

		byIndex := cache.GetDevice(fmt.Sprintf("%s=%d", cdiKind, minor))
		require.NotNil(t, byIndex, "no CDI device by index %d for GPU %s", minor, uuid)
		require.Equal(t, nodes, byIndex.ContainerEdits.DeviceNodes, "index device %d differs from %s", minor, uuid)
	}
	require.Len(t, minors, len(uuids))
	seen := map[int]bool{}
	for _, m := range minors {
		require.False(t, seen[m], "two GPUs share minor %d", m)
		seen[m] = true
	}
	return minors
}

// TestCDIInjection checks the CDI spec as containerd reads it, then injects an
// allocation into an OCI spec the way containerd does for CdiDevices.
func TestCDIInjection(t *testing.T) {
	ctx, _ := testContext(t)
	s := startStack(ctx, t)
	ids := deviceIDs(s.devices)
	specPath := filepath.Join(s.opts.cdiDir, cdiSpecFile)

	t.Run("spec is written before the plugin registers", func(t *testing.T) {
		// Otherwise a pod admitted right after registration fails to start:
		// the runtime cannot resolve its CDI device.
		require.Equal(t, []bool{true}, s.kubelet.specWrittenBeforeRegistering())
	})

	t.Run("spec file is world-readable", func(t *testing.T) {
		fi, err := os.Stat(specPath)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o644), fi.Mode().Perm())
	})

	t.Run("spec uses the minimum cdiVersion it needs", func(t *testing.T) {
		data, err := os.ReadFile(specPath)
		require.NoError(t, err)
		raw, err := cdi.ParseSpec(data)
		require.NoError(t, err)
		require.Equal(t, cdiKind, raw.Kind)
		minimum, err := cdispecs.MinimumRequiredVersion(raw)
		require.NoError(t, err)
		require.Equal(t, minimum, raw.Version)
		require.NotEqual(t, cdispecs.CurrentVersion, raw.Version,
			"containerd < 2.3 rejects cdiVersion %s", cdispecs.CurrentVersion)
	})

	cache, err := cdi.NewCache(cdi.WithSpecDirs(s.opts.cdiDir), cdi.WithAutoRefresh(false))
	require.NoError(t, err)
	require.Empty(t, cache.GetErrors(), "the CDI library rejects the spec")

	t.Run("devices by UUID and by index", func(t *testing.T) {
		var want []string
		for i, id := range ids {
			want = append(want, cdiName(id), fmt.Sprintf("%s=%d", cdiKind, i))
		}
		require.ElementsMatch(t, want, cache.ListDevices())
		gpuMinors(t, cache, ids)
	})

	t.Run("injection gives exactly the allocated GPUs", func(t *testing.T) {
		minors := gpuMinors(t, cache, ids)
		allocated := []string{ids[2], ids[5]}
		resp := allocate(ctx, t, s.client, allocated...)
		spec := defaultOCISpec(t.TempDir(), "true")
		unresolved, err := cache.InjectDevices(spec, cdiNames(resp.CdiDevices)...)
		require.NoError(t, err, "unresolved: %v", unresolved)

		var wantGPUs []string
		for _, id := range allocated {
			wantGPUs = append(wantGPUs, fmt.Sprintf("/dev/nvidia%d", minors[id]))
		}
		requireInjectedDevices(t, spec, wantGPUs)
		require.Contains(t, spec.Process.Env, "NVIDIA_VISIBLE_DEVICES=void")
	})
}

// requireInjectedDevices asserts that spec's linux.devices are exactly the
// given GPU nodes plus the control nodes, each with a cgroup allow rule.
func requireInjectedDevices(t *testing.T, spec *oci.Spec, wantGPUs []string) {
	t.Helper()
	require.NotNil(t, spec.Linux)
	got := map[string]oci.LinuxDevice{}
	for _, d := range spec.Linux.Devices {
		got[d.Path] = d
	}
	var paths []string
	for p := range got {
		paths = append(paths, p)
	}
	require.ElementsMatch(t, append(append([]string{}, wantGPUs...), controlNodes...), paths)

	for _, p := range wantGPUs {
		d := got[p]
		minor, _ := strconv.Atoi(strings.TrimPrefix(p, "/dev/nvidia"))
		require.Equal(t, "c", d.Type, p)
		require.Equal(t, int64(nvidiaMajor), d.Major, p)
		require.Equal(t, int64(minor), d.Minor, p)
	}
	ctl := got["/dev/nvidiactl"]
	require.Equal(t, "c", ctl.Type)
	require.Equal(t, int64(nvidiaMajor), ctl.Major)
	require.Equal(t, int64(255), ctl.Minor)
	for _, p := range []string{"/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} {
		require.Equal(t, "c", got[p].Type, p)
		require.NotZero(t, got[p].Major, p)
	}

	// Every injected node must also be allowed in the devices cgroup, or
	// runc would create it and the container still could not open it.
	require.NotNil(t, spec.Linux.Resources)
	for _, d := range spec.Linux.Devices {
		require.True(t, cgroupAllows(spec.Linux.Resources.Devices, d), "no cgroup allow rule for %s", d.Path)
	}
}

// cgroupAllows evaluates the device cgroup rules the way runc does: the last
// matching rule wins.
func cgroupAllows(rules []oci.LinuxDeviceCgroup, d oci.LinuxDevice) bool {
	allowed := false
	for _, r := range rules {
		if r.Type != "" && r.Type != "a" && r.Type != d.Type {
			continue
		}
		if r.Major != nil && *r.Major != d.Major {
			continue
		}
		if r.Minor != nil && *r.Minor != d.Minor {
			continue
		}
		if !strings.Contains(r.Access, "r") && r.Allow {
			continue
		}
		allowed = r.Allow
	}
	return allowed
}
