package gpu_test

import (
	"context"
	"io/fs"
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

// faultyHost hides device nodes and can lose the mig-minors file.
type faultyHost struct {
	gpu.Host
	missing   map[string]bool
	minorsErr error
	minors    []byte
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
		"uvm-tools missing": {
			lib:  faultyLib{badGPU: -1},
			host: faultyHost{missing: map[string]bool{"/dev/nvidia-uvm-tools": true}},
			check: func(t *testing.T, inv *gpu.Inventory) {
				require.Len(t, inv.ControlNodes, 2)
				require.Equal(t, "/dev/nvidiactl", inv.ControlNodes[0].Path)
				require.Equal(t, "/dev/nvidia-uvm", inv.ControlNodes[1].Path)
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
		"cap node missing": {
			lib:  faultyLib{badGPU: -1},
			host: faultyHost{missing: map[string]bool{gpu.CapNodePath(3 + 9*2 + 1): true}}, // gpu0/gi2/ci0
			check: func(t *testing.T, inv *gpu.Inventory) {
				bad := 0
				for _, m := range allMigs(inv) {
					if m.CapErr != nil {
						bad++
						require.Equal(t, 2, m.GI)
						require.ErrorIs(t, m.CapErr, fs.ErrNotExist)
						require.ErrorContains(t, m.CapErr, "GPU 0, GI 2, CI 0")
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
