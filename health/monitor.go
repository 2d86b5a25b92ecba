package health

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/gpublocks/gpublocks/gpu"
)

// ErrProbe is wrapped by every failed device probe.
var ErrProbe = errors.New("device probe failed")

// XIDGPULost is the XID of a GPU that fell off the bus: always the whole GPU.
const XIDGPULost = 79

// Events the monitor registers for, where the GPU supports them.
const watchedEvents = nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError

// Policy is the part of the config that steers health (config.Health).
type Policy struct {
	// IgnoredXids never mark a device unhealthy.
	IgnoredXids []uint64
	// QuietPeriod is how long a faulted device must stay quiet before it is
	// probed and, if the probe passes, healthy again.
	QuietPeriod time.Duration
	// Disabled stops marking devices: events are still counted, and every
	// fault is cleared.
	Disabled bool
}

// Options configure a Monitor. All are optional.
type Options struct {
	// OnChange is called with the complete set of unhealthy keys (GPU and
	// MIG UUIDs) whenever it changes; calls are serialised and the last one
	// always carries the latest set. daemon.SetUnhealthy fits.
	OnChange func(unhealthy map[string]bool)
	// OnEvent is called for every NVML event that names a known GPU, marked
	// or ignored (metrics).
	OnEvent func(Event)
	// Clock drives quiet periods and probes; default the real clock.
	Clock clock.Clock
	// WaitTimeout bounds one EventSet.Wait, and so how long Run takes to
	// return after its context ends; default 1 s.
	WaitTimeout time.Duration
	// ProbeInterval is how often a device that failed its recovery probe is
	// probed again, and how often GPUs without event support are probed;
	// default 10 s.
	ProbeInterval time.Duration
	// MaxQuietPeriod caps the doubled quiet period of a flapping device;
	// default 10 min.
	MaxQuietPeriod time.Duration
}

// Event is one NVML event as the monitor judged it, or a failed probe.
type Event struct {
	GPU  int    // NVML index of the GPU it came from
	UUID string // that GPU's UUID
	// Type is the NVML event type (nvml.EventTypeXidCriticalError, …); 0
	// for a failed probe.
	Type uint64
	XID  uint64 // for XID events
	// Devices are the keys the event marked unhealthy (GPU or MIG UUIDs);
	// empty when it was ignored.
	Devices []string
	Ignored bool
	Reason  string // e.g. "XID 48", "double-bit ECC error", "probe failed: …"
}

// Monitor turns NVML events and probes into the set of unhealthy devices.
// Update and Unhealthy may be called from any goroutine; Run once.
type Monitor struct {
	lib  nvml.Interface
	opts Options
	wake chan struct{} // the recovery loop recomputes its timer
	// register wakes the event loop to register new GPUs. Registration
	// happens only on that loop, between waits: real NVML serialises
	// RegisterEvents with a pending nvmlEventSetWait, so registering from
	// Update would block the caller (the daemon's reconcile, and so the
	// kubelet registration) for up to WaitTimeout.
	register chan struct{}

	mu       sync.Mutex
	policy   Policy
	ignored  map[uint64]bool
	set      nvml.EventSet // nil until Run, or when events are unavailable
	noEvents bool          // EventSetCreate failed: every GPU is probed
	gpus     map[string]*gpuEntry
	byHandle map[nvml.Device]*gpuEntry
	parent   map[string]string // MIG UUID → GPU UUID
	faults   map[string]*fault
	probeAt  time.Time // next probe of the probe-only GPUs

	pubMu     sync.Mutex // serialises OnChange
	published map[string]bool
}

// gpuEntry is one GPU the monitor watches.
type gpuEntry struct {
	index      int
	uuid       string
	handle     nvml.Device
	migs       []gpu.MigDevice
	registered bool // events registered with the set
	probeOnly  bool // no events: probed every ProbeInterval
}

// fault is one key's health history.
type fault struct {
	unhealthy bool
	reason    string
	strikes   int       // flapping faults: the quiet period is base << strikes
	gen       int       // bumped on every fault, so a probe racing one is void
	healthyAt time.Time // when it last recovered
	next      time.Time // when to probe (unhealthy) or forget it (healthy)
}

// New returns a monitor over lib. It watches nothing until Update gives it
// an inventory, and receives no events until Run.
func New(lib nvml.Interface, o Options) *Monitor {
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = time.Second
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = 10 * time.Second
	}
	if o.MaxQuietPeriod <= 0 {
		o.MaxQuietPeriod = 10 * time.Minute
	}
	return &Monitor{
		lib:      lib,
		opts:     o,
		wake:     make(chan struct{}, 1),
		register: make(chan struct{}, 1),
		policy:   Policy{QuietPeriod: 30 * time.Second},
		ignored:  map[uint64]bool{},
		gpus:     map[string]*gpuEntry{},
		byHandle: map[nvml.Device]*gpuEntry{},
		parent:   map[string]string{},
		faults:   map[string]*fault{},
	}
}

// Unhealthy returns the keys currently faulted: GPU UUIDs (every device on
// the GPU) and MIG UUIDs (that MIG device).
func (m *Monitor) Unhealthy() map[string]bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.unhealthyLocked()
}

func (m *Monitor) unhealthyLocked() map[string]bool {
	out := map[string]bool{}
	for k, f := range m.faults {
		if f.unhealthy {
			out[k] = true
		}
	}
	return out
}

// Update sets the inventory to watch and the policy. New GPUs are
// registered for events (once Run has created the event set); faults of
// devices no longer in inv are dropped; a disabled policy clears every
// fault.
func (m *Monitor) Update(ctx context.Context, inv *gpu.Inventory, p Policy) {
	logger := klog.FromContext(ctx)
	if p.QuietPeriod <= 0 {
		p.QuietPeriod = 30 * time.Second
	}
	m.mu.Lock()
	if p.Disabled != m.policy.Disabled {
		logger.Info("XID health monitoring", "disabled", p.Disabled)
	}
	m.policy = p
	m.ignored = make(map[uint64]bool, len(p.IgnoredXids))
	for _, x := range p.IgnoredXids {
		m.ignored[x] = true
	}

	gpus := make(map[string]*gpuEntry, len(inv.GPUs))
	byHandle := make(map[nvml.Device]*gpuEntry, len(inv.GPUs))
	parent := map[string]string{}
	for _, g := range inv.GPUs {
		e := m.gpus[g.UUID]
		if e == nil {
			h, ret := m.lib.DeviceGetHandleByUUID(g.UUID)
			if ret != nvml.SUCCESS {
				logger.Error(ret, "Cannot watch GPU health: no handle", "gpu", g.Index, "uuid", g.UUID)
				continue
			}
			e = &gpuEntry{uuid: g.UUID, handle: h}
		}
		e.index = g.Index
		e.migs = g.MigDevices
		gpus[g.UUID] = e
		byHandle[e.handle] = e
		for _, md := range g.MigDevices {
			parent[md.UUID] = g.UUID
		}
		if m.noEvents {
			e.probeOnly = true
		}
	}
	m.gpus, m.byHandle, m.parent = gpus, byHandle, parent

	for key, f := range m.faults {
		_, isGPU := gpus[key]
		_, isMig := parent[key]
		switch {
		case p.Disabled:
			delete(m.faults, key)
		case !isGPU && !isMig:
			if f.unhealthy {
				logger.Info("Faulted device vanished; dropping its fault", "device", key, "reason", f.reason)
			}
			delete(m.faults, key)
		}
	}
	m.mu.Unlock()
	m.publish()
	m.poke()
	select {
	case m.register <- struct{}{}:
	default:
	}
}

// Run creates the event set, registers the GPUs given so far, and waits for
// events and recovery deadlines until ctx ends. Without event support it
// still probes. It returns nil after ctx ends.
func (m *Monitor) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	set, ret := m.lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		logger.Error(ret, "NVML events unavailable; GPUs are only probed", "interval", m.opts.ProbeInterval)
		set = nil
	}
	m.mu.Lock()
	m.set = set
	m.noEvents = set == nil
	for _, e := range m.gpus {
		if set == nil {
			e.probeOnly = true
		}
	}
	m.mu.Unlock()

	var wg sync.WaitGroup
	if set != nil {
		wg.Go(func() { m.waitLoop(ctx, set) })
	}
	m.timerLoop(ctx)
	wg.Wait()
	if set != nil {
		m.mu.Lock()
		m.set = nil
		for _, e := range m.gpus {
			e.registered = false
		}
		m.mu.Unlock()
		if ret := set.Free(); ret != nvml.SUCCESS {
			logger.Error(ret, "Freeing the NVML event set")
		}
	}
	return nil
}

// registerLocked registers e for the watched events it supports; a GPU that
// supports none, or refuses, is probed instead.
func (m *Monitor) registerLocked(ctx context.Context, e *gpuEntry) {
	logger := klog.FromContext(ctx).WithValues("gpu", e.index, "uuid", e.uuid)
	supported, ret := e.handle.GetSupportedEventTypes()
	if ret != nvml.SUCCESS {
		logger.Info("Cannot read supported NVML events; probing the GPU instead", "err", ret, "interval", m.opts.ProbeInterval)
		e.probeOnly = true
		return
	}
	types := supported & watchedEvents
	if types&nvml.EventTypeXidCriticalError == 0 {
		logger.Info("GPU reports no XID events; probing it instead", "supported", supported, "interval", m.opts.ProbeInterval)
		e.probeOnly = true
		return
	}
	if ret := e.handle.RegisterEvents(types, m.set); ret != nvml.SUCCESS {
		logger.Info("Cannot register for NVML events; probing the GPU instead", "err", ret, "interval", m.opts.ProbeInterval)
		e.probeOnly = true
		return
	}
	e.registered = true
	logger.V(1).Info("Watching GPU health", "events", types)
}

// waitLoop registers GPUs and takes events off the set until ctx ends.
// It is the only caller of RegisterEvents (see Monitor.register), and it
// does not sit in Wait while no GPU is registered, so the first GPUs are
// registered as soon as they are known.
func (m *Monitor) waitLoop(ctx context.Context, set nvml.EventSet) {
	logger := klog.FromContext(ctx)
	ms := uint32(m.opts.WaitTimeout.Milliseconds())
	for ctx.Err() == nil {
		if m.registerPending(ctx) == 0 {
			select {
			case <-ctx.Done():
			case <-m.register:
			}
			continue
		}
		ev, ret := set.Wait(ms)
		switch ret {
		case nvml.SUCCESS:
			m.handle(ctx, ev)
			continue
		case nvml.ERROR_TIMEOUT:
			continue
		case nvml.ERROR_GPU_IS_LOST:
			// The set does not say which GPU: probe them all.
			logger.Error(ret, "NVML event wait reports a lost GPU; probing every GPU")
			m.probeAll(ctx)
		default:
			logger.Error(ret, "NVML event wait failed")
		}
		// Do not spin on a persistent error.
		select {
		case <-ctx.Done():
		case <-time.After(m.opts.WaitTimeout):
		}
	}
}

// registerPending registers the GPUs not registered yet and returns how
// many are registered.
func (m *Monitor) registerPending(ctx context.Context) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, e := range m.gpus {
		if !e.registered && !e.probeOnly && m.set != nil {
			m.registerLocked(ctx, e)
		}
		if e.registered {
			n++
		}
	}
	return n
}

// handle judges one event.
func (m *Monitor) handle(ctx context.Context, ev nvml.EventData) {
	logger := klog.FromContext(ctx)
	m.mu.Lock()
	e := m.lookupLocked(ev.Device)
	if e == nil {
		m.mu.Unlock()
		logger.V(1).Info("NVML event for a GPU not served; dropped", "type", ev.EventType, "data", ev.EventData)
		return
	}
	out := Event{GPU: e.index, UUID: e.uuid, Type: ev.EventType}
	switch {
	case ev.EventType&nvml.EventTypeXidCriticalError != 0:
		out.XID = ev.EventData
		out.Reason = fmt.Sprintf("XID %d", ev.EventData)
		switch {
		case m.ignored[ev.EventData] || m.policy.Disabled:
			out.Ignored = true
		case ev.EventData == XIDGPULost:
			out.Devices = []string{e.uuid}
			out.Reason += " (GPU lost)"
		default:
			out.Devices = affected(e, ev.GpuInstanceId, ev.ComputeInstanceId)
		}
	case ev.EventType&nvml.EventTypeDoubleBitEccError != 0:
		out.Reason = "double-bit ECC error"
		if m.policy.Disabled {
			out.Ignored = true
		} else {
			out.Devices = affected(e, ev.GpuInstanceId, ev.ComputeInstanceId)
		}
	default:
		out.Reason = fmt.Sprintf("event type %d", ev.EventType)
		out.Ignored = true
	}
	now := m.opts.Clock.Now()
	var newly []string
	quiet := make([]time.Duration, 0, len(out.Devices))
	for _, key := range out.Devices {
		if m.faultLocked(key, out.Reason, now) {
			newly = append(newly, key)
		}
		quiet = append(quiet, m.quietLocked(m.faults[key]))
	}
	m.mu.Unlock()

	if out.Ignored {
		logger.V(1).Info("Ignored NVML event", "gpu", out.GPU, "uuid", out.UUID, "xid", out.XID, "reason", out.Reason)
	}
	for i, key := range out.Devices {
		if slices.Contains(newly, key) {
			logger.Info("Device unhealthy", "device", key, "gpu", out.GPU, "uuid", out.UUID, "xid", out.XID, "reason", out.Reason, "quietPeriod", quiet[i])
		} else {
			logger.Info("Device faulted again while unhealthy; quiet period restarted", "device", key, "gpu", out.GPU, "xid", out.XID, "reason", out.Reason, "quietPeriod", quiet[i])
		}
	}
	if m.opts.OnEvent != nil {
		m.opts.OnEvent(out)
	}
	if len(newly) > 0 {
		m.publish()
	}
	if len(out.Devices) > 0 {
		m.poke()
	}
}

// lookupLocked finds the GPU an event handle belongs to.
func (m *Monitor) lookupLocked(h nvml.Device) *gpuEntry {
	if h == nil {
		return nil
	}
	if e := m.byHandle[h]; e != nil {
		return e
	}
	// Another handle value for the same GPU: ask it.
	if uuid, ret := h.GetUUID(); ret == nvml.SUCCESS {
		return m.gpus[uuid]
	}
	return nil
}

// affected maps an event's GPU and compute instance IDs to the keys it
// marks: the MIG devices in that instance, or the whole GPU when the event
// names none or names one this inventory does not know.
func affected(e *gpuEntry, gi, ci uint32) []string {
	if gi == nvml.GPU_INSTANCE_ID_ANY || len(e.migs) == 0 {
		return []string{e.uuid}
	}
	var keys []string
	for _, md := range e.migs {
		if uint32(md.GI) == gi && (ci == nvml.COMPUTE_INSTANCE_ID_ANY || uint32(md.CI) == ci) {
			keys = append(keys, md.UUID)
		}
	}
	if len(keys) == 0 {
		return []string{e.uuid}
	}
	return keys
}

// faultLocked records a fault on key at now and says whether the key just
// turned unhealthy.
func (m *Monitor) faultLocked(key, reason string, now time.Time) bool {
	f := m.faults[key]
	turned := f == nil || !f.unhealthy
	switch {
	case f == nil:
		f = &fault{}
		m.faults[key] = f
	case f.unhealthy:
		// Same episode: restart the quiet period, no doubling.
	case now.Sub(f.healthyAt) < m.quietLocked(f):
		f.strikes++ // flapping
	default:
		f.strikes = 0
	}
	f.unhealthy = true
	f.reason = reason
	f.gen++
	f.next = now.Add(m.quietLocked(f))
	return turned
}

// quietLocked is f's current quiet period: the policy's, doubled per
// strike, capped.
func (m *Monitor) quietLocked(f *fault) time.Duration {
	q := m.policy.QuietPeriod
	for range f.strikes {
		if q >= m.opts.MaxQuietPeriod {
			break
		}
		q *= 2
	}
	return min(q, max(m.opts.MaxQuietPeriod, m.policy.QuietPeriod))
}

// QuietPeriod returns the quiet period key must wait out now (its
// backoff), or 0 when key has no fault on record.
func (m *Monitor) QuietPeriod(key string) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.faults[key]
	if f == nil {
		return 0
	}
	return m.quietLocked(f)
}

// poke makes the recovery loop recompute its next deadline.
func (m *Monitor) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// publish hands the current set to OnChange when it differs from the last
// one handed over.
func (m *Monitor) publish() {
	m.pubMu.Lock()
	defer m.pubMu.Unlock()
	set := m.Unhealthy()
	if m.published != nil && maps.Equal(set, m.published) {
		return
	}
	if m.published == nil && len(set) == 0 {
		m.published = set
		return
	}
	m.published = set
	if m.opts.OnChange != nil {
		m.opts.OnChange(maps.Clone(set))
	}
}
