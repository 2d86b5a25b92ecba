package shape

import (
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
	// MIG lists the GPU's MIG devices on offer (only when MIG is enabled;
	// the GPU itself then offers neither whole nor blocks).
	MIG []gpu.MigDevice
}

// Offers decides what each GPU offers to DRA under cfg (DESIGN §9): a rule's
// `whole` offers the GPU whole only, `blocks` as blocks only, and a GPU no
// rule matches offers both, exclusive through its counters, so the
// scheduler decides per claim. A MIG-enabled GPU offers its MIG devices,
// except those whose capability nodes are unknown (they could not be
// injected). Keep pins GPUs (by UUID) to the shape they had, while claims
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
			for _, md := range g.MigDevices {
				if md.CapErr == nil {
					o.MIG = append(o.MIG, md)
				}
			}
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
