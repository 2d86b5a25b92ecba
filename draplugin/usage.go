package draplugin

import (
	"fmt"
	"maps"
	"slices"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/dra"
)

// usage is what the prepared claims hold, per physical GPU and per MIG
// device. It is the driver's last line of defence against double
// assignment (the scheduler's shared counters are the first): a GPU is
// held whole by one claim, or shared by blocks claims up to 100 blocks, or
// split into MIG devices that each belong to one claim, never two of
// these at once.
type usage struct {
	whole  map[string]holder // GPU UUID → the claim holding it whole
	blocks map[string]int    // GPU UUID → blocks prepared
	sharer map[string]holder // GPU UUID → a claim holding blocks of it
	mig    map[string]holder // MIG UUID → the claim holding it
	migOn  map[string]holder // GPU UUID → a claim holding a MIG device of it
	// migAt are the placements of the MIG devices prepared on each GPU (by
	// GPU UUID): a placement, or one that overlaps it, is never prepared
	// twice, whether or not its instance exists yet.
	migAt map[string][]heldPlacement
}

// heldPlacement is a prepared MIG device's placement and its claim.
type heldPlacement struct {
	at     placement
	device string
	h      holder
}

// holder names a claim in messages.
type holder struct {
	uid      types.UID
	ns, name string
}

func (h holder) String() string {
	return fmt.Sprintf("%s (uid %s)", klog.KRef(h.ns, h.name), h.uid)
}

// usage counts every prepared claim, whether or not its devices are still
// published.
func (d *Driver) usage() usage {
	u := usage{
		whole: map[string]holder{}, blocks: map[string]int{}, sharer: map[string]holder{},
		mig: map[string]holder{}, migOn: map[string]holder{}, migAt: map[string][]heldPlacement{},
	}
	for uid, pc := range d.claims {
		h := holder{uid: uid, ns: pc.Namespace, name: pc.Name}
		for _, dev := range pc.Devices {
			u.add(dev, h)
		}
	}
	return u
}

func (u usage) clone() usage {
	return usage{
		whole: maps.Clone(u.whole), blocks: maps.Clone(u.blocks), sharer: maps.Clone(u.sharer),
		mig: maps.Clone(u.mig), migOn: maps.Clone(u.migOn), migAt: maps.Clone(u.migAt),
	}
}

// take adds dev for h when that double-assigns nothing; otherwise it
// returns an error wrapping ErrConflict and changes nothing.
func (u usage) take(dev preparedDevice, h holder) error {
	if !dev.AdminAccess {
		if err := u.check(dev); err != nil {
			return fmt.Errorf("%w: %w; %s", ErrConflict, err, reallocate)
		}
	}
	u.add(dev, h)
	return nil
}

func (u usage) check(dev preparedDevice) error {
	g := dev.GPUUUID
	if h, ok := u.whole[g]; ok {
		return fmt.Errorf("device %s: GPU %s is prepared whole for claim %s", dev.Device, g, h)
	}
	switch dev.Type {
	case dra.TypeGPU:
		if h, ok := u.sharer[g]; ok {
			return fmt.Errorf("device %s: GPU %s has %d blocks prepared (for claim %s and maybe others), it cannot be used whole", dev.Device, g, u.blocks[g], h)
		}
		if h, ok := u.migOn[g]; ok {
			return fmt.Errorf("device %s: GPU %s has MIG devices prepared (for claim %s and maybe others), it cannot be used whole", dev.Device, g, h)
		}
	case dra.TypeBlocks:
		if h, ok := u.migOn[g]; ok {
			return fmt.Errorf("device %s: GPU %s has MIG devices prepared (for claim %s), it cannot be shared as blocks", dev.Device, g, h)
		}
		if used := u.blocks[g]; used+dev.Blocks > dra.BlocksPerGPU {
			return fmt.Errorf("device %s: GPU %s has %d of %d blocks prepared already (for claim %s and maybe others), %d more do not fit",
				dev.Device, g, used, dra.BlocksPerGPU, u.sharer[g], dev.Blocks)
		}
	case dra.TypeMIG:
		if h, ok := u.mig[dev.UUID]; ok && dev.UUID != "" {
			return fmt.Errorf("device %s: MIG device %s is prepared for claim %s", dev.Device, dev.UUID, h)
		}
		if dev.Placement != nil {
			for _, p := range u.migAt[g] {
				if p.at.overlaps(*dev.Placement) {
					return fmt.Errorf("device %s: its memory slices %d-%d on GPU %s overlap device %s, prepared for claim %s",
						dev.Device, dev.Placement.Start, dev.Placement.Start+dev.Placement.Size-1, g, p.device, p.h)
				}
			}
		}
		if h, ok := u.sharer[g]; ok {
			return fmt.Errorf("device %s: its GPU %s has blocks prepared (for claim %s)", dev.Device, g, h)
		}
	}
	return nil
}

func (u usage) add(dev preparedDevice, h holder) {
	if dev.AdminAccess {
		return // monitoring access takes nothing from the users
	}
	g := dev.GPUUUID
	switch dev.Type {
	case dra.TypeGPU:
		u.whole[g] = h
	case dra.TypeBlocks:
		u.blocks[g] += dev.Blocks
		if _, ok := u.sharer[g]; !ok {
			u.sharer[g] = h
		}
	case dra.TypeMIG:
		if dev.UUID != "" {
			u.mig[dev.UUID] = h
		}
		if dev.Placement != nil {
			// A new slice: u.migAt may share its arrays with the usage
			// it was cloned from.
			u.migAt[g] = append(slices.Clip(u.migAt[g]), heldPlacement{at: *dev.Placement, device: dev.Device, h: h})
		}
		if _, ok := u.migOn[g]; !ok {
			u.migOn[g] = h
		}
	}
}
