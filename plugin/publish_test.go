package plugin

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// gpuOf names the GPU a test device ID stands for: "g3" and "g3::17" are
// both GPU g3, the way a whole GPU and its blocks are.
func gpuOf(id string) string {
	g, _, _ := strings.Cut(id, "::")
	return g
}

// layout is a set of resources by short name, each a list of device IDs.
type layout map[string][]string

func (l layout) resources() []Resource {
	var out []Resource
	for _, name := range slices.Sorted(maps.Keys(l)) {
		out = append(out, newTestResource("example.com/"+name, l[name]...))
	}
	return out
}

func TestUpdateNeverOffersAGPUTwice(t *testing.T) {
	// Every kind of change at once, over enough resources that publishing
	// in map order puts a growing resource before a shrinking one almost
	// every time: GPUs move between resources, "swap" both loses and gains,
	// "mig" is dropped, "new" appears.
	before := layout{
		"gpu":    {"g0", "g1", "g2", "g3"},
		"blocks": {"g4::0", "g4::1"},
		"swap":   {"g5", "g6"},
		"mig":    {"g7::m0", "g7::m1"},
		"big":    {"g8", "g9"},
		"small":  {"g10::0"},
		"idle":   {"g11"},
	}
	after := layout{
		"gpu":    {"g1", "g2", "g4"},
		"blocks": {"g0::0", "g0::1", "g3::0"},
		"swap":   {"g6", "g7"},
		"big":    {"g8"},
		"small":  {"g9::0", "g10::0", "g5::0"},
		"idle":   {"g11"},
		"new":    {"g12"},
	}
	for i := range 30 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			e := newTestEnv(t, Options{})
			require.NoError(t, e.m.Update(before.resources()))
			// What the kubelet has been told, resource by resource.
			told := map[string][]*pluginapi.Device{}
			for name, devs := range e.m.Devices() {
				told[name] = devs
			}
			e.m.onPublish = func(resource string, devs []*pluginapi.Device) {
				told[resource] = devs
				owner := map[string]string{}
				for name, devs := range told {
					for _, d := range devs {
						if other, ok := owner[gpuOf(d.ID)]; ok && other != name {
							t.Errorf("after publishing %s: GPU %s offered by %s and %s", resource, gpuOf(d.ID), other, name)
						}
						owner[gpuOf(d.ID)] = name
					}
				}
			}
			require.NoError(t, e.m.Update(after.resources()))
			got := layout{}
			for name, devs := range e.m.Devices() {
				if len(devs) > 0 {
					got[strings.TrimPrefix(name, "example.com/")] = idsOnly(devs)
				}
			}
			require.Equal(t, after, got)
		})
	}
}

func idsOnly(devs []*pluginapi.Device) []string {
	out := make([]string, len(devs))
	for i, d := range devs {
		out[i] = d.ID
	}
	return out
}

// gatedStream is a ListAndWatch stream whose every Send is handed to the
// test and returns only when the test releases it.
type gatedStream struct {
	grpc.ServerStream
	ctx     context.Context
	sent    chan []string
	release chan struct{}
}

func (g *gatedStream) Context() context.Context { return g.ctx }

func (g *gatedStream) Send(m *pluginapi.ListAndWatchResponse) error {
	select {
	case g.sent <- idsOnly(m.Devices):
	case <-g.ctx.Done():
		return g.ctx.Err()
	}
	select {
	case <-g.release:
		return nil
	case <-g.ctx.Done():
		return g.ctx.Err()
	}
}

// server returns resource's server.
func (e *testEnv) server(resource string) *server {
	e.m.mu.Lock()
	defer e.m.mu.Unlock()
	return e.m.servers[resource]
}

// watch opens a gated ListAndWatch stream on resource's server, and takes
// its first list.
func (e *testEnv) watch(t *testing.T, resource string) *gatedStream {
	t.Helper()
	s := e.server(resource)
	ctx, cancel := context.WithCancel(context.Background())
	g := &gatedStream{ctx: ctx, sent: make(chan []string), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- s.ListAndWatch(&pluginapi.Empty{}, g) }()
	t.Cleanup(func() {
		cancel()
		err := <-done // the stream ends with the context's error
		t.Logf("stream ended: %v", err)
	})
	<-g.sent
	g.release <- struct{}{}
	return g
}

// offered is what s streams now. It takes no lock, so it can look while
// Update runs.
func offered(s *server) []string {
	return idsOnly(s.snap.Load().list.Devices)
}

func TestUpdateWaitsForTheShrunkListToGoOut(t *testing.T) {
	const blocks = "example.com/gpu-blocks"
	e := newTestEnv(t, Options{})
	// The order is under test, not the bound (the next test's): with the
	// default second, a loaded machine that stalled this test for that
	// long between the stream's Send and the check below made Update give
	// up waiting and offer the blocks, and the test failed.
	e.m.sentWait = time.Hour
	require.NoError(t, e.m.Update(layout{"gpu": {"g0", "g1"}, "gpu-blocks": {}}.resources()))
	k := startKubelet(t, e.kubelet)
	e.run(t)
	k.registrations(t, 2, waitLong)
	w := e.watch(t, gpu)
	b := e.server(blocks)

	done := make(chan error, 1)
	go func() { done <- e.m.Update(layout{"gpu": {"g1"}, "gpu-blocks": {"g0::0", "g0::1"}}.resources()) }()
	require.Equal(t, []string{"g1"}, <-w.sent)
	// The gpu stream is inside Send with the shrunk list: the blocks of g0
	// must not be offered yet.
	require.Empty(t, offered(b))
	w.release <- struct{}{}
	require.NoError(t, <-done)
	require.Equal(t, []string{"g0::0", "g0::1"}, offered(b))
}

func TestUpdateWaitsBoundedForAStuckStream(t *testing.T) {
	const blocks = "example.com/gpu-blocks"
	e := newTestEnv(t, Options{})
	e.m.sentWait = 10 * time.Millisecond
	require.NoError(t, e.m.Update(layout{"gpu": {"g0", "g1"}, "gpu-blocks": {}}.resources()))
	k := startKubelet(t, e.kubelet)
	e.run(t)
	k.registrations(t, 2, waitLong)
	w := e.watch(t, gpu)

	// The stream takes the shrunk list but never returns from Send: Update
	// still completes, and the cleanup's cancel ends the stream.
	require.NoError(t, e.m.Update(layout{"gpu": {"g1"}, "gpu-blocks": {"g0::0"}}.resources()))
	require.Equal(t, []string{"g1"}, <-w.sent)
	require.Equal(t, []string{"g0::0"}, offered(e.server(blocks)))
}
