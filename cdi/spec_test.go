package cdi

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2/ktesting"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpublocks/gpublocks/gpu"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

// buildTestSpec builds the spec for testInventory with GPUs 0 and 1 offered
// and debianDriver as the driver. The driver files' Root is set to
// /driver-root so the golden file does not depend on the temp dir.
func buildTestSpec(t *testing.T) (*specs.Spec, []Omission, DriverFiles) {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	root := t.TempDir()
	makeTree(t, root, debianDriver)
	files, err := findDriverFiles(ctx, root, "amd64")
	require.NoError(t, err)
	golden := files
	golden.Root = "/driver-root"
	spec, omitted, err := BuildSpec(ctx, SpecInput{
		Inventory: testInventory(),
		Offered:   []string{uuidGPU1, uuidGPU0},
		Driver:    golden,
	})
	require.NoError(t, err)
	return spec, omitted, files
}

func TestBuildSpecGolden(t *testing.T) {
	spec, omitted, _ := buildTestSpec(t)

	data, err := Marshal(spec)
	require.NoError(t, err)
	golden := filepath.Join("testdata", "spec.golden.yaml")
	if *update {
		require.NoError(t, os.WriteFile(golden, data, 0o644))
	}
	want, err := os.ReadFile(golden)
	require.NoError(t, err)
	require.Equal(t, string(want), string(data), "run go test ./cdi -run Golden -update to accept")

	min, err := specs.MinimumRequiredVersion(spec)
	require.NoError(t, err)
	require.Equal(t, min, spec.Version)
	require.NotEqual(t, specs.CurrentVersion, spec.Version)

	require.Len(t, omitted, 1)
	require.Equal(t, uuidMIG2, omitted[0].UUID)
	require.Equal(t, "2:2", omitted[0].Name)
	require.ErrorIs(t, omitted[0].Err, ErrDeviceOmitted)
	require.ErrorIs(t, omitted[0].Err, errNoCap)
}

func TestBuildSpecOmissions(t *testing.T) {
	tests := map[string]struct {
		offered     []string
		wantOmitted map[string]error // uuid → reason
		wantDevices []string
	}{
		"nothing offered, MIG devices still published": {
			wantOmitted: map[string]error{uuidMIG2: errNoCap},
			wantDevices: []string{uuidMIG0, "2:0", uuidMIG1, "2:1"},
		},
		"MIG-enabled GPU offered whole (strategy none) gets its node": {
			offered:     []string{uuidGPU2},
			wantOmitted: map[string]error{uuidMIG2: errNoCap},
			wantDevices: []string{uuidGPU2, "2", uuidMIG0, "2:0", uuidMIG1, "2:1"},
		},
		"unknown GPU offered": {
			offered:     []string{"GPU-gone", uuidGPU1},
			wantOmitted: map[string]error{"GPU-gone": ErrUnknownGPU, uuidMIG2: errNoCap},
			wantDevices: []string{uuidGPU1, "1", uuidMIG0, "2:0", uuidMIG1, "2:1"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			spec, omitted, err := BuildSpec(ctx, SpecInput{Inventory: testInventory(), Offered: tc.offered})
			require.NoError(t, err)
			var names []string
			for _, d := range spec.Devices {
				names = append(names, d.Name)
			}
			require.Equal(t, tc.wantDevices, names)
			require.Len(t, omitted, len(tc.wantOmitted))
			for _, o := range omitted {
				require.ErrorIs(t, o.Err, ErrDeviceOmitted)
				require.ErrorIs(t, o.Err, tc.wantOmitted[o.UUID], o.UUID)
			}
		})
	}
}

func TestBuildSpecHostPath(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	inv := testInventory()
	inv.GPUs[1].Node.HostPath = "/host/dev/nvidia0"
	spec, _, err := BuildSpec(ctx, SpecInput{Inventory: inv, Offered: []string{uuidGPU0}})
	require.NoError(t, err)
	// The runtime sees the host's /dev, not this process's --dev-root view.
	require.Empty(t, spec.Devices[0].ContainerEdits.DeviceNodes[0].HostPath)
	require.Equal(t, "/dev/nvidia0", spec.Devices[0].ContainerEdits.DeviceNodes[0].Path)
	require.Empty(t, spec.ContainerEdits.DeviceNodes[0].HostPath)
	require.Equal(t, "0.5.0", spec.Version)
}

// TestBuildSpecAbsentNodes: nodes the driver has not created on the host yet
// (described from /proc/devices) are published like any other, fully
// specified, and a runtime injects them without looking at the host.
func TestBuildSpecAbsentNodes(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	inv := testInventory()
	absent := func(path string, major, minor uint32) gpu.DeviceNode {
		return gpu.DeviceNode{Path: path, Major: major, Minor: minor, Absent: true}
	}
	inv.ControlNodes[2] = absent("/dev/nvidia-uvm-tools", 510, 1)
	inv.GPUs[0].MigDevices[0].CapNodes[1] = absent("/dev/nvidia-caps/nvidia-cap742", 508, 742)
	spec, omitted, err := BuildSpec(ctx, SpecInput{Inventory: inv})
	require.NoError(t, err)
	require.Len(t, omitted, 1, "only the MIG device without caps")
	require.Equal(t, &specs.DeviceNode{Path: "/dev/nvidia-uvm-tools", Type: "c", Major: 510, Minor: 1}, spec.ContainerEdits.DeviceNodes[2])

	dir := t.TempDir()
	w, err := NewWriter(dir, DefaultKind)
	require.NoError(t, err)
	_, err = w.Write(ctx, spec)
	require.NoError(t, err)
	cache := loadCache(t, dir)
	ociSpec := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
	_, err = cache.InjectDevices(ociSpec, DefaultKind.QualifiedName(uuidMIG1))
	require.NoError(t, err)
	var got []string
	for _, d := range ociSpec.Linux.Devices {
		got = append(got, fmt.Sprintf("%s c %d:%d", d.Path, d.Major, d.Minor))
	}
	require.Contains(t, got, "/dev/nvidia-caps/nvidia-cap742 c 508:742")
	require.Contains(t, got, "/dev/nvidia-uvm-tools c 510:1")
}

func TestBuildSpecInvalidKind(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	_, _, err := BuildSpec(ctx, SpecInput{Kind: Kind{Vendor: "gpublocks.io", Class: "g/pu"}, Inventory: testInventory()})
	require.ErrorIs(t, err, ErrInvalidKind)
}

// TestInjectDevices injects one device into an OCI spec as containerd does
// and checks the container gets that device's nodes, the control nodes and
// the driver, and nothing of any other GPU.
func TestInjectDevices(t *testing.T) {
	spec, _, _ := buildTestSpec(t)
	_, ctx := ktesting.NewTestContext(t)
	dir := t.TempDir()
	w, err := NewWriter(dir, DefaultKind)
	require.NoError(t, err)
	_, err = w.Write(ctx, spec)
	require.NoError(t, err)
	cache, err := cdiapi.NewCache(cdiapi.WithSpecDirs(dir), cdiapi.WithAutoRefresh(false))
	require.NoError(t, err)
	require.Empty(t, cache.GetErrors())

	control := []string{"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"}
	tests := map[string]struct {
		device    string
		wantNodes []string
		wantErr   bool
	}{
		"GPU by UUID":         {device: uuidGPU1, wantNodes: []string{"/dev/nvidia1"}},
		"GPU by index":        {device: "0", wantNodes: []string{"/dev/nvidia0"}},
		"MIG device by UUID":  {device: uuidMIG1, wantNodes: []string{"/dev/nvidia2", "/dev/nvidia-caps/nvidia-cap741", "/dev/nvidia-caps/nvidia-cap742"}},
		"MIG device by index": {device: "2:0", wantNodes: []string{"/dev/nvidia2", "/dev/nvidia-caps/nvidia-cap282", "/dev/nvidia-caps/nvidia-cap283"}},
		"MIG-enabled GPU":     {device: uuidGPU2, wantErr: true},
		"MIG device w/o caps": {device: uuidMIG2, wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ociSpec := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
			unresolved, err := cache.InjectDevices(ociSpec, DefaultKind.QualifiedName(tc.device))
			if tc.wantErr {
				require.Error(t, err)
				require.Equal(t, []string{DefaultKind.QualifiedName(tc.device)}, unresolved)
				return
			}
			require.NoError(t, err)
			require.Empty(t, unresolved)

			var paths []string
			for _, d := range ociSpec.Linux.Devices {
				paths = append(paths, d.Path)
				require.Equal(t, "c", d.Type, d.Path)
				require.NotZero(t, d.Major, d.Path)
			}
			require.ElementsMatch(t, append(append([]string{}, tc.wantNodes...), control...), paths)

			var allowed int
			for _, r := range ociSpec.Linux.Resources.Devices {
				require.True(t, r.Allow)
				require.Equal(t, "rwm", r.Access)
				allowed++
			}
			require.Equal(t, len(paths), allowed, "one cgroup rule per node, no more")

			require.Contains(t, ociSpec.Process.Env, "NVIDIA_VISIBLE_DEVICES=void")
			var mounts []string
			for _, m := range ociSpec.Mounts {
				mounts = append(mounts, m.Destination)
				require.Contains(t, m.Options, "ro")
			}
			require.Contains(t, mounts, "/usr/lib/x86_64-linux-gnu/libcuda.so.1")
			require.Contains(t, mounts, "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1")
			require.Contains(t, mounts, "/usr/bin/nvidia-smi")
		})
	}
}

func TestValidateSpec(t *testing.T) {
	good := func() *specs.Spec {
		return &specs.Spec{
			Version: "0.5.0", Kind: "gpublocks.io/gpu",
			Devices: []specs.Device{{Name: "0", ContainerEdits: specs.ContainerEdits{
				DeviceNodes: []*specs.DeviceNode{{Path: "/dev/nvidia0", Type: "c", Major: 195}},
			}}},
		}
	}
	tests := map[string]struct {
		mutate func(*specs.Spec)
		ok     bool
	}{
		"valid":             {mutate: func(*specs.Spec) {}, ok: true},
		"no devices":        {mutate: func(s *specs.Spec) { s.Devices = nil }},
		"version too low":   {mutate: func(s *specs.Spec) { s.Version = "0.3.0" }},
		"bad version":       {mutate: func(s *specs.Spec) { s.Version = "9.9.9" }},
		"bad kind":          {mutate: func(s *specs.Spec) { s.Kind = "gpu" }},
		"bad device name":   {mutate: func(s *specs.Spec) { s.Devices[0].Name = "a/b" }},
		"duplicate device":  {mutate: func(s *specs.Spec) { s.Devices = append(s.Devices, s.Devices[0]) }},
		"bad env":           {mutate: func(s *specs.Spec) { s.ContainerEdits.Env = []string{"=x"} }},
		"bad node type":     {mutate: func(s *specs.Spec) { s.Devices[0].ContainerEdits.DeviceNodes[0].Type = "x" }},
		"mount without src": {mutate: func(s *specs.Spec) { s.ContainerEdits.Mounts = []*specs.Mount{{ContainerPath: "/x"}} }},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := good()
			tc.mutate(s)
			err := ValidateSpec(s)
			if tc.ok {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalidSpec)
		})
	}
}

func TestBuildSpecNoInventory(t *testing.T) {
	_, err := func() (*specs.Spec, error) {
		s, _, err := BuildSpec(context.Background(), SpecInput{})
		return s, err
	}()
	require.ErrorIs(t, err, ErrInvalidSpec)
}
