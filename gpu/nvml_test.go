package gpu_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

func TestHostCharMajor(t *testing.T) {
	const devices = `Character devices:
  1 mem
  4 /dev/vc/0
195 nvidia-frontend
235 nvidia-uvm
511 nvidia-caps
236 nvidia-caps-imex-channels

Block devices:
  7 loop
259 blkext
`
	tests := map[string]struct {
		content string // "" leaves the file out
		name    string
		want    uint32
		wantIs  error
		wantErr string
	}{
		"uvm":                   {content: devices, name: "nvidia-uvm", want: 235},
		"caps":                  {content: devices, name: "nvidia-caps", want: 511},
		"name with a slash":     {content: devices, name: "/dev/vc/0", want: 4},
		"not loaded":            {content: devices, name: "nvidia-modeset", wantIs: fs.ErrNotExist, wantErr: "is its kernel module loaded"},
		"block devices ignored": {content: devices, name: "blkext", wantIs: fs.ErrNotExist},
		"no file":               {name: "nvidia-uvm", wantIs: fs.ErrNotExist},
		"bad major":             {content: "Character devices:\nx nvidia-uvm\n", name: "nvidia-uvm", wantErr: "bad major"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			if tc.content != "" {
				makeTree(t, root, map[string]string{gpu.ProcDevicesPath: tc.content})
			}
			got, err := gpu.NewHost(root).CharMajor(tc.name)
			if tc.wantIs == nil && tc.wantErr == "" {
				require.NoError(t, err)
				require.Equal(t, tc.want, got)
				return
			}
			if tc.wantIs != nil {
				require.ErrorIs(t, err, tc.wantIs)
			}
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
			}
			require.ErrorContains(t, err, filepath.Join(root, gpu.ProcDevicesPath))
		})
	}
}

func TestNewNVMLBackendNoDriver(t *testing.T) {
	broken := t.TempDir()
	lib := filepath.Join(broken, "usr/lib64/libnvidia-ml.so.1")
	require.NoError(t, os.MkdirAll(filepath.Dir(lib), 0o755))
	require.NoError(t, os.WriteFile(lib, []byte("not an ELF file"), 0o755))

	// A driver outside the root, reachable only through an absolute link in
	// the middle of the path: the host resolves that link inside the root.
	outside := t.TempDir()
	makeTree(t, outside, map[string]string{"lib64/libnvidia-ml.so.1": "not an ELF file"})
	escape := t.TempDir()
	makeTree(t, escape, map[string]string{"usr/local/nvidia": "->" + outside})

	tests := map[string]struct {
		driverRoot string
		wantMsg    []string
		notMsg     string
	}{
		"empty driver root":  {driverRoot: t.TempDir(), wantMsg: []string{"no libnvidia-ml.so.1 in", "usr/lib64", "usr/local/nvidia/lib64"}},
		"unloadable library": {driverRoot: broken, wantMsg: []string{lib + ": cannot be loaded"}},
		"absolute link out of the root": {
			driverRoot: escape,
			wantMsg:    []string{"no libnvidia-ml.so.1 in"},
			notMsg:     outside,
		},
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
			if tc.notMsg != "" {
				require.NotContains(t, err.Error(), tc.notMsg)
			}
		})
	}
}

func TestKernelModuleVersion(t *testing.T) {
	tests := map[string]struct {
		content string // "" leaves the file out
		want    string
	}{
		"proprietary module": {
			content: "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
			want:    "550.54.15",
		},
		"open module": {
			content: "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16-I3-B03-4-3)  Thu Jan 23 22:50:36 UTC 2025\n",
			want:    "570.86.15",
		},
		"arm, two-part version": {
			content: "NVRM version: NVIDIA UNIX aarch64 Kernel Module  560.35  Fri Aug 16 21:30:40 UTC 2024\n",
			want:    "560.35",
		},
		"no version line": {content: "GCC version: 12\n"},
		"no file":         {},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			if tc.content != "" {
				makeTree(t, root, map[string]string{gpu.KernelVersionPath: tc.content})
			}
			require.Equal(t, tc.want, gpu.KernelModuleVersion(root))
		})
	}
}

// fakeNVMLEnv makes the test binary, re-run as a child, load a fake NVML.
const fakeNVMLEnv = "GPUBLOCKS_TEST_FAKE_NVML"

// TestNewNVMLBackendFakeLibrary builds two fake NVML libraries, one whose
// nvmlInit fails and one whose nvmlInit succeeds, and checks which one is
// used. Loading a library is irreversible in a process (go-nvml binds every
// call to the first one loaded), so each case runs in a child process.
func TestNewNVMLBackendFakeLibrary(t *testing.T) {
	if spec := os.Getenv(fakeNVMLEnv); spec != "" {
		driverRoot, devRoot, _ := strings.Cut(spec, "|")
		b, err := gpu.NewNVMLBackend(context.Background(), driverRoot, devRoot)
		if err != nil {
			fmt.Println("RESULT error:", err)
			return
		}
		fmt.Println("RESULT loaded:", b.Name())
		return
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not found: cannot build fake NVML libraries")
	}
	src := filepath.Join(t.TempDir(), "nvml.c")
	require.NoError(t, os.WriteFile(src, []byte(`
int nvmlInit_v2(void) { return INIT_RET; }
int nvmlShutdown(void) { return 0; }
const char *nvmlErrorString(int r) { return r == 9 ? "Driver Not Loaded" : "Unknown Error"; }
`), 0o644))
	driverRoot := t.TempDir()
	build := func(dir, version string, ret int) string {
		p := filepath.Join(driverRoot, dir, "libnvidia-ml.so."+version)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		out, err := exec.Command("gcc", "-shared", "-fPIC", fmt.Sprintf("-DINIT_RET=%d", ret),
			"-Wl,-soname,libnvidia-ml.so.1", "-o", p, src).CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.NoError(t, os.Symlink("libnvidia-ml.so."+version, filepath.Join(driverRoot, dir, "libnvidia-ml.so.1")))
		return p
	}
	failing := build("usr/lib64", "535.104.05", 9) // NVML_ERROR_DRIVER_NOT_LOADED
	working := build("usr/local/nvidia/lib64", "550.54.15", 0)

	tests := map[string]struct {
		kernel string // content of proc/driver/nvidia/version; "" for none
		want   []string
	}{
		"first loadable library is used even when its init fails": {
			want: []string{"RESULT error:", "nvidia driver not available", failing + " loaded but did not initialise",
				"Driver Not Loaded", "not tried", working, "--driver-root"},
		},
		"kernel module version picks the matching library": {
			kernel: "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n",
			want:   []string{"RESULT loaded:", "driver root " + driverRoot},
		},
		"kernel module matching none: first library, version in the error": {
			kernel: "NVRM version: NVIDIA UNIX x86_64 Kernel Module  560.35.03  Fri Aug 16 21:39:15 UTC 2024\n",
			want:   []string{"RESULT error:", failing + " loaded but did not initialise", "kernel module 560.35.03", working},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			devRoot := t.TempDir()
			if tc.kernel != "" {
				makeTree(t, devRoot, map[string]string{gpu.KernelVersionPath: tc.kernel})
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestNewNVMLBackendFakeLibrary$", "-test.count=1")
			cmd.Env = append(os.Environ(), fakeNVMLEnv+"="+driverRoot+"|"+devRoot)
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "%s", out)
			for _, s := range tc.want {
				require.Contains(t, string(out), s)
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
	for _, n := range inv.ControlNodes {
		t.Logf("control node %s %d:%d absent %v", n.Path, n.Major, n.Minor, n.Absent)
	}
	if len(inv.ControlNodes) < 3 {
		t.Logf("UVM nodes missing and nvidia-uvm not in /proc/devices: containers cannot use CUDA until the module loads")
	}
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
