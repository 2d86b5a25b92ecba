package mig

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/NVIDIA/go-nvlib/pkg/nvlib/device"
	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpublocks/gpublocks/gpu"
)

// Catalog is what one GPU offers for MIG, as NVML reports it: its GPU
// instance profiles and the placements each may take. It does not change
// while the driver runs, so callers may keep it per GPU.
type Catalog struct {
	// Model is the GPU's product name, for messages.
	Model string
	// Profiles are ordered largest first, then by name.
	Profiles []Profile
	// Slices is the number of memory slices placements count in (8 on
	// A100/H100-class GPUs, 4 on A30).
	Slices int
	// ComputeSlices is the number of compute slices (7 on A100/H100-class
	// GPUs): the size of the profile that takes the whole GPU.
	ComputeSlices int
}

// Profile is one GPU instance profile of a GPU.
type Profile struct {
	// Name is NVIDIA's, as go-nvlib and nvidia-smi write it: "1g.10gb".
	Name string
	// Info is NVML's description. Info.Id is what a GPU instance's
	// GpuInstanceInfo.ProfileId refers to (19 for 1g.10gb on hardware; the
	// profile's enum value on the mock).
	Info nvml.GpuInstanceProfileInfo
	// Placements are where NVML lets an instance of it sit
	// (GetGpuInstancePossiblePlacements), in memory slices, in NVML's
	// order.
	Placements []gpu.Placement

	// mp is go-nvlib's view of the profile, for its name matching.
	mp device.MigProfile
	// ciProfile and ciEngProfile are the enum values of the compute
	// instance profile that spans the whole GPU instance, for
	// GpuInstance.GetComputeInstanceProfileInfo.
	ciProfile, ciEngProfile int
}

// size is the number of memory slices an instance of p takes.
func (p *Profile) size() int {
	if len(p.Placements) == 0 {
		return 0
	}
	return p.Placements[0].Size
}

// ReadCatalog asks NVML what dev offers: every GPU instance profile go-nvlib
// can name (GetGpuInstanceProfileInfo), and its placements
// (GetGpuInstancePossiblePlacements). Errors wrap ErrNotCapable for a GPU
// without MIG.
func ReadCatalog(dev nvml.Device) (*Catalog, error) {
	name, ret := dev.GetName()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("reading GPU name: %w", ret)
	}
	c := &Catalog{Model: name}
	d, err := profileParser.NewDevice(dev)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	capable, err := d.IsMigCapable()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if !capable {
		return nil, fmt.Errorf("%w: %s", ErrNotCapable, name)
	}
	err = gpu.VisitMigProfiles(dev, d, func(mp device.MigProfile, info nvml.GpuInstanceProfileInfo, ps []nvml.GpuInstancePlacement) error {
		pi := mp.GetInfo()
		p := Profile{Name: mp.String(), Info: info, mp: mp, ciProfile: pi.CIProfileID, ciEngProfile: pi.CIEngProfileID}
		for _, pl := range ps {
			p.Placements = append(p.Placements, gpu.Placement{Start: int(pl.Start), Size: int(pl.Size)})
			c.Slices = max(c.Slices, int(pl.Start+pl.Size))
		}
		c.ComputeSlices = max(c.ComputeSlices, int(info.SliceCount))
		c.Profiles = append(c.Profiles, p)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if c.Slices > 32 {
		return nil, fmt.Errorf("%s: NVML reports placements over %d memory slices; gpublocks handles at most 32", name, c.Slices)
	}
	slices.SortStableFunc(c.Profiles, func(a, b Profile) int {
		return cmp.Or(cmp.Compare(b.size(), a.size()), cmp.Compare(b.Info.SliceCount, a.Info.SliceCount), cmp.Compare(a.Name, b.Name))
	})
	return c, nil
}

// Profile returns the GPU's profile that name means (go-nvlib's matching:
// "1g.10gb+me" is the media-extension profile, "1g.10gb" is not). Errors
// wrap ErrInvalidProfile or ErrUnknownProfile and list what the GPU offers.
func (c *Catalog) Profile(name string) (*Profile, error) {
	if err := ValidateProfile(name); err != nil {
		return nil, err
	}
	for i := range c.Profiles {
		if c.Profiles[i].matches(name) {
			return &c.Profiles[i], nil
		}
	}
	return nil, fmt.Errorf("%w %q: %s offers %s", ErrUnknownProfile, name, c.Model, strings.Join(c.Names(), ", "))
}

// matches says whether name means p, with go-nvlib's rules (attribute order
// does not matter).
func (p *Profile) matches(name string) bool {
	return p.Name == name || (p.mp != nil && p.mp.Matches(name))
}

// Names lists the profiles the GPU offers, largest first.
func (c *Catalog) Names() []string {
	out := make([]string, len(c.Profiles))
	for i, p := range c.Profiles {
		out[i] = p.Name
	}
	return out
}

// MigEnabled checks dev's MIG mode: nil when enabled, else an error
// wrapping ErrNotCapable or ErrDisabled that says what to do. It is checked
// before the catalog is read: NVML answers profile questions only with MIG
// on.
func MigEnabled(dev nvml.Device) error {
	model, ret := dev.GetName()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("reading GPU name: %w", ret)
	}
	cur, pending, ret := dev.GetMigMode()
	switch {
	case ret == nvml.ERROR_NOT_SUPPORTED:
		return fmt.Errorf("%w: %s", ErrNotCapable, model)
	case ret != nvml.SUCCESS:
		return fmt.Errorf("%s: reading MIG mode: %w", model, ret)
	case cur == nvml.DEVICE_MIG_ENABLE:
		return nil
	case pending == nvml.DEVICE_MIG_ENABLE:
		return fmt.Errorf("%w on %s: it is enabled but pending until the GPU is reset (nvidia-smi -r); gpublocks never changes MIG mode", ErrDisabled, model)
	}
	return fmt.Errorf("%w on %s: enable MIG mode first (nvidia-smi -i <gpu> -mig 1, then a GPU reset on Ampere); gpublocks never changes MIG mode", ErrDisabled, model)
}

// slicesText writes a placement as "memory slices 4-7" or "memory slice 3".
func slicesText(p gpu.Placement) string {
	if p.Size == 1 {
		return "memory slice " + strconv.Itoa(p.Start)
	}
	return fmt.Sprintf("memory slices %d-%d", p.Start, p.Start+p.Size-1)
}

// startsText lists where a profile may start: "0, 2, 4, 6".
func startsText(ps []gpu.Placement) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(p.Start)
	}
	return strings.Join(s, ", ")
}

// retIs tells whether err is (or wraps) one of rets.
func retIs(err error, rets ...nvml.Return) bool {
	for _, r := range rets {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}
