// Package shape decides, for every GPU on the node, which shape it is offered
// in (whole, MIG or blocks) and, for MIG, which devices are offered under
// which resource name: plain data in no kubelet API's terms. The device
// plugin's resources are built from a Plan by package plugin/resources, and
// DRA's pool from Offers by package dra. It is pure: the same inventory and
// config give the same plan.
package shape

import (
	"fmt"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
)

// Shape names as shown by inspect and metrics: the config's, and None.
const (
	Whole  = config.ShapeWhole
	Blocks = config.ShapeBlocks
	MIG    = config.ShapeMig
	None   = "none" // not offered (e.g. MIG layout unusable under single)
)

// Input is everything a plan depends on.
type Input struct {
	Inventory *gpu.Inventory
	Config    *config.Config
	// Keep pins GPUs (by UUID) to a shape regardless of the config, e.g.
	// while devices of the old shape are still allocated.
	Keep map[string]string
}

// Assignment is one GPU's place in the plan.
type Assignment struct {
	GPU    *gpu.GPU
	Shape  string
	Reason string // why, when it differs from what the config asked
}

// Plan is the node's offer.
type Plan struct {
	// GPUs are every discovered GPU's assignment, in discovery order.
	GPUs []Assignment
	// MIG are the MIG devices offered, grouped by the resource name the
	// config's MIG strategy gives them, sorted by name.
	MIG []MigGroup
	// CDIGPUs are the UUIDs of GPUs offered whole or as blocks: the GPUs
	// that get a whole-GPU CDI device.
	CDIGPUs []string
	// Warnings are problems that did not stop the plan, for the log.
	Warnings []string
}

// Build makes the plan. It never fails for one GPU's sake: what cannot be
// offered safely is left out and explained in Warnings.
func Build(in Input) *Plan {
	cfg := in.Config
	p := &Plan{}
	res, err := applyMigStrategy(in.Inventory.GPUs, cfg.MigStrategy, cfg.ResourceDomain)
	if err != nil {
		p.Warnings = append(p.Warnings, err.Error())
	}
	p.Warnings = append(p.Warnings, res.Skipped...)
	migWhole := map[int]bool{}
	for _, i := range res.Whole {
		migWhole[i] = true
	}
	migOffered := map[int]bool{}
	for _, g := range res.Groups {
		for _, d := range g.Devices {
			migOffered[d.ParentIndex] = true
		}
	}

	for i := range in.Inventory.GPUs {
		g := &in.Inventory.GPUs[i]
		a := Assignment{GPU: g}
		want := cfg.ShapeFor(g.Index, g.UUID, g.Model)
		if keep, ok := in.Keep[g.UUID]; ok && keep != want && !g.MigEnabled {
			a.Reason = fmt.Sprintf("config asks %s; kept %s while its devices are allocated", want, keep)
			want = keep
		}
		switch {
		case g.MigEnabled && !migWhole[g.Index]:
			a.Shape = MIG
			if !migOffered[g.Index] {
				a.Shape = None
			}
			if want == config.ShapeBlocks {
				a.Reason = "MIG is enabled on this GPU: offered as MIG devices, not blocks; disable MIG to use blocks"
				p.Warnings = append(p.Warnings, fmt.Sprintf("%s: %s", g, a.Reason))
			}
		case want == config.ShapeBlocks && !g.MigEnabled:
			a.Shape = Blocks
			p.CDIGPUs = append(p.CDIGPUs, g.UUID)
		default:
			a.Shape = Whole
			p.CDIGPUs = append(p.CDIGPUs, g.UUID)
		}
		p.GPUs = append(p.GPUs, a)
	}
	p.MIG = res.Groups
	return p
}
