// Package daemon is gpublocks' node agent: it discovers the GPUs, plans their
// shapes from the config, publishes the CDI spec and serves the resulting
// resources to the kubelet, and re-plans whenever something changes (a
// rescan, a config change, a health event) without restarting.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"k8s.io/klog/v2"
	"tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpublocks/gpublocks/cdi"
	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/plugin"
	"github.com/gpublocks/gpublocks/shape"
)

// Options are the serve command's settings (DESIGN §3).
type Options struct {
	ConfigPath  string
	NodeName    string
	PluginDir   string
	CDIDir      string
	DriverRoot  string
	DevRoot     string
	Simulate    string // preset or file; "" = real NVML
	MetricsAddr string
	// CDIKind defaults to cdi.DefaultKind.
	CDIKind cdi.Kind
}

func (o *Options) kind() cdi.Kind {
	if o.CDIKind == (cdi.Kind{}) {
		return cdi.DefaultKind
	}
	return o.CDIKind
}

// OpenBackend opens the simulated backend when Simulate is set, else the
// real NVML library under DriverRoot.
func OpenBackend(ctx context.Context, o Options) (gpu.Backend, error) {
	if o.Simulate != "" {
		return sim.New(o.Simulate)
	}
	return gpu.NewNVMLBackend(ctx, o.DriverRoot, o.DevRoot)
}

// State is one consistent view of the node: what was discovered, the config
// in force, the plan made from them and the CDI spec that goes with it.
type State struct {
	Inventory *gpu.Inventory
	Config    *config.Config
	Source    config.Source
	Plan      *shape.Plan
	Spec      *specs.Spec
	Omissions []cdi.Omission
}

// Compute discovers the GPUs through b, plans them under cfg with the given
// unhealthy GPUs, and builds the CDI spec. It has no side effects, so
// inspect and `cdi generate` show exactly what serve would do.
func Compute(ctx context.Context, b gpu.Backend, o Options, cfg *config.Config, driver cdi.DriverFiles, unhealthy map[string]bool) (*State, error) {
	inv, err := gpu.Discover(ctx, b)
	if err != nil {
		return nil, err
	}
	return plan(ctx, inv, o, cfg, driver, unhealthy, nil)
}

func plan(ctx context.Context, inv *gpu.Inventory, o Options, cfg *config.Config, driver cdi.DriverFiles, unhealthy map[string]bool, keep map[string]string) (*State, error) {
	strategies, err := cdi.ParseStrategies(cfg.DeviceListStrategy)
	if err != nil {
		return nil, err
	}
	kind := o.kind()
	var respErr error
	p := shape.Build(shape.Input{
		Inventory: inv,
		Config:    cfg,
		Unhealthy: unhealthy,
		Keep:      keep,
		Responders: func(resource string) shape.Responder {
			r, err := cdi.NewResponder(kind, resource, strategies)
			if err != nil {
				respErr = errors.Join(respErr, err)
				return nil
			}
			return r.Respond
		},
	})
	if respErr != nil {
		return nil, respErr
	}
	spec, omissions, err := cdi.BuildSpec(ctx, cdi.SpecInput{Kind: kind, Inventory: inv, Offered: p.CDIGPUs, Driver: driver})
	if err != nil {
		return nil, err
	}
	return &State{Inventory: inv, Config: cfg, Plan: p, Spec: spec, Omissions: omissions}, nil
}

// Daemon serves one node.
type Daemon struct {
	opts    Options
	backend gpu.Backend
	driver  cdi.DriverFiles
	writer  *cdi.Writer
	manager *plugin.Manager
	rescan  chan struct{}

	mu        sync.Mutex
	state     *State
	cfg       *config.Config
	source    config.Source
	unhealthy map[string]bool
}

// New prepares a daemon over backend: it loads the config and finds the
// driver files, but starts nothing.
func New(ctx context.Context, o Options, backend gpu.Backend) (*Daemon, error) {
	cfg, src, err := config.Load(o.ConfigPath, "")
	if err != nil {
		return nil, err
	}
	klog.FromContext(ctx).Info("Config chosen", "path", src.Path, "name", src.Name, "reason", src.Reason)
	driver, err := FindDriverFiles(ctx, o)
	if err != nil {
		return nil, err
	}
	w, err := cdi.NewWriter(o.CDIDir, o.kind())
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		opts:      o,
		backend:   backend,
		driver:    driver,
		writer:    w,
		rescan:    make(chan struct{}, 1),
		cfg:       cfg,
		source:    src,
		unhealthy: map[string]bool{},
	}
	d.manager = plugin.NewManager(plugin.Options{PluginDir: o.PluginDir})
	return d, nil
}

// Manager exposes the plugin manager (readiness for /readyz and tests).
func (d *Daemon) Manager() *plugin.Manager { return d.manager }

// State returns the state last served, or nil before the first.
func (d *Daemon) State() *State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}

// Rescan asks for a new discovery (SIGHUP): a changed MIG layout is picked
// up without a restart.
func (d *Daemon) Rescan() {
	select {
	case d.rescan <- struct{}{}:
	default: // one is pending already
	}
}

// Run publishes the first state, serves it, and re-plans on every trigger
// until ctx is cancelled. It returns nil on a clean shutdown.
func (d *Daemon) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	// The CDI spec must exist before the kubelet can allocate anything.
	if err := d.reconcile(ctx, true); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- d.manager.Run(ctx) }()
	for {
		select {
		case <-ctx.Done():
			return <-errc
		case err := <-errc:
			return err
		case <-d.rescan:
			logger.Info("Rescanning GPUs")
			if err := d.reconcile(ctx, true); err != nil {
				// Keep serving the last good state: a transient NVML
				// failure must not take devices away.
				logger.Error(err, "Rescan failed; still serving the previous devices")
			}
		}
	}
}

// reconcile recomputes the state (discovering again when rediscover is set),
// writes the CDI spec and hands the resources to the plugin manager.
func (d *Daemon) reconcile(ctx context.Context, rediscover bool) error {
	logger := klog.FromContext(ctx)
	d.mu.Lock()
	prev, cfg := d.state, d.cfg
	unhealthy := cloneSet(d.unhealthy)
	d.mu.Unlock()

	inv := (*gpu.Inventory)(nil)
	if prev != nil && !rediscover {
		inv = prev.Inventory
	} else {
		var err error
		if inv, err = gpu.Discover(ctx, d.backend); err != nil {
			return fmt.Errorf("discovering GPUs with %s: %w", d.backend.Name(), err)
		}
		for _, s := range inv.Skipped {
			logger.Error(s.Reason, "Device not offered", "device", s.Device)
		}
	}
	st, err := plan(ctx, inv, d.opts, cfg, d.driver, unhealthy, nil)
	if err != nil {
		return err
	}
	st.Source = d.source
	for _, w := range st.Plan.Warnings {
		logger.Info("Warning: "+w, "config", d.source.Name)
	}
	if prev == nil || !samePlan(prev.Plan, st.Plan) {
		for _, a := range st.Plan.GPUs {
			logger.Info("GPU planned", "index", a.GPU.Index, "uuid", a.GPU.UUID, "model", a.GPU.Model, "shape", a.Shape, "reason", a.Reason)
		}
		for _, r := range st.Plan.Resources {
			logger.Info("Resource", "name", r.Name(), "devices", len(r.Devices()))
		}
	}
	if _, err := d.writer.Write(ctx, st.Spec); err != nil {
		return err
	}
	if err := d.manager.Update(st.Plan.Resources); err != nil {
		return err
	}
	d.mu.Lock()
	d.state = st
	d.mu.Unlock()
	return nil
}

func samePlan(a, b *shape.Plan) bool {
	if len(a.GPUs) != len(b.GPUs) {
		return false
	}
	for i := range a.GPUs {
		if a.GPUs[i].GPU.UUID != b.GPUs[i].GPU.UUID || a.GPUs[i].Shape != b.GPUs[i].Shape {
			return false
		}
	}
	return slices.Equal(a.ResourceNames(), b.ResourceNames())
}

func cloneSet(m map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k, v := range m {
		if v {
			out[k] = true
		}
	}
	return out
}
