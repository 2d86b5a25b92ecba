package sim_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/NVIDIA/go-nvlib/pkg/nvlib/device"
	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
)

func discover(t *testing.T, b gpu.Backend) *gpu.Inventory {
	t.Helper()
	inv, err := gpu.Discover(context.Background(), b)
	require.NoError(t, err)
	require.Empty(t, inv.Skipped)
	return inv
}

func profiles(g gpu.GPU) []string {
	var ps []string
	for _, m := range g.MigDevices {
		ps = append(ps, m.Profile)
	}
	return ps
}

var (
	gpuUUIDRe = regexp.MustCompile(`^GPU-[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	migUUIDRe = regexp.MustCompile(`^MIG-[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
)

func TestPresets(t *testing.T) {
	tests := map[string]struct {
		model     string
		memoryMiB uint64
		// mig lists the MIG profiles per GPU index; absent means MIG off.
		mig     map[int][]string
		migMiB  map[string]uint64
		maxMigs int
	}{
		"dgxa100": {model: "NVIDIA A100-SXM4-40GB", memoryMiB: 40960},
		"dgxh100": {model: "NVIDIA H100 80GB HBM3", memoryMiB: 81920},
		"dgxa100-mig": {
			model: "NVIDIA A100-SXM4-80GB", memoryMiB: 81920,
			mig: map[int][]string{
				0: {"3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"},
				1: slices.Repeat([]string{"1g.10gb"}, 7),
			},
			migMiB: map[string]uint64{"3g.40gb": 40192, "2g.20gb": 19968, "1g.10gb": 9856},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b, err := sim.New(name)
			require.NoError(t, err)
			defer b.Close()
			require.Equal(t, "simulated "+name, b.Name())
			inv := discover(t, b)

			require.Equal(t, sim.DriverVersion, inv.DriverVersion)
			require.Equal(t, sim.CUDADriverVersion, inv.CUDADriverVersion)
			require.Equal(t, []gpu.DeviceNode{
				{Path: "/dev/nvidiactl", HostPath: "/dev/nvidiactl", Major: 195, Minor: 255},
				{Path: "/dev/nvidia-uvm", HostPath: "/dev/nvidia-uvm", Major: sim.MajorUVM, Minor: 0},
				{Path: "/dev/nvidia-uvm-tools", HostPath: "/dev/nvidia-uvm-tools", Major: sim.MajorUVM, Minor: 1},
			}, inv.ControlNodes)
			require.Len(t, inv.GPUs, 8)

			uuids := map[string]bool{}
			for i, g := range inv.GPUs {
				require.Equal(t, i, g.Index)
				require.Equal(t, i, g.Minor)
				require.Equal(t, tc.model, g.Model)
				require.Equal(t, tc.memoryMiB, g.MemoryMiB)
				require.Regexp(t, gpuUUIDRe, g.UUID)
				require.Equal(t, fmt.Sprintf("0000:%02x:00.0", i), g.PCIBusID)
				require.Equal(t, i/4, g.NUMANode)
				require.True(t, g.MigCapable)
				require.Equal(t, gpu.DeviceNode{
					Path: fmt.Sprintf("/dev/nvidia%d", i), HostPath: fmt.Sprintf("/dev/nvidia%d", i),
					Major: 195, Minor: uint32(i),
				}, g.Node)
				require.Same(t, &inv.GPUs[i], inv.ByUUID(g.UUID))
				uuids[g.UUID] = true

				want, migOn := tc.mig[i]
				require.Equal(t, migOn, g.MigEnabled, "GPU %d MIG mode", i)
				require.ElementsMatch(t, want, profiles(g), "GPU %d MIG profiles", i)
				for j, m := range g.MigDevices {
					require.Equal(t, j, m.Index)
					require.Regexp(t, migUUIDRe, m.UUID)
					require.Equal(t, i, m.ParentIndex)
					require.Equal(t, g.UUID, m.ParentUUID)
					require.Equal(t, tc.migMiB[m.Profile], m.MemoryMiB, m.Profile)
					require.NoError(t, m.CapErr)
					require.Len(t, m.CapNodes, 2)
					// The table numbers gpu<N>/gi<G>/access as 3+135N+9G and its
					// compute instances right after.
					gi := uint32(3 + 135*i + 9*m.GI)
					require.Equal(t, gpu.DeviceNode{Path: gpu.CapNodePath(int(gi)), HostPath: gpu.CapNodePath(int(gi)),
						Major: sim.MajorCaps, Minor: gi}, m.CapNodes[0])
					require.Equal(t, gi+1+uint32(m.CI), m.CapNodes[1].Minor)
					uuids[m.UUID] = true
				}
			}
			total := len(inv.GPUs)
			for _, g := range inv.GPUs {
				total += len(g.MigDevices)
			}
			require.Len(t, uuids, total, "UUIDs must be unique")
		})
	}
}

// TestMixedLayoutPlacement pins the GPU instance IDs of the preset's mixed
// layout: they are what the driver would assign for these placements, and
// what mig-minors is indexed by.
func TestMixedLayoutPlacement(t *testing.T) {
	b, err := sim.New("dgxa100-mig")
	require.NoError(t, err)
	inv := discover(t, b)
	type gici struct {
		Profile string
		GI, CI  int
	}
	var got []gici
	for _, m := range inv.GPUs[0].MigDevices {
		got = append(got, gici{m.Profile, m.GI, m.CI})
	}
	require.Equal(t, []gici{{"3g.40gb", 2, 0}, {"2g.20gb", 4, 0}, {"1g.10gb", 7, 0}, {"1g.10gb", 8, 0}}, got)
	var gis []int
	for _, m := range inv.GPUs[1].MigDevices {
		gis = append(gis, m.GI)
	}
	require.Equal(t, []int{7, 8, 9, 10, 11, 12, 13}, gis)
}

func allUUIDs(t *testing.T, b gpu.Backend) []string {
	inv := discover(t, b)
	var ids []string
	for _, g := range inv.GPUs {
		ids = append(ids, g.UUID)
		for _, m := range g.MigDevices {
			ids = append(ids, m.UUID)
		}
	}
	return ids
}

func gpuUUIDs(t *testing.T, b gpu.Backend) []string {
	var ids []string
	for _, g := range discover(t, b).GPUs {
		ids = append(ids, g.UUID)
	}
	return ids
}

func TestDeterministicUUIDs(t *testing.T) {
	file := filepath.Join("testdata", "mixed.yaml")
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	write := func(content string) string {
		p := filepath.Join(t.TempDir(), "sim.yaml")
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
		return p
	}
	copyOf := write(string(data))
	commented := write("# A comment the operator added.\n" + strings.ReplaceAll(string(data), "count: 2\n", "count: 2   # two of them\n"))
	appended := write(string(data) + "  - model: A30-PCIE-24GB\n")
	// GPUs 0 and 1 keep their model and index but change MIG layout.
	relaid := write(strings.Replace(string(data), "mig: [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb]", "mig: [7g.80gb]", 1))
	// The H100s move from indices 2-3 to 0-1, the A100s the other way.
	swapped := write("gpus:\n  - model: H100-SXM5-80GB\n    count: 2\n  - model: A100-SXM4-80GB\n    count: 2\n")
	// The same indices with another model.
	remodeled := write(strings.ReplaceAll(strings.ReplaceAll(string(data), "A100-SXM4-80GB", "A100-PCIE-80GB"), "H100-SXM5-80GB", "H200-SXM5-141GB"))

	tests := map[string]struct {
		a, b string
		all  bool // compare MIG UUIDs too, not only GPU UUIDs
		same bool // every UUID of a is in b; otherwise none is
	}{
		"same preset twice":                  {a: "dgxa100-mig", b: "dgxa100-mig", all: true, same: true},
		"same file twice":                    {a: file, b: file, all: true, same: true},
		"same content, other path":           {a: file, b: copyOf, all: true, same: true},
		"comments added":                     {a: file, b: commented, all: true, same: true},
		"gpu appended keeps the others":      {a: file, b: appended, all: true, same: true},
		"mig layout changed keeps gpu uuids": {a: file, b: relaid, same: true},
		"mig layout changed, new mig uuids":  {a: file, b: relaid, all: true},
		"different presets":                  {a: "dgxa100", b: "dgxh100"},
		"mig preset vs plain preset":         {a: "dgxa100", b: "dgxa100-mig"},
		"preset vs file of same models":      {a: "dgxa100-mig", b: file},
		"models moved to other indices":      {a: file, b: swapped},
		"other models at the same indices":   {a: file, b: remodeled},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			a, err := sim.New(tc.a)
			require.NoError(t, err)
			b, err := sim.New(tc.b)
			require.NoError(t, err)
			ua, ub := gpuUUIDs(t, a), gpuUUIDs(t, b)
			if tc.all {
				ua, ub = allUUIDs(t, a), allUUIDs(t, b)
				if !tc.same {
					// The MIG devices changed; their GPUs did not.
					ua, ub = slices.DeleteFunc(ua, isGPU), slices.DeleteFunc(ub, isGPU)
				}
			}
			require.NotEmpty(t, ua)
			for _, id := range ua {
				if tc.same {
					require.Contains(t, ub, id)
				} else {
					require.NotContains(t, ub, id)
				}
			}
		})
	}
}

func isGPU(uuid string) bool { return strings.HasPrefix(uuid, "GPU-") }

// TestPresetUUIDsPinned keeps the presets' UUIDs from changing under a
// kubelet checkpoint or a saved demo transcript.
func TestPresetUUIDsPinned(t *testing.T) {
	for preset, want := range map[string]string{
		"dgxa100":     "GPU-5d3c3eac-8b50-53b0-972f-194ab0e87765",
		"dgxa100-mig": "GPU-664af2b6-a6fa-5ede-ab69-34dac1dd4f86",
	} {
		b, err := sim.New(preset)
		require.NoError(t, err)
		require.Equal(t, want, gpuUUIDs(t, b)[0], preset)
	}
}

func TestSpecErrors(t *testing.T) {
	tests := map[string]struct {
		spec    string
		wantErr []string
	}{
		"unknown preset":     {spec: "dgxz100", wantErr: []string{"neither a preset", "dgxa100, dgxa100-mig, dgxh100"}},
		"unknown key":        {spec: "testdata/unknown-key.yaml", wantErr: []string{`unknown field "cuont"`, "accepted keys"}},
		"unknown top key":    {spec: "testdata/top-level-key.yaml", wantErr: []string{`unknown field "gpu"`}},
		"unknown model":      {spec: "testdata/unknown-model.yaml", wantErr: []string{`unknown model "V100-SXM2-16GB"`, "A100-SXM4-80GB", "H100-SXM5-80GB"}},
		"zero count":         {spec: "testdata/zero-count.yaml", wantErr: []string{"gpus[0]: count must be at least 1"}},
		"no gpus":            {spec: "testdata/empty.yaml", wantErr: []string{"no gpus"}},
		"profile not on 40g": {spec: "testdata/bad-profile.yaml", wantErr: []string{`unknown MIG profile "1g.20gb"`, "1g.5gb, 2g.10gb", "1g.5gb+me, 1g.10gb"}},
		"does not fit":       {spec: "testdata/too-many-slices.yaml", wantErr: []string{"does not fit"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := sim.New(tc.spec)
			require.ErrorIs(t, err, sim.ErrSpec)
			for _, s := range tc.wantErr {
				require.ErrorContains(t, err, s)
			}
		})
	}
}

func TestFileSpec(t *testing.T) {
	b, err := sim.New("testdata/mixed.yaml")
	require.NoError(t, err)
	require.Equal(t, "simulated file testdata/mixed.yaml", b.Name())
	inv := discover(t, b)
	require.Len(t, inv.GPUs, 4)
	for i, g := range inv.GPUs[:2] {
		require.True(t, g.MigEnabled, i)
		require.ElementsMatch(t, []string{"3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"}, profiles(g))
	}
	for _, g := range inv.GPUs[2:] {
		require.Equal(t, "NVIDIA H100 80GB HBM3", g.Model)
		require.False(t, g.MigEnabled)
	}
	require.Equal(t, []int{0, 0, 1, 1}, []int{inv.GPUs[0].NUMANode, inv.GPUs[1].NUMANode, inv.GPUs[2].NUMANode, inv.GPUs[3].NUMANode})
}

func TestSetMigLayoutCapacity(t *testing.T) {
	tests := map[string]struct {
		layout  []string
		wantErr error // nil: fits
		wantMsg string
	}{
		"seven 1g.10gb":            {layout: slices.Repeat([]string{"1g.10gb"}, 7)},
		"eighth 1g.10gb":           {layout: slices.Repeat([]string{"1g.10gb"}, 8), wantErr: nvml.ERROR_INSUFFICIENT_RESOURCES},
		"two 4g.40gb":              {layout: []string{"4g.40gb", "4g.40gb"}, wantErr: nvml.ERROR_INSUFFICIENT_RESOURCES},
		"4g and 3g":                {layout: []string{"3g.40gb", "4g.40gb"}},
		"two 3g":                   {layout: []string{"3g.40gb", "3g.40gb"}},
		"7g alone":                 {layout: []string{"7g.80gb"}},
		"7g and a 1g":              {layout: []string{"7g.80gb", "1g.10gb"}, wantErr: nvml.ERROR_INSUFFICIENT_RESOURCES},
		"order does not matter":    {layout: []string{"1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb"}},
		"four 1g.20gb":             {layout: slices.Repeat([]string{"1g.20gb"}, 4)},
		"1g.20gb leaves no 1g":     {layout: append(slices.Repeat([]string{"1g.20gb"}, 4), "1g.10gb"), wantErr: nvml.ERROR_INSUFFICIENT_RESOURCES},
		"one media extension":      {layout: []string{"1g.10gb+me", "1g.10gb"}},
		"two media extensions":     {layout: []string{"1g.10gb+me", "1g.10gb+me"}, wantErr: nvml.ERROR_INSUFFICIENT_RESOURCES},
		"three 2g":                 {layout: []string{"2g.20gb", "2g.20gb", "2g.20gb", "1g.10gb"}},
		"unknown profile":          {layout: []string{"1g.5gb"}, wantMsg: `unknown MIG profile "1g.5gb"`},
		"smaller compute instance": {layout: []string{"1c.3g.40gb", "4g.40gb"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b, err := sim.New("dgxa100-mig")
			require.NoError(t, err)
			before := profiles(discover(t, b).GPUs[0])
			err = b.SetMigLayout(0, tc.layout)
			inv := discover(t, b)
			switch {
			case tc.wantErr != nil:
				require.ErrorIs(t, err, tc.wantErr)
				require.Equal(t, before, profiles(inv.GPUs[0]), "a failed change keeps the old layout")
			case tc.wantMsg != "":
				require.ErrorContains(t, err, tc.wantMsg)
			default:
				require.NoError(t, err)
				require.ElementsMatch(t, tc.layout, profiles(inv.GPUs[0]))
				for _, m := range inv.GPUs[0].MigDevices {
					require.NoError(t, m.CapErr)
				}
			}
		})
	}
}

// TestNVMLCapacity drives the completed mock through NVML calls, as mig-parted
// or nvidia-smi would.
func TestNVMLCapacity(t *testing.T) {
	b, err := sim.New("dgxa100-mig")
	require.NoError(t, err)
	lib := b.NVML()
	profile := func(d nvml.Device, id int) *nvml.GpuInstanceProfileInfo {
		info, ret := d.GetGpuInstanceProfileInfo(id)
		require.Equal(t, nvml.SUCCESS, ret)
		return &info
	}
	full, ret := lib.DeviceGetHandleByIndex(1)
	require.Equal(t, nvml.SUCCESS, ret)
	off, ret := lib.DeviceGetHandleByIndex(2)
	require.Equal(t, nvml.SUCCESS, ret)

	t.Run("full GPU refuses an eighth slice", func(t *testing.T) {
		_, ret := full.CreateGpuInstance(profile(full, nvml.GPU_INSTANCE_PROFILE_1_SLICE))
		require.Equal(t, nvml.ERROR_INSUFFICIENT_RESOURCES, ret)
		n, ret := full.GetGpuInstanceRemainingCapacity(profile(full, nvml.GPU_INSTANCE_PROFILE_1_SLICE))
		require.Equal(t, nvml.SUCCESS, ret)
		require.Zero(t, n)
	})
	t.Run("MIG off refuses instances", func(t *testing.T) {
		_, ret := off.CreateGpuInstance(profile(off, nvml.GPU_INSTANCE_PROFILE_1_SLICE))
		require.Equal(t, nvml.ERROR_NOT_SUPPORTED, ret)
	})
	t.Run("disable with instances is refused", func(t *testing.T) {
		_, ret := full.SetMigMode(nvml.DEVICE_MIG_DISABLE)
		require.Equal(t, nvml.ERROR_IN_USE, ret)
	})
	t.Run("create, count, destroy", func(t *testing.T) {
		_, ret := off.SetMigMode(nvml.DEVICE_MIG_ENABLE)
		require.Equal(t, nvml.SUCCESS, ret)
		p4 := profile(off, nvml.GPU_INSTANCE_PROFILE_4_SLICE)
		gi, ret := off.CreateGpuInstance(p4)
		require.Equal(t, nvml.SUCCESS, ret)
		_, ret = off.CreateGpuInstance(p4)
		require.Equal(t, nvml.ERROR_INSUFFICIENT_RESOURCES, ret)
		n, ret := off.GetGpuInstanceRemainingCapacity(profile(off, nvml.GPU_INSTANCE_PROFILE_1_SLICE))
		require.Equal(t, nvml.SUCCESS, ret)
		require.Equal(t, 3, n, "slices 4-6 remain for 1g")

		ciProfile, ret := gi.GetComputeInstanceProfileInfo(nvml.COMPUTE_INSTANCE_PROFILE_4_SLICE, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
		require.Equal(t, nvml.SUCCESS, ret)
		ci, ret := gi.CreateComputeInstance(&ciProfile)
		require.Equal(t, nvml.SUCCESS, ret)
		_, ret = gi.CreateComputeInstance(&ciProfile)
		require.Equal(t, nvml.ERROR_INSUFFICIENT_RESOURCES, ret, "the GI has no slices left")

		migs, err := device.New(lib, device.WithVerifySymbols(false)).NewDevice(off)
		require.NoError(t, err)
		got, err := migs.GetMigDevices()
		require.NoError(t, err)
		require.Len(t, got, 1)
		p, err := got[0].GetProfile()
		require.NoError(t, err)
		require.Equal(t, "4g.40gb", p.String())
		uuid, ret := got[0].GetUUID()
		require.Equal(t, nvml.SUCCESS, ret)
		byUUID, ret := lib.DeviceGetHandleByUUID(uuid)
		require.Equal(t, nvml.SUCCESS, ret)
		isMig, ret := byUUID.IsMigDeviceHandle()
		require.Equal(t, nvml.SUCCESS, ret)
		require.True(t, isMig)

		require.Equal(t, nvml.ERROR_IN_USE, gi.Destroy(), "compute instance still there")
		require.Equal(t, nvml.SUCCESS, ci.Destroy())
		require.Equal(t, nvml.SUCCESS, gi.Destroy())
		_, ret = off.SetMigMode(nvml.DEVICE_MIG_DISABLE)
		require.Equal(t, nvml.SUCCESS, ret)
	})
}

func TestSetMigLayoutRediscover(t *testing.T) {
	b, err := sim.New("dgxa100-mig")
	require.NoError(t, err)
	require.Error(t, b.SetMigLayout(8, []string{"1g.10gb"}))

	require.NoError(t, b.SetMigLayout(3, []string{"7g.80gb"}))
	require.NoError(t, b.SetMigLayout(1, nil))
	inv := discover(t, b)
	require.True(t, inv.GPUs[3].MigEnabled)
	require.Equal(t, []string{"7g.80gb"}, profiles(inv.GPUs[3]))
	require.Equal(t, 0, inv.GPUs[3].MigDevices[0].GI)
	require.False(t, inv.GPUs[1].MigEnabled)
	require.Empty(t, inv.GPUs[1].MigDevices)

	// Re-creating a layout makes new MIG devices: as on hardware, none
	// gets a UUID an earlier instance at its place had (DESIGN §10).
	first := inv.GPUs[3].MigDevices[0].UUID
	seen := map[string]bool{first: true}
	for range 3 {
		require.NoError(t, b.SetMigLayout(3, nil))
		require.NoError(t, b.SetMigLayout(3, []string{"7g.80gb"}))
		again := discover(t, b).GPUs[3].MigDevices[0]
		require.Equal(t, 0, again.GI, "same placement")
		require.False(t, seen[again.UUID], "UUID %s reused", again.UUID)
		seen[again.UUID] = true
	}
}

// TestConcurrentRescan runs discovery while layouts change, for -race.
func TestConcurrentRescan(t *testing.T) {
	b, err := sim.New("dgxa100-mig")
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 20 {
			layout := []string{"3g.40gb", "3g.40gb"}
			if i%2 == 0 {
				layout = slices.Repeat([]string{"1g.10gb"}, 7)
			}
			if err := b.SetMigLayout(0, layout); err != nil {
				t.Error(err)
			}
		}
	})
	for range 10 {
		inv, err := gpu.Discover(context.Background(), b)
		require.NoError(t, err)
		require.Len(t, inv.GPUs, 8)
	}
	wg.Wait()
}

func TestHost(t *testing.T) {
	b, err := sim.New("dgxa100")
	require.NoError(t, err)
	tests := map[string]struct {
		path    string
		want    gpu.DeviceNode
		wantErr error
	}{
		"gpu node":     {path: "/dev/nvidia7", want: gpu.DeviceNode{Path: "/dev/nvidia7", HostPath: "/dev/nvidia7", Major: 195, Minor: 7}},
		"ctl":          {path: "/dev/nvidiactl", want: gpu.DeviceNode{Path: "/dev/nvidiactl", HostPath: "/dev/nvidiactl", Major: 195, Minor: 255}},
		"cap":          {path: "/dev/nvidia-caps/nvidia-cap138", want: gpu.DeviceNode{Path: "/dev/nvidia-caps/nvidia-cap138", HostPath: "/dev/nvidia-caps/nvidia-cap138", Major: sim.MajorCaps, Minor: 138}},
		"no such gpu":  {path: "/dev/nvidia8", wantErr: fs.ErrNotExist},
		"no such node": {path: "/dev/null", wantErr: fs.ErrNotExist},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := b.Host().DeviceNode(tc.path)
			if tc.wantErr != nil {
				require.True(t, errors.Is(err, tc.wantErr), err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
	minors, err := b.Host().MigCapMinors()
	require.NoError(t, err)
	require.Contains(t, string(minors), "gpu1/gi0/access 138\n")
	require.Contains(t, string(minors), "gpu7/gi14/ci7/access 1082\n")

	for name, want := range map[string]uint32{"nvidia-uvm": sim.MajorUVM, "nvidia-caps": sim.MajorCaps, "nvidia-frontend": sim.MajorNVIDIA} {
		got, err := b.Host().CharMajor(name)
		require.NoError(t, err, name)
		require.Equal(t, want, got, name)
	}
	_, err = b.Host().CharMajor("nvidia-modeset")
	require.ErrorIs(t, err, fs.ErrNotExist)
}

func TestListings(t *testing.T) {
	require.Equal(t, []string{"dgxa100", "dgxa100-mig", "dgxh100"}, sim.Presets())
	require.Contains(t, sim.Models(), "A100-SXM4-80GB")
	for _, p := range sim.Presets() {
		_, err := sim.New(p)
		require.NoError(t, err, p)
	}
}
