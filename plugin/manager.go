package plugin

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// maxSocketPath is the longest path a unix socket address holds (108 bytes
// of sun_path, one of them the terminating NUL).
const maxSocketPath = 107

// Options configures a Manager. Only PluginDir is required.
type Options struct {
	// PluginDir is the kubelet's device-plugin directory, where sockets are
	// created, e.g. /var/lib/kubelet/device-plugins.
	PluginDir string
	// KubeletSocket is the kubelet's registration socket; default
	// PluginDir/kubelet.sock.
	KubeletSocket string
	// OnAllocate, if set, is called after every Allocate call with how long
	// it took and its error (nil on success). It runs on the hot path: keep
	// it to a metric update.
	OnAllocate func(resource string, took time.Duration, err error)
	// OnRegistered, if set, is called after every successful registration
	// of resource with the kubelet, including re-registrations.
	OnRegistered func(resource string)
	// RetryMin and RetryMax bound the registration backoff; defaults 100 ms
	// and 5 s.
	RetryMin, RetryMax time.Duration
	// ResyncPeriod is how often sockets are checked even without
	// filesystem events (a safety net for a lost fsnotify event); default 5 s.
	ResyncPeriod time.Duration
	// Logger is used for what happens before Run (the first Update);
	// nil means klog's global logger. Run logs with its context's logger.
	Logger *klog.Logger

	// beforeRegister and beforeDial, set by tests, run as a server starts
	// to register (its socket found in place) and in the kubelet dialer
	// between the first look at the kubelet socket and the connect: the
	// windows in which a restarting kubelet can delete the plugin sockets
	// and replace its own.
	beforeRegister, beforeDial func()
}

// A Manager serves a set of Resources to the kubelet, one gRPC server and
// socket per resource name, and keeps them registered across kubelet
// restarts. Update may be called at any time, from any goroutine; Run is
// called once.
type Manager struct {
	opts Options

	mu      sync.Mutex
	servers map[string]*server
	ctx     context.Context // non-nil while Run serves
	started bool            // Run was called
	wg      sync.WaitGroup  // server goroutines
	changed chan struct{}   // closed and replaced when registration state changes
	// sentWait bounds how long Update waits for the streams of shrinking
	// resources before it publishes growing ones (defaultSentWait).
	sentWait time.Duration
	// onWatch, set by tests, sees Run's watcher (to close it under Run).
	onWatch func(*fsnotify.Watcher)
	// onPublish, set by tests, sees every snapshot Update publishes, in
	// order.
	onPublish func(resource string, devices []*pluginapi.Device)
}

// defaultSentWait bounds Update's wait for a shrunk device list to go out.
// A kubelet reading its streams takes microseconds; one that stopped
// reading must not stall every change.
const defaultSentWait = time.Second

// NewManager returns a Manager that serves nothing until Update and Run.
func NewManager(opts Options) *Manager {
	if opts.KubeletSocket == "" {
		opts.KubeletSocket = filepath.Join(opts.PluginDir, "kubelet.sock")
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = 100 * time.Millisecond
	}
	if opts.RetryMax < opts.RetryMin {
		opts.RetryMax = max(5*time.Second, opts.RetryMin)
	}
	if opts.ResyncPeriod <= 0 {
		opts.ResyncPeriod = 5 * time.Second
	}
	return &Manager{opts: opts, servers: map[string]*server{}, changed: make(chan struct{}), sentWait: defaultSentWait}
}

// Update makes resources the complete set of what the node offers. It is the
// one entry point for every change, whether of layout, config or health:
//
//   - a new name gets a socket and is registered (once Run is running);
//   - a known name gets the new snapshot, pushed to every ListAndWatch stream
//     when its device list changed;
//   - a name served before but missing now stays registered and streams an
//     empty device list. Closing it instead would make the kubelet count the
//     old devices as unhealthy capacity for minutes (see DESIGN §4).
//
// No device is ever offered by two resources at once: resources that lose
// devices are published first (one that also gains devices streams only
// what it keeps, for the moment), and the rest only once every open
// ListAndWatch stream of those has sent the shorter list, or after a
// second if one does not.
//
// Update validates everything first and applies nothing on error; errors
// wrap ErrInvalidResource. Calling Update before Run is allowed and is how
// the first layout is served.
func (m *Manager) Update(resources []Resource) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	snaps, err := m.validateLocked(resources)
	if err != nil {
		return err
	}

	log := m.logger()
	// Publish in two phases, so that the kubelet never sees one device in
	// two resources (a GPU turning from whole into blocks is in both
	// "nvidia.com/gpu" and "nvidia.com/gpu-blocks" if the blocks appear
	// first): first every resource that loses devices streams what it
	// keeps, then, once those lists have gone out, every resource streams
	// its new list.
	var shrink, grow []publication
	anyGains := false
	for _, name := range slices.Sorted(maps.Keys(snaps)) {
		snap := snaps[name]
		s, ok := m.servers[name]
		if !ok {
			s = newServer(name, &m.opts, m.notify)
			m.servers[name] = s
			log.Info("serving new resource", "resource", name, "devices", len(snap.list.Devices))
			grow = append(grow, publication{s, snap, true})
			anyGains = anyGains || len(snap.list.Devices) > 0
			continue
		}
		loses, gains := snap.diff(s.snap.Load())
		anyGains = anyGains || gains
		switch {
		case loses && gains:
			shrink = append(shrink, publication{s, snap.within(s.snap.Load()), false})
			grow = append(grow, publication{s, snap, false})
		case loses:
			shrink = append(shrink, publication{s, snap, false})
		default:
			grow = append(grow, publication{s, snap, false})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(m.servers)) {
		if _, ok := snaps[name]; ok {
			continue
		}
		s := m.servers[name]
		if s.snap.Load().res != nil {
			log.Info("resource dropped; streaming an empty device list", "resource", name)
		}
		empty, _ := newSnapshot(nil)
		shrink = append(shrink, publication{s, empty, false})
	}

	for _, p := range shrink {
		m.publish(p)
	}
	// Waiting matters only when a device is about to appear somewhere.
	if len(shrink) > 0 && anyGains && m.ctx != nil {
		deadline := time.NewTimer(m.sentWait)
		for _, p := range shrink {
			if !p.s.waitSent(p.snap, deadline.C) {
				log.Info("a ListAndWatch stream did not take the shrunk device list in time; publishing the rest",
					"resource", p.s.name, "waited", m.sentWait)
				break
			}
		}
		deadline.Stop()
	}
	for _, p := range grow {
		m.publish(p)
	}
	m.notifyLocked()
	return nil
}

// A publication is one snapshot for one server, in Update's order.
type publication struct {
	s     *server
	snap  *snapshot
	start bool // a new server, to start once Run runs
}

// publish hands p's snapshot to its server, and starts a new server under
// Run. m.mu must be held.
func (m *Manager) publish(p publication) {
	p.s.setSnapshot(p.snap)
	if m.onPublish != nil {
		m.onPublish(p.s.name, p.snap.list.Devices)
	}
	if p.start && m.ctx != nil {
		m.start(p.s)
	}
}

// Check reports whether Update would accept resources, with the same
// checks and errors (wrapping ErrInvalidResource), and changes nothing. It
// lets a caller validate a candidate layout before acting on it, e.g.
// before publishing a CDI spec for it. Socket names are checked against
// every resource served so far, dropped ones included, as Update does.
func (m *Manager) Check(resources []Resource) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, err := m.validateLocked(resources)
	return err
}

// validateLocked checks resources and indexes each into a snapshot. m.mu
// must be held: socket names are checked against m.servers.
func (m *Manager) validateLocked(resources []Resource) (map[string]*snapshot, error) {
	snaps := make(map[string]*snapshot, len(resources))
	for _, r := range resources {
		if r == nil {
			return nil, fmt.Errorf("%w: nil resource", ErrInvalidResource)
		}
		name := r.Name()
		if !strings.Contains(name, "/") {
			return nil, fmt.Errorf("%w: name %q lacks a domain (want e.g. nvidia.com/gpu)", ErrInvalidResource, name)
		}
		if _, dup := snaps[name]; dup {
			return nil, fmt.Errorf("%w: name %q given twice", ErrInvalidResource, name)
		}
		if p := filepath.Join(m.opts.PluginDir, SocketName(name)); len(p) > maxSocketPath {
			return nil, fmt.Errorf("%w: socket path %s is longer than %d bytes", ErrInvalidResource, p, maxSocketPath)
		}
		snap, err := newSnapshot(r)
		if err != nil {
			return nil, err
		}
		snaps[name] = snap
	}
	owners := make(map[string]string, len(m.servers)+len(snaps))
	for name := range m.servers {
		owners[SocketName(name)] = name
	}
	// Sorted, so that the same collision is always reported the same way.
	for _, name := range slices.Sorted(maps.Keys(snaps)) {
		sock := SocketName(name)
		if other, ok := owners[sock]; ok && other != name {
			return nil, fmt.Errorf("%w: names %q and %q share socket %s", ErrInvalidResource, name, other, sock)
		}
		owners[sock] = name
	}
	return snaps, nil
}

// Run serves every resource until ctx is done, then stops the gRPC servers
// and removes their sockets. It watches the plugin directory so that a
// kubelet restart (a new kubelet.sock) or a deleted plugin socket leads to
// serving and registering again, with no restart of the process. Run
// returns nil after ctx is done, or an error if it cannot watch PluginDir
// (Run may then be called again), or one wrapping ErrWatcherClosed, after
// stopping every server and removing its socket, if the watcher stops.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.started {
		m.mu.Unlock()
		return ErrAlreadyRunning
	}
	m.started = true
	m.mu.Unlock()

	log := klog.FromContext(ctx).WithValues("pluginDir", m.opts.PluginDir)
	ctx = klog.NewContext(ctx, log)
	w, err := m.watch()
	if err != nil {
		m.mu.Lock()
		m.started = false
		m.mu.Unlock()
		return err
	}
	defer w.Close()
	if m.onWatch != nil {
		m.onWatch(w)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	kubelet, _ := os.Stat(m.opts.KubeletSocket)
	m.mu.Lock()
	m.ctx = ctx
	for _, s := range m.servers {
		m.start(s)
	}
	m.notifyLocked()
	m.mu.Unlock()
	log.Info("device-plugin manager started", "kubeletSocket", m.opts.KubeletSocket)

	resync := time.NewTicker(m.opts.ResyncPeriod)
	defer resync.Stop()
	var runErr error
	for ctx.Err() == nil && runErr == nil {
		select {
		case <-ctx.Done():
		case ev, ok := <-w.Events:
			if ok {
				kubelet = m.handleEvent(log, ev, kubelet)
			} else {
				runErr = fmt.Errorf("%w: %s", ErrWatcherClosed, m.opts.PluginDir)
			}
		case err, ok := <-w.Errors:
			if ok {
				log.Error(err, "watching plugin directory; checking sockets")
				kubelet = m.resync(kubelet)
			} else {
				runErr = fmt.Errorf("%w: %s", ErrWatcherClosed, m.opts.PluginDir)
			}
		case <-resync.C:
			kubelet = m.resync(kubelet)
		}
	}

	// One shutdown path, whatever ended the loop: the servers stop and
	// remove their sockets before Run returns.
	m.mu.Lock()
	m.ctx = nil
	m.mu.Unlock()
	cancel()
	m.wg.Wait()
	m.mu.Lock()
	m.notifyLocked()
	m.mu.Unlock()
	if runErr != nil {
		log.Error(runErr, "device-plugin manager stopped")
		return runErr
	}
	log.Info("device-plugin manager stopped")
	return nil
}

// Devices returns the device list each resource streams now, by name,
// dropped resources included (with an empty list). The lists are shared
// snapshots: callers must not modify them.
func (m *Manager) Devices() map[string][]*pluginapi.Device {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string][]*pluginapi.Device, len(m.servers))
	for name, s := range m.servers {
		out[name] = s.snap.Load().list.Devices
	}
	return out
}

// Registered reports whether Run is serving and every resource given to
// Update so far, dropped ones included, is registered with the current
// kubelet. It is the readiness signal.
func (m *Manager) Registered() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.registeredLocked()
}

// WaitRegistered blocks until Registered is true or ctx is done, in which
// case it returns ctx's error.
func (m *Manager) WaitRegistered(ctx context.Context) error {
	for {
		m.mu.Lock()
		ok, ch := m.registeredLocked(), m.changed
		m.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (m *Manager) registeredLocked() bool {
	if m.ctx == nil {
		return false
	}
	for _, s := range m.servers {
		if !s.registered.Load() {
			return false
		}
	}
	return true
}

// notify wakes WaitRegistered callers; servers call it when their state
// changes.
func (m *Manager) notify() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.notifyLocked()
}

func (m *Manager) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// start runs s under Run's context. m.mu must be held and m.ctx set.
func (m *Manager) start(s *server) {
	ctx := m.ctx
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		s.run(ctx)
	}()
}

// logger is Run's logger once running, else Options.Logger, else the
// global one.
func (m *Manager) logger() klog.Logger {
	switch {
	case m.ctx != nil:
		return klog.FromContext(m.ctx)
	case m.opts.Logger != nil:
		return *m.opts.Logger
	}
	return klog.Background()
}

// watch creates PluginDir if needed and watches it, and the kubelet
// socket's directory if that is elsewhere.
func (m *Manager) watch() (*fsnotify.Watcher, error) {
	if err := os.MkdirAll(m.opts.PluginDir, 0o750); err != nil {
		return nil, fmt.Errorf("creating plugin directory: %w", err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watching plugin directory: %w", err)
	}
	dirs := []string{filepath.Clean(m.opts.PluginDir)}
	if d := filepath.Dir(m.opts.KubeletSocket); d != dirs[0] {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil {
			w.Close()
			return nil, fmt.Errorf("watching %s: %w", d, err)
		}
	}
	return w, nil
}

// handleEvent reacts to one filesystem event: the kubelet socket appearing
// or vanishing makes every server register again; one of our sockets
// vanishing makes its server serve again. It returns the kubelet socket's
// identity as now seen.
func (m *Manager) handleEvent(log klog.Logger, ev fsnotify.Event, kubelet os.FileInfo) os.FileInfo {
	gone := ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)
	if filepath.Clean(ev.Name) == filepath.Clean(m.opts.KubeletSocket) {
		if !ev.Has(fsnotify.Create) && !gone {
			return kubelet
		}
		if gone {
			log.Info("kubelet socket removed; waiting for the kubelet")
		} else {
			log.Info("kubelet socket created; registering again")
		}
		fi, _ := os.Stat(m.opts.KubeletSocket)
		m.wakeAll(true)
		return fi
	}
	if !gone {
		return kubelet
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.servers {
		if s.socket == filepath.Clean(ev.Name) {
			s.wake(false)
		}
	}
	return kubelet
}

// resync checks every socket without relying on events: a kubelet socket
// that is not the one last seen means a kubelet restart.
func (m *Manager) resync(last os.FileInfo) os.FileInfo {
	fi, _ := os.Stat(m.opts.KubeletSocket)
	changed := (fi == nil) != (last == nil) || (fi != nil && !os.SameFile(fi, last))
	m.wakeAll(changed)
	return fi
}

func (m *Manager) wakeAll(reRegister bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.servers {
		s.wake(reRegister)
	}
}
