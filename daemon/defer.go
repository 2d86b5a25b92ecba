package daemon

import (
	"context"
	"errors"

	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/blocks"
	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/shape"
)

// deferrals returns the GPUs that must keep their current shape although
// the config now asks another: those with devices still allocated to pods
// (per the kubelet's PodResources API). A GPU is never re-shaped under a
// running container; the change lands once its devices are released (the
// run loop re-plans every DeferPollInterval while anything is deferred).
func (d *Daemon) deferrals(ctx context.Context, prev *State, inv *gpu.Inventory, cfg *config.Config) map[string]string {
	logger := klog.FromContext(ctx)
	if prev == nil {
		return nil
	}
	current := map[string]string{}
	for _, a := range prev.Plan.GPUs {
		current[a.GPU.UUID] = a.Shape
	}
	var changing []*gpu.GPU
	for i := range inv.GPUs {
		g := &inv.GPUs[i]
		old := current[g.UUID]
		if g.MigEnabled || (old != shape.Whole && old != shape.Blocks) {
			continue
		}
		if cfg.ShapeFor(g.Index, g.UUID, g.Model) != old {
			changing = append(changing, g)
		}
	}
	d.mu.Lock()
	before := d.deferred
	d.mu.Unlock()
	keep := map[string]string{}
	if len(changing) > 0 {
		allocated, err := listAllocated(ctx, d.opts.PodResourcesSocket)
		switch {
		case errors.Is(err, errNoPodResources):
			d.mu.Lock()
			warned := d.warnedPR
			d.warnedPR = true
			d.mu.Unlock()
			if !warned {
				logger.Info("Warning: the kubelet's pod-resources API is not available, so no device counts as allocated and shape changes apply at once", "socket", d.opts.PodResourcesSocket)
			}
		case err != nil:
			// Without an answer, assume the worst: re-shaping a GPU under
			// a running container would double-assign it.
			logger.Error(err, "Cannot tell which devices are allocated; shape changes wait")
			for _, g := range changing {
				keep[g.UUID] = current[g.UUID]
			}
		default:
			used := allocatedGPUs(allocated)
			for _, g := range changing {
				if used[g.UUID] {
					keep[g.UUID] = current[g.UUID]
				}
			}
		}
	}
	for _, g := range changing {
		if _, kept := keep[g.UUID]; kept && before[g.UUID] == "" {
			logger.Info("Shape change deferred: the GPU has devices allocated to pods; it changes once they are released",
				"gpu", g.Index, "uuid", g.UUID, "from", current[g.UUID], "to", cfg.ShapeFor(g.Index, g.UUID, g.Model))
		}
	}
	for uuid, s := range before {
		if _, still := keep[uuid]; !still {
			logger.Info("Deferred shape change no longer held back", "uuid", uuid, "was", s)
		}
	}
	d.mu.Lock()
	d.deferred = keep
	d.mu.Unlock()
	return keep
}

// allocatedGPUs maps allocated device IDs (GPU UUIDs for whole GPUs,
// <uuid>::<n> for blocks) to the GPUs they belong to.
func allocatedGPUs(allocated map[string][]string) map[string]bool {
	used := map[string]bool{}
	for _, ids := range allocated {
		for _, id := range ids {
			if uuid, _, err := blocks.ParseID(id); err == nil {
				used[uuid] = true
			} else {
				used[id] = true
			}
		}
	}
	return used
}
