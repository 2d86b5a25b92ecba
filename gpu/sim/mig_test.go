package sim_test

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/mig"
)

// simulate builds a simulation from a file's text.
func simulate(t *testing.T, spec string) *sim.Backend {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sim.yaml")
	require.NoError(t, os.WriteFile(path, []byte(spec), 0o644))
	b, err := sim.New(path)
	require.NoError(t, err)
	return b
}

func handle(t *testing.T, b *sim.Backend, index int) nvml.Device {
	t.Helper()
	d, ret := b.NVML().DeviceGetHandleByIndex(index)
	require.Equal(t, nvml.SUCCESS, ret)
	return d
}

// sevenSlice is NVIDIA's placement table of the GPUs with seven compute and
// eight memory slices (A100, H100, H200, B200), as `nvidia-smi mig -lgipp`
// prints it and the MIG user guide documents it: profile (by its place in
// the list: 1g, 1g+me, 1g with two memory slices, 2g, 3g, 4g, 7g) → starts
// and size.
var sevenSlice = []string{"0,1,2,3,4,5,6:1", "0,1,2,3,4,5,6:1", "0,2,4,6:2", "0,2,4:2", "0,4:4", "0:4", "0:8"}

// TestPlacementsAsNVML: every model's profiles, names, instance counts and
// placements are what NVML reports on that GPU. The mock gets the Hopper
// and Blackwell placements wrong; the simulation must not.
func TestPlacementsAsNVML(t *testing.T) {
	type want struct {
		names []string // in sevenSlice's order (A30: its own)
		at    []string
		count []uint32
	}
	seven := func(small, me, small2, g2, g3, g4, g7 string) want {
		return want{names: []string{small, me, small2, g2, g3, g4, g7}, at: sevenSlice, count: []uint32{7, 1, 4, 3, 2, 1, 1}}
	}
	tests := map[string]want{
		"A100-SXM4-40GB":  seven("1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
		"A100-PCIE-40GB":  seven("1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
		"A100-SXM4-80GB":  seven("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
		"A100-PCIE-80GB":  seven("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
		"H100-SXM5-80GB":  seven("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
		"H200-SXM5-141GB": seven("1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
		"B200-SXM5-180GB": seven("1g.23gb", "1g.23gb+me", "1g.45gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb"),
		"A30-PCIE-24GB": {
			names: []string{"1g.6gb", "1g.6gb+me", "2g.12gb", "2g.12gb+me", "4g.24gb"},
			at:    []string{"0,1,2,3:1", "0,1,2,3:1", "0,2:2", "0,2:2", "0:4"},
			count: []uint32{4, 1, 2, 1, 1},
		},
	}
	require.ElementsMatch(t, sim.Models(), slices.Collect(maps.Keys(tests)), "every simulated model is checked")
	for model, w := range tests {
		t.Run(model, func(t *testing.T) {
			b := simulate(t, fmt.Sprintf("gpus: [{model: %s, mig: []}]", model))
			cat, err := mig.ReadCatalog(handle(t, b, 0))
			require.NoError(t, err)
			require.ElementsMatch(t, w.names, cat.Names())
			for i, name := range w.names {
				p, err := cat.Profile(name)
				require.NoError(t, err)
				var starts []string
				for _, pl := range p.Placements {
					starts = append(starts, fmt.Sprint(pl.Start))
					require.Equal(t, p.Placements[0].Size, pl.Size)
				}
				require.Equal(t, w.at[i], fmt.Sprintf("%s:%d", strings.Join(starts, ","), p.Placements[0].Size), name)
				require.Equal(t, w.count[i], p.Info.InstanceCount, name)
			}
		})
	}
}

// TestCreateWithPlacementErrors: the driver's answers to placements it
// cannot honour.
func TestCreateWithPlacementErrors(t *testing.T) {
	b := simulate(t, "gpus: [{model: A100-SXM4-80GB, mig: [3g.40gb]}, {model: A100-SXM4-80GB}]")
	dev := handle(t, b, 0)
	info := func(d nvml.Device, profile int) *nvml.GpuInstanceProfileInfo {
		i, ret := d.GetGpuInstanceProfileInfo(profile)
		require.Equal(t, nvml.SUCCESS, ret)
		return &i
	}
	at := func(start, size uint32) *nvml.GpuInstancePlacement {
		return &nvml.GpuInstancePlacement{Start: start, Size: size}
	}
	tests := map[string]struct {
		dev     nvml.Device
		profile int
		at      *nvml.GpuInstancePlacement
		want    nvml.Return
	}{
		// The 3g.40gb sits at slices 4-7 (placed from the top).
		"overlap":              {dev: dev, profile: nvml.GPU_INSTANCE_PROFILE_1_SLICE, at: at(5, 1), want: nvml.ERROR_INSUFFICIENT_RESOURCES},
		"overlap at its start": {dev: dev, profile: nvml.GPU_INSTANCE_PROFILE_3_SLICE, at: at(4, 4), want: nvml.ERROR_INSUFFICIENT_RESOURCES},
		"start not offered":    {dev: dev, profile: nvml.GPU_INSTANCE_PROFILE_2_SLICE, at: at(1, 2), want: nvml.ERROR_INVALID_ARGUMENT},
		"last 1g slot":         {dev: dev, profile: nvml.GPU_INSTANCE_PROFILE_1_SLICE, at: at(7, 1), want: nvml.ERROR_INVALID_ARGUMENT},
		"wrong size":           {dev: dev, profile: nvml.GPU_INSTANCE_PROFILE_3_SLICE, at: at(0, 3), want: nvml.ERROR_INVALID_ARGUMENT},
		"no placement":         {dev: dev, profile: nvml.GPU_INSTANCE_PROFILE_1_SLICE, want: nvml.ERROR_INVALID_ARGUMENT},
		"MIG off":              {dev: handle(t, b, 1), profile: nvml.GPU_INSTANCE_PROFILE_1_SLICE, at: at(0, 1), want: nvml.ERROR_NOT_SUPPORTED},
		"free":                 {dev: dev, profile: nvml.GPU_INSTANCE_PROFILE_3_SLICE, at: at(0, 4), want: nvml.SUCCESS},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			gi, ret := tc.dev.CreateGpuInstanceWithPlacement(info(tc.dev, tc.profile), tc.at)
			require.Equal(t, tc.want, ret)
			if ret == nvml.SUCCESS {
				require.Equal(t, nvml.SUCCESS, gi.Destroy())
			}
		})
	}
	t.Run("instance count", func(t *testing.T) {
		me := info(dev, nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1)
		gi, ret := dev.CreateGpuInstanceWithPlacement(me, at(0, 1))
		require.Equal(t, nvml.SUCCESS, ret)
		_, ret = dev.CreateGpuInstanceWithPlacement(me, at(1, 1))
		require.Equal(t, nvml.ERROR_INSUFFICIENT_RESOURCES, ret, "one 1g.10gb+me per GPU")
		require.Equal(t, nvml.SUCCESS, gi.Destroy())
	})
}

// TestBusyInstances: a compute instance running a process, and a GPU
// instance holding a compute instance, cannot be destroyed; NVML lists the
// process on the GPU and on its MIG device.
func TestBusyInstances(t *testing.T) {
	b := simulate(t, "gpus: [{model: A100-SXM4-80GB, mig: [3g.40gb, 3g.40gb]}, {model: H100-SXM5-80GB}]")
	dev := handle(t, b, 0)
	inv := discover(t, b)
	md := inv.GPUs[0].MigDevices[1]
	pid, err := b.StartProcess(0, md.UUID)
	require.NoError(t, err)

	ps, ret := dev.GetComputeRunningProcesses()
	require.Equal(t, nvml.SUCCESS, ret)
	require.Equal(t, []nvml.ProcessInfo{{Pid: pid, UsedGpuMemory: 256 << 20, GpuInstanceId: uint32(md.GI), ComputeInstanceId: uint32(md.CI)}}, ps)
	mh, ret := b.NVML().DeviceGetHandleByUUID(md.UUID)
	require.Equal(t, nvml.SUCCESS, ret)
	ps, ret = mh.GetComputeRunningProcesses()
	require.Equal(t, nvml.SUCCESS, ret)
	require.Len(t, ps, 1)
	other, ret := b.NVML().DeviceGetHandleByUUID(inv.GPUs[0].MigDevices[0].UUID)
	require.Equal(t, nvml.SUCCESS, ret)
	ps, ret = other.GetComputeRunningProcesses()
	require.Equal(t, nvml.SUCCESS, ret)
	require.Empty(t, ps)

	gi, ret := dev.GetGpuInstanceById(md.GI)
	require.Equal(t, nvml.SUCCESS, ret)
	ci, ret := gi.GetComputeInstanceById(md.CI)
	require.Equal(t, nvml.SUCCESS, ret)
	require.Equal(t, nvml.ERROR_IN_USE, ci.Destroy(), "a process runs in it")
	require.Equal(t, nvml.ERROR_IN_USE, gi.Destroy(), "its compute instance is there")
	require.ErrorIs(t, b.SetMigLayout(0, []string{"7g.80gb"}), nvml.ERROR_IN_USE, "the operator's tool is refused too")
	_, ret = dev.SetMigMode(nvml.DEVICE_MIG_DISABLE)
	require.Equal(t, nvml.ERROR_IN_USE, ret)

	require.NoError(t, b.StopProcess(pid))
	require.Error(t, b.StopProcess(pid))
	require.Equal(t, nvml.SUCCESS, ci.Destroy())
	require.Equal(t, nvml.SUCCESS, gi.Destroy())

	// A process on a GPU without MIG.
	pid, err = b.StartProcess(1, "")
	require.NoError(t, err)
	ps, ret = handle(t, b, 1).GetComputeRunningProcesses()
	require.Equal(t, nvml.SUCCESS, ret)
	require.Equal(t, []nvml.ProcessInfo{{Pid: pid, UsedGpuMemory: 256 << 20, GpuInstanceId: 0xFFFFFFFF, ComputeInstanceId: 0xFFFFFFFF}}, ps)

	_, err = b.StartProcess(0, "")
	require.ErrorContains(t, err, "MIG enabled")
	_, err = b.StartProcess(0, "MIG-nope")
	require.ErrorContains(t, err, "no MIG device")
	_, err = b.StartProcess(2, "")
	require.Error(t, err)
}

// TestMigOnNoInstances: `mig: []` in a simulation file enables MIG with no
// instances.
func TestMigOnNoInstances(t *testing.T) {
	b := simulate(t, "gpus: [{model: A100-SXM4-80GB, mig: []}, {model: A100-SXM4-80GB}]")
	inv := discover(t, b)
	require.True(t, inv.GPUs[0].MigEnabled)
	require.Empty(t, inv.GPUs[0].MigDevices)
	require.False(t, inv.GPUs[1].MigEnabled)
}

// TestFailMigOp: an injected failure hits the nth call once, and changes
// nothing.
func TestFailMigOp(t *testing.T) {
	b := simulate(t, "gpus: [{model: A100-SXM4-80GB, mig: []}]")
	dev := handle(t, b, 0)
	info, ret := dev.GetGpuInstanceProfileInfo(nvml.GPU_INSTANCE_PROFILE_1_SLICE)
	require.Equal(t, nvml.SUCCESS, ret)
	require.NoError(t, b.FailMigOp(0, sim.OpCreateGpuInstance, 2, nvml.ERROR_UNKNOWN))
	require.NoError(t, b.FailMigOp(0, sim.OpCreateGpuInstance, 2, nvml.ERROR_NO_PERMISSION))
	var got []nvml.Return
	for start := range uint32(5) {
		_, ret := dev.CreateGpuInstanceWithPlacement(&info, &nvml.GpuInstancePlacement{Start: start, Size: 1})
		got = append(got, ret)
	}
	require.Equal(t, []nvml.Return{nvml.SUCCESS, nvml.ERROR_UNKNOWN, nvml.ERROR_NO_PERMISSION, nvml.SUCCESS, nvml.SUCCESS}, got)
	gis, ret := dev.GetGpuInstances(&info)
	require.Equal(t, nvml.SUCCESS, ret)
	require.Len(t, gis, 3, "failed calls created nothing")

	require.Error(t, b.FailMigOp(0, sim.OpDestroyGpuInstance, 0, nvml.ERROR_UNKNOWN))
	require.Error(t, b.FailMigOp(0, sim.OpDestroyGpuInstance, 1, nvml.SUCCESS))
	require.Error(t, b.FailMigOp(9, sim.OpDestroyGpuInstance, 1, nvml.ERROR_UNKNOWN))
}
