package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

// migCapPath matches a MIG access capability node.
var migCapPath = regexp.MustCompile(`^/dev/nvidia-caps/nvidia-cap([0-9]+)$`)

// migIndexName matches the CDI name of a MIG device by index, <gpu>:<mig>.
var migIndexName = regexp.MustCompile(`^([0-9]+):([0-9]+)$`)

// migMinor decodes a capability minor the way the driver lays out
// /proc/driver/nvidia-caps/mig-minors: 1 and 2 are config and monitor, then
// per GPU 15 GPU instances of 9 entries each, "gpu<g>/gi<i>/access" followed
// by "gpu<g>/gi<i>/ci<c>/access" for c = 0…7. ci is -1 for a GI's own
// access capability.
func migMinor(n int) (gpu, gi, ci int) {
	const perGI, perGPU = 9, 15 * 9
	gpu, rest := (n-3)/perGPU, (n-3)%perGPU
	gi, ci = rest/perGI, rest%perGI-1
	return gpu, gi, ci
}

// migParent returns the index of the GPU a MIG device lives on, read from
// the spec's <gpu>:<mig> alias that carries the same edits as the UUID.
func migParent(t *testing.T, cache *cdi.Cache, uuid string) int {
	t.Helper()
	dev := cache.GetDevice(cdiName(uuid))
	require.NotNil(t, dev, "CDI device %s missing", cdiName(uuid))
	parent := -1
	for _, name := range cache.ListDevices() {
		m := migIndexName.FindStringSubmatch(strings.TrimPrefix(name, cdiKind+"="))
		if m == nil {
			continue
		}
		alias := cache.GetDevice(name)
		if alias != nil && reflect.DeepEqual(alias.ContainerEdits.DeviceNodes, dev.ContainerEdits.DeviceNodes) {
			require.Equal(t, -1, parent, "two index aliases for %s", uuid)
			parent, _ = strconv.Atoi(m[1])
		}
	}
	require.NotEqual(t, -1, parent, "no <gpu>:<mig> CDI device for %s", uuid)
	return parent
}

// requireInjectedMIG asserts that spec's linux.devices are exactly what the
// MIG devices need: each parent's /dev/nvidia<N> (195:N), each device's GPU
// instance and compute instance access capabilities (on that parent, in the
// mig-minors layout), and the control nodes, each allowed in the devices
// cgroup. parents maps every MIG UUID to its GPU index.
func requireInjectedMIG(t *testing.T, spec *oci.Spec, parents map[string]int) {
	t.Helper()
	require.NotNil(t, spec.Linux)
	got := map[string]oci.LinuxDevice{}
	for _, d := range spec.Linux.Devices {
		_, dup := got[d.Path]
		require.False(t, dup, "%s injected twice", d.Path)
		got[d.Path] = d
	}

	want := map[string]bool{}
	for _, p := range controlNodes {
		want[p] = true
	}
	parentGPUs := map[int]bool{}
	for _, gpu := range parents {
		parentGPUs[gpu] = true
		want[fmt.Sprintf("/dev/nvidia%d", gpu)] = true
	}
	type instance struct{ gpu, gi int }
	gis := map[instance]bool{}  // GPU instances whose access cap was injected
	cis := map[instance][]int{} // compute instances per GPU instance
	capMajor := int64(-1)
	for path, d := range got {
		if m := gpuNodePath.FindStringSubmatch(path); m != nil {
			minor, _ := strconv.Atoi(m[1])
			require.Equal(t, "c", d.Type, path)
			require.Equal(t, int64(nvidiaMajor), d.Major, path)
			require.Equal(t, int64(minor), d.Minor, path)
			continue
		}
		m := migCapPath.FindStringSubmatch(path)
		if m == nil {
			continue // control nodes, or something unexpected: the set comparison below says
		}
		n, _ := strconv.Atoi(m[1])
		require.Equal(t, "c", d.Type, path)
		require.Equal(t, int64(n), d.Minor, "%s minor", path)
		require.NotZero(t, d.Major, "%s major", path)
		if capMajor >= 0 {
			require.Equal(t, capMajor, d.Major, "capabilities with different majors")
		}
		capMajor = d.Major
		gpu, gi, ci := migMinor(n)
		require.GreaterOrEqual(t, n, 3, "%s is not a GPU or compute instance capability", path)
		require.True(t, parentGPUs[gpu],
			"%s belongs to GPU %d, which holds none of the allocated MIG devices", path, gpu)
		if ci < 0 {
			gis[instance{gpu, gi}] = true
		} else {
			cis[instance{gpu, gi}] = append(cis[instance{gpu, gi}], ci)
		}
		want[path] = true
	}
	require.ElementsMatch(t, keys(want), keys(got), "injected device nodes")

	// Each MIG device is one GPU instance with one compute instance: two
	// capabilities per device, the CI inside its own GI.
	require.Len(t, gis, len(parents), "GPU instance capabilities")
	for inst, c := range cis {
		require.True(t, gis[inst], "compute instance capability of GPU %d GI %d without its GPU instance", inst.gpu, inst.gi)
		require.Len(t, c, 1, "GPU %d GI %d", inst.gpu, inst.gi)
	}
	require.Len(t, cis, len(parents), "compute instance capabilities")

	require.NotNil(t, spec.Linux.Resources)
	for _, d := range spec.Linux.Devices {
		require.True(t, cgroupAllows(spec.Linux.Resources.Devices, d), "no cgroup allow rule for %s", d.Path)
	}
}

// injectAllocation injects the CDI devices of an allocation into a fresh OCI
// spec, as containerd does for CdiDevices.
func injectAllocation(t *testing.T, cache *cdi.Cache, names []string) *oci.Spec {
	t.Helper()
	spec := defaultOCISpec(t.TempDir(), "true")
	unresolved, err := cache.InjectDevices(spec, names...)
	require.NoError(t, err, "unresolved: %v", unresolved)
	require.Contains(t, spec.Process.Env, "NVIDIA_VISIBLE_DEVICES=void")
	return spec
}

// cdiCache loads the CDI spec directory as containerd would and requires
// that the CDI library accepts every spec in it.
func cdiCache(t *testing.T, dir string) *cdi.Cache {
	t.Helper()
	cache, err := cdi.NewCache(cdi.WithSpecDirs(dir), cdi.WithAutoRefresh(false))
	require.NoError(t, err)
	require.Empty(t, cache.GetErrors(), "the CDI library rejects the spec")
	return cache
}

// admitMIG admits a pod asking for MIG devices and returns their UUIDs. The
// CDI devices must name exactly the MIG devices the kubelet checkpointed.
func (n *kubeletNode) admitMIG(t *testing.T, pod *v1.Pod) []string {
	t.Helper()
	a := n.admit(t, pod)
	var want []string
	for _, id := range a.ids {
		require.True(t, strings.HasPrefix(id, "MIG-"), "device ID %q is not a MIG UUID", id)
		want = append(want, cdiName(id))
	}
	require.ElementsMatch(t, want, a.cdi)
	return a.ids
}

// TestMIGMixed serves the dgxa100-mig preset (GPU 0: 3g.40gb + 2g.20gb +
// 2× 1g.10gb, GPU 1: 7× 1g.10gb, GPUs 2-7 MIG off) with the default
// config, migStrategy mixed, to the kubelet's device manager.
func TestMIGMixed(t *testing.T) {
	n := startKubeletNode(t, func(o *pluginOptions) { o.simulate = "dgxa100-mig" })
	want := map[string]int64{
		"nvidia.com/mig-1g.10gb": 9,
		"nvidia.com/mig-2g.20gb": 1,
		"nvidia.com/mig-3g.40gb": 1,
		resourceName:             6,
	}

	t.Run("capacity per profile is exact", func(t *testing.T) {
		took := n.waitForCapacity(t, want, registerTimeout)
		t.Logf("capacity %v after %s", want, took)
		capacity, _ := n.capacities()
		require.Equal(t, want, capacity, "no other resource, no GPU counted twice")
		n.plugin.requireRunning(t)
	})
	cache := cdiCache(t, n.opts.cdiDir)

	tests := []struct {
		name     string
		resource v1.ResourceName
		count    int64
		parents  []int // GPUs the devices may come from
	}{
		{name: "one 1g.10gb", resource: "nvidia.com/mig-1g.10gb", count: 1, parents: []int{0, 1}},
		{name: "two more 1g.10gb", resource: "nvidia.com/mig-1g.10gb", count: 2, parents: []int{0, 1}},
		{name: "the 2g.20gb", resource: "nvidia.com/mig-2g.20gb", count: 1, parents: []int{0}},
		{name: "the 3g.40gb", resource: "nvidia.com/mig-3g.40gb", count: 1, parents: []int{0}},
	}
	var held []string
	for i, tc := range tests {
		t.Run(tc.name+": parent GPU and caps only", func(t *testing.T) {
			uuids := n.admitMIG(t, resourcePod(fmt.Sprintf("mig-%d", i), tc.resource, tc.count))
			require.Len(t, uuids, int(tc.count))
			for _, u := range uuids {
				require.NotContains(t, held, u, "MIG device handed out twice")
			}
			held = append(held, uuids...)

			parents := map[string]int{}
			for _, u := range uuids {
				parents[u] = migParent(t, cache, u)
				require.Contains(t, tc.parents, parents[u], "%s on GPU %d", u, parents[u])
			}
			spec := injectAllocation(t, cache, cdiNamesOf(uuids))
			requireInjectedMIG(t, spec, parents)
		})
	}

	t.Run("whole GPUs are only the MIG-disabled ones", func(t *testing.T) {
		names := n.admitGPUs(t, gpuPod("whole", 6))
		var uuids []string
		for _, name := range names {
			uuids = append(uuids, strings.TrimPrefix(name, cdiKind+"="))
		}
		minors := gpuMinors(t, cache, uuids)
		var nodes []string
		for _, m := range minors {
			nodes = append(nodes, fmt.Sprintf("/dev/nvidia%d", m))
		}
		require.ElementsMatch(t, []string{
			"/dev/nvidia2", "/dev/nvidia3", "/dev/nvidia4", "/dev/nvidia5", "/dev/nvidia6", "/dev/nvidia7",
		}, nodes)
		requireInjectedDevices(t, injectAllocation(t, cache, names), nodes)
	})
}

// TestMIGSingle serves a uniform MIG layout from a --simulate file (two
// A100-80GB, each 7× 1g.10gb) with migStrategy single: every MIG device is
// an nvidia.com/gpu.
func TestMIGSingle(t *testing.T) {
	dir := shortTempDir(t)
	simFile := writeFile(t, dir, "sim.yaml", `gpus:
  - model: A100-SXM4-80GB
    count: 2
    mig: [1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb]
`)
	configFile := writeFile(t, dir, "config.yaml", "version: v1\nmigStrategy: single\n")
	n := startKubeletNode(t, func(o *pluginOptions) {
		o.simulate = simFile
		o.config = configFile
	})
	want := map[string]int64{resourceName: 14}

	t.Run("nvidia.com/gpu counts the MIG devices", func(t *testing.T) {
		took := n.waitForCapacity(t, want, registerTimeout)
		t.Logf("capacity %v after %s", want, took)
		capacity, _ := n.capacities()
		require.Equal(t, want, capacity, "no mig-* resource with strategy single")
		n.plugin.requireRunning(t)
	})

	t.Run("a pod asking for 2 GPUs gets 2 MIG devices", func(t *testing.T) {
		cache := cdiCache(t, n.opts.cdiDir)
		uuids := n.admitMIG(t, gpuPod("single", 2))
		require.Len(t, uuids, 2)
		parents := map[string]int{}
		for _, u := range uuids {
			parents[u] = migParent(t, cache, u)
		}
		requireInjectedMIG(t, injectAllocation(t, cache, cdiNamesOf(uuids)), parents)
	})
}

// writeFile writes content to dir/name and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
	return path
}

// cdiNamesOf returns the fully qualified CDI names of device UUIDs.
func cdiNamesOf(uuids []string) []string {
	names := make([]string, 0, len(uuids))
	for _, u := range uuids {
		names = append(names, cdiName(u))
	}
	return names
}

func keys[K comparable, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
