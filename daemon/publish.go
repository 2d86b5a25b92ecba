package daemon

import (
	"context"
	"maps"
	"slices"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/metrics"
	"github.com/gpublocks/gpublocks/plugin"
)

// Kubelet APIs (DESIGN §3, §9): a node serves one or the other, never both.
const (
	KubeletAPIDevicePlugin = "device-plugin"
	KubeletAPIDRA          = "dra"
)

// publisher serves planned states to the kubelet through one kubelet API.
// The daemon discovers, plans, writes the base CDI spec and decides when a
// state may be served; a publisher only knows how.
type publisher interface {
	// check reports whether st could be published, before a candidate
	// config is committed.
	check(st *State) error
	// publish makes st what the kubelet (or the scheduler) sees.
	publish(ctx context.Context, st *State) error
	// run serves until ctx is cancelled.
	run(ctx context.Context) error
	// registered reports whether the kubelet has registered us (/readyz).
	registered() bool
	// served counts what is published, per resource, for the metrics;
	// st is the state last published.
	served(st *State) []metrics.Resource
}

// devicePlugins publishes through the device-plugin manager: one socket per
// resource name.
type devicePlugins struct{ m *plugin.Manager }

func (p devicePlugins) check(st *State) error { return p.m.Check(st.Plan.Resources) }

func (p devicePlugins) publish(_ context.Context, st *State) error {
	return p.m.Update(st.Plan.Resources)
}

func (p devicePlugins) run(ctx context.Context) error { return p.m.Run(ctx) }
func (p devicePlugins) registered() bool              { return p.m.Registered() }

// served lists what the kubelet is streamed, dropped resources included:
// they stay registered with no devices, and their series read 0 rather
// than vanish.
func (p devicePlugins) served(*State) []metrics.Resource {
	devs := p.m.Devices()
	out := make([]metrics.Resource, 0, len(devs))
	for _, name := range slices.Sorted(maps.Keys(devs)) {
		c := metrics.Resource{Name: name}
		for _, dev := range devs[name] {
			if dev.Health == pluginapi.Healthy {
				c.Healthy++
			} else {
				c.Unhealthy++
			}
		}
		out = append(out, c)
	}
	return out
}
