package plugin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// registerTimeout bounds one Register call. The kubelet answers at once (it
// dials back asynchronously), so a slow answer means a kubelet on its way
// down, and the next attempt is the better bet.
const registerTimeout = 2 * time.Second

// socketNameReplacer makes a resource name safe as a file name.
var socketNameReplacer = strings.NewReplacer("/", "_", ".", "_")

// SocketName is the file name, inside the device-plugin directory, of the
// socket that serves resource, e.g. "gpublocks-nvidia_com_gpu.sock" for
// "nvidia.com/gpu". It is also the Endpoint sent to the kubelet.
func SocketName(resource string) string {
	return "gpublocks-" + socketNameReplacer.Replace(resource) + ".sock"
}

// A server serves one resource name on one unix socket and keeps it
// registered with the kubelet. Its run goroutine alone starts, restarts and
// stops the gRPC server and registers; the handlers read only the snapshot
// pointer and fields that never change once serving starts.
type server struct {
	pluginapi.UnimplementedDevicePluginServer

	name          string
	socket        string // full path
	kubeletSocket string
	opts          *Options
	notify        func() // tells the Manager that registration state changed

	snap    atomic.Pointer[snapshot]
	publish sync.Mutex // orders snapshot swaps with closing the old one

	// kick wakes run to check its socket; reRegister, set before a kick,
	// asks it to register again (the kubelet came or went).
	kick       chan struct{}
	reRegister atomic.Bool
	registered atomic.Bool

	onAllocate func(resource string, took time.Duration, err error)

	// streams are the open ListAndWatch streams, each with the snapshot it
	// sent last, so that Update can wait until a shrunk list has gone out;
	// sentCh is closed and replaced whenever one of them changes.
	streamMu sync.Mutex
	streams  map[*watchStream]struct{}
	sentCh   chan struct{}

	// Owned by run; log is set before the first Serve and never again.
	log      klog.Logger
	grpc     *grpc.Server
	serving  sync.WaitGroup
	sockInfo os.FileInfo
	// kubelet is the kubelet socket that the last successful registration
	// went to, so that the event announcing that same socket does not cause
	// a second registration.
	kubelet os.FileInfo
}

func newServer(name string, opts *Options, notify func()) *server {
	return &server{
		name:          name,
		socket:        filepath.Join(opts.PluginDir, SocketName(name)),
		kubeletSocket: opts.KubeletSocket,
		opts:          opts,
		notify:        notify,
		kick:          make(chan struct{}, 1),
		onAllocate:    opts.OnAllocate,
		streams:       map[*watchStream]struct{}{},
		sentCh:        make(chan struct{}),
		log:           klog.Background().WithValues("resource", name),
	}
}

// setSnapshot publishes snap and wakes the ListAndWatch streams if the
// device list changed.
func (s *server) setSnapshot(snap *snapshot) {
	s.publish.Lock()
	defer s.publish.Unlock()
	old := s.snap.Load()
	if old != nil && old.sameDevices(snap) {
		snap.stale = old.stale
		s.snap.Store(snap)
		return
	}
	s.snap.Store(snap)
	if old != nil {
		close(old.stale)
	}
}

// A watchStream is one open ListAndWatch stream.
type watchStream struct {
	sent *snapshot // guarded by server.streamMu
}

// openStream registers a ListAndWatch stream; closeStream must follow.
func (s *server) openStream() *watchStream {
	st := &watchStream{}
	s.streamMu.Lock()
	defer s.streamMu.Unlock()
	s.streams[st] = struct{}{}
	return st
}

func (s *server) closeStream(st *watchStream) {
	s.streamMu.Lock()
	defer s.streamMu.Unlock()
	delete(s.streams, st)
	s.sentChangedLocked()
}

// sent records that st handed snap's list to gRPC.
func (s *server) sent(st *watchStream, snap *snapshot) {
	s.streamMu.Lock()
	defer s.streamMu.Unlock()
	st.sent = snap
	s.sentChangedLocked()
}

func (s *server) sentChangedLocked() {
	close(s.sentCh)
	s.sentCh = make(chan struct{})
}

// waitSent waits until every open stream has sent snap's device list (or
// an equal one), and reports false if deadline fired first.
func (s *server) waitSent(snap *snapshot, deadline <-chan time.Time) bool {
	for {
		s.streamMu.Lock()
		done := true
		for st := range s.streams {
			// Snapshots with equal device lists share stale.
			done = done && st.sent != nil && st.sent.stale == snap.stale
		}
		ch := s.sentCh
		s.streamMu.Unlock()
		if done {
			return true
		}
		select {
		case <-ch:
		case <-deadline:
			return false
		}
	}
}

// wake asks run to check its socket and, with reRegister, to register again.
// It never blocks: one pending kick covers any number of events.
func (s *server) wake(reRegister bool) {
	if reRegister {
		s.reRegister.Store(true)
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// run serves and registers until ctx is done, then stops serving and removes
// the socket. Failures are retried with exponential backoff; a kick retries
// at once.
func (s *server) run(ctx context.Context) {
	s.log = klog.LoggerWithValues(klog.FromContext(ctx), "resource", s.name, "socket", s.socket)
	defer s.shutdown()

	retry := time.NewTimer(0)
	retry.Stop()
	defer retry.Stop()
	backoff := s.opts.RetryMin
	attempt := 0
	needRegister := true
	for {
		err := s.reconcile(ctx, &needRegister)
		switch {
		case err != nil && ctx.Err() == nil:
			attempt++
			s.log.Error(err, "not registered with the kubelet; retrying", "attempt", attempt, "retryIn", backoff)
			retry.Reset(backoff)
			backoff = min(2*backoff, s.opts.RetryMax)
		case err == nil:
			retry.Stop()
			backoff, attempt = s.opts.RetryMin, 0
		}
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
			if s.reRegister.Swap(false) && !s.registeredWithCurrentKubelet() {
				needRegister = true
				backoff = s.opts.RetryMin
			}
		case <-retry.C:
		}
	}
}

// reconcile brings the server to "serving on its socket and registered":
// it (re)starts serving when the socket vanished and registers when needed.
func (s *server) reconcile(ctx context.Context, needRegister *bool) error {
	if !s.socketIntact() {
		if s.grpc != nil {
			s.log.Info("plugin socket vanished; serving again")
		}
		*needRegister = true
		s.setRegistered(false)
		if err := s.serve(); err != nil {
			return err
		}
	}
	if !*needRegister {
		return nil
	}
	s.setRegistered(false)
	if err := s.register(ctx); err != nil {
		return err
	}
	*needRegister = false
	s.log.Info("registered with the kubelet", "kubeletSocket", s.kubeletSocket)
	s.setRegistered(true)
	if s.opts.OnRegistered != nil {
		s.opts.OnRegistered(s.name)
	}
	return nil
}

// socketIntact reports whether the socket this server listens on is still
// the file at its path (the kubelet deletes plugin sockets when it starts).
func (s *server) socketIntact() bool {
	if s.grpc == nil {
		return false
	}
	fi, err := os.Stat(s.socket)
	return err == nil && os.SameFile(fi, s.sockInfo)
}

// serve stops any previous gRPC server and serves on a fresh socket.
func (s *server) serve() error {
	s.stop()
	if err := os.Remove(s.socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale socket %s: %w", s.socket, err)
	}
	lis, err := net.Listen("unix", s.socket)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", s.socket, err)
	}
	// We remove the socket ourselves, and only if it is still ours: on a
	// restart the path may already hold the new socket.
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	fi, err := os.Stat(s.socket)
	if err != nil {
		lis.Close()
		return fmt.Errorf("checking socket %s: %w", s.socket, err)
	}
	g := grpc.NewServer(serverCodec)
	g.RegisterService(devicePluginService, s)
	s.grpc, s.sockInfo = g, fi
	s.serving.Add(1)
	go func() {
		defer s.serving.Done()
		if err := g.Serve(lis); err != nil {
			s.log.Error(err, "gRPC server stopped")
		}
	}()
	s.log.V(2).Info("serving")
	return nil
}

// stop ends the gRPC server, which also ends every ListAndWatch stream.
func (s *server) stop() {
	if s.grpc == nil {
		return
	}
	s.grpc.Stop()
	s.serving.Wait()
	s.grpc = nil
}

// shutdown stops serving and removes the socket if it is still ours.
func (s *server) shutdown() {
	intact := s.socketIntact()
	s.stop()
	if intact {
		if err := os.Remove(s.socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Error(err, "removing socket")
		}
	}
	s.setRegistered(false)
	s.log.V(2).Info("stopped")
}

// registeredWithCurrentKubelet reports whether the last registration went
// to the kubelet socket now in place. A new socket file means a new kubelet,
// even if the file system reused the inode: the modification time differs.
func (s *server) registeredWithCurrentKubelet() bool {
	if !s.registered.Load() || s.kubelet == nil {
		return false
	}
	fi, err := os.Stat(s.kubeletSocket)
	return err == nil && os.SameFile(fi, s.kubelet) && fi.ModTime().Equal(s.kubelet.ModTime())
}

// errKubeletReplaced means the kubelet's socket changed while connecting.
var errKubeletReplaced = errors.New("kubelet socket replaced while connecting")

// errSocketGone means our own socket was deleted before the connection to
// the kubelet was made.
var errSocketGone = errors.New("plugin socket deleted before connecting to the kubelet; serving it again first")

// register sends one RegisterRequest to the kubelet.
func (s *server) register(ctx context.Context) error {
	s.kubelet = nil
	if s.opts.beforeRegister != nil {
		s.opts.beforeRegister()
	}
	if _, err := os.Stat(s.kubeletSocket); err != nil {
		return fmt.Errorf("kubelet socket: %w", err)
	}
	// The kubelet a registration reaches is the one whose socket file was
	// at the path when the connection was made. A restarting kubelet
	// replaces the file, so the file is looked at on both sides of the
	// connect: only a connection made to one unchanged file says which
	// kubelet we registered with. Recording the file seen before the dial
	// instead could name the old kubelet while the new one got the
	// registration; the new socket's creation then looked like yet
	// another kubelet, and the second registration, refused by the
	// kubelet as a duplicate, left the resource unusable.
	//
	// A restarting kubelet also deletes the plugin sockets, before it
	// creates its own. So once connected, our socket is looked at too: a
	// kubelet reached now has already deleted what it deletes, and a
	// socket gone by then must be served again before registering.
	// Registering it anyway named a dead endpoint, and registering again
	// once it was served was the duplicate the kubelet refuses.
	ours := s.sockInfo // reconcile serves before it registers
	// kubelet is set by the dialer, on gRPC's goroutine.
	var kubelet atomic.Value // os.FileInfo
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		before, err := os.Stat(s.kubeletSocket)
		if err != nil {
			return nil, err
		}
		if s.opts.beforeDial != nil {
			s.opts.beforeDial()
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", s.kubeletSocket)
		if err != nil {
			return nil, err
		}
		after, err := os.Stat(s.kubeletSocket)
		if err != nil || !os.SameFile(before, after) || !before.ModTime().Equal(after.ModTime()) {
			_ = c.Close()
			return nil, errKubeletReplaced
		}
		if fi, err := os.Stat(s.socket); err != nil || ours == nil || !os.SameFile(fi, ours) {
			_ = c.Close()
			return nil, errSocketGone
		}
		kubelet.Store(before)
		return c, nil
	}
	conn, err := grpc.NewClient("passthrough:///kubelet", grpc.WithContextDialer(dial), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dialing kubelet at %s: %w", s.kubeletSocket, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     filepath.Base(s.socket),
		ResourceName: s.name,
		Options:      pluginOptions,
	})
	if err != nil {
		return fmt.Errorf("registering %q with kubelet at %s: %w", s.name, s.kubeletSocket, err)
	}
	s.kubelet, _ = kubelet.Load().(os.FileInfo)
	return nil
}

// setRegistered records the registration state and tells the Manager when
// it changed.
func (s *server) setRegistered(v bool) {
	if s.registered.Swap(v) != v {
		s.notify()
	}
}
