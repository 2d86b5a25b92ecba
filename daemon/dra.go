package daemon

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/blocks"
	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/dra"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/metrics"
	"github.com/gpublocks/gpublocks/shape"
)

// DRADriver is the kubelet's DRA plugin that serve runs with --kubelet-api
// dra (package draplugin): it registers with the kubelet, prepares claims
// and hands the pool to the ResourceSlice controller.
type DRADriver interface {
	// Publish makes pool the node's published pool.
	Publish(ctx context.Context, pool dra.Pool, inv *gpu.Inventory) error
	// PreparedDevices lists every device of every prepared claim.
	PreparedDevices() []PreparedDevice
	// Registered reports whether the kubelet registered the plugin.
	Registered() bool
}

// PreparedDevice is one device of a prepared claim.
type PreparedDevice struct {
	Device  string // the device's name in the pool, e.g. gpu-0-blocks
	Type    string // dra.TypeGPU, dra.TypeBlocks or dra.TypeMIG
	GPUUUID string // the physical GPU (the parent, for a MIG device)
	UUID    string // the GPU's or the MIG device's UUID
}

// draPublisher publishes through DRA: the node's pool of devices, with
// taints for unhealthy GPUs, handed to the driver's ResourceSlice
// controller.
type draPublisher struct{ drv DRADriver }

// check refuses a pool that would stop publishing a prepared device: the
// scheduler would no longer count what the device consumes and could hand
// its GPU out again. Keeping prepared devices published (draKeep) is what
// prevents it; this is the last line.
func (p draPublisher) check(st *State) error {
	published := map[string]bool{}
	for _, d := range st.Pool.Devices {
		published[d.Name] = true
	}
	var missing []string
	for _, d := range p.drv.PreparedDevices() {
		if !published[d.Device] {
			missing = append(missing, d.Device)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("the new pool leaves out prepared devices %s; it applies once their claims are released", strings.Join(slices.Compact(missing), ", "))
	}
	return nil
}

func (p draPublisher) publish(ctx context.Context, st *State) error {
	if err := p.check(st); err != nil {
		return err
	}
	return p.drv.Publish(ctx, *st.Pool, st.Inventory)
}

// run has nothing to serve itself: the driver serves the kubelet from the
// moment it starts, and the command stops it.
func (p draPublisher) run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

func (p draPublisher) registered() bool { return p.drv.Registered() }

// served counts the published devices per DeviceClass, tainted ones as
// unhealthy.
func (p draPublisher) served(st *State) []metrics.Resource {
	byType := map[string]*metrics.Resource{}
	for _, d := range st.Pool.Devices {
		typ := ""
		if a, ok := d.Attributes["type"]; ok && a.StringValue != nil {
			typ = *a.StringValue
		}
		name := deviceClass(typ)
		c := byType[name]
		if c == nil {
			c = &metrics.Resource{Name: name}
			byType[name] = c
		}
		if len(d.Taints) > 0 {
			c.Unhealthy++
		} else {
			c.Healthy++
		}
	}
	out := make([]metrics.Resource, 0, len(byType))
	for _, name := range slices.Sorted(maps.Keys(byType)) {
		out = append(out, *byType[name])
	}
	return out
}

// deviceClass names the DeviceClass that selects devices of a type.
func deviceClass(typ string) string {
	if typ == dra.TypeGPU {
		return dra.DriverName
	}
	return typ + "." + dra.DriverName
}

// preparedAllocations describes prepared claims in the device plugin's ID
// vocabulary, so that the DP plan's deferral rules read them alike: a GPU
// prepared whole by its UUID, blocks as <uuid>::0, a MIG device by its
// UUID.
func preparedAllocations(prepared []PreparedDevice) *allocations {
	a := &allocations{ids: map[string]bool{}}
	for _, d := range prepared {
		switch d.Type {
		case dra.TypeBlocks:
			a.ids[blocks.FormatID(d.GPUUUID, 0)] = true
		case dra.TypeMIG:
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
		if !ok || w.GPU.MigEnabled || d.Type == dra.TypeMIG {
			// A GPU gone from the inventory, or MIG devices, which
			// follow the GPU's layout, not the config.
			continue
		}
		if (d.Type == dra.TypeGPU && !w.Whole) || (d.Type == dra.TypeBlocks && !w.Blocks) {
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
		switch d.Type {
		case dra.TypeGPU:
			k.Whole = true
		case dra.TypeBlocks:
			k.Blocks = true
		}
		keep[d.GPUUUID] = k
	}
	return keep
}

// taintEffect maps the config's health.draTaintEffect to the API's.
func taintEffect(cfg *config.Config) resourceapi.DeviceTaintEffect {
	if cfg.Health.DRATaintEffect == config.TaintNoExecute {
		return resourceapi.DeviceTaintEffectNoExecute
	}
	return resourceapi.DeviceTaintEffectNoSchedule
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
