package sim

import (
	"fmt"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"

	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/mig"
)

// Driver versions the simulation reports (those of go-nvml's DGX mocks).
const (
	DriverVersion     = "550.54.15"
	NVMLVersion       = "12.550.54.15"
	CUDADriverVersion = 12040
)

// Backend is a simulated node: go-nvml's mock NVML server, completed where it
// panics or is unfaithful (MIG handles, placements and capacity, stable IDs,
// PCI and NUMA data), plus the host tables a real node would provide. It
// satisfies gpu.Backend, so discovery runs the same code as on hardware.
//
// A Backend is safe for concurrent use: all MIG state sits behind one lock.
type Backend struct {
	name string
	srv  *server.Server
	host *host

	mu      sync.Mutex // guards MIG mode, GPU and compute instances, MIG handles, processes, faults
	gpus    []*simGPU
	nextPID uint32
	ev      events // event sets and lost GPUs (events.go)
}

var _ gpu.Backend = (*Backend)(nil)

// New builds a simulated node from a preset name (see Presets) or the path of
// a YAML file (see File). Errors wrap ErrSpec. The same spec always yields the
// same GPU and MIG UUIDs.
func New(specOrPath string) (*Backend, error) {
	sp, err := loadSpec(specOrPath)
	if err != nil {
		return nil, err
	}
	return build(sp)
}

// build creates the mock server for sp and applies its MIG layouts.
func build(sp *spec) (*Backend, error) {
	configs := make([]gpus.Config, len(sp.gpus))
	for i, g := range sp.gpus {
		configs[i] = g.cfg
	}
	srv, err := server.New(
		server.WithGPUs(configs...),
		server.WithDriverVersion(DriverVersion),
		server.WithNVMLVersion(NVMLVersion),
		server.WithCUDADriverVersion(CUDADriverVersion),
	)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: building mock NVML: %w", ErrSpec, sp.name, err)
	}
	b := &Backend{
		name: "simulated " + sp.name,
		srv:  srv,
		host: newHost(len(sp.gpus)),
	}
	for i, g := range sp.gpus {
		b.gpus = append(b.gpus, newSimGPU(b, srv.Devices[i].(*server.Device), i, len(sp.gpus), g.model, g.seed))
	}
	b.completeServer()
	for i, g := range sp.gpus {
		switch {
		case len(g.mig) > 0:
			if err := b.SetMigLayout(i, g.mig); err != nil {
				return nil, fmt.Errorf("%w: %s: %w", ErrSpec, sp.name, err)
			}
		case g.migOn:
			// `mig: []`: MIG enabled, no instances yet.
			if !b.gpus[i].migCapable() {
				return nil, fmt.Errorf("%w: %s: GPU %d (%s) does not support MIG", ErrSpec, sp.name, i, g.model)
			}
			b.gpus[i].dev.MigMode = nvml.DEVICE_MIG_ENABLE
		}
	}
	return b, nil
}

// completeServer fills in the server-level calls the mock lacks or gets
// wrong.
func (b *Backend) completeServer() {
	b.srv.ErrorStringFunc = func(r nvml.Return) string { return r.Error() }
	b.srv.DeviceGetHandleByUUIDFunc = func(uuid string) (nvml.Device, nvml.Return) {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, g := range b.gpus {
			if g.dev.UUID == uuid {
				if b.Lost(g.index) {
					return nil, nvml.ERROR_GPU_IS_LOST
				}
				return g.dev, nvml.SUCCESS
			}
			for _, m := range g.migDevicesLocked() {
				if m.uuid == uuid {
					if b.Lost(g.index) {
						return nil, nvml.ERROR_GPU_IS_LOST
					}
					return m, nvml.SUCCESS
				}
			}
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	b.installEvents()
}

// NVML returns the simulated library. It needs no Init.
func (b *Backend) NVML() nvml.Interface { return b.srv }

// Host returns the simulated host: device nodes and mig-minors.
func (b *Backend) Host() gpu.Host { return b.host }

// Name describes the simulation for logs, e.g. "simulated dgxa100".
func (b *Backend) Name() string { return b.name }

// Close does nothing; a simulation holds no resources.
func (b *Backend) Close() error { return nil }

// SetMigLayout changes GPU index's MIG layout the way an operator would with
// nvidia-smi or mig-parted, so a rescan sees the new devices: every instance
// is destroyed and the layout created anew (new MIG UUIDs). An empty list
// destroys all instances and disables MIG. Otherwise MIG is enabled and one
// GPU instance with a full-size compute instance is created per profile
// (NVIDIA names, e.g. "1g.10gb", "1g.10gb+me", "1c.3g.40gb"), placed by
// mig.Solve. A layout that does not fit fails with an error wrapping
// nvml.ERROR_INSUFFICIENT_RESOURCES, and one on a GPU running a process
// (StartProcess) with one wrapping nvml.ERROR_IN_USE; both leave the old
// layout in place.
func (b *Backend) SetMigLayout(index int, profiles []string) error {
	if index < 0 || index >= len(b.gpus) {
		return fmt.Errorf("no simulated GPU %d (have %d)", index, len(b.gpus))
	}
	g := b.gpus[index]
	var want []migProfile
	var plan *mig.Plan
	if len(profiles) > 0 {
		var err error
		if want, err = g.resolveProfiles(profiles); err != nil {
			return err
		}
		cat, err := mig.ReadCatalog(g.dev)
		if err != nil {
			return fmt.Errorf("GPU %d: %w", index, err)
		}
		// A compute instance profile ("1c.3g.40gb") places as its GPU
		// instance profile.
		gis := make(mig.Layout, len(profiles))
		for i, p := range profiles {
			gis[i] = giProfileName(p)
		}
		if plan, err = mig.Solve(cat, nil, gis); err != nil {
			return fmt.Errorf("GPU %d (%s): %w: %w", index, g.model, err, nvml.ERROR_INSUFFICIENT_RESOURCES)
		}
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if ret := g.destroyAllLocked(); ret != nvml.SUCCESS {
		return fmt.Errorf("GPU %d (%s): a process runs on it: %w", index, g.model, ret)
	}
	if len(want) == 0 {
		g.dev.MigMode = nvml.DEVICE_MIG_DISABLE
		return nil
	}
	g.dev.MigMode = nvml.DEVICE_MIG_ENABLE
	taken := make([]bool, len(want))
	for _, c := range plan.Create {
		i := -1
		for j, p := range want {
			if !taken[j] && p.giName == c.Profile {
				i = j
				break
			}
		}
		if i < 0 {
			return fmt.Errorf("GPU %d: the plan creates %s, which the layout does not list", index, c.Profile)
		}
		taken[i] = true
		p := want[i]
		at := nvml.GpuInstancePlacement{Start: uint32(c.Placement.Start), Size: uint32(c.Placement.Size)}
		gi, ret := g.createGILocked(&p.gi, &at)
		if ret != nvml.SUCCESS {
			return fmt.Errorf("GPU %d: creating GPU instance %s: %w", index, profiles[i], ret)
		}
		if _, ret := g.createCILocked(gi, &p.ci); ret != nvml.SUCCESS {
			return fmt.Errorf("GPU %d: creating compute instance %s: %w", index, profiles[i], ret)
		}
	}
	return nil
}

// giProfileName is the GPU instance profile of a profile name:
// "1c.3g.40gb" → "3g.40gb"; "1g.10gb" stays.
func giProfileName(p string) string {
	base, attrs, _ := strings.Cut(p, "+")
	if strings.Count(base, ".") == 2 {
		_, base, _ = strings.Cut(base, ".")
	}
	if attrs != "" {
		return base + "+" + attrs
	}
	return base
}
