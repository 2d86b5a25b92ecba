package mig

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpublocks/gpublocks/gpu"
)

// Instance is one GPU instance on a GPU, with its compute instances.
type Instance struct {
	// Profile is the GPU instance profile's name, e.g. "1g.10gb".
	Profile string
	// GI is the GPU instance ID, which the driver derives from the
	// placement (and mig-minors numbers capability nodes by).
	GI        int
	Placement gpu.Placement
	// CIs are the instance's compute instances, by ID.
	CIs []ComputeInstance
	// Processes are the PIDs of the compute processes NVML lists in the
	// instance (Read fills them in; ReadInstances does not).
	Processes []uint32

	profile *Profile
	handle  nvml.GpuInstance
}

// ComputeInstance is one compute instance of a GPU instance: one MIG
// device.
type ComputeInstance struct {
	ID int
	// Full is set when it spans its GPU instance (the layout's kind).
	Full bool
	// UUID is the MIG device's, "" when NVML did not list it.
	UUID string

	handle nvml.ComputeInstance
}

// Complete says whether the instance is what a layout asks for: one compute
// instance that spans it.
func (in *Instance) Complete() bool { return len(in.CIs) == 1 && in.CIs[0].Full }

// UUID is the MIG device UUID of a complete instance, else "".
func (in *Instance) UUID() string {
	if !in.Complete() {
		return ""
	}
	return in.CIs[0].UUID
}

// String names the instance for logs and errors: "3g.40gb (GPU instance 2,
// memory slices 4-7)".
func (in *Instance) String() string {
	return fmt.Sprintf("%s (GPU instance %d, %s)", in.Profile, in.GI, slicesText(in.Placement))
}

// State is a GPU's MIG catalog and instances, read at one moment.
type State struct {
	Catalog   *Catalog
	Instances []Instance // by GPU instance ID
}

// Read reads dev's catalog, its instances and the processes in them. MIG
// mode must be enabled (errors wrap ErrDisabled or ErrNotCapable
// otherwise). A driver that cannot list processes (ERROR_NOT_SUPPORTED)
// leaves Processes empty; any other failure to list them is an error, since
// whether an instance is in use decides what may change.
func Read(dev nvml.Device) (*State, error) {
	if err := MigEnabled(dev); err != nil {
		return nil, err
	}
	cat, err := ReadCatalog(dev)
	if err != nil {
		return nil, err
	}
	ins, err := ReadInstances(dev, cat)
	if err != nil {
		return nil, err
	}
	ps, err := Processes(dev)
	switch {
	case retIs(err, nvml.ERROR_NOT_SUPPORTED):
	case err != nil:
		return nil, fmt.Errorf("%s: cannot tell whether MIG instances are in use, so none is changed: %w", cat.Model, err)
	}
	for _, p := range ps {
		for i := range ins {
			if int(p.GpuInstanceId) == ins[i].GI {
				ins[i].Processes = append(ins[i].Processes, p.Pid)
			}
		}
	}
	return &State{Catalog: cat, Instances: ins}, nil
}

// ReadInstances lists dev's GPU instances of the catalog's profiles, each
// with its compute instances and their MIG device UUIDs.
func ReadInstances(dev nvml.Device, cat *Catalog) ([]Instance, error) {
	uuids := migUUIDs(dev)
	var out []Instance
	for i := range cat.Profiles {
		p := &cat.Profiles[i]
		gis, ret := dev.GetGpuInstances(&p.Info)
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("%s: listing %s GPU instances: %w", cat.Model, p.Name, ret)
		}
		for _, h := range gis {
			info, ret := h.GetInfo()
			if ret != nvml.SUCCESS {
				return nil, fmt.Errorf("%s: reading a %s GPU instance: %w", cat.Model, p.Name, ret)
			}
			in := Instance{
				Profile:   p.Name,
				GI:        int(info.Id),
				Placement: gpu.Placement{Start: int(info.Placement.Start), Size: int(info.Placement.Size)},
				profile:   p,
				handle:    h,
			}
			if in.CIs, ret = computeInstances(h, p, uuids, in.GI); ret != nvml.SUCCESS {
				return nil, fmt.Errorf("%s: listing compute instances of %s: %w", cat.Model, &in, ret)
			}
			out = append(out, in)
		}
	}
	slices.SortFunc(out, func(a, b Instance) int { return cmp.Compare(a.GI, b.GI) })
	return out, nil
}

// computeInstances lists gi's compute instances, of every compute instance
// profile NVML knows for it.
func computeInstances(gi nvml.GpuInstance, p *Profile, uuids map[[2]int]string, giID int) ([]ComputeInstance, nvml.Return) {
	full, ret := gi.GetComputeInstanceProfileInfo(p.ciProfile, p.ciEngProfile)
	if ret != nvml.SUCCESS {
		return nil, ret
	}
	var out []ComputeInstance
	seen := map[uint32]bool{}
	for j := range nvml.COMPUTE_INSTANCE_PROFILE_COUNT {
		info, ret := gi.GetComputeInstanceProfileInfo(j, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
		if ret == nvml.ERROR_NOT_SUPPORTED || ret == nvml.ERROR_INVALID_ARGUMENT {
			continue
		}
		if ret != nvml.SUCCESS {
			return nil, ret
		}
		if seen[info.Id] {
			continue
		}
		seen[info.Id] = true
		cis, ret := gi.GetComputeInstances(&info)
		if ret != nvml.SUCCESS {
			return nil, ret
		}
		for _, h := range cis {
			ci, ret := h.GetInfo()
			if ret != nvml.SUCCESS {
				return nil, ret
			}
			out = append(out, ComputeInstance{
				ID:     int(ci.Id),
				Full:   ci.ProfileId == full.Id,
				UUID:   uuids[[2]int{giID, int(ci.Id)}],
				handle: h,
			})
		}
	}
	slices.SortFunc(out, func(a, b ComputeInstance) int { return cmp.Compare(a.ID, b.ID) })
	return out, nvml.SUCCESS
}

// migUUIDs maps (GPU instance, compute instance) to MIG device UUIDs, from
// the parent's MIG device handles. Devices NVML cannot describe are left
// out: the UUID is for reports, never needed to change the layout.
func migUUIDs(dev nvml.Device) map[[2]int]string {
	out := map[[2]int]string{}
	n, ret := dev.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		return out
	}
	for i := range n {
		m, ret := dev.GetMigDeviceHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		gi, r1 := m.GetGpuInstanceId()
		ci, r2 := m.GetComputeInstanceId()
		uuid, r3 := m.GetUUID()
		if r1 == nvml.SUCCESS && r2 == nvml.SUCCESS && r3 == nvml.SUCCESS {
			out[[2]int{gi, ci}] = uuid
		}
	}
	return out
}

// Processes lists the compute processes NVML reports on dev. With MIG on,
// that is every process in every MIG device, each with its GpuInstanceId
// and ComputeInstanceId (NVML needs the privileges gpublocks runs with).
// The daemon applies a layout only when this is empty (DESIGN §10).
func Processes(dev nvml.Device) ([]nvml.ProcessInfo, error) {
	ps, ret := dev.GetComputeRunningProcesses()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("listing compute processes: %w", ret)
	}
	return ps, nil
}
