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

// Publisher serves planned states through the kubelet's DRA API: it is
// the part of DRA mode that links the Kubernetes API types and client, so
// it lives outside this package (draserve) and the device-plugin binary
// never carries them. The daemon plans, writes the base CDI spec and
// decides when a state may be served.
type Publisher interface {
	// Check reports whether st could be published, before a candidate
	// config is committed.
	Check(st *State) error
	// Publish makes st the node's published pool.
	Publish(ctx context.Context, st *State) error
	// Registered reports whether the kubelet registered the plugin.
	Registered() bool
	// Served counts what is published, per DeviceClass, for the metrics.
	Served(st *State) []metrics.Resource
	// Prepared lists every device of every prepared claim: their GPUs
	// keep offering them across config changes (draKeep).
	Prepared() []PreparedDevice
}

// external adapts a Publisher; it serves the kubelet from the moment it
// was started, so run only waits.
type external struct{ p Publisher }

func (e external) check(st *State) error                        { return e.p.Check(st) }
func (e external) publish(ctx context.Context, st *State) error { return e.p.Publish(ctx, st) }
func (e external) registered() bool                             { return e.p.Registered() }
func (e external) served(st *State) []metrics.Resource          { return e.p.Served(st) }
func (e external) run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

// devicePlugins publishes through the device-plugin manager: one socket per
// resource name.
type devicePlugins struct{ m *plugin.Manager }

func (p devicePlugins) check(st *State) error { return p.m.Check(st.Resources) }

func (p devicePlugins) publish(_ context.Context, st *State) error {
	return p.m.Update(st.Resources)
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
