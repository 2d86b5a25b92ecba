// Package daemon is gpublocks' node agent: it discovers the GPUs, plans their
// shapes from the config, publishes the CDI spec and serves the resulting
// resources to the kubelet, and re-plans whenever something changes (a
// rescan, a config change, a health event) without restarting.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
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
	"github.com/gpublocks/gpublocks/plugin/resources"
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
	// SimulateAddr is the loopback address for fault injection into
	// simulated GPUs (sim.ListenFaults); "" disables it, and real hardware
	// never serves it.
	SimulateAddr string
	// CDIKind defaults to cdi.DefaultKind.
	CDIKind cdi.Kind
	// PodResourcesSocket is the kubelet's PodResources API, asked before a
	// GPU changes shape; default DefaultPodResourcesSocket.
	PodResourcesSocket string
	// PodResourcesTimeout bounds one PodResources question; default 5 s.
	// A question that fails or times out counts every device as allocated.
	PodResourcesTimeout time.Duration
	// DeferPollInterval is how often a deferred shape change is retried;
	// default 10 s.
	DeferPollInterval time.Duration
	// NodeClient reads the node's label; nil means the in-cluster client
	// when NodeName is set.
	NodeClient *NodeAPI
	// KubeletAPI is KubeletAPIDevicePlugin ("" too) or KubeletAPIDRA.
	KubeletAPI string
	// Publisher serves the kubelet in DRA mode (package draserve, linked
	// only into the gpublocks-dra executable); required then, unused
	// otherwise.
	Publisher Publisher
}

func (o *Options) dra() bool { return o.KubeletAPI == KubeletAPIDRA }

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
// in force, the plan made from them, what serves the plan and the CDI spec
// that goes with it.
type State struct {
	Inventory *gpu.Inventory
	Config    *config.Config
	Source    config.Source
	Plan      *shape.Plan
	// Resources are the device plugin's resources serving Plan, sorted by
	// name (nil in DRA mode).
	Resources []plugin.Resource
	Spec      *specs.Spec
	Omissions []cdi.Omission
	// Offers is what each GPU offers to DRA (nil in device-plugin mode),
	// and Faults why each unhealthy device is, for DRA's device taints.
	Offers []shape.Offer
	Faults map[string]string
	// MigLayouts is how each GPU whose config rule gives a MIG layout
	// stands against it (device-plugin mode; miglayout.go).
	MigLayouts []MigLayoutStatus
}

// Compute discovers the GPUs through b, plans them under cfg with the given
// unhealthy GPUs, and builds the CDI spec. It has no side effects, so
// inspect and `cdi generate` show exactly what serve would do.
func Compute(ctx context.Context, b gpu.Backend, o Options, cfg *config.Config, driver cdi.DriverFiles, unhealthy map[string]bool) (*State, error) {
	inv, err := gpu.Discover(ctx, b)
	if err != nil {
		return nil, err
	}
	st, err := plan(ctx, inv, o, cfg, driver, faults{unhealthy: unhealthy}, kept{})
	if err != nil {
		return nil, err
	}
	if !o.dra() {
		st.MigLayouts = migStatus(b.NVML(), inv, cfg)
	}
	return st, nil
}

// faults are the faulted devices a plan is made with: GPU UUIDs (every
// device of the GPU) and MIG UUIDs, and why, for DRA's taints.
type faults struct {
	unhealthy map[string]bool
	reasons   map[string]string
}

// kept is what GPUs keep while devices of them are in use, although the
// config asks another: device-plugin shapes, and DRA offers.
type kept struct {
	shapes map[string]string
	offers map[string]shape.Offer
}

func plan(ctx context.Context, inv *gpu.Inventory, o Options, cfg *config.Config, driver cdi.DriverFiles, h faults, keep kept) (*State, error) {
	unhealthy := h.unhealthy
	strategies, err := cdi.ParseStrategies(cfg.DeviceListStrategy)
	if err != nil {
		return nil, err
	}
	kind := o.kind()
	p := shape.Build(shape.Input{Inventory: inv, Config: cfg, Keep: keep.shapes})
	var rs []plugin.Resource
	if !o.dra() {
		// Only the device plugin serves resources; DRA publishes offers.
		var respErr error
		var warnings []string
		rs, warnings = resources.Build(resources.Input{
			Plan:      p,
			Config:    cfg,
			Unhealthy: unhealthy,
			Responders: func(resource string) resources.Responder {
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
		// The plan's warnings are what the log and inspect show.
		p.Warnings = append(p.Warnings, warnings...)
	}
	spec, omissions, err := cdi.BuildSpec(ctx, cdi.SpecInput{Kind: kind, Inventory: inv, Offered: p.CDIGPUs, Driver: driver})
	if err != nil {
		return nil, err
	}
	st := &State{Inventory: inv, Config: cfg, Plan: p, Resources: rs, Spec: spec, Omissions: omissions}
	if o.dra() {
		st.Offers = shape.Offers(inv, cfg, keep.offers)
		st.Faults = map[string]string{}
		for uuid := range unhealthy {
			st.Faults[uuid] = h.reasons[uuid]
			if st.Faults[uuid] == "" {
				st.Faults[uuid] = "unhealthy"
			}
		}
	}
	return st, nil
}

// Daemon serves one node.
type Daemon struct {
	opts     Options
	backend  gpu.Backend
	driver   cdi.DriverFiles
	writer   *cdi.Writer
	manager  *plugin.Manager // device-plugin mode only
	pub      publisher
	rescan   chan struct{} // rediscover, then re-plan
	reconfig chan struct{} // a candidate config is pending
	replan   chan struct{} // re-plan the last inventory (health changed)
	// rescanNow asks Run's loop to rediscover, re-plan and publish at
	// once, and answers on the channel it carries (RescanNow).
	rescanNow chan chan error

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
	reasons         map[string]string      // why a device is unhealthy (DRA taints)
	deferred        map[string]string      // GPU UUID → shape kept while allocated
	keptOffers      map[string]shape.Offer // DRA: GPU UUID → offer kept while prepared
	warnedPR        bool                   // warned once that pod-resources is absent
	migs            migLayouts             // MIG layouts applied (miglayout.go); Run's loop only

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
	if o.PodResourcesTimeout == 0 {
		o.PodResourcesTimeout = 5 * time.Second
	}
	if o.DeferPollInterval == 0 {
		o.DeferPollInterval = 10 * time.Second
	}
	cfg, src, err := config.Load(o.ConfigPath, "")
	if err != nil {
		return nil, err
	}
	if err := CheckMigLayouts(ctx, backend, nil, cfg, o.KubeletAPI); err != nil {
		return nil, fmt.Errorf("config %q: %w", configName(src), err)
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
		rescanNow: make(chan chan error),
		cfg:       cfg,
		source:    src,
		status:    ConfigStatus{Generation: 1, Name: src.Name},
		unhealthy: map[string]bool{},
	}
	d.reasons = map[string]string{}
	d.initObservers()
	logger := klog.FromContext(ctx)
	switch o.KubeletAPI {
	case "", KubeletAPIDevicePlugin:
		d.manager = plugin.NewManager(plugin.Options{PluginDir: o.PluginDir, OnAllocate: d.allocateHook(), Logger: &logger})
		d.pub = devicePlugins{d.manager}
	case KubeletAPIDRA:
		if o.Publisher == nil {
			return nil, errors.New("DRA mode needs its publisher (the gpublocks-dra executable)")
		}
		d.pub = external{o.Publisher}
	default:
		return nil, fmt.Errorf("--kubelet-api %q is not one of %s, %s", o.KubeletAPI, KubeletAPIDevicePlugin, KubeletAPIDRA)
	}
	return d, nil
}

// Manager exposes the plugin manager (readiness for /readyz and tests); nil
// in DRA mode.
func (d *Daemon) Manager() *plugin.Manager { return d.manager }

// Registered reports whether the kubelet registered what serves it.
func (d *Daemon) Registered() bool { return d.pub.registered() }

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

// RescanNow rediscovers the GPUs, re-plans with the config in force and
// writes the CDI spec and publishes before it returns: DRA mode calls it
// when it has made a MIG instance, whose CDI device must exist before
// prepare answers. It fails when ctx ends first or Run is not running.
func (d *Daemon) RescanNow(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case d.rescanNow <- reply:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Replan asks for a new plan of the GPUs already discovered.
func (d *Daemon) Replan() { signal(d.replan) }

// SetUnhealthy replaces the set of faulted devices (GPU UUIDs: every device
// on the GPU; MIG UUIDs: that MIG device) and re-plans.
func (d *Daemon) SetUnhealthy(set map[string]bool) {
	d.mu.Lock()
	d.unhealthy = cloneSet(set)
	for key := range d.reasons {
		if !d.unhealthy[key] {
			delete(d.reasons, key)
		}
	}
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

// allocAnswer is one PodResources answer, posted back to Run's loop by the
// goroutine that asked.
type allocAnswer struct {
	alloc *allocations
	// cand (from candSrc) is the candidate config pending when the
	// question was asked, and changes the loop's rescan count then: an
	// answer only approves what was already known when it was asked (see
	// Run), so reconcile evaluates this candidate, not a later one.
	cand    *config.Config
	candSrc config.Source
	changes uint64
}

// question starts an answer: what it must approve, known now.
func (d *Daemon) question(changes uint64) *allocAnswer {
	d.mu.Lock()
	defer d.mu.Unlock()
	return &allocAnswer{cand: d.candidate, candSrc: d.candidateSource, changes: changes}
}

// Run publishes the first state, serves it, and re-plans on every trigger
// until ctx is cancelled. It returns nil on a clean shutdown.
//
// Run's loop also answers Ping (/healthz) and delivers health changes to
// ListAndWatch, so nothing on it may wait on the kubelet: the PodResources
// question that a shape or name change needs (DESIGN §4) is asked by a
// goroutine, at most one at a time and bounded by PodResourcesTimeout,
// which posts the answer back to the loop. Until it comes, health changes
// re-plan with the deferrals in force and pings are answered.
//
// An answer approves only the changes known when it was asked: one asked
// before the candidate config or a rescan it is compared with is dropped
// and the kubelet asked again, so that a pod that got a device between the
// two cannot be missed (as a synchronous question asked after the change
// could not miss it). Answers are never reused: each reconcile that needs
// one asks anew.
func (d *Daemon) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	d.mu.Lock()
	src := d.source
	d.mu.Unlock()
	logger.Info("Config chosen", "path", src.Path, "name", src.Name, "reason", src.Reason)
	logOtherConfigs(logger, src)
	// The health monitor, the metrics server, the config watchers and a
	// PodResources question in flight stop with Run and are waited for.
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
	// Nothing is served yet and Ping answers for the start-up, so this
	// first question is asked in line.
	first := d.question(0)
	first.alloc = d.allocated(ctx)
	if err := d.reconcile(ctx, true, first); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- d.pub.run(ctx) }()
	poll := time.NewTicker(d.opts.DeferPollInterval)
	defer poll.Stop()

	answers := make(chan *allocAnswer, 1) // one question in flight at most
	var (
		asking  bool   // a question is in flight
		rescan  bool   // the next reconcile with an answer rediscovers
		changes uint64 // rescans asked for so far
	)
	ask := func() {
		if asking {
			return
		}
		asking = true
		a := d.question(changes)
		wg.Go(func() {
			a.alloc = d.allocated(ctx)
			answers <- a
		})
	}

	// A failed reconcile is retried with backoff; until one succeeds
	// what failed stays owed (a health re-plan, or a reconcile with an
	// answer, rescanning if a rescan was asked for), so that no trigger is
	// lost.
	retry := time.NewTimer(retryMin)
	retry.Stop()
	defer retry.Stop()
	backoff := retryMin
	var healthOwed, allocFailed bool
	done := func(err error) {
		if err != nil {
			// Keep serving the last good state: a transient NVML or
			// disk failure must not take devices away.
			if errors.Is(err, errMigApply) {
				// Logged where it failed; what the GPU holds now serves.
				logger.Info("MIG layout change to be retried", "retryIn", backoff)
			} else {
				logger.Error(err, "Update failed; still serving the previous devices", "retryIn", backoff)
			}
			retry.Stop()
			retry.Reset(backoff)
			backoff = min(2*backoff, retryMax)
			return
		}
		if !healthOwed && !allocFailed && backoff != retryMin {
			logger.Info("Update succeeded after failures")
			retry.Stop()
			backoff = retryMin
		}
	}
	health := func() {
		err := d.reconcile(ctx, false, nil)
		healthOwed = err != nil
		done(err)
	}
	d.obs.looping.Store(1)
	for {
		select {
		case ch := <-d.obs.ping:
			close(ch)
		case <-ctx.Done():
			return <-errc
		case err := <-errc:
			return err
		case <-d.rescan:
			logger.Info("Rescanning GPUs")
			rescan = true
			changes++
			ask()
		case <-d.reconfig:
			// A signal can come after its candidate was applied by an
			// answer asked meanwhile; then there is nothing to ask.
			d.mu.Lock()
			cand := d.candidate
			d.mu.Unlock()
			if cand != nil {
				ask()
			}
		case <-d.replan:
			health()
		case reply := <-d.rescanNow:
			// Planned with the deferrals in force, like a health
			// re-plan; a pending rescan is still owed its answer.
			err := d.reconcile(ctx, true, nil)
			healthOwed = healthOwed && err != nil
			done(err)
			reply <- err
		case <-poll.C:
			if d.pending() {
				ask()
			}
		case <-retry.C:
			if healthOwed {
				health()
			}
			if allocFailed {
				ask()
			}
		case a := <-answers:
			asking = false
			d.mu.Lock()
			stale := a.cand != d.candidate || a.changes != changes
			d.mu.Unlock()
			if stale {
				ask()
				continue
			}
			err := d.reconcile(ctx, rescan, a)
			allocFailed = err != nil
			if err == nil {
				// It planned with the health of now, too.
				rescan, healthOwed = false, false
			}
			done(err)
		}
	}
}

// pending reports whether the defer poll has work: GPUs kept in their old
// shape, or a config held back.
func (d *Daemon) pending() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.deferred) > 0 || d.candidate != nil || d.migPendingLocked()
}

// reconcile recomputes the state (discovering again when rescan is set,
// and before the first state), writes the CDI spec and hands the resources
// to the plugin manager.
//
// answer is the kubelet's answer about allocated devices. Without one
// (nil: a health change) reconcile re-plans the config in force with the
// deferrals in force: no shape changes and no candidate is looked at. With
// one, the candidate config it was asked for is planned and checked first
// and only committed once served; a bad one is rejected and the last good
// config serves on.
func (d *Daemon) reconcile(ctx context.Context, rescan bool, answer *allocAnswer) error {
	logger := klog.FromContext(ctx)
	var alloc *allocations
	var cand *config.Config
	var candSrc config.Source
	if answer != nil {
		alloc, cand, candSrc = answer.alloc, answer.cand, answer.candSrc
	}
	d.mu.Lock()
	prev, cfg, src := d.state, d.cfg, d.source
	deferred, keptOffers := d.deferred, d.keptOffers
	h := faults{unhealthy: cloneSet(d.unhealthy), reasons: maps.Clone(d.reasons)}
	d.mu.Unlock()
	if prev == nil && alloc == nil {
		return errors.New("the first plan needs the kubelet's allocations")
	}

	var inv *gpu.Inventory
	if prev != nil && !rescan {
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

	var st *State
	var keep kept
	commit := false
	if cand != nil && alloc != nil {
		cst, ckeep, err := d.planConfig(ctx, inv, cand, candSrc, prev, alloc, h)
		if err == nil {
			err = d.pub.check(cst)
		}
		var moved []string
		if err == nil && prev != nil && !d.opts.dra() {
			// Resource names are the device plugin's: in DRA mode
			// the kept offers hold what claims use.
			moved = renamed(prev.Resources, cst.Resources, alloc)
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
			keep = kept{shapes: deferred, offers: keptOffers}
			st, err = plan(ctx, inv, d.opts, cfg, d.driver, h, keep)
		} else {
			st, keep, err = d.planConfig(ctx, inv, cfg, src, prev, alloc, h)
		}
		if err != nil {
			return err
		}
	}
	var migErr error
	if alloc != nil {
		if st, keep, migErr = d.reconcileMig(ctx, st, keep, prev, alloc, h); st == nil {
			return migErr
		}
	} else if prev != nil {
		st.MigLayouts = prev.MigLayouts
	}
	if prev == nil || !samePlan(prev, st) {
		for _, w := range st.Plan.Warnings {
			logger.Info("Plan warning", "warning", w, "config", st.Source.Name)
		}
		for _, a := range st.Plan.GPUs {
			logger.Info("GPU planned", "index", a.GPU.Index, "uuid", a.GPU.UUID, "model", a.GPU.Model, "shape", a.Shape, "reason", a.Reason)
		}
		for _, r := range st.Resources {
			logger.Info("Resource", "name", r.Name(), "devices", len(r.Devices()))
		}
	}
	if _, err := d.writer.Write(ctx, st.Spec); err != nil {
		return err
	}
	if err := d.pub.publish(ctx, st); err != nil {
		return err
	}
	d.mu.Lock()
	d.state = st
	d.deferred, d.keptOffers = keep.shapes, keep.offers
	var status ConfigStatus
	if commit {
		d.cfg, d.source = cand, candSrc
		switch d.candidate {
		case cand:
			d.candidate, d.heldLogged = nil, false
		case nil:
			// Withdrawn while it was evaluated: the file went back to
			// the config that served until now, which is now the one
			// to apply.
			d.candidate, d.candidateSource, d.heldLogged = cfg, src, false
			signal(d.reconfig)
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
		logDeferrals(logger, deferred, keep.shapes, st)
		logKeptOffers(logger, keptOffers, keep.offers, st)
	}
	d.observe(ctx, st)
	return migErr
}

// planConfig plans inv under cfg, keeping the shape of every GPU that alloc
// says is in use (see shapesToKeep).
func (d *Daemon) planConfig(ctx context.Context, inv *gpu.Inventory, cfg *config.Config, src config.Source, prev *State, alloc *allocations, h faults) (*State, kept, error) {
	keep := kept{shapes: shapesToKeep(prev, inv, cfg, alloc)}
	if d.opts.dra() {
		keep.offers = draKeep(prev, inv, cfg, d.opts.Publisher.Prepared())
	}
	st, err := plan(ctx, inv, d.opts, cfg, d.driver, h, keep)
	if err != nil {
		return nil, kept{}, err
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

// samePlan tells whether two states give every GPU the same shape and serve
// the same resource names.
func samePlan(a, b *State) bool {
	if len(a.Plan.GPUs) != len(b.Plan.GPUs) {
		return false
	}
	for i := range a.Plan.GPUs {
		if a.Plan.GPUs[i].GPU.UUID != b.Plan.GPUs[i].GPU.UUID || a.Plan.GPUs[i].Shape != b.Plan.GPUs[i].Shape {
			return false
		}
	}
	return slices.Equal(a.ResourceNames(), b.ResourceNames())
}

// ResourceNames lists the names of the device plugin's resources (none in
// DRA mode).
func (s *State) ResourceNames() []string { return resources.Names(s.Resources) }

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
