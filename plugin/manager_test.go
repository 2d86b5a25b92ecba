package plugin

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

const (
	gpu = "example.com/gpu"
	mig = "example.com/mig-1g.10gb"
)

func TestRegistration(t *testing.T) {
	var mu sync.Mutex
	hooked := map[string]int{}
	e := newTestEnv(t, Options{OnRegistered: func(r string) {
		mu.Lock()
		defer mu.Unlock()
		hooked[r]++
	}})
	// The first Update comes before Run, as in serve.
	require.NoError(t, e.m.Update([]Resource{newTestResource(gpu, "g0", "g1"), newTestResource(mig, "m0")}))
	require.False(t, e.m.Registered(), "not registered before Run")
	k := startKubelet(t, e.kubelet)
	e.run(t)

	got := k.registrations(t, 2, waitLong)
	for _, name := range []string{gpu, mig} {
		want := &pluginapi.RegisterRequest{
			Version:      pluginapi.Version,
			Endpoint:     SocketName(name),
			ResourceName: name,
			Options:      &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true},
		}
		require.True(t, proto.Equal(want, got[name]), "want %v, got %v", want, got[name])
		require.FileExists(t, e.socket(name))
	}
	require.Equal(t, "gpublocks-example_com_mig-1g_10gb.sock", SocketName(mig))
	e.waitRegistered(t, waitLong)
	require.True(t, e.m.Registered())
	// Registered turns true just before the hook runs: wait for it, and
	// never assert while holding the hook's lock (a failed assertion would
	// leave it locked and the hook, on the server goroutine, stuck).
	hookedNow := func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(hooked)
	}
	require.Eventually(t, func() bool { return len(hookedNow()) == 2 }, waitLong, time.Millisecond)
	require.Equal(t, map[string]int{gpu: 1, mig: 1}, hookedNow())

	opts, err := e.dial(t, gpu).GetDevicePluginOptions(context.Background(), &pluginapi.Empty{})
	require.NoError(t, err)
	require.True(t, opts.GetPreferredAllocationAvailable)
	require.False(t, opts.PreStartRequired)

	// A resource added while running registers too.
	require.NoError(t, e.m.Update([]Resource{newTestResource(gpu, "g0"), newTestResource(mig, "m0"), newTestResource("example.com/gpu-blocks", "b0")}))
	require.Equal(t, "example.com/gpu-blocks", k.registrations(t, 1, waitLong)["example.com/gpu-blocks"].ResourceName)
	e.waitRegistered(t, waitLong)
}

func TestRegistrationRetriesUntilKubeletStarts(t *testing.T) {
	e := newTestEnv(t, Options{})
	require.NoError(t, e.m.Update([]Resource{newTestResource(gpu, "g0")}))
	e.run(t)
	time.Sleep(300 * time.Millisecond)
	require.False(t, e.m.Registered())
	k := startKubelet(t, e.kubelet)
	k.registrations(t, 1, waitLong)
	e.waitRegistered(t, waitLong)
}

func TestListAndWatch(t *testing.T) {
	e := newTestEnv(t, Options{})
	res := newTestResource(gpu, "g0", "g1")
	require.NoError(t, e.m.Update([]Resource{res, newTestResource(mig, "m0")}))
	k := startKubelet(t, e.kubelet)
	e.run(t)
	k.registrations(t, 2, waitLong)
	e.waitRegistered(t, waitLong)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := e.dial(t, gpu).ListAndWatch(ctx, &pluginapi.Empty{})
	require.NoError(t, err)
	next := func() []string {
		t.Helper()
		resp, err := stream.Recv()
		require.NoError(t, err)
		return ids(resp.Devices)
	}
	require.Equal(t, []string{"g0:Healthy", "g1:Healthy"}, next(), "initial snapshot")

	require.NoError(t, e.m.Update([]Resource{res.unhealthy("g1"), newTestResource(mig, "m0")}))
	require.Equal(t, []string{"g0:Healthy", "g1:Unhealthy"}, next(), "health change")

	// Dropped from the layout: an empty list, still registered, still served.
	require.NoError(t, e.m.Update([]Resource{newTestResource(mig, "m0")}))
	require.Equal(t, []string{}, next(), "dropped resource")
	require.FileExists(t, e.socket(gpu))
	require.True(t, e.m.Registered())
	k.noRegistration(t, 200*time.Millisecond)
	_, err = e.dial(t, gpu).Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"g0"}}}})
	requireInvalid(t, err, gpu, "g0")

	// Back again.
	require.NoError(t, e.m.Update([]Resource{res, newTestResource(mig, "m0")}))
	require.Equal(t, []string{"g0:Healthy", "g1:Healthy"}, next(), "resource back")
}

func TestKubeletRestart(t *testing.T) {
	e := newTestEnv(t, Options{})
	require.NoError(t, e.m.Update([]Resource{newTestResource(gpu, "g0"), newTestResource(mig, "m0")}))
	k := startKubelet(t, e.kubelet)
	e.run(t)
	k.registrations(t, 2, waitLong)
	e.waitRegistered(t, waitLong)

	// What a kubelet restart does: it goes away (kubelet.sock vanishes),
	// the new one deletes every plugin socket, then listens again.
	k.stop()
	require.NoFileExists(t, e.kubelet)
	entries, err := os.ReadDir(e.dir)
	require.NoError(t, err)
	for _, ent := range entries {
		require.NoError(t, os.Remove(filepath.Join(e.dir, ent.Name())))
	}
	start := time.Now()
	k2 := startKubelet(t, e.kubelet)
	got := k2.registrations(t, 2, waitLong)
	require.Contains(t, got, gpu)
	require.Contains(t, got, mig)
	e.waitRegistered(t, waitLong)
	t.Logf("re-registered %v after the new kubelet started", time.Since(start))
	k2.noRegistration(t, 200*time.Millisecond) // once per resource, not once per event

	stream, err := e.dial(t, gpu).ListAndWatch(context.Background(), &pluginapi.Empty{})
	require.NoError(t, err)
	resp, err := stream.Recv()
	require.NoError(t, err)
	require.Equal(t, []string{"g0:Healthy"}, ids(resp.Devices))
}

// TestKubeletReplacedWhileConnecting is a kubelet restart that replaces
// kubelet.sock after the plugin looked at it and before it connects (issue
// 11). The registration reaches the new kubelet, so it must be recorded
// against the new socket: recorded against the old one, the "kubelet.sock
// created" event that follows looked like yet another kubelet and
// registered again, and kubelet 1.37 refuses the duplicate and then every
// later registration of the resource.
func TestKubeletReplacedWhileConnecting(t *testing.T) {
	e := newTestEnv(t, Options{})
	old := startKubelet(t, e.kubelet)
	oldSock, err := os.Stat(e.kubelet)
	require.NoError(t, err)
	// The new kubelet listens elsewhere and its socket is then renamed onto
	// kubelet.sock: both files exist at once, so the new one cannot reuse
	// the old one's inode.
	staged := filepath.Join(e.dir, "staged.sock")
	k := startKubelet(t, staged)
	// Both servers' first dials look at the old socket, then wait here
	// until the second of them has swapped the kubelets; later dials pass.
	var (
		mu      sync.Mutex
		dials   int
		swapped = make(chan error, 1)
		done    = make(chan struct{})
	)
	e.m.opts.beforeDial = func() {
		mu.Lock()
		dials++
		if dials == 2 {
			old.stop() // the old kubelet goes, and its socket with it
			swapped <- os.Rename(staged, e.kubelet)
			close(done)
		}
		mu.Unlock()
		<-done
	}
	require.NoError(t, e.m.Update([]Resource{newTestResource(gpu, "g0"), newTestResource(mig, "m0")}))
	e.run(t)
	select {
	case err := <-swapped:
		require.NoError(t, err)
	case <-time.After(waitLong):
		require.FailNow(t, "the plugin never dialed the kubelet")
	}
	newSock, err := os.Stat(e.kubelet)
	require.NoError(t, err)
	require.False(t, os.SameFile(oldSock, newSock), "the new kubelet.sock is a new file")

	got := map[string]int{}
	for range 2 {
		select {
		case r := <-k.reqs:
			got[r.ResourceName]++
		case <-time.After(waitLong):
			require.FailNowf(t, "registrations missing", "the new kubelet got %v", got)
		}
	}
	require.Equal(t, map[string]int{gpu: 1, mig: 1}, got, "one registration per resource reaches the new kubelet")
	k.noDeadEndpoint(t)
	e.waitRegistered(t, waitLong)

	e.m.mu.Lock()
	servers := []*server{e.m.servers[gpu], e.m.servers[mig]}
	e.m.mu.Unlock()
	for _, s := range servers {
		// Registered turned true after the server recorded its kubelet, and
		// nothing registers again while it stays current: s.kubelet is
		// safe to read here.
		require.NotNil(t, s.kubelet, s.name)
		require.True(t, os.SameFile(newSock, s.kubelet), "%s: registration recorded against the socket it reached, not the old one", s.name)
	}

	// What the manager does on "kubelet.sock created" (and the rename's own
	// event has done so already): every server is asked to register again
	// unless it is registered with the kubelet now in place.
	e.m.wakeAll(true)
	for _, s := range servers {
		settle(t, s)
	}
	require.Empty(t, k.reqs, "a duplicate registration reached the new kubelet")
	require.Empty(t, old.reqs, "a registration reached the old kubelet")
	require.True(t, e.m.Registered())
}

// TestKubeletRestartAfterSocketCheck is a kubelet restart after a server
// found its socket in place and before it connects: the new kubelet deletes
// the plugin sockets, then creates kubelet.sock. The server must serve again
// before it registers: registering the deleted socket named a dead endpoint,
// and registering again once it was served was a duplicate, which kubelet
// 1.37 refuses, and the resource was lost.
func TestKubeletRestartAfterSocketCheck(t *testing.T) {
	e := newTestEnv(t, Options{})
	old := startKubelet(t, e.kubelet)
	staged := filepath.Join(e.dir, "staged.sock")
	k := startKubelet(t, staged)
	// Both servers' first registrations wait here until the second of them
	// has restarted the kubelet; later ones pass.
	var (
		mu        sync.Mutex
		calls     int
		restarted = make(chan error, 1)
		done      = make(chan struct{})
	)
	e.m.opts.beforeRegister = func() {
		mu.Lock()
		calls++
		if calls == 2 {
			old.stop()
			restarted <- errors.Join(os.Remove(e.socket(gpu)), os.Remove(e.socket(mig)), os.Rename(staged, e.kubelet))
			close(done)
		}
		mu.Unlock()
		<-done
	}
	require.NoError(t, e.m.Update([]Resource{newTestResource(gpu, "g0"), newTestResource(mig, "m0")}))
	e.run(t)
	select {
	case err := <-restarted:
		require.NoError(t, err)
	case <-time.After(waitLong):
		require.FailNow(t, "the servers never registered")
	}

	got := map[string]int{}
	for range 2 {
		select {
		case r := <-k.reqs:
			got[r.ResourceName]++
			k.noDeadEndpoint(t)
		case <-time.After(waitLong):
			require.FailNowf(t, "registrations missing", "the new kubelet got %v", got)
		}
	}
	require.Equal(t, map[string]int{gpu: 1, mig: 1}, got, "one registration per resource reaches the new kubelet")
	e.waitRegistered(t, waitLong)

	// What the manager does on the events of the restart: "kubelet.sock
	// created" asks every server to register again unless it is registered
	// with the kubelet in place, and a plugin socket deleted asks its
	// server to check it (settle's second kick).
	e.m.wakeAll(true)
	e.m.mu.Lock()
	servers := []*server{e.m.servers[gpu], e.m.servers[mig]}
	e.m.mu.Unlock()
	for _, s := range servers {
		settle(t, s)
	}
	require.Empty(t, k.reqs, "a duplicate registration reached the new kubelet")
	require.Empty(t, old.reqs, "a registration reached the old kubelet")
	require.True(t, e.m.Registered())
}

// settle waits until s's run loop has done everything its kicks so far
// asked for: it waits for the pending kick to be taken, then kicks again
// and waits for that one, which run takes only once it has finished the
// work the first one caused.
func settle(t *testing.T, s *server) {
	t.Helper()
	taken := func() bool { return len(s.kick) == 0 }
	require.Eventually(t, taken, waitLong, time.Millisecond, "%s: kick not taken", s.name)
	s.wake(false)
	require.Eventually(t, taken, waitLong, time.Millisecond, "%s: second kick not taken", s.name)
}

func TestOwnSocketDeleted(t *testing.T) {
	e := newTestEnv(t, Options{})
	require.NoError(t, e.m.Update([]Resource{newTestResource(gpu, "g0"), newTestResource(mig, "m0")}))
	k := startKubelet(t, e.kubelet)
	e.run(t)
	k.registrations(t, 2, waitLong)

	require.NoError(t, os.Remove(e.socket(gpu)))
	got := k.registrations(t, 1, waitLong)
	require.Contains(t, got, gpu, "only the resource that lost its socket registers again")
	require.FileExists(t, e.socket(gpu))
	k.noRegistration(t, 200*time.Millisecond)
	_, err := e.dial(t, gpu).GetDevicePluginOptions(context.Background(), &pluginapi.Empty{})
	require.NoError(t, err)
}

func TestRunStopsAndRemovesSockets(t *testing.T) {
	e := newTestEnv(t, Options{})
	require.NoError(t, e.m.Update([]Resource{newTestResource(gpu, "g0"), newTestResource(mig, "m0")}))
	k := startKubelet(t, e.kubelet)
	e.run(t)
	k.registrations(t, 2, waitLong)
	e.waitRegistered(t, waitLong)

	require.ErrorIs(t, e.m.Run(context.Background()), ErrAlreadyRunning)

	e.cancel()
	select {
	case err := <-e.done:
		require.NoError(t, err)
	case <-time.After(waitLong):
		require.FailNow(t, "Run did not return after cancel")
	}
	e.done <- nil // for the cleanup registered by run
	require.NoFileExists(t, e.socket(gpu))
	require.NoFileExists(t, e.socket(mig))
	require.FileExists(t, e.kubelet, "the kubelet's socket is not ours to remove")
	require.False(t, e.m.Registered())
	// Update after Run is harmless.
	require.NoError(t, e.m.Update(nil))
}

func TestUpdateRejectsInvalidResources(t *testing.T) {
	long := "example.com/" + strings.Repeat("x", 120)
	cases := map[string]struct {
		first, update []Resource
	}{
		"nil resource":     {update: []Resource{nil}},
		"no domain":        {update: []Resource{newTestResource("gpu", "g0")}},
		"duplicate name":   {update: []Resource{newTestResource(gpu, "g0"), newTestResource(gpu, "g1")}},
		"duplicate ID":     {update: []Resource{newTestResource(gpu, "g0", "g0")}},
		"socket too long":  {update: []Resource{newTestResource(long, "g0")}},
		"socket collision": {update: []Resource{newTestResource("example.com/a.b", "x"), newTestResource("example.com/a_b", "y")}},
		"collides with dropped": {
			first:  []Resource{newTestResource("example.com/a.b", "x")},
			update: []Resource{newTestResource("example.com/a_b", "y")},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			e := newTestEnv(t, Options{})
			require.NoError(t, e.m.Update(tc.first))
			checked := e.m.Check(tc.update)
			require.ErrorIs(t, checked, ErrInvalidResource)
			err := e.m.Update(tc.update)
			require.ErrorIs(t, err, ErrInvalidResource)
			require.Equal(t, err.Error(), checked.Error(), "Check says what Update would")
			// Nothing was applied.
			e.m.mu.Lock()
			require.Len(t, e.m.servers, len(tc.first))
			e.m.mu.Unlock()
		})
	}
}

func TestCheckChangesNothing(t *testing.T) {
	e := newTestEnv(t, Options{})
	res := newTestResource(gpu, "g0")
	require.NoError(t, e.m.Update([]Resource{res}))
	require.NoError(t, e.m.Check([]Resource{newTestResource(gpu, "g1"), newTestResource(mig, "m0")}))
	e.m.mu.Lock()
	defer e.m.mu.Unlock()
	require.Len(t, e.m.servers, 1, "Check serves nothing new")
	require.Equal(t, []string{"g0:Healthy"}, ids(e.m.servers[gpu].snap.Load().list.Devices), "Check publishes nothing")
}

func TestRunStopsWhenWatcherCloses(t *testing.T) {
	e := newTestEnv(t, Options{})
	watcher := make(chan *fsnotify.Watcher, 1)
	e.m.onWatch = func(w *fsnotify.Watcher) { watcher <- w }
	require.NoError(t, e.m.Update([]Resource{newTestResource(gpu, "g0")}))
	k := startKubelet(t, e.kubelet)
	done := make(chan error, 1)
	go func() { done <- e.m.Run(context.Background()) }()
	k.registrations(t, 1, waitLong)
	e.waitRegistered(t, waitLong)

	require.NoError(t, (<-watcher).Close())
	select {
	case err := <-done:
		require.ErrorIs(t, err, ErrWatcherClosed)
		require.ErrorContains(t, err, e.dir)
	case <-time.After(waitLong):
		require.FailNow(t, "Run did not return after its watcher closed")
	}
	// The normal shutdown path ran before Run returned.
	require.NoFileExists(t, e.socket(gpu))
	require.False(t, e.m.Registered())
}

func TestRunFailsWithoutPluginDir(t *testing.T) {
	f, err := os.CreateTemp("", "gb")
	require.NoError(t, err)
	f.Close()
	t.Cleanup(func() { os.Remove(f.Name()) })
	m := NewManager(Options{PluginDir: filepath.Join(f.Name(), "sub")}) // parent is a file
	err = m.Run(context.Background())
	require.Error(t, err)
	require.False(t, errors.Is(err, ErrAlreadyRunning))
}
