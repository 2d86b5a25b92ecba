package daemon

import (
	"net"
	"time"

	"github.com/gpublocks/gpublocks/metrics"
)

// allocateHook is what the plugin manager calls after every Allocate: the
// metrics, or nil when they are disabled.
func (d *Daemon) allocateHook() func(string, time.Duration, error) {
	if d.obs.metrics == nil {
		return nil
	}
	return d.obs.metrics.Allocate
}

// MetricsAddr is the address the metrics listener is bound to, or nil
// when metrics are disabled or Run has not bound it yet.
func (d *Daemon) MetricsAddr() net.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.obs.server == nil {
		return nil
	}
	return d.obs.server.Addr()
}

// metricsSnapshot reads the served state for a scrape.
func (d *Daemon) metricsSnapshot() metrics.Snapshot {
	d.mu.Lock()
	st, status := d.state, d.status
	unhealthy := cloneSet(d.unhealthy)
	d.mu.Unlock()

	snap := metrics.Snapshot{Config: metrics.Config{
		Name:       status.Name,
		Generation: status.Generation,
		Errors:     status.Errors,
		Valid:      status.LastError == nil,
	}}
	if st == nil {
		return snap
	}
	snap.Resources = d.pub.served(st)
	for _, l := range st.MigLayouts {
		snap.MigLayouts = append(snap.MigLayouts, metrics.MigLayout{Index: l.GPU, UUID: l.UUID, Pending: l.Pending()})
	}
	for _, a := range st.Plan.GPUs {
		snap.GPUs = append(snap.GPUs, metrics.GPU{
			Index:   a.GPU.Index,
			UUID:    a.GPU.UUID,
			Model:   a.GPU.Model,
			Shape:   a.Shape,
			Healthy: !unhealthy[a.GPU.UUID],
		})
	}
	return snap
}
