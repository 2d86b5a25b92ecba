package health

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2/ktesting"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
)

const (
	quiet = 30 * time.Second
	probe = 10 * time.Second
)

// harness runs a Monitor over a simulated node with a fake clock.
type harness struct {
	t       *testing.T
	ctx     context.Context
	sim     *sim.Backend
	inv     *gpu.Inventory
	m       *Monitor
	clk     *clocktesting.FakeClock
	changes chan map[string]bool
	events  chan Event
}

func defaultPolicy() Policy {
	return Policy{IgnoredXids: config.DefaultIgnoredXids, QuietPeriod: quiet}
}

func start(t *testing.T, preset string, p Policy, wrap func(nvml.Interface) nvml.Interface) *harness {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	b, err := sim.New(preset)
	require.NoError(t, err)
	inv, err := gpu.Discover(ctx, b)
	require.NoError(t, err)
	lib := b.NVML()
	if wrap != nil {
		lib = wrap(lib)
	}
	h := &harness{
		t: t, ctx: ctx, sim: b, inv: inv,
		clk:     clocktesting.NewFakeClock(time.Unix(1_800_000_000, 0)),
		changes: make(chan map[string]bool, 64),
		events:  make(chan Event, 64),
	}
	h.m = New(lib, Options{
		Clock:         h.clk,
		WaitTimeout:   20 * time.Millisecond,
		ProbeInterval: probe,
		OnChange:      func(s map[string]bool) { h.changes <- s },
		OnEvent:       func(e Event) { h.events <- e },
	})
	h.m.Update(ctx, inv, p)
	done := make(chan error, 1)
	go func() { done <- h.m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return h
}

// inject retries until the monitor listens, then waits for its verdict.
func (h *harness) inject(raise func() error) Event {
	h.t.Helper()
	require.Eventually(h.t, func() bool { return raise() == nil }, 5*time.Second, time.Millisecond)
	return h.event()
}

// listening waits until GPU index's events reach the monitor.
func (h *harness) listening(index int) {
	h.t.Helper()
	require.True(h.t, h.inject(func() error { return h.sim.InjectXID(index, 13) }).Ignored)
}

func (h *harness) event() Event {
	h.t.Helper()
	select {
	case e := <-h.events:
		return e
	case <-time.After(5 * time.Second):
		h.t.Fatal("no event judged")
		return Event{}
	}
}

// change waits for the next OnChange.
func (h *harness) change() map[string]bool {
	h.t.Helper()
	select {
	case s := <-h.changes:
		return s
	case <-time.After(5 * time.Second):
		h.t.Fatal("no health change published")
		return nil
	}
}

// step advances the fake clock once the recovery loop sleeps on it.
func (h *harness) step(d time.Duration) {
	h.t.Helper()
	require.Eventually(h.t, h.clk.HasWaiters, 5*time.Second, time.Millisecond)
	h.clk.Step(d)
}

func (h *harness) noChange() {
	h.t.Helper()
	select {
	case s := <-h.changes:
		h.t.Fatalf("unexpected health change: %v", s)
	case <-time.After(50 * time.Millisecond):
	}
}

func set(keys ...string) map[string]bool {
	out := map[string]bool{}
	for _, k := range keys {
		out[k] = true
	}
	return out
}

func TestEventsMarkDevices(t *testing.T) {
	tests := map[string]struct {
		preset  string
		policy  func(*Policy)
		raise   func(b *sim.Backend, inv *gpu.Inventory) error
		ignored bool
		want    func(inv *gpu.Inventory) map[string]bool
	}{
		"ignored XID changes nothing": {
			preset:  "dgxa100",
			raise:   func(b *sim.Backend, _ *gpu.Inventory) error { return b.InjectXID(3, 13) },
			ignored: true,
		},
		"XID 48 marks the GPU": {
			preset: "dgxa100",
			raise:  func(b *sim.Backend, _ *gpu.Inventory) error { return b.InjectXID(3, 48) },
			want:   func(inv *gpu.Inventory) map[string]bool { return set(inv.GPUs[3].UUID) },
		},
		"double-bit ECC marks the GPU": {
			preset: "dgxa100",
			raise:  func(b *sim.Backend, _ *gpu.Inventory) error { return b.InjectDoubleBitECC(5) },
			want:   func(inv *gpu.Inventory) map[string]bool { return set(inv.GPUs[5].UUID) },
		},
		"GPU lost marks the GPU": {
			preset: "dgxa100",
			raise:  func(b *sim.Backend, _ *gpu.Inventory) error { return b.InjectGPULost(1) },
			want:   func(inv *gpu.Inventory) map[string]bool { return set(inv.GPUs[1].UUID) },
		},
		"MIG-scoped XID marks only that MIG device": {
			preset: "dgxa100-mig",
			raise: func(b *sim.Backend, inv *gpu.Inventory) error {
				md := inv.GPUs[0].MigDevices[1]
				return b.InjectMigXID(0, uint32(md.GI), uint32(md.CI), 48)
			},
			want: func(inv *gpu.Inventory) map[string]bool { return set(inv.GPUs[0].MigDevices[1].UUID) },
		},
		"XID 79 in a MIG instance still loses the whole GPU": {
			preset: "dgxa100-mig",
			raise: func(b *sim.Backend, inv *gpu.Inventory) error {
				md := inv.GPUs[0].MigDevices[0]
				return b.InjectMigXID(0, uint32(md.GI), uint32(md.CI), XIDGPULost)
			},
			want: func(inv *gpu.Inventory) map[string]bool { return set(inv.GPUs[0].UUID) },
		},
		"unknown GPU instance marks the GPU": {
			preset: "dgxa100-mig",
			raise:  func(b *sim.Backend, _ *gpu.Inventory) error { return b.InjectMigXID(0, 14, 0, 48) },
			want:   func(inv *gpu.Inventory) map[string]bool { return set(inv.GPUs[0].UUID) },
		},
		"custom ignore list": {
			preset:  "dgxa100",
			policy:  func(p *Policy) { p.IgnoredXids = []uint64{13, 48} },
			raise:   func(b *sim.Backend, _ *gpu.Inventory) error { return b.InjectXID(2, 48) },
			ignored: true,
		},
		"disabled monitoring marks nothing": {
			preset:  "dgxa100",
			policy:  func(p *Policy) { p.Disabled = true },
			raise:   func(b *sim.Backend, _ *gpu.Inventory) error { return b.InjectXID(2, 48) },
			ignored: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := defaultPolicy()
			if tc.policy != nil {
				tc.policy(&p)
			}
			h := start(t, tc.preset, p, nil)
			h.listening(0) // Run registers every GPU at once
			ev := h.inject(func() error { return tc.raise(h.sim, h.inv) })
			require.Equal(t, tc.ignored, ev.Ignored, "event %+v", ev)
			if tc.ignored {
				require.Empty(t, ev.Devices)
				require.Empty(t, h.m.Unhealthy())
				h.noChange()
				return
			}
			want := tc.want(h.inv)
			require.Equal(t, want, h.change())
			require.Equal(t, want, h.m.Unhealthy())
		})
	}
}

func TestRecoveryAfterQuietPeriod(t *testing.T) {
	h := start(t, "dgxa100", defaultPolicy(), nil)
	uuid := h.inv.GPUs[4].UUID
	h.inject(func() error { return h.sim.InjectXID(4, 48) })
	require.Equal(t, set(uuid), h.change())

	// A second XID inside the quiet period restarts it without doubling.
	h.step(quiet / 2)
	h.inject(func() error { return h.sim.InjectXID(4, 63) })
	require.Equal(t, quiet, h.m.QuietPeriod(uuid))
	h.step(quiet / 2)
	h.noChange()
	h.step(quiet / 2)
	require.Empty(t, h.change())
	require.Empty(t, h.m.Unhealthy())
}

func TestNoRecoveryWhileProbeFails(t *testing.T) {
	h := start(t, "dgxa100", defaultPolicy(), nil)
	uuid := h.inv.GPUs[1].UUID
	h.listening(1)
	require.NoError(t, h.sim.InjectGPULost(1))
	h.event()
	require.Equal(t, set(uuid), h.change())

	h.step(quiet)
	h.noChange()
	h.step(probe)
	h.noChange()
	require.Equal(t, set(uuid), h.m.Unhealthy())

	require.NoError(t, h.sim.RestoreGPU(1))
	h.step(probe)
	require.Empty(t, h.change())
}

func TestFlappingDeviceBacksOff(t *testing.T) {
	h := start(t, "dgxa100", defaultPolicy(), nil)
	uuid := h.inv.GPUs[6].UUID
	fault := func() {
		h.inject(func() error { return h.sim.InjectXID(6, 48) })
		require.Equal(t, set(uuid), h.change())
	}

	fault()
	h.step(quiet)
	require.Empty(t, h.change())

	// Faulting again soon after recovering doubles the quiet period…
	h.step(quiet / 3)
	fault()
	require.Equal(t, 2*quiet, h.m.QuietPeriod(uuid))
	h.step(quiet)
	h.noChange()
	h.step(quiet)
	require.Empty(t, h.change())

	// …and again.
	fault()
	require.Equal(t, 4*quiet, h.m.QuietPeriod(uuid))
	h.step(4 * quiet)
	require.Empty(t, h.change())

	// A clean stretch as long as the quiet period resets the backoff.
	h.step(4 * quiet)
	require.Eventually(t, func() bool { return h.m.QuietPeriod(uuid) == 0 }, 5*time.Second, time.Millisecond)
	fault()
	require.Equal(t, quiet, h.m.QuietPeriod(uuid))
}

func TestBackoffIsCapped(t *testing.T) {
	h := start(t, "dgxa100", defaultPolicy(), nil)
	uuid := h.inv.GPUs[0].UUID
	for range 8 {
		h.inject(func() error { return h.sim.InjectXID(0, 48) })
		require.Equal(t, set(uuid), h.change())
		h.step(h.m.QuietPeriod(uuid))
		require.Empty(t, h.change())
	}
	require.Equal(t, 10*time.Minute, h.m.QuietPeriod(uuid))
}

func TestInventoryChangeDropsVanishedDevices(t *testing.T) {
	h := start(t, "dgxa100-mig", defaultPolicy(), nil)
	md := h.inv.GPUs[0].MigDevices[0]
	h.inject(func() error { return h.sim.InjectMigXID(0, uint32(md.GI), uint32(md.CI), 48) })
	require.Equal(t, set(md.UUID), h.change())

	// The operator re-partitions GPU 0: the faulted MIG device is gone.
	require.NoError(t, h.sim.SetMigLayout(0, []string{"7g.80gb"}))
	inv, err := gpu.Discover(h.ctx, h.sim)
	require.NoError(t, err)
	h.m.Update(h.ctx, inv, defaultPolicy())
	require.Empty(t, h.change())

	// Events keep flowing for the new layout.
	nd := inv.GPUs[0].MigDevices[0]
	require.NotEqual(t, md.UUID, nd.UUID)
	h.inject(func() error { return h.sim.InjectMigXID(0, uint32(nd.GI), uint32(nd.CI), 48) })
	require.Equal(t, set(nd.UUID), h.change())
}

// noEvents makes one GPU refuse event registration.
type noEvents struct {
	nvml.Interface
	uuid string
}

func (n noEvents) DeviceGetHandleByUUID(uuid string) (nvml.Device, nvml.Return) {
	d, ret := n.Interface.DeviceGetHandleByUUID(uuid)
	if ret == nvml.SUCCESS && uuid == n.uuid {
		return refusing{d}, ret
	}
	return d, ret
}

type refusing struct{ nvml.Device }

func (refusing) RegisterEvents(uint64, nvml.EventSet) nvml.Return { return nvml.ERROR_NOT_SUPPORTED }

func TestGPUWithoutEventsIsProbed(t *testing.T) {
	b, err := sim.New("dgxa100")
	require.NoError(t, err)
	inv, err := gpu.Discover(context.Background(), b)
	require.NoError(t, err)
	uuid := inv.GPUs[2].UUID
	h := start(t, "dgxa100", defaultPolicy(), func(lib nvml.Interface) nvml.Interface { return noEvents{lib, uuid} })

	// Other GPUs still get events.
	h.inject(func() error { return h.sim.InjectXID(3, 48) })
	require.Equal(t, set(h.inv.GPUs[3].UUID), h.change())
	h.step(quiet)
	require.Empty(t, h.change())

	// GPU 2 gets none, but its periodic probe catches the loss.
	require.ErrorIs(t, h.sim.InjectGPULost(2), sim.ErrNoListener)
	for {
		h.step(probe)
		select {
		case s := <-h.changes:
			require.Equal(t, set(uuid), s)
			require.Contains(t, h.event().Reason, "probe failed")
			require.NoError(t, h.sim.RestoreGPU(2))
			h.step(quiet)
			require.Empty(t, h.change())
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// nvmlLock models real NVML, where RegisterEvents waits for a pending
// nvmlEventSetWait on the same set to return: both take one lock, and Wait
// holds it for its whole timeout.
type nvmlLock struct {
	nvml.Interface
	mu      *sync.Mutex
	waiting *atomic.Bool
	overlap *atomic.Bool // RegisterEvents ran while a Wait was pending
}

func (l nvmlLock) EventSetCreate() (nvml.EventSet, nvml.Return) {
	s, ret := l.Interface.EventSetCreate()
	return lockedSet{s, l}, ret
}

func (l nvmlLock) DeviceGetHandleByUUID(uuid string) (nvml.Device, nvml.Return) {
	d, ret := l.Interface.DeviceGetHandleByUUID(uuid)
	return lockedDevice{d, l}, ret
}

type lockedSet struct {
	nvml.EventSet
	l nvmlLock
}

func (s lockedSet) Wait(ms uint32) (nvml.EventData, nvml.Return) {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	s.l.waiting.Store(true)
	defer s.l.waiting.Store(false)
	return s.EventSet.Wait(ms)
}

type lockedDevice struct {
	nvml.Device
	l nvmlLock
}

func (d lockedDevice) RegisterEvents(types uint64, set nvml.EventSet) nvml.Return {
	if d.l.waiting.Load() {
		d.l.overlap.Store(true)
	}
	d.l.mu.Lock()
	defer d.l.mu.Unlock()
	if ls, ok := set.(lockedSet); ok {
		set = ls.EventSet
	}
	return d.Device.RegisterEvents(types, set)
}

// TestUpdateNeverWaitsForNVML: registering GPUs found by a rescan must not
// block Update (the daemon's reconcile, and with it the kubelet) while the
// event loop sits in NVML's Wait; and the first GPUs are registered at once.
func TestUpdateNeverWaitsForNVML(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	b, err := sim.New("dgxa100")
	require.NoError(t, err)
	inv, err := gpu.Discover(ctx, b)
	require.NoError(t, err)
	l := nvmlLock{Interface: b.NVML(), mu: &sync.Mutex{}, waiting: &atomic.Bool{}, overlap: &atomic.Bool{}}
	m := New(l, Options{WaitTimeout: time.Hour}) // a Wait that never times out in this test
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		_ = b.InjectXID(0, 31) // end the pending Wait
		require.NoError(t, <-done)
	}()

	first := &gpu.Inventory{GPUs: inv.GPUs[:4]}
	m.Update(ctx, first, defaultPolicy())
	require.Eventually(t, func() bool { return l.waiting.Load() }, 5*time.Second, time.Millisecond, "the first GPUs are registered and waited on")

	// A rescan finds four more GPUs while the loop is in Wait.
	returned := make(chan struct{})
	go func() {
		m.Update(ctx, inv, defaultPolicy())
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("Update blocked behind NVML's pending Wait")
	}
	require.False(t, l.overlap.Load(), "RegisterEvents was called while a Wait was pending")
}
