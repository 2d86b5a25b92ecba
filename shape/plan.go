// Package shape decides, for every GPU on the node, which shape it is offered
// in (whole, MIG or blocks) and builds the kubelet resources for that plan.
// It is pure: the same inventory, config and health give the same plan.
package shape

import (
	"fmt"
	"sort"

	"github.com/gpublocks/gpublocks/blocks"
	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/plugin"
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
	// Unhealthy holds faulted devices: a GPU UUID makes every device on the
	// GPU (whole, MIG or blocks) unhealthy, a MIG UUID only that MIG device.
	Unhealthy map[string]bool
	// Keep pins GPUs (by UUID) to a shape regardless of the config, e.g.
	// while devices of the old shape are still allocated.
	Keep map[string]string
	// Responders gives, per resource name, what builds the CDI part of its
	// Allocate answers (the cdi-annotations strategy names the resource).
	Responders func(resource string) Responder
}

// Assignment is one GPU's place in the plan.
type Assignment struct {
	GPU    *gpu.GPU
	Shape  string
	Reason string // why, when it differs from what the config asked
}

// Plan is the node's offer.
type Plan struct {
	GPUs      []Assignment
	Resources []plugin.Resource
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

	var whole []unit
	var blockGPUs []gpu.GPU
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
			blockGPUs = append(blockGPUs, *g)
			p.CDIGPUs = append(p.CDIGPUs, g.UUID)
		default:
			a.Shape = Whole
			whole = append(whole, unit{id: g.UUID, healthy: wholeHealthy(g, in.Unhealthy), numa: g.NUMANode})
			p.CDIGPUs = append(p.CDIGPUs, g.UUID)
		}
		p.GPUs = append(p.GPUs, a)
	}

	wholeName := cfg.ResourceName("gpu")
	if cfg.MigStrategy == config.MigSingle && len(res.Groups) > 0 {
		// Under single, MIG devices are the node's nvidia.com/gpu, and
		// applyMigStrategy refuses layouts that also hold MIG-disabled GPUs:
		// nothing is whole here. The guard keeps the one name to one resource.
		whole = nil
	}
	if len(whole) > 0 {
		p.Resources = append(p.Resources, newSimpleResource(wholeName, whole, in.Responders(wholeName)))
	}
	gpuNUMA := map[string]int{}
	for _, g := range in.Inventory.GPUs {
		gpuNUMA[g.UUID] = g.NUMANode
	}
	for _, grp := range res.Groups {
		units := make([]unit, 0, len(grp.Devices))
		for _, d := range grp.Devices {
			units = append(units, unit{id: d.UUID, healthy: !in.Unhealthy[d.ParentUUID] && !in.Unhealthy[d.UUID], numa: gpuNUMA[d.ParentUUID]})
		}
		p.Resources = append(p.Resources, newSimpleResource(grp.Resource, units, in.Responders(grp.Resource)))
	}
	if len(blockGPUs) > 0 {
		name := cfg.ResourceName(cfg.Blocks.ResourceName)
		// A validated config's policy parses; one that does not is
		// said, never served under a policy nobody asked for.
		policy, err := blocks.ParsePolicy(cfg.Blocks.Policy)
		var r *blocks.Resource
		if err == nil {
			r, err = blocks.NewResource(name, blockGPUs, policy, in.Unhealthy, blocks.BaseFunc(in.Responders(name)))
		}
		if err != nil {
			p.Warnings = append(p.Warnings, fmt.Sprintf("blocks not offered: %v", err))
		} else {
			p.Resources = append(p.Resources, r)
		}
	}
	sort.Slice(p.Resources, func(i, j int) bool { return p.Resources[i].Name() < p.Resources[j].Name() })
	return p
}

// wholeHealthy reports whether a GPU offered whole is healthy: a fault
// scoped to one of its MIG devices (a MIG-enabled GPU offered whole under
// migStrategy none) takes the whole GPU down, since the container gets all
// of it.
func wholeHealthy(g *gpu.GPU, unhealthy map[string]bool) bool {
	if unhealthy[g.UUID] {
		return false
	}
	for _, d := range g.MigDevices {
		if unhealthy[d.UUID] {
			return false
		}
	}
	return true
}

// ResourceNames lists the plan's resource names.
func (p *Plan) ResourceNames() []string {
	names := make([]string, len(p.Resources))
	for i, r := range p.Resources {
		names[i] = r.Name()
	}
	return names
}
