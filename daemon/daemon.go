// Package daemon is gpublocks' node agent: it discovers the GPUs, plans their
// shapes from the config, publishes the CDI spec and serves the resulting
// resources to the kubelet, and re-plans whenever something changes (a
// rescan, a config change, a health event) without restarting.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

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
	NodeClient *NodeAPI
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
	opts     Options
	backend  gpu.Backend
	driver   cdi.DriverFiles
	writer   *cdi.Writer
	manager  *plugin.Manager
	rescan   chan struct{} // rediscover, then re-plan
	reconfig chan struct{} // a candidate config is pending
	replan   chan struct{} // re-plan the last inventory (health changed)

	// reloadMu serialises reloadConfig: the file watcher and the label
	// informer both call it, and a load for a superseded label must not
	// land after the load for the current one.
	reloadMu sync.Mutex

	mu    sync.Mutex
	state *State
	// cfg and source are the last good config: the one committed and
	// served. A new config is only a candidate until a plan made from it
	// passes the plugin manager's checks and is served; until then, and
	// whenever it is rejected, cfg keeps serving.
	cfg    *config.Config
	source config.Source
	// candidate is a loaded config not applied yet (nil when none), and
	// candidateSource where it came from. It stays pending while it would
	// rename resources of allocated devices; heldLogged says that was logged.
	candidate       *config.Config
	candidateSource config.Source
	heldLogged      bool
	label           string // the node's gpublocks.io/config label
	status          ConfigStatus
	unhealthy       map[string]bool
	deferred        map[string]string // GPU UUID → shape kept while allocated
	warnedPR        bool              // warned once that pod-resources is absent

	obs observers // health monitor and metrics (health.go, metrics.go)

	cw configWatch // the config watcher's counts and idle probe (watch.go)
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
	if _, simulated := backend.(*sim.Backend); !simulated && driver.Empty() {
		klog.FromContext(ctx).Error(nil, "NVML loaded, but no driver libraries or tools were found under --driver-root: containers get device nodes only and CUDA will not start in them; point --driver-root at the driver's root",
			"driverRoot", o.DriverRoot)
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
		reconfig:  make(chan struct{}, 1),
		replan:    make(chan struct{}, 1),
		cfg:       cfg,
		source:    src,
		status:    ConfigStatus{Generation: 1, Name: src.Name},
		unhealthy: map[string]bool{},
	}
	d.initObservers()
	logger := klog.FromContext(ctx)
	d.manager = plugin.NewManager(plugin.Options{PluginDir: o.PluginDir, OnAllocate: d.allocateHook(), Logger: &logger})
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

// Retry bounds for a failed reconcile: the first retry comes after
// retryMin, each further one waits twice as long, up to retryMax.
const (
	retryMin = time.Second
	retryMax = 30 * time.Second
)

// trigger is why reconcile runs; it decides what is asked again.
type trigger int

const (
	// byHealth re-plans the last inventory with new health. It reuses the
	// current deferrals and asks the kubelet nothing, so that an XID
	// reaches ListAndWatch fast.
	byHealth trigger = iota
	// byConfig evaluates a candidate config.
	byConfig
	// byPoll retries deferred changes.
	byPoll
	// byRetry repeats a failed reconcile.
	byRetry
	// byRescan rediscovers the GPUs first.
	byRescan
)

// Run publishes the first state, serves it, and re-plans on every trigger
// until ctx is cancelled. It returns nil on a clean shutdown.
func (d *Daemon) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	d.mu.Lock()
	src := d.source
	d.mu.Unlock()
	logger.Info("Config chosen", "path", src.Path, "name", src.Name, "reason", src.Reason)
	logOtherConfigs(logger, src)
	// The health monitor, the metrics server and the config watchers stop
	// with Run and are waited for.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer d.obs.looping.Store(2)
	if err := d.startObservers(ctx, &wg); err != nil {
		return err
	}
	if err := d.startWatchers(ctx, &wg); err != nil {
		return err
	}
	// Restore the spec whenever it is deleted behind our back.
	wg.Go(func() { d.writer.Heal(ctx) })
	// The CDI spec must exist before the kubelet can allocate anything.
	if err := d.reconcile(ctx, byRescan); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- d.manager.Run(ctx) }()
	poll := time.NewTicker(d.opts.DeferPollInterval)
	defer poll.Stop()
	// A failed reconcile is retried with backoff. Until one succeeds,
	// every reconcile does the most any failed one asked for (rescanned,
	// if one of them was a rescan), so that no trigger is lost.
	retry := time.NewTimer(retryMin)
	retry.Stop()
	defer retry.Stop()
	backoff, failing, rescanPending := retryMin, false, false
	d.obs.looping.Store(1)
	for {
		var why trigger
		select {
		case ch := <-d.obs.ping:
			close(ch)
			continue
		case <-ctx.Done():
			return <-errc
		case err := <-errc:
			return err
		case <-d.rescan:
			logger.Info("Rescanning GPUs")
			why = byRescan
		case <-d.reconfig:
			why = byConfig
		case <-d.replan:
			why = byHealth
		case <-poll.C:
			if !d.pending() {
				continue
			}
			why = byPoll
		case <-retry.C:
			why = byRetry
		}
		if failing {
			why = max(why, byRetry)
		}
		if rescanPending {
			why = byRescan
		}
		err := d.reconcile(ctx, why)
		if err == nil {
			if failing {
				logger.Info("Update succeeded after failures")
			}
			retry.Stop()
			backoff, failing, rescanPending = retryMin, false, false
			continue
		}
		// Keep serving the last good state: a transient NVML or disk
		// failure must not take devices away.
		logger.Error(err, "Update failed; still serving the previous devices", "retryIn", backoff)
		failing, rescanPending = true, rescanPending || why == byRescan
		retry.Stop()
		retry.Reset(backoff)
		backoff = min(2*backoff, retryMax)
	}
}

// pending reports whether the defer poll has work: GPUs kept in their old
// shape, or a config held back.
func (d *Daemon) pending() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.deferred) > 0 || d.candidate != nil
}

// reconcile recomputes the state (discovering again for byRescan and
// before the first state), writes the CDI spec and hands the resources to
// the plugin manager. A candidate config is planned and checked first and
// only committed once served; a bad one is rejected and the last good
// config serves on.
func (d *Daemon) reconcile(ctx context.Context, why trigger) error {
	logger := klog.FromContext(ctx)
	d.mu.Lock()
	prev, cfg, src := d.state, d.cfg, d.source
	cand, candSrc := d.candidate, d.candidateSource
	deferred := d.deferred
	unhealthy := cloneSet(d.unhealthy)
	d.mu.Unlock()

	var inv *gpu.Inventory
	if prev != nil && why != byRescan {
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

	// Which devices pods hold matters only when shapes or names may
	// change; a health change re-plans with the deferrals in force.
	var alloc *allocations
	if prev == nil || why != byHealth {
		alloc = d.allocated(ctx)
	}

	var st *State
	var keep map[string]string
	commit := false
	if cand != nil && alloc != nil {
		cst, ckeep, err := d.planConfig(ctx, inv, cand, candSrc, prev, alloc, unhealthy)
		if err == nil {
			err = d.manager.Check(cst.Plan.Resources)
		}
		var moved []string
		if err == nil && prev != nil {
			moved = renamed(prev.Plan, cst.Plan, alloc)
		}
		switch {
		case err != nil:
			d.rejectCandidate(ctx, cand, candSrc, err)
		case len(moved) > 0:
			d.holdCandidate(ctx, cand, candSrc, moved)
		default:
			st, keep, commit = cst, ckeep, true
		}
	}
	if st == nil {
		var err error
		if alloc == nil {
			st, err = plan(ctx, inv, d.opts, cfg, d.driver, unhealthy, deferred)
			keep = deferred
		} else {
			st, keep, err = d.planConfig(ctx, inv, cfg, src, prev, alloc, unhealthy)
		}
		if err != nil {
			return err
		}
	}
	if prev == nil || !samePlan(prev.Plan, st.Plan) {
		for _, w := range st.Plan.Warnings {
			logger.Info("Plan warning", "warning", w, "config", st.Source.Name)
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
	d.deferred = keep
	var status ConfigStatus
	if commit {
		d.cfg, d.source = cand, candSrc
		if d.candidate == cand {
			d.candidate, d.heldLogged = nil, false
		}
		if prev != nil {
			// The first state served is generation 1, whichever config
			// it was planned from.
			d.status.Generation++
		}
		d.status.Name = candSrc.Name
		d.status.LastError = nil
		status = d.status
	}
	d.mu.Unlock()
	if commit {
		logger.Info("Config applied", "path", candSrc.Path, "name", candSrc.Name, "reason", candSrc.Reason, "generation", status.Generation)
		logOtherConfigs(logger, candSrc)
	}
	if alloc != nil {
		logDeferrals(logger, deferred, keep, st)
	}
	d.observe(ctx, st)
	return nil
}

// planConfig plans inv under cfg, keeping the shape of every GPU that alloc
// says is in use (see shapesToKeep).
func (d *Daemon) planConfig(ctx context.Context, inv *gpu.Inventory, cfg *config.Config, src config.Source, prev *State, alloc *allocations, unhealthy map[string]bool) (*State, map[string]string, error) {
	keep := shapesToKeep(prev, inv, cfg, alloc)
	st, err := plan(ctx, inv, d.opts, cfg, d.driver, unhealthy, keep)
	if err != nil {
		return nil, nil, err
	}
	st.Source = src
	return st, keep, nil
}

// rejectCandidate counts a candidate config that cannot be served; the last
// good config serves on.
func (d *Daemon) rejectCandidate(ctx context.Context, cand *config.Config, src config.Source, err error) {
	err = fmt.Errorf("config %q: %w", configName(src), err)
	d.mu.Lock()
	current := d.candidate == cand
	if current {
		d.candidate, d.heldLogged = nil, false
		d.status.Errors++
		d.status.LastError = err
	}
	generation := d.status.Generation
	d.mu.Unlock()
	if current {
		klog.FromContext(ctx).Error(err, "Config rejected; still serving the last good config", "generation", generation)
	}
}

// holdCandidate keeps a candidate config pending because it would move
// allocated devices to another resource name, which the kubelet would
// count as free (devices assigned twice). It is valid, so no error stands;
// the defer poll tries it again.
func (d *Daemon) holdCandidate(ctx context.Context, cand *config.Config, src config.Source, moved []string) {
	d.mu.Lock()
	current := d.candidate == cand
	log := current && !d.heldLogged
	if current {
		d.heldLogged = true
		d.status.LastError = nil
	}
	d.mu.Unlock()
	if log {
		klog.FromContext(ctx).Info("Config change deferred: it renames resources of allocated devices; it applies once they are released",
			"name", src.Name, "path", src.Path, "devices", nameIDs(moved))
	}
}

// configName names a config for messages: its name in a directory, else
// its file.
func configName(src config.Source) string {
	if src.Name != "" {
		return src.Name
	}
	return src.Path
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

// logOtherConfigs warns about the broken configs of a ConfigMap that this
// node does not use: they fail only the nodes that choose them.
func logOtherConfigs(logger klog.Logger, src config.Source) {
	for _, err := range src.Others {
		logger.Error(err, "Another config in the ConfigMap is invalid; nodes that choose it keep their last good config", "dir", filepath.Dir(src.Path))
	}
}
