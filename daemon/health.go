package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/health"
	"github.com/gpublocks/gpublocks/metrics"
)

// ErrStopped is what Ping reports once Run has returned.
var ErrStopped = errors.New("daemon stopped")

// observers are what watches the daemon and the GPUs from the side: the
// health monitor, which feeds SetUnhealthy, and the metrics.
type observers struct {
	health  *health.Monitor
	metrics *metrics.Metrics // nil when Options.MetricsAddr is ""
	server  *metrics.Server  // bound once Run starts
	faults  *sim.FaultServer // bound once Run starts, simulated hardware only

	ping    chan chan struct{} // answered by Run's loop (liveness)
	looping atomic.Int32       // 0 before the loop, 1 in it, 2 after
}

// initObservers builds the health monitor and, unless disabled, the
// metrics. New calls it.
func (d *Daemon) initObservers() {
	d.obs.ping = make(chan chan struct{})
	d.obs.health = health.New(d.backend.NVML(), health.Options{
		OnChange: d.SetUnhealthy,
		OnEvent:  d.healthEvent,
	})
	if d.opts.MetricsAddr != "" {
		d.obs.metrics = metrics.New(d.metricsSnapshot)
	}
}

// startObservers binds the metrics listener and starts it and the health
// monitor; both stop with ctx and are waited for through wg.
func (d *Daemon) startObservers(ctx context.Context, wg *sync.WaitGroup) error {
	logger := klog.FromContext(ctx)
	if err := d.startFaults(ctx, wg); err != nil {
		return err
	}
	if d.obs.metrics != nil {
		h := d.obs.metrics.Handler(metrics.Probes{Live: d.Ping, Ready: d.Registered})
		srv, err := metrics.Listen(d.opts.MetricsAddr, h)
		if err != nil {
			return err
		}
		d.mu.Lock()
		d.obs.server = srv
		d.mu.Unlock()
		wg.Go(func() {
			if err := srv.Serve(ctx); err != nil {
				logger.Error(err, "Metrics server stopped")
			}
		})
	}
	wg.Go(func() { _ = d.obs.health.Run(klog.NewContext(ctx, logger.WithName("health"))) })
	return nil
}

// startFaults serves fault injection for simulated GPUs on
// Options.SimulateAddr, a loopback address: never on the metrics address,
// which other hosts reach, since one POST takes a GPU out of service. A
// non-loopback address is refused even without simulated hardware, where
// nothing is served.
func (d *Daemon) startFaults(ctx context.Context, wg *sync.WaitGroup) error {
	addr := d.opts.SimulateAddr
	if addr == "" {
		return nil
	}
	if err := sim.CheckLoopback(addr); err != nil {
		return fmt.Errorf("--simulate-addr: %w", err)
	}
	b, ok := d.backend.(*sim.Backend)
	if !ok {
		return nil
	}
	srv, err := b.ListenFaults(addr)
	if err != nil {
		return fmt.Errorf("--simulate-addr: %w", err)
	}
	d.mu.Lock()
	d.obs.faults = srv
	d.mu.Unlock()
	logger := klog.FromContext(ctx)
	wg.Go(func() {
		if err := srv.Serve(ctx); err != nil {
			logger.Error(err, "Fault injection server stopped")
		}
	})
	return nil
}

// SimulateAddr is the address fault injection is bound to, or nil when it
// is disabled, the hardware is real, or Run has not bound it yet.
func (d *Daemon) SimulateAddr() net.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.obs.faults == nil {
		return nil
	}
	return d.obs.faults.Addr()
}

// observe hands a served state to the health monitor, which follows
// rescans and config changes.
func (d *Daemon) observe(ctx context.Context, st *State) {
	d.obs.health.Update(klog.NewContext(ctx, klog.FromContext(ctx).WithName("health")), st.Inventory, healthPolicy(st.Config.Health))
}

func healthPolicy(h config.Health) health.Policy {
	return health.Policy{IgnoredXids: h.IgnoredXids, QuietPeriod: h.QuietPeriod.Duration, Disabled: h.Disabled}
}

// healthEvent counts what the monitor saw.
func (d *Daemon) healthEvent(e health.Event) {
	if len(e.Devices) > 0 {
		reason := "probe-failed"
		switch {
		case e.Type&nvml.EventTypeXidCriticalError != 0:
			reason = fmt.Sprintf("xid-%d", e.XID)
		case e.Type&nvml.EventTypeDoubleBitEccError != 0:
			reason = "double-bit-ecc"
		}
		d.mu.Lock()
		for _, key := range e.Devices {
			d.reasons[key] = reason
		}
		d.mu.Unlock()
	}
	m := d.obs.metrics
	if m == nil {
		return
	}
	switch {
	case e.Type&nvml.EventTypeXidCriticalError != 0:
		m.XID(e.GPU, e.UUID, e.XID, e.Ignored)
	case e.Type&nvml.EventTypeDoubleBitEccError != 0:
		m.DoubleBitECC(e.GPU, e.UUID)
	case e.Type == 0:
		m.ProbeFailure(e.GPU, e.UUID)
	}
}

// Ping returns nil once Run's loop answers (or while it is still starting
// up), ErrStopped after Run returned, and ctx's error when the loop does
// not answer in time: the liveness check behind /healthz.
func (d *Daemon) Ping(ctx context.Context) error {
	switch d.obs.looping.Load() {
	case 0:
		return nil
	case 2:
		return ErrStopped
	}
	return roundTrip(ctx, d.obs.ping)
}

// roundTrip hands a loop a reply channel and waits until the loop closes
// it (it has come round to the request), or ctx ends.
func roundTrip(ctx context.Context, to chan<- chan struct{}) error {
	ch := make(chan struct{})
	select {
	case to <- ch:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Unhealthy returns the faulted devices as the health monitor sees them:
// GPU UUIDs (every device on the GPU) and MIG UUIDs.
func (d *Daemon) Unhealthy() map[string]bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return cloneSet(d.unhealthy)
}
