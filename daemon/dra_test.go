package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/require"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpublocks/gpublocks/cdi"
	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/dra"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/health"
	"github.com/gpublocks/gpublocks/metrics"
	"github.com/gpublocks/gpublocks/shape"
)

// fakeDRA stands in for the DRA publisher (package draserve, which this
// package cannot import): it builds the pool the way it does and records
// every pool published, and serves a settable list of prepared devices.
type fakeDRA struct {
	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every publish
	pools    []dra.Pool
	prepared []PreparedDevice
}

func newFakeDRA() *fakeDRA { return &fakeDRA{changed: make(chan struct{})} }

func poolOf(st *State) dra.Pool {
	effect := resourceapi.DeviceTaintEffectNoSchedule
	if st.Config.Health.DRATaintEffect == config.TaintNoExecute {
		effect = resourceapi.DeviceTaintEffectNoExecute
	}
	return dra.BuildPool(dra.PoolInput{Offers: st.Offers, DriverVersion: st.Inventory.DriverVersion, Unhealthy: st.Faults, TaintEffect: effect})
}

func (f *fakeDRA) Check(*State) error { return nil }

func (f *fakeDRA) Publish(_ context.Context, st *State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pools = append(f.pools, poolOf(st))
	close(f.changed)
	f.changed = make(chan struct{})
	return nil
}

func (f *fakeDRA) Prepared() []PreparedDevice {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]PreparedDevice(nil), f.prepared...)
}

func (f *fakeDRA) Registered() bool                 { return true }
func (f *fakeDRA) Served(*State) []metrics.Resource { return nil }

func (f *fakeDRA) setPrepared(p ...PreparedDevice) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.prepared = p
}

// last returns the last pool published and a channel closed on the next.
func (f *fakeDRA) last() (*dra.Pool, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.pools) == 0 {
		return nil, f.changed
	}
	return &f.pools[len(f.pools)-1], f.changed
}

// waitPool waits until the last published pool satisfies cond.
func (f *fakeDRA) waitPool(t testing.TB, cond func(*dra.Pool) bool) *dra.Pool {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		p, next := f.last()
		if p != nil && cond(p) {
			return p
		}
		select {
		case <-next:
		case <-deadline:
			t.Fatalf("no published pool satisfied the condition; last: %v", deviceNames(p))
		}
	}
}

func deviceNames(p *dra.Pool) []string {
	if p == nil {
		return nil
	}
	var names []string
	for _, d := range p.Devices {
		names = append(names, d.Name)
	}
	return names
}

func device(p *dra.Pool, name string) *resourceapi.Device {
	for i := range p.Devices {
		if p.Devices[i].Name == name {
			return &p.Devices[i]
		}
	}
	return nil
}

// has says whether the pool holds exactly the named devices among those
// of the listed GPUs' prefixes.
func has(names ...string) func(*dra.Pool) bool {
	return func(p *dra.Pool) bool {
		for _, n := range names {
			if device(p, n) == nil {
				return false
			}
		}
		return true
	}
}

func hasNot(names ...string) func(*dra.Pool) bool {
	return func(p *dra.Pool) bool {
		for _, n := range names {
			if device(p, n) != nil {
				return false
			}
		}
		return true
	}
}

func both(a, b func(*dra.Pool) bool) func(*dra.Pool) bool {
	return func(p *dra.Pool) bool { return a(p) && b(p) }
}

// startDRANode runs a daemon in DRA mode over a simulated preset.
func startDRANode(t *testing.T, preset, configYAML string, mods ...func(*Options)) (*node, *fakeDRA) {
	t.Helper()
	f := newFakeDRA()
	n := startNode(t, preset, configYAML, append([]func(*Options){func(o *Options) {
		o.KubeletAPI = KubeletAPIDRA
		o.Publisher = f
		o.DeferPollInterval = 20 * time.Millisecond
	}}, mods...)...)
	return n, f
}

func TestDRAPublishesEveryGPUBothWays(t *testing.T) {
	n, f := startDRANode(t, "dgxa100", "")
	p := f.waitPool(t, func(p *dra.Pool) bool { return len(p.Devices) == 16 })
	require.Len(t, p.Counters, 8)
	require.NotNil(t, device(p, "gpu-7"))
	require.NotNil(t, device(p, "gpu-7-blocks"))
	require.Nil(t, n.d.Manager(), "DRA mode serves no device plugins")
	require.True(t, n.d.Registered())
	// The base CDI spec names every GPU by UUID, for prepare's answers.
	require.Contains(t, n.cdiDevices(), "gpublocks.io/gpu="+n.d.State().Inventory.GPUs[7].UUID)
}

func TestDRAConfigRulesNarrowOffers(t *testing.T) {
	_, f := startDRANode(t, "dgxa100", "gpus: [{match: {index: [0]}, shape: whole}, {match: {index: [1]}, shape: blocks}]\n")
	f.waitPool(t, both(has("gpu-0", "gpu-1-blocks", "gpu-2", "gpu-2-blocks"), hasNot("gpu-0-blocks", "gpu-1")))
}

func TestDRAXIDTaintsEveryDeviceOfTheGPUAndRecovers(t *testing.T) {
	n, f := startDRANode(t, "dgxa100", quietConfig)
	f.waitPool(t, has("gpu-3"))
	n.inject(func() error { return n.sim.InjectXID(3, 48) })
	p := f.waitPool(t, func(p *dra.Pool) bool { return len(device(p, "gpu-3").Taints) > 0 })
	for _, name := range []string{"gpu-3", "gpu-3-blocks"} {
		taints := device(p, name).Taints
		require.Len(t, taints, 1, name)
		require.Equal(t, dra.UnhealthyTaintKey, taints[0].Key)
		require.Equal(t, "xid-48", taints[0].Value)
		require.Equal(t, resourceapi.DeviceTaintEffectNoSchedule, taints[0].Effect)
	}
	for _, d := range p.Devices {
		if d.Name != "gpu-3" && d.Name != "gpu-3-blocks" {
			require.Empty(t, d.Taints, d.Name)
		}
	}
	// Recovery after the quiet period takes the taints away.
	f.waitPool(t, func(p *dra.Pool) bool {
		return len(device(p, "gpu-3").Taints) == 0 && len(device(p, "gpu-3-blocks").Taints) == 0
	})
}

func TestDRATaintEffectFromConfig(t *testing.T) {
	n, f := startDRANode(t, "dgxa100", "health: {quietPeriod: 1s, draTaintEffect: NoExecute}\n")
	f.waitPool(t, has("gpu-1"))
	n.inject(func() error { return n.sim.InjectXID(1, 79) })
	p := f.waitPool(t, func(p *dra.Pool) bool { return len(device(p, "gpu-1").Taints) > 0 })
	require.Equal(t, resourceapi.DeviceTaintEffectNoExecute, device(p, "gpu-1").Taints[0].Effect)
	require.Equal(t, "xid-79", device(p, "gpu-1").Taints[0].Value)
}

// A GPU whose prepared claims use its blocks keeps offering blocks when
// the config turns it whole, until they are released: the scheduler counts
// what allocated devices consume only through published devices.
func TestDRAConfigChangeKeepsPreparedDevicesPublished(t *testing.T) {
	n, f := startDRANode(t, "dgxa100", "gpus: [{match: {index: [0]}, shape: blocks}]\n")
	f.waitPool(t, both(has("gpu-0-blocks"), hasNot("gpu-0")))
	uuid := n.d.State().Inventory.GPUs[0].UUID
	f.setPrepared(PreparedDevice{Device: "gpu-0-blocks", Shape: shape.Blocks, GPUUUID: uuid, UUID: uuid})

	replaceFile(t, n.configPath, "gpus: [{match: {index: [0]}, shape: whole}, {match: {index: [1]}, shape: whole}]\n")
	// The rest of the change applies; GPU 0 keeps its blocks.
	f.waitPool(t, both(has("gpu-0-blocks", "gpu-1"), hasNot("gpu-0", "gpu-1-blocks")))
	n.waitGeneration(2)

	// Released: GPU 0 turns whole on the next poll.
	f.setPrepared()
	f.waitPool(t, both(has("gpu-0"), hasNot("gpu-0-blocks")))
}

// After a restart the plugin's first pool already keeps what the
// checkpoint says is prepared.
func TestDRARestartKeepsPreparedDevicesFromTheStart(t *testing.T) {
	f := newFakeDRA()
	b, err := sim.New("dgxa100")
	require.NoError(t, err)
	inv, err := gpu.Discover(context.Background(), b)
	require.NoError(t, err)
	uuid := inv.GPUs[2].UUID
	f.setPrepared(PreparedDevice{Device: "gpu-2", Shape: shape.Whole, GPUUUID: uuid, UUID: uuid})
	_ = startNode(t, "dgxa100", "gpus: [{match: {index: [2]}, shape: blocks}]\n", func(o *Options) {
		o.KubeletAPI, o.Publisher = KubeletAPIDRA, f
	})
	p := f.waitPool(t, has("gpu-2"))
	require.Nil(t, device(p, "gpu-2-blocks"))
	p, _ = f.last()
	require.Equal(t, p, &f.pools[0], "the first pool published already keeps gpu-2")
}

func TestDRAKeep(t *testing.T) {
	b, err := sim.New("dgxa100")
	require.NoError(t, err)
	inv, err := gpu.Discover(context.Background(), b)
	require.NoError(t, err)
	g0, g1 := inv.GPUs[0].UUID, inv.GPUs[1].UUID
	parse := func(y string) *config.Config {
		cfg, err := config.Parse([]byte(y))
		require.NoError(t, err)
		return cfg
	}
	prevBoth := &State{Offers: shape.Offers(inv, config.Default(), nil)}
	for name, tc := range map[string]struct {
		prev     *State
		cfg      string
		prepared []PreparedDevice
		want     map[string]shape.Offer
	}{
		"nothing prepared": {cfg: "gpus: [{match: {index: [0]}, shape: whole}]", want: nil},
		"prepared device still offered": {
			cfg:      "gpus: [{match: {index: [0]}, shape: blocks}]",
			prepared: []PreparedDevice{{Device: "gpu-0-blocks", Shape: shape.Blocks, GPUUUID: g0}},
		},
		"blocks prepared, config whole, offered both before": {
			prev:     prevBoth,
			cfg:      "gpus: [{match: {index: [0]}, shape: whole}]",
			prepared: []PreparedDevice{{Device: "gpu-0-blocks", Shape: shape.Blocks, GPUUUID: g0}},
			want:     map[string]shape.Offer{g0: {Whole: true, Blocks: true}},
		},
		"whole prepared after restart, config blocks": {
			cfg:      "gpus: [{match: {index: [1]}, shape: blocks}]",
			prepared: []PreparedDevice{{Device: "gpu-1", Shape: shape.Whole, GPUUUID: g1}},
			want:     map[string]shape.Offer{g1: {Whole: true}},
		},
		"GPU gone": {
			cfg:      "gpus: [{match: {index: [0]}, shape: whole}]",
			prepared: []PreparedDevice{{Device: "gpu-9-blocks", Shape: shape.Blocks, GPUUUID: "GPU-gone"}},
		},
	} {
		t.Run(name, func(t *testing.T) {
			got := draKeep(tc.prev, inv, parse(tc.cfg), tc.prepared)
			if tc.want == nil {
				require.Empty(t, got)
				return
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestDRAModeNeedsItsDriver(t *testing.T) {
	b, err := sim.New("dgxa100")
	require.NoError(t, err)
	_, err = New(context.Background(), Options{KubeletAPI: KubeletAPIDRA, CDIDir: t.TempDir(), DriverRoot: t.TempDir()}, b)
	require.ErrorContains(t, err, "gpublocks-dra")
	_, err = New(context.Background(), Options{KubeletAPI: "csi", CDIDir: t.TempDir(), DriverRoot: t.TempDir()}, b)
	require.ErrorContains(t, err, `"csi" is not one of device-plugin, dra`)
}

// BenchmarkXIDToTaint measures the time from an XID on a simulated GPU to
// the pool with that GPU's devices tainted being handed to the DRA driver,
// through the real event set, health monitor and re-plan; the driver's
// ResourceSlice controller is told at once (the real-cluster suite measures
// the rest, to the API server). Between samples the fault is cleared off
// the clock.
func BenchmarkXIDToTaint(b *testing.B) {
	dir := b.TempDir()
	cfgPath := filepath.Join(dir, "config.yaml")
	require.NoError(b, os.WriteFile(cfgPath, []byte("health: {quietPeriod: 1s}\n"), 0o644))
	f := newFakeDRA()
	be, err := sim.New("dgxa100")
	require.NoError(b, err)
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	defer cancel()
	d, err := New(ctx, Options{KubeletAPI: KubeletAPIDRA, Publisher: f, ConfigPath: cfgPath, CDIDir: filepath.Join(dir, "cdi"), DriverRoot: dir}, be)
	require.NoError(b, err)
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	f.waitPool(b, has("gpu-0"))
	// Wait until the monitor listens on every GPU (XID 13 is ignored).
	for i := range 8 {
		for err := be.InjectXID(i, 13); errors.Is(err, sim.ErrNoListener); err = be.InjectXID(i, 13) {
			time.Sleep(time.Millisecond)
		}
	}
	inv := d.State().Inventory
	policy := healthPolicy(d.State().Config.Health)
	untainted := func(p *dra.Pool) bool {
		for _, dev := range p.Devices {
			if len(dev.Taints) > 0 {
				return false
			}
		}
		return true
	}
	samples := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		g := i % 8
		name := dra.GPUDeviceName(g)
		start := time.Now()
		require.NoError(b, be.InjectXID(g, 48))
		f.waitPool(b, func(p *dra.Pool) bool { return len(device(p, name).Taints) > 0 })
		samples = append(samples, time.Since(start))

		b.StopTimer()
		d.obs.health.Update(ctx, inv, health.Policy{Disabled: true}) // clears the fault
		f.waitPool(b, untainted)
		d.obs.health.Update(ctx, inv, policy)
		b.StartTimer()
	}
	b.StopTimer()
	reportLatency(b, samples)
	cancel()
	require.NoError(b, <-done)
}

// RescanNow has rediscovered, written the CDI spec and published when it
// returns: DRA mode answers prepare with a new MIG device's CDI name only
// after it.
func TestRescanNowIsSynchronous(t *testing.T) {
	n, f := startDRANode(t, "dgxa100", "")
	f.waitPool(t, has("gpu-7"))
	require.NoError(t, n.sim.SetMigLayout(7, []string{"3g.20gb", "1g.5gb"}))
	require.NoError(t, n.d.RescanNow(n.ctx))

	st := n.d.State()
	g := st.Inventory.GPUs[7]
	require.True(t, g.MigEnabled)
	require.Len(t, g.MigDevices, 2)
	devs := n.cdiDevices()
	for _, md := range g.MigDevices {
		require.Contains(t, devs, "gpublocks.io/gpu="+md.UUID)
	}
	p, _ := f.last()
	require.Nil(t, device(p, "gpu-7"), "published before RescanNow returned")

	ctx, cancel := context.WithCancel(n.ctx)
	cancel()
	require.ErrorIs(t, n.d.RescanNow(ctx), context.Canceled)
}

// TestDevicePluginResourcesOnlyInDevicePluginMode checks that a plan is
// served by device-plugin resources in device-plugin mode only: DRA mode
// publishes offers and builds no resource it would never serve.
func TestDevicePluginResourcesOnlyInDevicePluginMode(t *testing.T) {
	tests := map[string]struct {
		api           string
		wantResources []string
		wantOffers    int
	}{
		"device plugin": {api: KubeletAPIDevicePlugin, wantResources: []string{"nvidia.com/gpu", "nvidia.com/gpu-blocks"}},
		"dra":           {api: KubeletAPIDRA, wantResources: []string{}, wantOffers: 8},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			b, err := sim.New("dgxa100")
			require.NoError(t, err)
			cfg, err := config.Parse([]byte("gpus: [{match: {index: [1]}, shape: blocks}]\n"))
			require.NoError(t, err)
			st, err := Compute(ctx, b, Options{KubeletAPI: tc.api}, cfg, cdi.DriverFiles{}, nil)
			require.NoError(t, err)
			require.Len(t, st.Plan.GPUs, 8)
			require.Equal(t, shape.Blocks, st.Plan.GPUs[1].Shape)
			require.Equal(t, tc.wantResources, st.ResourceNames())
			require.Len(t, st.Offers, tc.wantOffers)
		})
	}
}
