package sim

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/NVIDIA/go-nvlib/pkg/nvlib/device"
	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

const mib = 1024 * 1024

// simGPU completes one mock device. Its MIG state (dev.MigMode,
// dev.GpuInstances, their ComputeInstances, migs, created, gen), procs and
// faults are guarded by b.mu; the rest is immutable after newSimGPU.
type simGPU struct {
	b     *Backend
	dev   *server.Device
	cfg   gpus.Config
	index int
	model string
	seed  string // with index, derives the GPU's and its MIG devices' UUIDs
	// slots is the number of memory slices placements are counted in (8 on
	// A100/H100-class GPUs, 4 on A30).
	slots      uint32
	placements map[int][]nvml.GpuInstancePlacement
	maxMig     int
	migs       map[*server.ComputeInstance]*migDevice
	// created counts the compute instances ever created at each (GPU
	// instance ID, compute instance ID), and gen is a live compute
	// instance's count there: a MIG device made anew never gets a UUID an
	// earlier one at its place had, as on hardware.
	created map[[2]uint32]int
	gen     map[*server.ComputeInstance]int
	// procs are the simulated processes by PID, each in a compute instance
	// (nil: on the whole GPU).
	procs  map[uint32]*server.ComputeInstance
	faults []*fault
}

// placements8 are the GPU instance placements of the 7-slice GPUs (A100,
// H100, H200, B200), in memory slices of eight. The mock gets the Hopper and
// Blackwell ones wrong (sizes of 3 and 7, 1g.20gb in one slice).
var placements8 = map[int][]nvml.GpuInstancePlacement{
	nvml.GPU_INSTANCE_PROFILE_1_SLICE:      span(1, 0, 1, 2, 3, 4, 5, 6),
	nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1: span(1, 0, 1, 2, 3, 4, 5, 6),
	nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2: span(2, 0, 2, 4, 6),
	nvml.GPU_INSTANCE_PROFILE_2_SLICE:      span(2, 0, 2, 4),
	nvml.GPU_INSTANCE_PROFILE_3_SLICE:      span(4, 0, 4),
	nvml.GPU_INSTANCE_PROFILE_4_SLICE:      span(4, 0),
	nvml.GPU_INSTANCE_PROFILE_7_SLICE:      span(8, 0),
}

func span(size uint32, starts ...uint32) []nvml.GpuInstancePlacement {
	var ps []nvml.GpuInstancePlacement
	for _, s := range starts {
		ps = append(ps, nvml.GpuInstancePlacement{Start: s, Size: size})
	}
	return ps
}

func newSimGPU(b *Backend, dev *server.Device, index, count int, model, seed string) *simGPU {
	g := &simGPU{
		b:          b,
		dev:        dev,
		cfg:        dev.Config,
		index:      index,
		model:      model,
		seed:       seed,
		placements: map[int][]nvml.GpuInstancePlacement{},
		migs:       map[*server.ComputeInstance]*migDevice{},
		created:    map[[2]uint32]int{},
		gen:        map[*server.ComputeInstance]int{},
		procs:      map[uint32]*server.ComputeInstance{},
	}
	dev.UUID = gpuUUID(seed, index)
	profiles := g.cfg.MIGProfiles.GpuInstanceProfiles
	for id := range profiles {
		ps := g.cfg.MIGProfiles.GpuInstancePlacements[id]
		if _, ok := profiles[nvml.GPU_INSTANCE_PROFILE_7_SLICE]; ok {
			ps = placements8[id]
		}
		g.placements[id] = ps
		for _, p := range ps {
			g.slots = max(g.slots, p.Start+p.Size)
		}
	}
	if p, ok := profiles[nvml.GPU_INSTANCE_PROFILE_1_SLICE]; ok {
		g.maxMig = int(p.InstanceCount)
	}
	g.complete(count)
	return g
}

func (g *simGPU) migCapable() bool { return len(g.cfg.MIGProfiles.GpuInstanceProfiles) > 0 }

// complete fills in the device calls the mock lacks or gets wrong.
func (g *simGPU) complete(count int) {
	d, mu := g.dev, &g.b.mu
	d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) {
		info := nvml.PciInfo{Bus: uint32(g.index), PciDeviceId: g.cfg.PciDeviceId}
		putCString(info.BusId[:], fmt.Sprintf("%08X:%02X:00.0", 0, g.index))
		putCString(info.BusIdLegacy[:], fmt.Sprintf("%04X:%02X:00.0", 0, g.index))
		return info, nvml.SUCCESS
	}
	// Two sockets: the first half of the GPUs on NUMA node 0.
	d.GetNumaNodeIdFunc = func() (int, nvml.Return) { return g.index * 2 / count, nvml.SUCCESS }
	d.GetMigModeFunc = func() (int, int, nvml.Return) {
		if !g.migCapable() {
			return 0, 0, nvml.ERROR_NOT_SUPPORTED
		}
		mu.Lock()
		defer mu.Unlock()
		return d.MigMode, d.MigMode, nvml.SUCCESS
	}
	d.SetMigModeFunc = func(mode int) (nvml.Return, nvml.Return) {
		if !g.migCapable() {
			return nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_NOT_SUPPORTED
		}
		mu.Lock()
		defer mu.Unlock()
		if len(g.procs) > 0 || (mode == nvml.DEVICE_MIG_DISABLE && len(d.GpuInstances) > 0) {
			return nvml.ERROR_IN_USE, nvml.ERROR_IN_USE
		}
		d.MigMode = mode
		return nvml.SUCCESS, nvml.SUCCESS
	}
	d.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) {
		if !g.migCapable() {
			return 0, nvml.ERROR_NOT_SUPPORTED
		}
		return g.maxMig, nvml.SUCCESS
	}
	d.IsMigDeviceHandleFunc = func() (bool, nvml.Return) { return false, nvml.SUCCESS }
	d.GetDeviceHandleFromMigDeviceHandleFunc = func() (nvml.Device, nvml.Return) {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	d.GetGpuInstancePossiblePlacementsFunc = func(info *nvml.GpuInstanceProfileInfo) ([]nvml.GpuInstancePlacement, nvml.Return) {
		ps, ok := g.placements[int(info.Id)]
		if !ok {
			return nil, nvml.ERROR_NOT_SUPPORTED
		}
		return slices.Clone(ps), nvml.SUCCESS
	}
	d.CreateGpuInstanceFunc = func(info *nvml.GpuInstanceProfileInfo) (nvml.GpuInstance, nvml.Return) {
		mu.Lock()
		defer mu.Unlock()
		if ret, ok := g.faultLocked(OpCreateGpuInstance); ok {
			return nil, ret
		}
		return g.createGILocked(info, nil)
	}
	d.CreateGpuInstanceWithPlacementFunc = func(info *nvml.GpuInstanceProfileInfo, p *nvml.GpuInstancePlacement) (nvml.GpuInstance, nvml.Return) {
		if p == nil {
			return nil, nvml.ERROR_INVALID_ARGUMENT
		}
		mu.Lock()
		defer mu.Unlock()
		if ret, ok := g.faultLocked(OpCreateGpuInstance); ok {
			return nil, ret
		}
		return g.createGILocked(info, p)
	}
	d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		mu.Lock()
		defer mu.Unlock()
		return g.processesLocked(nil), nvml.SUCCESS
	}
	d.GetGpuInstanceRemainingCapacityFunc = func(info *nvml.GpuInstanceProfileInfo) (int, nvml.Return) {
		mu.Lock()
		defer mu.Unlock()
		// Placements interact, so count by filling a copy of the occupancy.
		profile, used, count := int(info.Id), g.usedLocked(), g.countLocked(int(info.Id))
		n := 0
		for {
			p, ok := g.freePlacement(profile, used, count+n)
			if !ok {
				return n, nvml.SUCCESS
			}
			used |= mask(p)
			n++
		}
	}
	d.GetGpuInstancesFunc = func(info *nvml.GpuInstanceProfileInfo) ([]nvml.GpuInstance, nvml.Return) {
		mu.Lock()
		defer mu.Unlock()
		var out []nvml.GpuInstance
		for _, gi := range g.gisLocked() {
			if gi.Info.ProfileId == info.Id {
				out = append(out, gi)
			}
		}
		return out, nvml.SUCCESS
	}
	d.GetGpuInstanceByIdFunc = func(id int) (nvml.GpuInstance, nvml.Return) {
		mu.Lock()
		defer mu.Unlock()
		for gi := range d.GpuInstances {
			if int(gi.Info.Id) == id {
				return gi, nvml.SUCCESS
			}
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	d.GetMigDeviceHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if i < 0 || i >= g.maxMig {
			return nil, nvml.ERROR_INVALID_ARGUMENT
		}
		mu.Lock()
		defer mu.Unlock()
		migs := g.migDevicesLocked()
		if i >= len(migs) {
			return nil, nvml.ERROR_NOT_FOUND
		}
		return migs[i], nvml.SUCCESS
	}
}

// putCString copies s into a NUL-terminated C char array.
func putCString(dst []int8, s string) {
	for i := 0; i < len(s) && i < len(dst)-1; i++ {
		dst[i] = int8(s[i])
	}
}

// gisLocked lists the GPU instances ordered by ID.
func (g *simGPU) gisLocked() []*server.GpuInstance {
	gis := make([]*server.GpuInstance, 0, len(g.dev.GpuInstances))
	for gi := range g.dev.GpuInstances {
		gis = append(gis, gi)
	}
	slices.SortFunc(gis, func(a, b *server.GpuInstance) int { return cmp.Compare(a.Info.Id, b.Info.Id) })
	return gis
}

// cisLocked lists a GPU instance's compute instances ordered by ID.
func cisLocked(gi *server.GpuInstance) []*server.ComputeInstance {
	cis := make([]*server.ComputeInstance, 0, len(gi.ComputeInstances))
	for ci := range gi.ComputeInstances {
		cis = append(cis, ci)
	}
	slices.SortFunc(cis, func(a, b *server.ComputeInstance) int { return cmp.Compare(a.Info.Id, b.Info.Id) })
	return cis
}

// usedLocked is the bitmask of memory slices the GPU instances occupy.
func (g *simGPU) usedLocked() uint32 {
	var used uint32
	for gi := range g.dev.GpuInstances {
		used |= mask(gi.Info.Placement)
	}
	return used
}

func (g *simGPU) countLocked(profile int) int {
	n := 0
	for gi := range g.dev.GpuInstances {
		if int(gi.Info.ProfileId) == profile {
			n++
		}
	}
	return n
}

func mask(p nvml.GpuInstancePlacement) uint32 { return (1<<p.Size - 1) << p.Start }

// freePlacement returns the last placement of profile that does not overlap
// used, provided count more instances of it are still allowed. The driver
// fills from the top too, which keeps the low slices for large profiles.
func (g *simGPU) freePlacement(profile int, used uint32, count int) (nvml.GpuInstancePlacement, bool) {
	info, ok := g.cfg.MIGProfiles.GpuInstanceProfiles[profile]
	if !ok || count >= int(info.InstanceCount) {
		return nvml.GpuInstancePlacement{}, false
	}
	ps := g.placements[profile]
	for i := len(ps) - 1; i >= 0; i-- {
		if mask(ps[i])&used == 0 {
			return ps[i], true
		}
	}
	return nvml.GpuInstancePlacement{}, false
}

// giID numbers a placement the way the driver does: GPU instances form a
// binary tree over the memory slices (whole GPU 0, halves 1–2, quarters 3–6,
// eighths 7–14), which is also how mig-minors numbers them.
func (g *simGPU) giID(p nvml.GpuInstancePlacement) uint32 {
	level := 0
	for s := g.slots; s > p.Size; s /= 2 {
		level++
	}
	return uint32(1<<level-1) + p.Start/p.Size
}

// createGILocked creates a GPU instance at p, or at the last free placement
// when p is nil, with the driver's checks.
func (g *simGPU) createGILocked(info *nvml.GpuInstanceProfileInfo, p *nvml.GpuInstancePlacement) (*server.GpuInstance, nvml.Return) {
	if g.dev.MigMode != nvml.DEVICE_MIG_ENABLE {
		return nil, nvml.ERROR_NOT_SUPPORTED
	}
	profile := int(info.Id)
	prof, ok := g.cfg.MIGProfiles.GpuInstanceProfiles[profile]
	if !ok {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	used, count := g.usedLocked(), g.countLocked(profile)
	var at nvml.GpuInstancePlacement
	if p == nil {
		if at, ok = g.freePlacement(profile, used, count); !ok {
			return nil, nvml.ERROR_INSUFFICIENT_RESOURCES
		}
	} else {
		if !slices.Contains(g.placements[profile], *p) {
			return nil, nvml.ERROR_INVALID_ARGUMENT
		}
		if mask(*p)&used != 0 || count >= int(prof.InstanceCount) {
			return nil, nvml.ERROR_INSUFFICIENT_RESOURCES
		}
		at = *p
	}
	gi := server.NewGpuInstanceFromInfo(nvml.GpuInstanceInfo{
		Device:    g.dev,
		Id:        g.giID(at),
		ProfileId: prof.Id,
		Placement: at,
	}, g.cfg.MIGProfiles)
	g.completeGI(gi)
	g.dev.GpuInstances[gi] = struct{}{}
	return gi, nvml.SUCCESS
}

// completeGI replaces the mock's GPU instance calls with checked ones that
// share the backend lock.
func (g *simGPU) completeGI(gi *server.GpuInstance) {
	mu := &g.b.mu
	gi.CreateComputeInstanceFunc = func(info *nvml.ComputeInstanceProfileInfo) (nvml.ComputeInstance, nvml.Return) {
		mu.Lock()
		defer mu.Unlock()
		if ret, ok := g.faultLocked(OpCreateComputeInstance); ok {
			return nil, ret
		}
		return g.createCILocked(gi, info)
	}
	gi.GetComputeInstancesFunc = func(info *nvml.ComputeInstanceProfileInfo) ([]nvml.ComputeInstance, nvml.Return) {
		mu.Lock()
		defer mu.Unlock()
		var out []nvml.ComputeInstance
		for _, ci := range cisLocked(gi) {
			if ci.Info.ProfileId == info.Id {
				out = append(out, ci)
			}
		}
		return out, nvml.SUCCESS
	}
	gi.GetComputeInstanceByIdFunc = func(id int) (nvml.ComputeInstance, nvml.Return) {
		mu.Lock()
		defer mu.Unlock()
		for ci := range gi.ComputeInstances {
			if int(ci.Info.Id) == id {
				return ci, nvml.SUCCESS
			}
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	gi.DestroyFunc = func() nvml.Return {
		mu.Lock()
		defer mu.Unlock()
		if _, ok := g.dev.GpuInstances[gi]; !ok {
			return nvml.ERROR_INVALID_ARGUMENT
		}
		if ret, ok := g.faultLocked(OpDestroyGpuInstance); ok {
			return ret
		}
		if len(gi.ComputeInstances) > 0 {
			return nvml.ERROR_IN_USE
		}
		delete(g.dev.GpuInstances, gi)
		return nvml.SUCCESS
	}
}

// createCILocked creates a compute instance in gi, within the GPU
// instance's slices.
func (g *simGPU) createCILocked(gi *server.GpuInstance, info *nvml.ComputeInstanceProfileInfo) (*server.ComputeInstance, nvml.Return) {
	if _, ok := g.dev.GpuInstances[gi]; !ok {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	giProf := g.cfg.MIGProfiles.GpuInstanceProfiles[int(gi.Info.ProfileId)]
	prof, ok := g.cfg.MIGProfiles.ComputeInstanceProfiles[int(gi.Info.ProfileId)][int(info.Id)]
	if !ok {
		return nil, nvml.ERROR_NOT_SUPPORTED
	}
	var slicesUsed, same uint32
	taken := map[uint32]bool{}
	for ci := range gi.ComputeInstances {
		p := g.cfg.MIGProfiles.ComputeInstanceProfiles[int(gi.Info.ProfileId)][int(ci.Info.ProfileId)]
		slicesUsed += p.SliceCount
		if ci.Info.ProfileId == prof.Id {
			same++
		}
		taken[ci.Info.Id] = true
	}
	if slicesUsed+prof.SliceCount > giProf.SliceCount || same >= prof.InstanceCount {
		return nil, nvml.ERROR_INSUFFICIENT_RESOURCES
	}
	var id uint32
	for taken[id] {
		id++
	}
	ci := server.NewComputeInstanceFromInfo(nvml.ComputeInstanceInfo{
		Device:      g.dev,
		GpuInstance: gi,
		Id:          id,
		ProfileId:   prof.Id,
	})
	ci.DestroyFunc = func() nvml.Return {
		g.b.mu.Lock()
		defer g.b.mu.Unlock()
		if _, ok := gi.ComputeInstances[ci]; !ok {
			return nvml.ERROR_INVALID_ARGUMENT
		}
		if ret, ok := g.faultLocked(OpDestroyComputeInstance); ok {
			return ret
		}
		if g.busyLocked(ci) {
			return nvml.ERROR_IN_USE
		}
		g.forgetCILocked(gi, ci)
		return nvml.SUCCESS
	}
	key := [2]uint32{gi.Info.Id, id}
	g.gen[ci] = g.created[key]
	g.created[key]++
	gi.ComputeInstances[ci] = struct{}{}
	return ci, nvml.SUCCESS
}

// forgetCILocked removes ci from gi and drops its MIG handle.
func (g *simGPU) forgetCILocked(gi *server.GpuInstance, ci *server.ComputeInstance) {
	delete(gi.ComputeInstances, ci)
	delete(g.migs, ci)
	delete(g.gen, ci)
}

// destroyAllLocked removes every compute and GPU instance, unless a process
// runs on the GPU.
func (g *simGPU) destroyAllLocked() nvml.Return {
	if len(g.procs) > 0 {
		return nvml.ERROR_IN_USE
	}
	for gi := range g.dev.GpuInstances {
		for ci := range gi.ComputeInstances {
			g.forgetCILocked(gi, ci)
		}
	}
	clear(g.dev.GpuInstances)
	return nvml.SUCCESS
}

// migDevicesLocked lists the MIG devices in MIG index order: by GPU instance
// ID, then compute instance ID. Handles are cached so that a MIG device keeps
// its handle for as long as it exists.
func (g *simGPU) migDevicesLocked() []*migDevice {
	var out []*migDevice
	for _, gi := range g.gisLocked() {
		for _, ci := range cisLocked(gi) {
			m, ok := g.migs[ci]
			if !ok {
				m = newMigDevice(g, gi, ci)
				g.migs[ci] = m
			}
			out = append(out, m)
		}
	}
	return out
}

// migProfile is a MIG profile resolved for one GPU model.
type migProfile struct {
	gi nvml.GpuInstanceProfileInfo
	ci nvml.ComputeInstanceProfileInfo
	// giName is the GPU instance profile's name, as mig.Catalog has it.
	giName string
}

// resolveProfiles maps NVIDIA profile names to this GPU's profile IDs with
// go-nvlib, so names mean exactly what they mean on hardware.
func (g *simGPU) resolveProfiles(names []string) ([]migProfile, error) {
	if !g.migCapable() {
		return nil, fmt.Errorf("GPU %d (%s) does not support MIG", g.index, g.model)
	}
	dev, err := device.New(g.b.srv, device.WithVerifySymbols(false)).NewDevice(g.dev)
	if err != nil {
		return nil, fmt.Errorf("GPU %d: %w", g.index, err)
	}
	known, err := dev.GetMigProfiles()
	if err != nil {
		return nil, fmt.Errorf("GPU %d: listing MIG profiles: %w", g.index, err)
	}
	var out []migProfile
	for _, name := range names {
		var found *migProfile
		for _, p := range known {
			if !p.Matches(name) {
				continue
			}
			info := p.GetInfo()
			ci, ok := g.cfg.MIGProfiles.ComputeInstanceProfiles[info.GIProfileID][info.CIProfileID]
			if !ok {
				continue
			}
			full := info
			full.C = full.G
			found = &migProfile{gi: g.cfg.MIGProfiles.GpuInstanceProfiles[info.GIProfileID], ci: ci, giName: full.String()}
			break
		}
		if found == nil {
			var names []string
			for _, p := range known {
				if info := p.GetInfo(); info.C == info.G {
					names = append(names, p.String())
				}
			}
			return nil, fmt.Errorf("GPU %d (%s): unknown MIG profile %q (accepted: %s)",
				g.index, g.model, name, strings.Join(slices.Compact(names), ", "))
		}
		out = append(out, *found)
	}
	return out, nil
}
