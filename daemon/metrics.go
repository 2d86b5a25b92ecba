package daemon

import (
	"net"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/metrics"
)

// allocateHook is what the plugin manager calls after every Allocate: the
// metrics, then Options.OnAllocate. Nil when there is neither.
func (d *Daemon) allocateHook() func(string, time.Duration, error) {
	m, user := d.obs.metrics, d.opts.OnAllocate
	switch {
	case m == nil:
		return user
	case user == nil:
		return m.Allocate
	}
	return func(resource string, took time.Duration, err error) {
		m.Allocate(resource, took, err)
		user(resource, took, err)
	}
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
	for _, r := range st.Plan.Resources {
		c := metrics.Resource{Name: r.Name()}
		for _, dev := range r.Devices() {
			if dev.Health == pluginapi.Healthy {
				c.Healthy++
			} else {
				c.Unhealthy++
			}
		}
		snap.Resources = append(snap.Resources, c)
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
