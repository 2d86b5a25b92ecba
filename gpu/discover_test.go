package gpu_test

import (
	"context"
	"io/fs"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
)

// faulty wraps a simulated backend to break one thing at a time.
type faulty struct {
	gpu.Backend
	lib  nvml.Interface
	host gpu.Host
}

func (f *faulty) NVML() nvml.Interface { return f.lib }
func (f *faulty) Host() gpu.Host       { return f.host }

// faultyLib overrides library-level calls.
type faultyLib struct {
	nvml.Interface
	count   nvml.Return
	driver  nvml.Return
	badGPU  int // GetMemoryInfo fails on this index; -1 for none
	numaErr bool
}

func (l *faultyLib) DeviceGetCount() (int, nvml.Return) {
	if l.count != nvml.SUCCESS {
		return 0, l.count
	}
	return l.Interface.DeviceGetCount()
}

func (l *faultyLib) SystemGetDriverVersion() (string, nvml.Return) {
	if l.driver != nvml.SUCCESS {
		return "", l.driver
	}
	return l.Interface.SystemGetDriverVersion()
}

func (l *faultyLib) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	d, ret := l.Interface.DeviceGetHandleByIndex(i)
	if i == l.badGPU || l.numaErr {
		return &faultyDevice{Device: d, memErr: i == l.badGPU, numaErr: l.numaErr}, ret
	}
	return d, ret
}

type faultyDevice struct {
	nvml.Device
	memErr, numaErr bool
}

func (d *faultyDevice) GetMemoryInfo() (nvml.Memory, nvml.Return) {
	if d.memErr {
		return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST
	}
	return d.Device.GetMemoryInfo()
}

func (d *faultyDevice) GetNumaNodeId() (int, nvml.Return) {
	if d.numaErr {
		return 0, nvml.ERROR_NOT_SUPPORTED
	}
	return d.Device.GetNumaNodeId()
}

// faultyHost hides device nodes and can lose the mig-minors file and
// /proc/devices entries.
type faultyHost struct {
	gpu.Host
	missing   map[string]bool
	minorsErr error
	minors    []byte
	noMajor   map[string]bool // drivers missing from /proc/devices
}

func (h *faultyHost) CharMajor(name string) (uint32, error) {
	if h.noMajor[name] {
		return 0, &fs.PathError{Op: "lookup " + name, Path: gpu.ProcDevicesPath, Err: fs.ErrNotExist}
	}
	return h.Host.CharMajor(name)
}

func (h *faultyHost) DeviceNode(path string) (gpu.DeviceNode, error) {
	if h.missing[path] {
		return gpu.DeviceNode{}, &fs.PathError{Op: "stat", Path: path, Err: fs.ErrNotExist}
	}
	return h.Host.DeviceNode(path)
}

func (h *faultyHost) MigCapMinors() ([]byte, error) {
	if h.minorsErr != nil {
		return nil, h.minorsErr
	}
	if h.minors != nil {
		return h.minors, nil
	}
	return h.Host.MigCapMinors()
}

func TestDiscoverFaults(t *testing.T) {
	tests := map[string]struct {
		lib     faultyLib
		host    faultyHost
		wantErr string // the whole discovery fails
		check   func(t *testing.T, inv *gpu.Inventory)
	}{
		"driver version unreadable": {
			lib:     faultyLib{driver: nvml.ERROR_UNKNOWN, badGPU: -1},
			wantErr: "reading driver version",
		},
		"gpu count unreadable": {
			lib:     faultyLib{count: nvml.ERROR_DRIVER_NOT_LOADED, badGPU: -1},
			wantErr: "counting GPUs",
		},
		"one gpu's nvml fails": {
			lib: faultyLib{badGPU: 2},
			check: func(t *testing.T, inv *gpu.Inventory) {
				require.Len(t, inv.GPUs, 7)
				require.Nil(t, findGPU(inv, 2))
				require.Len(t, inv.Skipped, 1)
				require.Equal(t, "GPU 2", inv.Skipped[0].Device)
				require.ErrorIs(t, inv.Skipped[0].Reason, gpu.ErrDiscovery)
				require.ErrorIs(t, inv.Skipped[0].Reason, nvml.ERROR_GPU_IS_LOST)
				require.ErrorContains(t, inv.Skipped[0].Reason, "memory info")
			},
		},
		"gpu node missing": {
			lib:  faultyLib{badGPU: -1},
			host: faultyHost{missing: map[string]bool{"/dev/nvidia0": true}},
			check: func(t *testing.T, inv *gpu.Inventory) {
				require.Len(t, inv.GPUs, 7)
				require.Nil(t, findGPU(inv, 0), "a MIG GPU without its node is not offered")
				require.Len(t, inv.Skipped, 1)
				require.ErrorIs(t, inv.Skipped[0].Reason, fs.ErrNotExist)
				require.ErrorContains(t, inv.Skipped[0].Reason, "/dev/nvidia0")
			},
		},
		"numa unsupported": {
			lib: faultyLib{badGPU: -1, numaErr: true},
			check: func(t *testing.T, inv *gpu.Inventory) {
				require.Len(t, inv.GPUs, 8)
				for _, g := range inv.GPUs {
					require.Equal(t, -1, g.NUMANode)
				}
			},
		},
		"uvm-tools not created yet": {
			lib:  faultyLib{badGPU: -1},
			host: faultyHost{missing: map[string]bool{"/dev/nvidia-uvm-tools": true}},
			check: func(t *testing.T, inv *gpu.Inventory) {
				require.Equal(t, []gpu.DeviceNode{
					{Path: "/dev/nvidiactl", HostPath: "/dev/nvidiactl", Major: sim.MajorNVIDIA, Minor: sim.MinorCtl},
					{Path: "/dev/nvidia-uvm", HostPath: "/dev/nvidia-uvm", Major: sim.MajorUVM, Minor: 0},
					{Path: "/dev/nvidia-uvm-tools", Major: sim.MajorUVM, Minor: 1, Absent: true},
				}, inv.ControlNodes)
			},
		},
		"uvm module not loaded": {
			lib: faultyLib{badGPU: -1},
			host: faultyHost{
				missing: map[string]bool{"/dev/nvidia-uvm": true, "/dev/nvidia-uvm-tools": true},
				noMajor: map[string]bool{"nvidia-uvm": true},
			},
			check: func(t *testing.T, inv *gpu.Inventory) {
				require.Len(t, inv.ControlNodes, 1)
				require.Equal(t, "/dev/nvidiactl", inv.ControlNodes[0].Path)
			},
		},
		"nvidiactl missing is not made up": {
			lib:  faultyLib{badGPU: -1},
			host: faultyHost{missing: map[string]bool{"/dev/nvidiactl": true}},
			check: func(t *testing.T, inv *gpu.Inventory) {
				require.Len(t, inv.ControlNodes, 2)
				require.Equal(t, "/dev/nvidia-uvm", inv.ControlNodes[0].Path)
			},
		},
		"mig-minors unreadable": {
			lib:  faultyLib{badGPU: -1},
			host: faultyHost{minorsErr: fs.ErrPermission},
			check: func(t *testing.T, inv *gpu.Inventory) {
				migs := allMigs(inv)
				require.Len(t, migs, 11, "devices stay listed")
				for _, m := range migs {
					require.Empty(t, m.CapNodes)
					require.ErrorIs(t, m.CapErr, gpu.ErrDiscovery)
					require.ErrorIs(t, m.CapErr, fs.ErrPermission)
					require.ErrorContains(t, m.CapErr, gpu.MigMinorsPath)
				}
			},
		},
		"mig-minors lacks an entry": {
			lib:  faultyLib{badGPU: -1},
			host: faultyHost{minors: []byte("config 1\nmonitor 2\ngpu0/gi2/access 21\ngpu0/gi2/ci0/access 22\n")},
			check: func(t *testing.T, inv *gpu.Inventory) {
				g := findGPU(inv, 0)
				require.NotNil(t, g)
				for _, m := range g.MigDevices {
					if m.GI == 2 {
						require.NoError(t, m.CapErr)
						require.Equal(t, uint32(21), m.CapNodes[0].Minor)
						require.Equal(t, uint32(22), m.CapNodes[1].Minor)
						continue
					}
					require.ErrorContains(t, m.CapErr, "GPU 0")
					require.ErrorContains(t, m.CapErr, "no gpu0/gi")
					require.ErrorContains(t, m.CapErr, "mig-minors")
				}
			},
		},
		"cap node not created yet": {
			lib:  faultyLib{badGPU: -1},
			host: faultyHost{missing: map[string]bool{gpu.CapNodePath(3 + 9*2 + 1): true}}, // gpu0/gi2/ci0
			check: func(t *testing.T, inv *gpu.Inventory) {
				absent := 0
				for _, m := range allMigs(inv) {
					require.NoError(t, m.CapErr)
					require.Len(t, m.CapNodes, 2)
					if m.CapNodes[1].Absent {
						absent++
						require.Equal(t, 2, m.GI)
						require.Equal(t, gpu.DeviceNode{Path: gpu.CapNodePath(22), Major: sim.MajorCaps, Minor: 22, Absent: true}, m.CapNodes[1])
					}
				}
				require.Equal(t, 1, absent)
			},
		},
		"cap node missing and nvidia-caps not in /proc/devices": {
			lib: faultyLib{badGPU: -1},
			host: faultyHost{
				missing: map[string]bool{gpu.CapNodePath(3 + 9*2 + 1): true}, // gpu0/gi2/ci0
				noMajor: map[string]bool{"nvidia-caps": true},
			},
			check: func(t *testing.T, inv *gpu.Inventory) {
				bad := 0
				for _, m := range allMigs(inv) {
					if m.CapErr != nil {
						bad++
						require.Equal(t, 2, m.GI)
						require.Empty(t, m.CapNodes)
						require.ErrorIs(t, m.CapErr, fs.ErrNotExist)
						require.ErrorContains(t, m.CapErr, "GPU 0, GI 2, CI 0")
						require.ErrorContains(t, m.CapErr, gpu.ProcDevicesPath)
						require.ErrorContains(t, m.CapErr, "nvidia-modprobe -f /proc/driver/nvidia/capabilities/gpu0/mig/gi2/ci0/access")
						require.ErrorContains(t, m.CapErr, "nvidia-ctk system create-device-nodes")
					}
				}
				require.Equal(t, 1, bad)
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b, err := sim.New("dgxa100-mig")
			require.NoError(t, err)
			lib, host := tc.lib, tc.host
			lib.Interface, host.Host = b.NVML(), b.Host()
			inv, err := gpu.Discover(context.Background(), &faulty{Backend: b, lib: &lib, host: &host})
			if tc.wantErr != "" {
				require.ErrorIs(t, err, gpu.ErrDiscovery)
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			tc.check(t, inv)
		})
	}
}

func findGPU(inv *gpu.Inventory, index int) *gpu.GPU {
	for i := range inv.GPUs {
		if inv.GPUs[i].Index == index {
			return &inv.GPUs[i]
		}
	}
	return nil
}

func allMigs(inv *gpu.Inventory) []gpu.MigDevice {
	var out []gpu.MigDevice
	for _, g := range inv.GPUs {
		out = append(out, g.MigDevices...)
	}
	return out
}

// devRootHost is a real host below a temporary dev root that has
// proc/devices and mig-minors but, like a host without nvidia-persistenced,
// none of the lazily created nodes. The GPU nodes and nvidiactl, which
// exist whenever the driver is loaded (and which a test cannot mknod), come
// from the simulation.
type devRootHost struct {
	gpu.Host          // the real one, below the temp root
	sim      gpu.Host // for the GPU nodes and nvidiactl
}

func (h *devRootHost) DeviceNode(path string) (gpu.DeviceNode, error) {
	if path == "/dev/nvidiactl" || !strings.HasPrefix(path, "/dev/nvidia-") {
		return h.sim.DeviceNode(path)
	}
	return h.Host.DeviceNode(path)
}

func TestDiscoverLazyNodesFromProcDevices(t *testing.T) {
	b, err := sim.New("dgxa100-mig")
	require.NoError(t, err)
	minors, err := b.Host().MigCapMinors()
	require.NoError(t, err)

	tests := map[string]struct {
		procDevices string // "" leaves proc/devices out
		wantCtl     []gpu.DeviceNode
		wantCapErr  string
	}{
		"modules loaded, nodes not created": {
			procDevices: "Character devices:\n  1 mem\n195 nvidia-frontend\n235 nvidia-uvm\n511 nvidia-caps\n\nBlock devices:\n  8 sd\n",
			wantCtl: []gpu.DeviceNode{
				{Path: "/dev/nvidiactl", HostPath: "/dev/nvidiactl", Major: 195, Minor: 255},
				{Path: "/dev/nvidia-uvm", Major: 235, Minor: 0, Absent: true},
				{Path: "/dev/nvidia-uvm-tools", Major: 235, Minor: 1, Absent: true},
			},
		},
		"uvm not loaded, block device of the same name ignored": {
			procDevices: "Character devices:\n195 nvidia-frontend\n511 nvidia-caps\n\nBlock devices:\n235 nvidia-uvm\n",
			wantCtl:     []gpu.DeviceNode{{Path: "/dev/nvidiactl", HostPath: "/dev/nvidiactl", Major: 195, Minor: 255}},
		},
		"no proc/devices": {
			wantCtl:    []gpu.DeviceNode{{Path: "/dev/nvidiactl", HostPath: "/dev/nvidiactl", Major: 195, Minor: 255}},
			wantCapErr: "nvidia-ctk system create-device-nodes",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			makeTree(t, root, map[string]string{gpu.MigMinorsPath: string(minors)})
			if tc.procDevices != "" {
				makeTree(t, root, map[string]string{gpu.ProcDevicesPath: tc.procDevices})
			}
			host := &devRootHost{Host: gpu.NewHost(root), sim: b.Host()}
			inv, err := gpu.Discover(context.Background(), &faulty{Backend: b, lib: b.NVML(), host: host})
			require.NoError(t, err)
			require.Equal(t, tc.wantCtl, inv.ControlNodes)
			migs := allMigs(inv)
			require.Len(t, migs, 11)
			for _, m := range migs {
				if tc.wantCapErr != "" {
					require.ErrorContains(t, m.CapErr, tc.wantCapErr)
					continue
				}
				require.NoError(t, m.CapErr)
				require.Len(t, m.CapNodes, 2)
				for _, c := range m.CapNodes {
					require.True(t, c.Absent)
					require.Equal(t, uint32(511), c.Major)
					require.Equal(t, gpu.CapNodePath(int(c.Minor)), c.Path)
				}
			}
		})
	}
}
