package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/blocks"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/health"
	"github.com/gpublocks/gpublocks/plugin/fakekubelet"
)

// BenchmarkXIDToListAndWatch measures the time from an XID raised on a
// simulated GPU to the ListAndWatch update that streams its devices as
// Unhealthy, through the real event set, health monitor, re-plan and gRPC
// stream (DESIGN §8: p99 ≤ 100 ms). Between samples the fault is cleared
// off the clock.
//
// "hung-podresources" measures it while the kubelet's PodResources API
// accepts questions and never answers (each waits out the daemon's
// default timeout) and a deferred shape change keeps the daemon asking:
// nothing about it may slow health down.
func BenchmarkXIDToListAndWatch(b *testing.B) {
	for _, bc := range []struct {
		name, resource, config string
		hung                   bool
	}{
		{name: "whole", resource: "nvidia.com/gpu"},
		{name: "blocks", resource: "nvidia.com/gpu-blocks", config: "gpus: [{match: {model: \"*\"}, shape: blocks}]\n"},
		{name: "hung-podresources", resource: "nvidia.com/gpu", config: "gpus: [{match: {index: [0]}, shape: blocks}]\n", hung: true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var pr *heldPodResources
			var mods []func(*Options)
			if bc.hung {
				var sock string
				pr, sock = startHeldPodResources(b)
				mods = append(mods, func(o *Options) {
					o.PodResourcesSocket = sock
					o.DeferPollInterval = 100 * time.Millisecond
				})
			}
			ctx, d, backend, p := benchNode(b, bc.config, bc.resource, mods...)
			inv := d.State().Inventory
			if bc.hung {
				holdDeferredChange(ctx, b, d, pr)
			}
			policy := healthPolicy(d.State().Config.Health)
			onGPU := func(uuid, id string) bool { return id == uuid || strings.HasPrefix(id, uuid+"::") }
			unhealthyOn := func(uuid string) func([]*pluginapi.Device) bool {
				return func(devs []*pluginapi.Device) bool {
					for _, dev := range devs {
						if onGPU(uuid, dev.ID) && dev.Health == pluginapi.Unhealthy {
							return true
						}
					}
					return false
				}
			}
			allHealthy := func(devs []*pluginapi.Device) bool {
				return len(devs) > 0 && !slices.ContainsFunc(devs, func(d *pluginapi.Device) bool { return d.Health != pluginapi.Healthy })
			}
			// The GPUs the resource serves (with a deferral, not all).
			var targets []int
			for i, g := range inv.GPUs {
				if slices.ContainsFunc(p.Devices(), func(dev *pluginapi.Device) bool { return onGPU(g.UUID, dev.ID) }) {
					targets = append(targets, i)
				}
			}
			// Wait until the monitor listens on every GPU.
			for i := range inv.GPUs {
				for err := backend.InjectXID(i, 13); errors.Is(err, sim.ErrNoListener); err = backend.InjectXID(i, 13) {
					time.Sleep(time.Millisecond)
				}
			}
			var calls int64
			if bc.hung {
				calls = pr.calls.Load()
			}

			samples := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				g := targets[i%len(targets)]
				start := time.Now()
				if err := backend.InjectXID(g, 48); err != nil {
					b.Fatal(err)
				}
				if err := p.WaitFor(ctx, unhealthyOn(inv.GPUs[g].UUID)); err != nil {
					b.Fatal(err)
				}
				samples = append(samples, time.Since(start))

				b.StopTimer()
				d.obs.health.Update(ctx, inv, health.Policy{Disabled: true}) // clears the fault
				if err := p.WaitFor(ctx, allHealthy); err != nil {
					b.Fatal(err)
				}
				d.obs.health.Update(ctx, inv, policy)
				b.StartTimer()
			}
			b.StopTimer()
			if bc.hung && pr.calls.Load() == calls && pr.holding.Load() == 0 {
				b.Fatal("the daemon asked the hung PodResources API nothing while measured")
			}
			reportLatency(b, samples)
		})
	}
}

// reportLatency reports the samples' p50 and p99 in milliseconds, in
// place of ns/op.
func reportLatency(b *testing.B, samples []time.Duration) {
	slices.Sort(samples)
	pct := func(q float64) float64 {
		return float64(samples[min(len(samples)-1, int(q*float64(len(samples))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "ms-p50")
	b.ReportMetric(pct(0.99), "ms-p99")
	b.ReportMetric(0, "ns/op")
}

// benchNode serves a simulated dgxa100 to a kubelet stand-in, quietly, and
// returns the plugin for resource once it streams.
func benchNode(b *testing.B, configYAML, resource string, mods ...func(*Options)) (context.Context, *Daemon, *sim.Backend, *fakekubelet.Plugin) {
	b.Helper()
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	dir, err := os.MkdirTemp("", "gbb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	pluginDir := filepath.Join(dir, "dp")
	if err := os.Mkdir(pluginDir, 0o755); err != nil {
		b.Fatal(err)
	}
	o := Options{PluginDir: pluginDir, CDIDir: filepath.Join(dir, "cdi"), DriverRoot: dir, DevRoot: "/",
		PodResourcesSocket: filepath.Join(dir, "no-kubelet.sock")} // never the host's kubelet
	if configYAML != "" {
		o.ConfigPath = filepath.Join(dir, "config.yaml")
		if err := os.WriteFile(o.ConfigPath, []byte(configYAML), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	for _, m := range mods {
		m(&o)
	}
	k, err := fakekubelet.Start(pluginDir)
	if err != nil {
		b.Fatal(err)
	}
	backend, err := sim.New("dgxa100")
	if err != nil {
		b.Fatal(err)
	}
	d, err := New(ctx, o, backend)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
		k.Stop()
	})
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	p, err := k.Plugin(wctx, resource)
	if err == nil {
		err = p.WaitFor(wctx, func(devs []*pluginapi.Device) bool { return len(devs) > 0 })
	}
	if err != nil {
		b.Fatal(err)
	}
	return ctx, d, backend, p
}

// holdDeferredChange makes a pod hold a block of GPU 0, turns every GPU
// whole (GPU 0 is deferred, so the daemon keeps asking the kubelet), waits
// for that to be served, and then makes the PodResources API hang.
func holdDeferredChange(ctx context.Context, b *testing.B, d *Daemon, pr *heldPodResources) {
	b.Helper()
	gpu0 := d.State().Inventory.GPUs[0].UUID
	pr.set("nvidia.com/gpu-blocks", blocks.FormatID(gpu0, 0))
	path := d.opts.ConfigPath
	if err := os.WriteFile(path+".tmp", []byte("version: v1\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		b.Fatal(err)
	}
	deferred := func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		_, kept := d.deferred[gpu0]
		return kept && d.candidate == nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	wait := func(what string, cond func() bool) {
		for !cond() {
			if ctx.Err() != nil {
				b.Fatalf("%s: %v", what, ctx.Err())
			}
			time.Sleep(time.Millisecond)
		}
	}
	wait("GPU 0 deferred", deferred)
	pr.hold()
	wait("a question held", func() bool { return pr.holding.Load() > 0 })
}
