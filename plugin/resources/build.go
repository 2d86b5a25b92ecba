// Package resources builds the kubelet device-plugin resources that serve a
// shape.Plan: one resource for the GPUs offered whole, one per MIG group of
// the plan, and one blocks.Resource for the GPUs offered as blocks. Package
// shape decides what each GPU is offered as without knowing any kubelet
// API; this package is where that plan meets the device-plugin API, as
// package dra is where offers meet DRA's.
//
// It is pure: the same plan, config and health give the same resources.
package resources

import (
	"fmt"
	"sort"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/blocks"
	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/plugin"
	"github.com/gpublocks/gpublocks/shape"
)

// Responder builds the CDI/env part of an Allocate answer for the given CDI
// device IDs (GPU or MIG UUIDs). It must return a fresh response per call.
type Responder func(ids []string) *pluginapi.ContainerAllocateResponse

// Input is everything the resources of a plan depend on.
type Input struct {
	Plan *shape.Plan
	// Config is the config the plan was made under: it names the whole
	// and blocks resources and gives the blocks policy.
	Config *config.Config
	// Unhealthy holds faulted devices: a GPU UUID makes every device on the
	// GPU (whole, MIG or blocks) unhealthy, a MIG UUID only that MIG device.
	Unhealthy map[string]bool
	// Responders gives, per resource name, what builds the CDI part of its
	// Allocate answers (the cdi-annotations strategy names the resource).
	Responders func(resource string) Responder
}

// Build makes the resources of in.Plan, sorted by name. Like the plan, it
// never fails for one resource's sake: one that cannot be served (blocks
// under a policy that does not parse, or GPUs that blocks.NewResource
// refuses) is left out, and warnings say why.
func Build(in Input) (resources []plugin.Resource, warnings []string) {
	cfg, p := in.Config, in.Plan
	var whole []unit
	var blockGPUs []gpu.GPU
	gpuNUMA := make(map[string]int, len(p.GPUs))
	for _, a := range p.GPUs {
		g := a.GPU
		gpuNUMA[g.UUID] = g.NUMANode
		switch a.Shape {
		case shape.Whole:
			whole = append(whole, unit{id: g.UUID, healthy: wholeHealthy(g, in.Unhealthy), numa: g.NUMANode})
		case shape.Blocks:
			blockGPUs = append(blockGPUs, *g)
		}
	}

	wholeName := cfg.ResourceName("gpu")
	if cfg.MigStrategy == config.MigSingle && len(p.MIG) > 0 {
		// Under single, MIG devices are the node's nvidia.com/gpu, and
		// the plan refuses layouts that also hold MIG-disabled GPUs:
		// nothing is whole here. The guard keeps the one name to one
		// resource.
		whole = nil
	}
	if len(whole) > 0 {
		resources = append(resources, newSimpleResource(wholeName, whole, in.Responders(wholeName)))
	}
	for _, grp := range p.MIG {
		units := make([]unit, 0, len(grp.Devices))
		for _, d := range grp.Devices {
			units = append(units, unit{id: d.UUID, healthy: !in.Unhealthy[d.ParentUUID] && !in.Unhealthy[d.UUID], numa: gpuNUMA[d.ParentUUID]})
		}
		resources = append(resources, newSimpleResource(grp.Resource, units, in.Responders(grp.Resource)))
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
			warnings = append(warnings, fmt.Sprintf("blocks not offered: %v", err))
		} else {
			resources = append(resources, r)
		}
	}
	sort.Slice(resources, func(i, j int) bool { return resources[i].Name() < resources[j].Name() })
	return resources, warnings
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

// Names lists the resources' names, in their order.
func Names(resources []plugin.Resource) []string {
	names := make([]string, len(resources))
	for i, r := range resources {
		names[i] = r.Name()
	}
	return names
}
