package plugin

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// testResource is a minimal Resource: Prefer puts mustInclude first and
// fills up from available in order; Allocate reports the IDs in an env var
// and refuses the ID "refuse" with FailedPrecondition.
type testResource struct {
	name string
	devs []*pluginapi.Device
}

func newTestResource(name string, ids ...string) *testResource {
	r := &testResource{name: name}
	for _, id := range ids {
		r.devs = append(r.devs, NewDevice(id, true, -1))
	}
	return r
}

// unhealthy returns a copy of r with the given devices unhealthy.
func (r *testResource) unhealthy(ids ...string) *testResource {
	c := &testResource{name: r.name}
	for _, d := range r.devs {
		bad := false
		for _, id := range ids {
			bad = bad || id == d.ID
		}
		c.devs = append(c.devs, NewDevice(d.ID, !bad, -1))
	}
	return c
}

func (r *testResource) Name() string                 { return r.name }
func (r *testResource) Devices() []*pluginapi.Device { return r.devs }

func (r *testResource) Prefer(available, mustInclude []string, size int) ([]string, error) {
	out := append([]string(nil), mustInclude...)
	for _, id := range available {
		if len(out) == size {
			break
		}
		if !contains(out, id) && r.serves(id) {
			out = append(out, id)
		}
	}
	return out, nil
}

// serves reports whether id is one of the resource's devices: Prefer must
// ignore IDs it does not serve.
func (r *testResource) serves(id string) bool {
	for _, d := range r.devs {
		if d.ID == id {
			return true
		}
	}
	return false
}

func (r *testResource) Allocate(ids []string) (*pluginapi.ContainerAllocateResponse, error) {
	if contains(ids, "refuse") {
		return nil, status.Error(codes.FailedPrecondition, "device refuse is busy")
	}
	return &pluginapi.ContainerAllocateResponse{Envs: map[string]string{"TEST_IDS": strings.Join(ids, ",")}}, nil
}

func contains(ids []string, id string) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// waitLong bounds a test's wait for what should happen at once, such as a
// registration. It only decides when a test gives up: generous, because a
// machine loaded by parallel builds can stall a goroutine for seconds.
const waitLong = 30 * time.Second

// fakeKubelet is the kubelet's registration service on a socket, recording
// every RegisterRequest.
type fakeKubelet struct {
	pluginapi.UnimplementedRegistrationServer
	socket string
	info   os.FileInfo // the socket file it listens on
	reqs   chan *pluginapi.RegisterRequest
	// dead gets the endpoint of every registration whose socket did not
	// exist when it arrived: a kubelet could not reach that plugin.
	dead chan string
	srv  *grpc.Server
}

func startKubelet(t testing.TB, socket string) *fakeKubelet {
	t.Helper()
	lis, err := net.Listen("unix", socket)
	require.NoError(t, err)
	// stop removes the socket itself. Left to the listener, a Stop that
	// came before Serve started would have Serve close it, and unlink the
	// path, later, when it may hold another kubelet's socket.
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	info, err := os.Stat(socket)
	require.NoError(t, err)
	k := &fakeKubelet{
		socket: socket,
		info:   info,
		reqs:   make(chan *pluginapi.RegisterRequest, 100),
		dead:   make(chan string, 100),
		srv:    grpc.NewServer(),
	}
	pluginapi.RegisterRegistrationServer(k.srv, k)
	go func() { _ = k.srv.Serve(lis) }()
	t.Cleanup(k.stop)
	return k
}

// stop shuts the kubelet down and removes its socket if the path still
// holds it, as a stopping kubelet does.
func (k *fakeKubelet) stop() {
	k.srv.Stop()
	if fi, err := os.Stat(k.socket); err == nil && os.SameFile(fi, k.info) {
		_ = os.Remove(k.socket)
	}
}

func (k *fakeKubelet) Register(_ context.Context, req *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	if _, err := os.Stat(filepath.Join(filepath.Dir(k.socket), req.Endpoint)); err != nil {
		k.dead <- req.Endpoint
	}
	k.reqs <- req
	return &pluginapi.Empty{}, nil
}

// registrations waits up to timeout for n RegisterRequests, keyed by
// resource name.
func (k *fakeKubelet) registrations(t testing.TB, n int, timeout time.Duration) map[string]*pluginapi.RegisterRequest {
	t.Helper()
	got := map[string]*pluginapi.RegisterRequest{}
	deadline := time.After(timeout)
	for len(got) < n {
		select {
		case r := <-k.reqs:
			got[r.ResourceName] = r
			k.noDeadEndpoint(t)
		case <-deadline:
			require.FailNowf(t, "registrations missing", "got %d of %d within %v: %v", len(got), n, timeout, got)
		}
	}
	return got
}

// noDeadEndpoint asserts that every registration received so far named a
// socket that existed when it arrived.
func (k *fakeKubelet) noDeadEndpoint(t testing.TB) {
	t.Helper()
	select {
	case ep := <-k.dead:
		require.FailNowf(t, "registration with a dead endpoint", "socket %s did not exist when its registration arrived", ep)
	default:
	}
}

// noRegistration asserts that nothing registers within d.
func (k *fakeKubelet) noRegistration(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case r := <-k.reqs:
		require.FailNowf(t, "unexpected registration", "%v", r)
	case <-time.After(d):
	}
}

// testEnv is a Manager on a short temporary plugin directory.
type testEnv struct {
	dir     string
	kubelet string
	m       *Manager
	cancel  context.CancelFunc
	done    chan error
	quiet   bool // Run logs nothing (for benchmarks)
}

func newTestEnv(t testing.TB, opts Options) *testEnv {
	t.Helper()
	// t.TempDir() paths can exceed the 108-byte socket address limit.
	dir, err := os.MkdirTemp("", "gb")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	opts.PluginDir = dir
	return &testEnv{dir: dir, kubelet: filepath.Join(dir, "kubelet.sock"), m: NewManager(opts)}
}

// run starts Run; cleanup cancels it and waits.
func (e *testEnv) run(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if e.quiet {
		ctx = klog.NewContext(ctx, logr.Discard())
	}
	e.cancel, e.done = cancel, make(chan error, 1)
	go func() { e.done <- e.m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-e.done; err != nil {
			t.Errorf("manager Run: %v", err)
		}
	})
}

func (e *testEnv) socket(resource string) string { return filepath.Join(e.dir, SocketName(resource)) }

// waitRegistered waits up to timeout for Registered.
func (e *testEnv) waitRegistered(t testing.TB, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	require.NoError(t, e.m.WaitRegistered(ctx))
}

// dial connects a DevicePlugin client to resource's socket.
func (e *testEnv) dial(t testing.TB, resource string) pluginapi.DevicePluginClient {
	t.Helper()
	conn, err := grpc.NewClient("unix:"+e.socket(resource), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return pluginapi.NewDevicePluginClient(conn)
}

// ids lists device IDs with health, e.g. "a:Healthy".
func ids(devs []*pluginapi.Device) []string {
	out := []string{}
	for _, d := range devs {
		out = append(out, d.ID+":"+d.Health)
	}
	return out
}
