package dra

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/shape"
)

func inventory(t testing.TB, preset string) *gpu.Inventory {
	t.Helper()
	b, err := sim.New(preset)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	inv, err := gpu.Discover(context.Background(), b)
	require.NoError(t, err)
	return inv
}

func parse(t *testing.T, doc string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(doc))
	require.NoError(t, err)
	return cfg
}

func byName(p Pool) map[string]resourceapi.Device {
	out := map[string]resourceapi.Device{}
	for _, d := range p.Devices {
		out[d.Name] = d
	}
	return out
}

func TestOffersFollowRules(t *testing.T) {
	inv := inventory(t, "dgxa100")
	cfg := parse(t, `
version: v1
gpus:
  - match: {index: [0]}
    shape: whole
  - match: {index: [1]}
    shape: blocks
`)
	offers := shape.Offers(inv, cfg, nil)
	require.Len(t, offers, 8)
	require.True(t, offers[0].Whole)
	require.False(t, offers[0].Blocks, "a whole rule offers the GPU whole only")
	require.False(t, offers[1].Whole, "a blocks rule offers blocks only")
	require.True(t, offers[1].Blocks)
	for _, o := range offers[2:] {
		require.True(t, o.Whole && o.Blocks, "GPU %d: no rule offers both, exclusive through counters", o.GPU.Index)
	}

	// A kept GPU keeps its offer whatever the config says now.
	kept := shape.Offers(inv, cfg, map[string]shape.Offer{inv.GPUs[0].UUID: {Blocks: true}})
	require.True(t, kept[0].Blocks)
	require.False(t, kept[0].Whole)
	require.Same(t, &inv.GPUs[0], kept[0].GPU)
}

func TestPoolWholeAndBlocks(t *testing.T) {
	inv := inventory(t, "dgxa100")
	p := BuildPool(PoolInput{Offers: shape.Offers(inv, config.Default(), nil), DriverVersion: inv.DriverVersion})
	require.Len(t, p.Counters, 8)
	require.Len(t, p.Devices, 16)
	devs := byName(p)

	whole := devs["gpu-3"]
	require.Equal(t, TypeGPU, *whole.Attributes["type"].StringValue)
	require.Equal(t, inv.GPUs[3].UUID, *whole.Attributes["uuid"].StringValue)
	require.Equal(t, int64(3), *whole.Attributes["index"].IntValue)
	require.Equal(t, "8.0.0", *whole.Attributes["cudaComputeCapability"].VersionValue)
	require.Equal(t, "550.54.15", *whole.Attributes["driverVersion"].VersionValue)
	require.Equal(t, "Ampere", *whole.Attributes["architecture"].StringValue)
	require.Equal(t, inv.GPUs[3].Model, *whole.Attributes["productName"].StringValue)
	mem := whole.Capacity[CapacityMemory].Value
	require.Equal(t, int64(inv.GPUs[3].MemoryMiB)<<20, mem.Value())
	require.Nil(t, whole.AllowMultipleAllocations)

	blocks := devs["gpu-3-blocks"]
	require.Equal(t, TypeBlocks, *blocks.Attributes["type"].StringValue)
	require.True(t, *blocks.AllowMultipleAllocations)
	require.Len(t, blocks.Capacity, 1, "a multi-allocatable device carries only blocks: any other capacity would be consumed whole")
	c := blocks.Capacity[CapacityBlocks]
	require.Equal(t, int64(100), c.Value.Value())
	require.Equal(t, int64(1), c.RequestPolicy.Default.Value())
	require.Equal(t, int64(1), c.RequestPolicy.ValidRange.Min.Value())
	require.Equal(t, int64(100), c.RequestPolicy.ValidRange.Max.Value())
	require.Equal(t, int64(1), c.RequestPolicy.ValidRange.Step.Value())

	// Whole and blocks of one GPU consume the same counters, all of them.
	require.Equal(t, whole.ConsumesCounters, blocks.ConsumesCounters)
	require.Equal(t, "gpu-3", whole.ConsumesCounters[0].CounterSet)
	require.Equal(t, len(p.Counters[3].Counters), len(whole.ConsumesCounters[0].Counters))
}

func TestPoolMIG(t *testing.T) {
	inv := inventory(t, "dgxa100-mig")
	p := BuildPool(PoolInput{Offers: shape.Offers(inv, config.Default(), nil), DriverVersion: inv.DriverVersion})
	devs := byName(p)
	_, whole := devs["gpu-0"]
	require.False(t, whole, "a MIG-enabled GPU cannot run work itself")

	g0 := inv.GPUs[0]
	require.Len(t, g0.MigDevices, 4)
	for _, md := range g0.MigDevices {
		name := MIGDeviceName(0, md)
		require.Equal(t, fmt.Sprintf("gpu-0-mig-%s-%d", map[string]string{"3g.40gb": "3g-40gb", "2g.20gb": "2g-20gb", "1g.10gb": "1g-10gb"}[md.Profile], md.Placement.Start), name)
		d, ok := devs[name]
		require.True(t, ok, name)
		require.Equal(t, TypeMIG, *d.Attributes["type"].StringValue)
		require.Equal(t, md.UUID, *d.Attributes["uuid"].StringValue)
		require.Equal(t, md.Profile, *d.Attributes["profile"].StringValue)
		require.Equal(t, g0.UUID, *d.Attributes["parentUUID"].StringValue)
		require.Equal(t, int64(0), *d.Attributes["parentIndex"].IntValue)
		require.Equal(t, int64(md.Placement.Start), *d.Attributes["placementStart"].IntValue)
		require.Equal(t, int64(md.Placement.Size), *d.Attributes["placementSize"].IntValue)
		// It consumes exactly the memory slices of its placement.
		require.Len(t, d.ConsumesCounters[0].Counters, md.Placement.Size)
		for s := md.Placement.Start; s < md.Placement.Start+md.Placement.Size; s++ {
			require.Contains(t, d.ConsumesCounters[0].Counters, fmt.Sprintf("slice-%d", s))
		}
		for name := range d.ConsumesCounters[0].Counters {
			require.Contains(t, p.Counters[0].Counters, name, "a device consumes only counters its set has")
		}
	}
	require.Equal(t, "gpu-0-mig-1g-10gb-me-3", MIGDeviceName(0, gpu.MigDevice{Profile: "1g.10gb+me", Placement: &gpu.Placement{Start: 3, Size: 1}}))
	require.Equal(t, "gpu-2-mig-1g-10gb-gi9", MIGDeviceName(2, gpu.MigDevice{Profile: "1g.10gb", GI: 9}))
}

func TestUnhealthyTaints(t *testing.T) {
	inv := inventory(t, "dgxa100-mig")
	mig := inv.GPUs[1].MigDevices[2]
	p := BuildPool(PoolInput{
		Offers:      shape.Offers(inv, config.Default(), nil),
		Unhealthy:   map[string]string{inv.GPUs[3].UUID: "xid-48", mig.UUID: "xid 94!"},
		TaintEffect: resourceapi.DeviceTaintEffectNoExecute,
	})
	for _, d := range p.Devices {
		idx, ok := d.Attributes["index"]
		if !ok {
			idx = d.Attributes["parentIndex"]
		}
		gpuIndex := int(*idx.IntValue)
		switch {
		case gpuIndex == 3:
			require.Equal(t, []resourceapi.DeviceTaint{{Key: UnhealthyTaintKey, Value: "xid-48", Effect: resourceapi.DeviceTaintEffectNoExecute}}, d.Taints, d.Name)
		case d.Name == MIGDeviceName(1, mig):
			require.Equal(t, "xid-94", d.Taints[0].Value, "a taint value is a valid label value")
		default:
			require.Empty(t, d.Taints, d.Name)
		}
	}
	p = BuildPool(PoolInput{Offers: shape.Offers(inv, config.Default(), nil), Unhealthy: map[string]string{inv.GPUs[3].UUID: "xid-79"}})
	require.Equal(t, resourceapi.DeviceTaintEffectNoSchedule, byName(p)["gpu-3"].Taints[0].Effect, "default effect")
}

func TestSemver(t *testing.T) {
	for in, want := range map[string]string{
		"8.0": "8.0.0", "9": "9.0.0", "550.54.15": "550.54.15", "580.159.04": "580.159.4",
		"": "", "12.4-beta": "", "1.2.3.4": "",
	} {
		require.Equal(t, want, semver(in), in)
	}
}

func TestSlicesWithinLimits(t *testing.T) {
	// 20 GPUs offering both shapes: 20 counter sets (3 slices of ≤ 8) and
	// 40 devices (one slice), and never a slice with both.
	var offers []shape.Offer
	for i := range 20 {
		offers = append(offers, shape.Offer{GPU: &gpu.GPU{Index: i, UUID: fmt.Sprintf("GPU-%d", i), NUMANode: -1}, Whole: true, Blocks: true})
	}
	p := BuildPool(PoolInput{Offers: offers})
	slices := p.ResourceSlices("node-a", 1)
	var sets, devs int
	for _, s := range slices {
		require.False(t, len(s.Spec.SharedCounters) > 0 && len(s.Spec.Devices) > 0, "a slice holds counters or devices, not both")
		require.LessOrEqual(t, len(s.Spec.SharedCounters), resourceapi.ResourceSliceMaxCounterSets)
		require.LessOrEqual(t, len(s.Spec.Devices), resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures)
		require.Equal(t, "node-a", s.Spec.Pool.Name)
		require.Equal(t, "node-a", *s.Spec.NodeName)
		require.Equal(t, int64(len(slices)), s.Spec.Pool.ResourceSliceCount)
		require.Equal(t, DriverName, s.Spec.Driver)
		sets += len(s.Spec.SharedCounters)
		devs += len(s.Spec.Devices)
	}
	require.Equal(t, 20, sets)
	require.Equal(t, 40, devs)
	require.Len(t, slices, 4)

	// 40 GPUs: 80 devices need two device slices; a GPU's devices stay
	// together.
	for i := 20; i < 40; i++ {
		offers = append(offers, shape.Offer{GPU: &gpu.GPU{Index: i, UUID: fmt.Sprintf("GPU-%d", i), NUMANode: -1}, Whole: true, Blocks: true})
	}
	for _, s := range BuildPool(PoolInput{Offers: offers}).Slices() {
		if len(s.Devices) == 0 {
			continue
		}
		require.LessOrEqual(t, len(s.Devices), resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures)
		require.Equal(t, 0, len(s.Devices)%2, "whole and blocks of a GPU in one slice")
	}
}

// simFile writes a simulation file and returns its path.
func simFile(t *testing.T, doc string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sim.yaml")
	require.NoError(t, os.WriteFile(path, []byte(doc), 0o600))
	return path
}

// A MIG-enabled GPU publishes every placement of every allowed profile;
// a placement without an instance has no uuid yet.
func TestPoolMIGPlacements(t *testing.T) {
	inv := inventory(t, simFile(t, "gpus:\n  - model: A100-SXM4-40GB\n    mig: []\n"))
	tests := map[string]struct {
		cfg  string
		want map[string]int // devices per profile
	}{
		"every profile": {
			cfg:  "version: v1\n",
			want: map[string]int{"1g.5gb": 7, "1g.5gb+me": 7, "1g.10gb": 4, "2g.10gb": 3, "3g.20gb": 2, "4g.20gb": 1, "7g.40gb": 1},
		},
		"mig: narrows the profiles": {
			cfg:  "version: v1\ngpus:\n  - match: {index: [0]}\n    shape: mig\n    mig: [1g.5gb, 3g.20gb]\n",
			want: map[string]int{"1g.5gb": 7, "3g.20gb": 2},
		},
		"a rule for another GPU": {
			cfg:  "version: v1\ngpus:\n  - match: {index: [3]}\n    shape: mig\n    mig: [1g.5gb]\n",
			want: map[string]int{"1g.5gb": 7, "1g.5gb+me": 7, "1g.10gb": 4, "2g.10gb": 3, "3g.20gb": 2, "4g.20gb": 1, "7g.40gb": 1},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := BuildPool(PoolInput{Offers: shape.Offers(inv, parse(t, tc.cfg), nil), DriverVersion: inv.DriverVersion})
			require.Len(t, p.Counters, 1)
			require.Len(t, p.Counters[0].Counters, 8, "one counter per memory slice")
			got := map[string]int{}
			for _, d := range p.Devices {
				profile := *d.Attributes["profile"].StringValue
				got[profile]++
				start := int(*d.Attributes["placementStart"].IntValue)
				size := int(*d.Attributes["placementSize"].IntValue)
				require.Equal(t, fmt.Sprintf("gpu-0-mig-%s-%d", strings.NewReplacer(".", "-", "+", "-").Replace(profile), start), d.Name)
				require.Equal(t, TypeMIG, *d.Attributes["type"].StringValue)
				_, hasUUID := d.Attributes["uuid"]
				require.False(t, hasUUID, "%s: no instance, no uuid", d.Name)
				require.Equal(t, inv.GPUs[0].UUID, *d.Attributes["parentUUID"].StringValue)
				require.Equal(t, span(start, size), slices.Sorted(maps.Keys(d.ConsumesCounters[0].Counters)))
				mem := d.Capacity[CapacityMemory].Value
				require.Positive(t, mem.Value())
			}
			require.Equal(t, tc.want, got)
		})
	}
	mem := byName(BuildPool(PoolInput{Offers: shape.Offers(inv, config.Default(), nil)}))["gpu-0-mig-1g-5gb-6"].Capacity[CapacityMemory].Value
	require.Equal(t, int64(4864)<<20, mem.Value(), "a placement's memory is its profile's")
}

// An existing instance is the device of its placement, with its uuid;
// placements it overlaps are not offered while it exists, and it stays on
// offer when the config does not allow its profile.
func TestPoolMIGExistingInstance(t *testing.T) {
	inv := inventory(t, simFile(t, "gpus:\n  - model: A100-SXM4-40GB\n    mig: [3g.20gb]\n"))
	require.Len(t, inv.GPUs[0].MigDevices, 1)
	md := inv.GPUs[0].MigDevices[0]
	free := 4 - md.Placement.Start // the other half
	cfg := parse(t, "version: v1\ngpus:\n  - match: {index: [0]}\n    shape: mig\n    mig: [1g.5gb]\n")
	pool := BuildPool(PoolInput{Offers: shape.Offers(inv, cfg, nil)})
	require.Len(t, pool.Counters[0].Counters, 8, "every memory slice has its counter, whatever is offered now")
	devs := byName(pool)
	d, ok := devs[fmt.Sprintf("gpu-0-mig-3g-20gb-%d", md.Placement.Start)]
	require.True(t, ok, "an instance of a profile not allowed stays published")
	require.Equal(t, md.UUID, *d.Attributes["uuid"].StringValue)
	var names []string
	for name := range devs {
		names = append(names, name)
	}
	slices.Sort(names)
	want := []string{MIGDeviceName(0, md)}
	for s := free; s < free+4 && s < 7; s++ {
		want = append(want, fmt.Sprintf("gpu-0-mig-1g-5gb-%d", s))
	}
	slices.Sort(want)
	require.Equal(t, want, names, "only the free half's placements are offered")
}

// A MIG GPU's counter set has a counter per memory slice of the GPU,
// whichever devices are offered now: it does not change as instances come
// and go.
func TestPoolMIGCountersCoverTheGPU(t *testing.T) {
	g := &gpu.GPU{Index: 0, UUID: "GPU-a", NUMANode: -1, MigEnabled: true, MigProfiles: []gpu.MigProfile{
		{Name: "7g.40gb", MemoryMiB: 40192, Placements: []gpu.Placement{{Start: 0, Size: 8}}},
		{Name: "3g.20gb", MemoryMiB: 19968, Placements: []gpu.Placement{{Start: 0, Size: 4}, {Start: 4, Size: 4}}},
	}}
	in := gpu.MigDevice{UUID: "MIG-a", Profile: "3g.20gb", ParentUUID: "GPU-a", Placement: &gpu.Placement{Start: 0, Size: 4}}
	p := BuildPool(PoolInput{Offers: []shape.Offer{{GPU: g, MIG: []gpu.MigDevice{in}}}})
	require.Equal(t, span(0, 8), slices.Sorted(maps.Keys(p.Counters[0].Counters)))
}
