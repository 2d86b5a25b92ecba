package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/blocks"
	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/plugin"
	"github.com/gpublocks/gpublocks/shape"
)

// A GPU is never re-shaped, and a device never renamed, under a running
// container: the kubelet would see the new devices as free and assign the
// GPU twice. Two rules keep that promise (DESIGN §4):
//
//   - a GPU whose shape the config changes keeps its shape while the
//     kubelet's PodResources API reports devices of it allocated;
//   - a config that would move an allocated device to another resource
//     name (resourceDomain, blocks.resourceName, migStrategy) is held back
//     whole until the device is released.
//
// Both are re-checked every DeferPollInterval while anything waits.

// allocations is what the kubelet reports as assigned to pods.
type allocations struct {
	ids map[string]bool // allocated device IDs, of any resource
	// unknown means the kubelet could not be asked: every device counts
	// as allocated, since re-shaping one in use would double-assign it.
	unknown bool
}

func (a *allocations) has(id string) bool { return a.unknown || a.ids[id] }

// allocated asks the kubelet which devices are assigned. Without a
// PodResources socket (outside a cluster) nothing is, and a warning says so
// once. It may take up to PodResourcesTimeout, so Run's loop never calls
// it once serving (see Run).
func (d *Daemon) allocated(ctx context.Context) *allocations {
	if d.opts.dra() {
		// What is prepared: the driver's checkpoint, in memory.
		return preparedAllocations(d.opts.Publisher.Prepared())
	}
	logger := klog.FromContext(ctx)
	byResource, err := listAllocated(ctx, d.opts.PodResourcesSocket, d.opts.PodResourcesTimeout)
	switch {
	case errors.Is(err, errNoPodResources):
		d.mu.Lock()
		warned := d.warnedPR
		d.warnedPR = true
		d.mu.Unlock()
		if !warned {
			logger.Info("The kubelet's pod-resources API is not available, so no device counts as allocated and shape changes apply at once", "socket", d.opts.PodResourcesSocket)
		}
		return &allocations{}
	case err != nil:
		if ctx.Err() == nil { // not shutting down
			logger.Error(err, "Cannot tell which devices are allocated; shape and name changes wait")
		}
		return &allocations{unknown: true}
	}
	a := &allocations{ids: map[string]bool{}}
	for _, ids := range byResource {
		for _, id := range ids {
			a.ids[id] = true
		}
	}
	return a
}

// shapesToKeep returns the GPUs that must keep their current shape although
// cfg asks another: those with devices allocated. The current shape is the
// one served (prev), or, for a GPU not served yet (a restarted plugin's
// first plan), the one the allocated IDs show: <uuid>::<n> means blocks, a
// bare GPU UUID whole.
func shapesToKeep(prev *State, inv *gpu.Inventory, cfg *config.Config, alloc *allocations) map[string]string {
	current := map[string]string{}
	used := map[string]bool{}
	for id := range alloc.ids {
		if uuid, _, err := blocks.ParseID(id); err == nil {
			used[uuid] = true
			current[uuid] = shape.Blocks
		} else if inv.ByUUID(id) != nil {
			used[id] = true
			current[id] = shape.Whole
		}
	}
	if prev != nil {
		for _, a := range prev.Plan.GPUs {
			current[a.GPU.UUID] = a.Shape
		}
	}
	keep := map[string]string{}
	for i := range inv.GPUs {
		g := &inv.GPUs[i]
		old := current[g.UUID]
		if g.MigEnabled || (old != shape.Whole && old != shape.Blocks) {
			continue
		}
		if cfg.ShapeFor(g.Index, g.UUID, g.Model) != old && (alloc.unknown || used[g.UUID]) {
			keep[g.UUID] = old
		}
	}
	return keep
}

// renamed lists the allocated devices that next would serve under another
// resource name than cur does, or not at all (a MIG device under a new
// migStrategy), sorted.
func renamed(cur, next []plugin.Resource, alloc *allocations) []string {
	nextName := map[string]string{}
	for _, r := range next {
		for _, dev := range r.Devices() {
			nextName[dev.ID] = r.Name()
		}
	}
	var moved []string
	for _, r := range cur {
		for _, dev := range r.Devices() {
			if alloc.has(dev.ID) && nextName[dev.ID] != r.Name() {
				moved = append(moved, dev.ID)
			}
		}
	}
	slices.Sort(moved)
	return moved
}

// logDeferrals logs GPUs that start or stop being held in their old shape.
func logDeferrals(logger klog.Logger, before, after map[string]string, st *State) {
	for _, a := range st.Plan.GPUs {
		g := a.GPU
		if s, kept := after[g.UUID]; kept && before[g.UUID] == "" {
			logger.Info("Shape change deferred: the GPU has devices allocated to pods; it changes once they are released",
				"gpu", g.Index, "uuid", g.UUID, "from", s, "to", st.Config.ShapeFor(g.Index, g.UUID, g.Model))
		}
	}
	for uuid, s := range before {
		if _, still := after[uuid]; !still {
			logger.Info("Deferred shape change no longer held back", "uuid", uuid, "was", s)
		}
	}
}

// nameIDs lists at most 10 IDs for a log line.
func nameIDs(ids []string) string {
	const most = 10
	if len(ids) <= most {
		return strings.Join(ids, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(ids[:most], ", "), len(ids)-most)
}
