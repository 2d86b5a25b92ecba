package demo

import (
	"testing"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/gpu"
)

func TestCheckOwned(t *testing.T) {
	node := func(p string) gpu.DeviceNode { return gpu.DeviceNode{Path: p} }
	inv := &gpu.Inventory{
		ControlNodes: []gpu.DeviceNode{node("/dev/nvidiactl")},
		GPUs: []gpu.GPU{
			{UUID: "GPU-0", Node: node("/dev/nvidia0"), MigDevices: []gpu.MigDevice{
				{UUID: "MIG-0", CapNodes: []gpu.DeviceNode{node("/dev/nvidia-caps/nvidia-cap21"), node("/dev/nvidia-caps/nvidia-cap22")}},
			}},
			{UUID: "GPU-1", Node: node("/dev/nvidia1")},
		},
	}
	devs := func(paths ...string) []oci.LinuxDevice {
		var out []oci.LinuxDevice
		for _, p := range paths {
			out = append(out, oci.LinuxDevice{Path: p})
		}
		return out
	}
	tests := map[string]struct {
		ids  []string
		got  []oci.LinuxDevice
		fail bool
	}{
		"whole GPU":            {ids: []string{"GPU-1"}, got: devs("/dev/nvidiactl", "/dev/nvidia1")},
		"blocks of a GPU":      {ids: []string{"GPU-1::3", "GPU-1::4"}, got: devs("/dev/nvidia1", "/dev/nvidiactl")},
		"MIG device and caps":  {ids: []string{"MIG-0"}, got: devs("/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap21", "/dev/nvidia-caps/nvidia-cap22")},
		"another GPU's node":   {ids: []string{"GPU-1"}, got: devs("/dev/nvidia1", "/dev/nvidia0"), fail: true},
		"MIG without its caps": {ids: []string{"MIG-0"}, got: devs("/dev/nvidia0"), fail: true},
		"nothing injected":     {ids: []string{"GPU-1"}, got: devs("/dev/nvidiactl"), fail: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := checkOwned(inv, tc.ids, tc.got)
			if tc.fail {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
		})
	}
}
