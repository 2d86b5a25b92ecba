package gpu_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/gpu"
)

func TestHostDeviceNode(t *testing.T) {
	root := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "dev"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "dev", "nvidia0"), nil, 0o644))

	tests := map[string]struct {
		root, path string
		want       gpu.DeviceNode
		wantErr    string
		wantIs     error
	}{
		"regular file":         {root: root, path: "/dev/nvidia0", wantErr: "not a character device"},
		"directory":            {root: root, path: "/dev", wantErr: "not a character device"},
		"missing":              {root: root, path: "/dev/nvidiactl", wantIs: fs.ErrNotExist},
		"real dev null":        {root: "/", path: "/dev/null", want: gpu.DeviceNode{Path: "/dev/null", HostPath: "/dev/null", Major: 1, Minor: 3}},
		"empty root means /":   {root: "", path: "/dev/null", want: gpu.DeviceNode{Path: "/dev/null", HostPath: "/dev/null", Major: 1, Minor: 3}},
		"host path under root": {root: root, path: "/dev/nvidia9", wantErr: filepath.Join(root, "dev/nvidia9")},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := gpu.NewHost(tc.root).DeviceNode(tc.path)
			switch {
			case tc.wantIs != nil:
				require.ErrorIs(t, err, tc.wantIs)
			case tc.wantErr != "":
				require.ErrorContains(t, err, tc.wantErr)
			default:
				require.NoError(t, err)
				require.Equal(t, tc.want, got)
			}
		})
	}
}

func TestHostMigCapMinors(t *testing.T) {
	root := t.TempDir()
	_, err := gpu.NewHost(root).MigCapMinors()
	require.ErrorIs(t, err, fs.ErrNotExist)

	p := filepath.Join(root, gpu.MigMinorsPath)
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.WriteFile(p, []byte("config 1\n"), 0o444))
	got, err := gpu.NewHost(root).MigCapMinors()
	require.NoError(t, err)
	require.Equal(t, "config 1\n", string(got))
}

func TestNewNVMLBackendNoDriver(t *testing.T) {
	broken := t.TempDir()
	lib := filepath.Join(broken, "usr/lib64/libnvidia-ml.so.1")
	require.NoError(t, os.MkdirAll(filepath.Dir(lib), 0o755))
	require.NoError(t, os.WriteFile(lib, []byte("not an ELF file"), 0o755))

	tests := map[string]struct {
		driverRoot string
		wantMsg    []string
	}{
		"empty driver root":  {driverRoot: t.TempDir(), wantMsg: []string{"no libnvidia-ml.so.1 in", "usr/lib64"}},
		"unloadable library": {driverRoot: broken, wantMsg: []string{lib}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := gpu.NewNVMLBackend(context.Background(), tc.driverRoot, t.TempDir())
			require.ErrorIs(t, err, gpu.ErrNoDriver)
			require.ErrorContains(t, err, "--driver-root")
			require.ErrorContains(t, err, "--simulate dgxa100")
			for _, s := range tc.wantMsg {
				require.ErrorContains(t, err, s)
			}
		})
	}
}

// TestRealHardware discovers the GPUs of this machine when it has a driver.
// It is strictly read-only: it never changes MIG mode or resets anything.
func TestRealHardware(t *testing.T) {
	ctx := context.Background()
	b, err := gpu.NewNVMLBackend(ctx, "/", "/")
	if errors.Is(err, gpu.ErrNoDriver) {
		t.Skipf("no NVIDIA driver on this machine: %v", err)
	}
	require.NoError(t, err)
	defer func() { require.NoError(t, b.Close()) }()

	inv, err := gpu.Discover(ctx, b)
	require.NoError(t, err)
	t.Logf("driver %s, CUDA %d, %d GPUs, skipped %v", inv.DriverVersion, inv.CUDADriverVersion, len(inv.GPUs), inv.Skipped)
	require.NotEmpty(t, inv.DriverVersion)
	require.NotEmpty(t, inv.GPUs)
	require.NotEmpty(t, inv.ControlNodes)
	require.Equal(t, "/dev/nvidiactl", inv.ControlNodes[0].Path)
	require.Equal(t, uint32(195), inv.ControlNodes[0].Major)
	for _, g := range inv.GPUs {
		t.Logf("%s: %s, %d MiB, bus %s, NUMA %d, minor %d, MIG capable %v enabled %v, %d MIG devices",
			&g, g.Model, g.MemoryMiB, g.PCIBusID, g.NUMANode, g.Minor, g.MigCapable, g.MigEnabled, len(g.MigDevices))
		require.Regexp(t, `^GPU-`, g.UUID)
		require.NotZero(t, g.MemoryMiB)
		require.Equal(t, uint32(195), g.Node.Major)
		require.Equal(t, uint32(g.Minor), g.Node.Minor)
		require.Regexp(t, `^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f]$`, g.PCIBusID)
		for _, m := range g.MigDevices {
			t.Logf("  MIG %d %s %s GI %d CI %d caps %v err %v", m.Index, m.UUID, m.Profile, m.GI, m.CI, m.CapNodes, m.CapErr)
			require.Regexp(t, `^MIG-`, m.UUID)
			require.NotEmpty(t, m.Profile)
		}
	}
}
