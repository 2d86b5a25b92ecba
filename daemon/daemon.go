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
	"time"

	"k8s.io/client-go/metadata"
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
	// PodResourcesSocket is the kubelet's PodResources API, asked before a
	// GPU changes shape; default DefaultPodResourcesSocket.
	PodResourcesSocket string
	// DeferPollInterval is how often a deferred shape change is retried;
	// default 10 s.
	DeferPollInterval time.Duration
	// NodeClient reads the node's label; nil means the in-cluster client
	// when NodeName is set.
	NodeClient metadata.Interface
	// OnServed, if set, is called with every state served (metrics).
	OnServed func(*State)
	// OnConfig, if set, is called whenever the config status changes.
	OnConfig func(ConfigStatus)
	// OnAllocate is handed to the plugin manager (metrics).
	OnAllocate func(resource string, took time.Duration, err error)
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
	rescan  chan struct{} // rediscover, then re-plan
	replan  chan struct{} // re-plan the last inventory

	mu        sync.Mutex
	state     *State
	cfg       *config.Config
	source    config.Source
	label     string // the node's gpublocks.io/config label
	status    ConfigStatus
	unhealthy map[string]bool
	deferred  map[string]string // GPU UUID → shape kept while allocated
	warnedPR  bool              // warned once that pod-resources is absent

	obs observers // health monitor and metrics (health.go, metrics.go)
}

// ConfigStatus says how the config stands, for logs, metrics and tests.
type ConfigStatus struct {
	Generation int64  // bumped on every applied change; 1 = the first config
	Name       string // the named config in force
	Errors     int64  // configs rejected so far
	LastError  error  // the last rejection, nil once a good config loads
}

// New prepares a daemon over backend: it loads the config and finds the
// driver files, but starts nothing. A bad config fails here: there is no
// last good one to keep serving yet.
func New(ctx context.Context, o Options, backend gpu.Backend) (*Daemon, error) {
	if o.PodResourcesSocket == "" {
		o.PodResourcesSocket = DefaultPodResourcesSocket
	}
	if o.DeferPollInterval == 0 {
		o.DeferPollInterval = 10 * time.Second
	}
	cfg, src, err := config.Load(o.ConfigPath, "")
	if err != nil {
		return nil, err
	}
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
		replan:    make(chan struct{}, 1),
		cfg:       cfg,
		source:    src,
		status:    ConfigStatus{Generation: 1, Name: src.Name},
		unhealthy: map[string]bool{},
	}
	d.initObservers()
	d.manager = plugin.NewManager(plugin.Options{PluginDir: o.PluginDir, OnAllocate: d.allocateHook()})
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

// ConfigStatus returns how the config stands.
func (d *Daemon) ConfigStatus() ConfigStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status
}

// Rescan asks for a new discovery (SIGHUP): a changed MIG layout is picked
// up without a restart.
func (d *Daemon) Rescan() { signal(d.rescan) }

// Replan asks for a new plan of the GPUs already discovered.
func (d *Daemon) Replan() { signal(d.replan) }

// SetUnhealthy replaces the set of faulted devices (GPU UUIDs: every device
// on the GPU; MIG UUIDs: that MIG device) and re-plans.
func (d *Daemon) SetUnhealthy(set map[string]bool) {
	d.mu.Lock()
	d.unhealthy = cloneSet(set)
	d.mu.Unlock()
	d.Replan()
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default: // one is pending already
	}
}

// Run publishes the first state, serves it, and re-plans on every trigger
// until ctx is cancelled. It returns nil on a clean shutdown.
func (d *Daemon) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	d.mu.Lock()
	src := d.source
	d.mu.Unlock()
	logger.Info("Config chosen", "path", src.Path, "name", src.Name, "reason", src.Reason)
	// The health monitor and the metrics server stop with Run and are
	// waited for.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer d.obs.looping.Store(2)
	if err := d.startObservers(ctx, &wg); err != nil {
		return err
	}
	if err := d.startWatchers(ctx); err != nil {
		return err
	}
	// The CDI spec must exist before the kubelet can allocate anything.
	if err := d.reconcile(ctx, true); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- d.manager.Run(ctx) }()
	poll := time.NewTicker(d.opts.DeferPollInterval)
	defer poll.Stop()
	d.obs.looping.Store(1)
	for {
		var err error
		select {
		case ch := <-d.obs.ping:
			close(ch)
		case <-ctx.Done():
			return <-errc
		case err := <-errc:
			return err
		case <-d.rescan:
			logger.Info("Rescanning GPUs")
			err = d.reconcile(ctx, true)
		case <-d.replan:
			err = d.reconcile(ctx, false)
		case <-poll.C:
			d.mu.Lock()
			pending := len(d.deferred) > 0
			d.mu.Unlock()
			if pending {
				err = d.reconcile(ctx, false)
			}
		}
		if err != nil {
			// Keep serving the last good state: a transient NVML or disk
			// failure must not take devices away.
			logger.Error(err, "Update failed; still serving the previous devices")
		}
	}
}

// reconcile recomputes the state (discovering again when rediscover is set),
// writes the CDI spec and hands the resources to the plugin manager.
func (d *Daemon) reconcile(ctx context.Context, rediscover bool) error {
	logger := klog.FromContext(ctx)
	d.mu.Lock()
	prev, cfg, src := d.state, d.cfg, d.source
	unhealthy := cloneSet(d.unhealthy)
	d.mu.Unlock()

	var inv *gpu.Inventory
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
	keep := d.deferrals(ctx, prev, inv, cfg)
	st, err := plan(ctx, inv, d.opts, cfg, d.driver, unhealthy, keep)
	if err != nil {
		return err
	}
	st.Source = src
	if prev == nil || !samePlan(prev.Plan, st.Plan) {
		for _, w := range st.Plan.Warnings {
			logger.Info("Warning: "+w, "config", src.Name)
		}
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
	if d.opts.OnServed != nil {
		d.opts.OnServed(st)
	}
	d.observe(ctx, st)
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
