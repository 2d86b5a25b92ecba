package daemon

import (
	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/blocks"
	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/shape"
)

// PreparedDevice is one device of a claim the DRA driver has prepared.
type PreparedDevice struct {
	Device  string // the device's name in the pool, e.g. gpu-0-blocks
	Shape   string // shape.Whole, shape.Blocks or shape.MIG
	GPUUUID string // the physical GPU (the parent, for a MIG device)
	UUID    string // the GPU's or the MIG device's UUID
}

// preparedAllocations describes prepared claims in the device plugin's ID
// vocabulary, so that the DP plan's deferral rules read them alike: a GPU
// prepared whole by its UUID, blocks as <uuid>::0, a MIG device by its
// UUID.
func preparedAllocations(prepared []PreparedDevice) *allocations {
	a := &allocations{ids: map[string]bool{}}
	for _, d := range prepared {
		switch d.Shape {
		case shape.Blocks:
			a.ids[blocks.FormatID(d.GPUUUID, 0)] = true
		case shape.MIG:
			a.ids[d.UUID] = true
		default:
			a.ids[d.GPUUUID] = true
		}
	}
	return a
}

// draKeep returns the offers that GPUs with prepared claims keep although
// cfg asks another: a GPU keeps offering what it offered (prev), or, for a
// GPU not published yet by this process, what its prepared devices show,
// until the claims are released. A prepared device must stay published:
// the scheduler counts the shared counters of allocated devices only
// through the published devices.
func draKeep(prev *State, inv *gpu.Inventory, cfg *config.Config, prepared []PreparedDevice) map[string]shape.Offer {
	if len(prepared) == 0 {
		return nil
	}
	want := map[string]shape.Offer{}
	for _, o := range shape.Offers(inv, cfg, nil) {
		want[o.GPU.UUID] = o
	}
	had := map[string]shape.Offer{}
	if prev != nil {
		for _, o := range prev.Offers {
			had[o.GPU.UUID] = o
		}
	}
	// A GPU is kept when a prepared device of it is not in what cfg
	// offers; it then offers what it did, plus what is prepared.
	kept := map[string]bool{}
	for _, d := range prepared {
		w, ok := want[d.GPUUUID]
		if !ok || w.GPU.MigEnabled || d.Shape == shape.MIG {
			// A GPU gone from the inventory, or MIG devices, which
			// follow the GPU's layout, not the config.
			continue
		}
		if (d.Shape == shape.Whole && !w.Whole) || (d.Shape == shape.Blocks && !w.Blocks) {
			kept[d.GPUUUID] = true
		}
	}
	if len(kept) == 0 {
		return nil
	}
	keep := map[string]shape.Offer{}
	for uuid := range kept {
		o := had[uuid]
		keep[uuid] = shape.Offer{Whole: o.Whole, Blocks: o.Blocks}
	}
	for _, d := range prepared {
		if !kept[d.GPUUUID] {
			continue
		}
		k := keep[d.GPUUUID]
		switch d.Shape {
		case shape.Whole:
			k.Whole = true
		case shape.Blocks:
			k.Blocks = true
		}
		keep[d.GPUUUID] = k
	}
	return keep
}

// logKeptOffers logs GPUs that start or stop keeping their DRA offer while
// claims hold their devices.
func logKeptOffers(logger klog.Logger, before, after map[string]shape.Offer, st *State) {
	for _, o := range st.Offers {
		if k, ok := after[o.GPU.UUID]; ok {
			if _, was := before[o.GPU.UUID]; !was {
				logger.Info("Offer change deferred: the GPU has devices of prepared claims; it changes once they are released",
					"gpu", o.GPU.Index, "uuid", o.GPU.UUID, "whole", k.Whole, "blocks", k.Blocks)
			}
		}
	}
	for uuid := range before {
		if _, still := after[uuid]; !still {
			logger.Info("Deferred offer change no longer held back", "uuid", uuid)
		}
	}
}
