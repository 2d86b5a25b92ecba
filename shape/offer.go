package shape

import (
	"slices"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
)

// Offer is what one GPU offers, in no kubelet API's terms: the DRA
// publisher (package dra) turns offers into devices and counters, as Build
// turns the device plugin's assignments into resources.
type Offer struct {
	GPU    *gpu.GPU
	Whole  bool
	Blocks bool
	// MIG lists the MIG devices on offer (only when MIG is enabled; the
	// GPU itself then offers neither whole nor blocks): the GPU's existing
	// MIG devices, then one entry per free placement of each allowed
	// profile, with UUID "" (an instance DRA's prepare creates). Such an
	// entry has Profile, MemoryMiB, Placement and its parent's index and
	// UUID; GI and Index are -1.
	MIG []gpu.MigDevice
}

// Offers decides what each GPU offers to DRA under cfg (DESIGN §9): a rule's
// `whole` offers the GPU whole only, `blocks` as blocks only, and a GPU no
// rule matches offers both, exclusive through its counters, so the
// scheduler decides per claim. A MIG-enabled GPU offers MIG devices
// (migOffer). Keep pins GPUs (by UUID) to the shape they had, while claims
// hold their devices.
func Offers(inv *gpu.Inventory, cfg *config.Config, keep map[string]Offer) []Offer {
	out := make([]Offer, 0, len(inv.GPUs))
	for i := range inv.GPUs {
		g := &inv.GPUs[i]
		if k, ok := keep[g.UUID]; ok {
			k.GPU = g
			out = append(out, k)
			continue
		}
		o := Offer{GPU: g}
		switch shape, matched := cfg.RuleFor(g.Index, g.UUID, g.Model); {
		case g.MigEnabled:
			o.MIG = migOffer(g, cfg)
		case !matched:
			o.Whole, o.Blocks = true, true
		case shape == config.ShapeBlocks:
			o.Blocks = true
		default:
			o.Whole = true
		}
		out = append(out, o)
	}
	return out
}

// migOffer is what a MIG-enabled GPU offers to DRA (DESIGN §10):
//
//   - every existing MIG device whose capability nodes are known (others
//     could not be injected). An instance of a profile the config does not
//     allow stays on offer: it may be in use, and only its own claim's
//     unprepare destroys what gpublocks created;
//   - every placement NVML reports (gpu.GPU.MigProfiles) of each profile
//     the config's `shape: mig` rule allows (`mig:`, default all) that no
//     existing instance overlaps. An instance at exactly that placement,
//     of that profile, is the same device (the same name in the pool),
//     listed above with its UUID. A placement that an instance overlaps
//     could not be created while it exists, so it is not offered until
//     that instance is gone and the GPUs are discovered again.
//
// Profiles in `mig:` are compared with the names NVML's profiles have as
// go-nvlib writes them ("1g.10gb", "1g.10gb+me").
func migOffer(g *gpu.GPU, cfg *config.Config) []gpu.MigDevice {
	var out []gpu.MigDevice
	var used []gpu.Placement
	for _, md := range g.MigDevices {
		if md.Placement != nil {
			used = append(used, *md.Placement)
		}
		if md.CapErr == nil {
			out = append(out, md)
		}
	}
	allowed, _, ruled := cfg.MigLayoutFor(g.Index, g.UUID, g.Model)
	for _, p := range g.MigProfiles {
		if ruled && allowed != nil && !slices.Contains(allowed, p.Name) {
			continue
		}
		for _, pl := range p.Placements {
			if slices.ContainsFunc(used, func(u gpu.Placement) bool { return overlaps(u, pl) }) {
				continue
			}
			out = append(out, gpu.MigDevice{
				Index:       -1,
				Profile:     p.Name,
				GI:          -1,
				CI:          -1,
				MemoryMiB:   p.MemoryMiB,
				ParentIndex: g.Index,
				ParentUUID:  g.UUID,
				Placement:   &gpu.Placement{Start: pl.Start, Size: pl.Size},
			})
		}
	}
	return out
}

// overlaps tells whether two placements share a memory slice.
func overlaps(a, b gpu.Placement) bool {
	return a.Start < b.Start+b.Size && b.Start < a.Start+a.Size
}
