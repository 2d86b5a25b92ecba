package plugin

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// requireInvalid asserts a codes.InvalidArgument error whose message names
// every one of words.
func requireInvalid(t *testing.T, err error, words ...string) {
	t.Helper()
	require.Error(t, err)
	st, ok := status.FromError(err)
	require.True(t, ok, "not a gRPC status: %v", err)
	require.Equal(t, codes.InvalidArgument, st.Code(), st.Message())
	for _, w := range words {
		require.Contains(t, st.Message(), w)
	}
}

// servedEnv runs a Manager serving gpu (g0…g3 and "refuse") and returns a
// client for it.
func servedEnv(t *testing.T, opts Options) pluginapi.DevicePluginClient {
	t.Helper()
	e := newTestEnv(t, opts)
	require.NoError(t, e.m.Update([]Resource{newTestResource(gpu, "g0", "g1", "g2", "g3", "refuse")}))
	k := startKubelet(t, e.kubelet)
	e.run(t)
	k.registrations(t, 1, waitLong)
	return e.dial(t, gpu)
}

func containers(idLists ...[]string) *pluginapi.AllocateRequest {
	req := &pluginapi.AllocateRequest{}
	for _, ids := range idLists {
		req.ContainerRequests = append(req.ContainerRequests, &pluginapi.ContainerAllocateRequest{DevicesIds: ids})
	}
	return req
}

func TestAllocate(t *testing.T) {
	// The hook runs on a gRPC goroutine: it only records, and the test
	// goroutine asserts.
	type call struct {
		resource string
		err      error
		took     time.Duration
	}
	var mu sync.Mutex
	var calls []call
	c := servedEnv(t, Options{OnAllocate: func(r string, took time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, call{r, err, took})
	}})

	cases := map[string]struct {
		req      *pluginapi.AllocateRequest
		wantEnvs []string // TEST_IDS per container
		wantCode codes.Code
		wantMsg  []string
	}{
		"one container":        {req: containers([]string{"g0", "g1"}), wantEnvs: []string{"g0,g1"}},
		"two containers":       {req: containers([]string{"g2"}, []string{"g3", "g0"}), wantEnvs: []string{"g2", "g3,g0"}},
		"no containers":        {req: containers(), wantEnvs: []string{}},
		"unknown IDs":          {req: containers([]string{"g0", "gX", "gY"}), wantCode: codes.InvalidArgument, wantMsg: []string{gpu, "unknown device IDs", `"gX"`, `"gY"`}},
		"duplicate IDs":        {req: containers([]string{"g1", "g0", "g1"}), wantCode: codes.InvalidArgument, wantMsg: []string{gpu, `duplicate device IDs: "g1"`}},
		"unknown and repeated": {req: containers([]string{"gX", "g0", "g0"}), wantCode: codes.InvalidArgument, wantMsg: []string{`unknown device IDs: "gX"`, `duplicate device IDs: "g0"`}},
		"bad second container": {req: containers([]string{"g0"}, []string{"nope"}), wantCode: codes.InvalidArgument, wantMsg: []string{`"nope"`}},
		"empty ID list":        {req: containers([]string{}), wantCode: codes.InvalidArgument, wantMsg: []string{gpu, "no device IDs"}},
		"resource refuses":     {req: containers([]string{"refuse"}), wantCode: codes.FailedPrecondition, wantMsg: []string{gpu, "device refuse is busy"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			mu.Lock()
			calls = nil
			mu.Unlock()
			resp, err := c.Allocate(context.Background(), tc.req)
			mu.Lock()
			got := calls
			mu.Unlock()
			require.Len(t, got, 1, "OnAllocate once per call")
			require.Equal(t, gpu, got[0].resource)
			require.Equal(t, err == nil, got[0].err == nil)
			require.Positive(t, got[0].took)
			if tc.wantCode != codes.OK {
				require.Equal(t, tc.wantCode, status.Code(err), "%v", err)
				for _, w := range tc.wantMsg {
					require.Contains(t, status.Convert(err).Message(), w)
				}
				return
			}
			require.NoError(t, err)
			envs := []string{}
			for _, cr := range resp.ContainerResponses {
				envs = append(envs, cr.Envs["TEST_IDS"])
			}
			require.Equal(t, tc.wantEnvs, envs)
		})
	}
}

func TestGetPreferredAllocation(t *testing.T) {
	c := servedEnv(t, Options{})
	req := func(available, must []string, size int32) *pluginapi.PreferredAllocationRequest {
		return &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{
			AvailableDeviceIDs: available, MustIncludeDeviceIDs: must, AllocationSize: size,
		}}}
	}
	cases := map[string]struct {
		req     *pluginapi.PreferredAllocationRequest
		want    [][]string
		wantMsg []string // InvalidArgument naming these
	}{
		"delegates":                      {req: req([]string{"g0", "g1", "g2"}, []string{"g2"}, 2), want: [][]string{{"g2", "g0"}}},
		"whole set":                      {req: req([]string{"g0", "g1"}, nil, 2), want: [][]string{{"g0", "g1"}}},
		"stale available passed through": {req: req([]string{"zz", "g0"}, nil, 1), want: [][]string{{"g0"}}},
		"unknown required":               {req: req([]string{"g0"}, []string{"yy"}, 1), wantMsg: []string{`unknown device IDs: "yy"`}},
		"repeated required":              {req: req([]string{"g0", "g1"}, []string{"g0", "g0"}, 2), wantMsg: []string{`duplicate device IDs: "g0"`}},
		"size over available":            {req: req([]string{"g0"}, nil, 2), wantMsg: []string{gpu, "allocation size 2"}},
		"zero size":                      {req: req([]string{"g0"}, nil, 0), wantMsg: []string{"allocation size 0"}},
		"no available":                   {req: req(nil, nil, 1), wantMsg: []string{"allocation size 1 with 0 available"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			resp, err := c.GetPreferredAllocation(context.Background(), tc.req)
			if tc.wantMsg != nil {
				requireInvalid(t, err, tc.wantMsg...)
				return
			}
			require.NoError(t, err)
			got := [][]string{}
			for _, cr := range resp.ContainerResponses {
				got = append(got, cr.DeviceIDs)
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestGetPreferredAllocationOnDroppedResource(t *testing.T) {
	e := newTestEnv(t, Options{})
	require.NoError(t, e.m.Update([]Resource{newTestResource(gpu, "g0", "g1"), newTestResource(mig, "m0")}))
	k := startKubelet(t, e.kubelet)
	e.run(t)
	k.registrations(t, 2, waitLong)
	c := e.dial(t, gpu)

	// Dropped: the kubelet may still ask with the IDs it saw last.
	require.NoError(t, e.m.Update([]Resource{newTestResource(mig, "m0")}))
	_, err := c.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
		ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: []string{"g0", "g1"}, AllocationSize: 1}},
	})
	require.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), gpu)
	require.Contains(t, status.Convert(err).Message(), "offers no devices now")

	// The server survived: it still answers.
	_, err = c.GetDevicePluginOptions(context.Background(), &pluginapi.Empty{})
	require.NoError(t, err)
}

func TestPreStartContainerIsNoop(t *testing.T) {
	c := servedEnv(t, Options{})
	_, err := c.PreStartContainer(context.Background(), &pluginapi.PreStartContainerRequest{DevicesIds: []string{"g0"}})
	require.NoError(t, err)
}

func TestSnapshotCheckLargeResource(t *testing.T) {
	// Over stackDevices devices the bitset moves to the heap.
	var many []string
	for i := range stackDevices + 100 {
		many = append(many, fmt.Sprintf("d%d", i))
	}
	snap, err := newSnapshot(newTestResource(gpu, many...))
	require.NoError(t, err)
	last := many[len(many)-1]
	require.NoError(t, snap.check(gpu, []string{"d0", last}, true))
	require.ErrorIs(t, snap.check(gpu, []string{last, "d0", last}, true), ErrDuplicateDevice)
}

func TestSnapshotCheck(t *testing.T) {
	var many []string
	for i := range 200 {
		many = append(many, fmt.Sprintf("d%d", i))
	}
	snap, err := newSnapshot(newTestResource(gpu, many...))
	require.NoError(t, err)
	cases := map[string]struct {
		ids     []string
		unique  bool
		want    error
		wantMsg string
	}{
		"known":                 {ids: []string{"d1", "d2"}, unique: true},
		"repeats allowed":       {ids: []string{"d1", "d1"}, unique: false},
		"large unique":          {ids: many, unique: true},
		"large with a repeat":   {ids: append(append([]string{}, many...), "d7"), unique: true, want: ErrDuplicateDevice, wantMsg: `duplicate device IDs: "d7"`},
		"many unknown trimmed":  {ids: []string{"x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11"}, want: ErrUnknownDevice, wantMsg: `"x9" and 2 more`},
		"empty":                 {ids: nil, want: ErrBadRequest},
		"first and last":        {ids: []string{"d0", "d199", "d64", "d63"}, unique: true},
		"repeat at a word edge": {ids: []string{"d63", "d64", "d63"}, unique: true, want: ErrDuplicateDevice, wantMsg: `duplicate device IDs: "d63"`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := snap.check(gpu, tc.ids, tc.unique)
			if tc.want == nil {
				require.NoError(t, err)
				return
			}
			require.True(t, errors.Is(err, tc.want), "%v", err)
			require.Contains(t, err.Error(), tc.wantMsg)
		})
	}
}

// blockedStream is a ListAndWatch stream whose Send waits for the test, like
// a kubelet that reads slowly.
type blockedStream struct {
	grpc.ServerStream
	ctx  context.Context
	sent chan *pluginapi.ListAndWatchResponse
}

func (b *blockedStream) Context() context.Context { return b.ctx }

func (b *blockedStream) Send(m *pluginapi.ListAndWatchResponse) error {
	select {
	case b.sent <- m:
		return nil
	case <-b.ctx.Done():
		return b.ctx.Err()
	}
}

func TestListAndWatchCoalescesBursts(t *testing.T) {
	s := newServer(gpu, &Options{PluginDir: "/nonexistent"}, func() {})
	update := func(ids ...string) {
		snap, err := newSnapshot(newTestResource(gpu, ids...))
		require.NoError(t, err)
		s.setSnapshot(snap)
	}
	update("g0")
	ctx, cancel := context.WithCancel(context.Background())
	stream := &blockedStream{ctx: ctx, sent: make(chan *pluginapi.ListAndWatchResponse)}
	done := make(chan error, 1)
	go func() { done <- s.ListAndWatch(&pluginapi.Empty{}, stream) }()
	require.Equal(t, []string{"g0:Healthy"}, ids((<-stream.sent).Devices), "initial snapshot")

	// A burst while the reader is busy: it gets the newest list only, once
	// the stream has noticed the change (at most one intermediate list).
	for i := range 100 {
		update("g0", fmt.Sprintf("burst%d", i))
	}
	update("g0", "last")
	var got []string
	for len(got) < 2 || got[1] != "last:Healthy" {
		got = ids((<-stream.sent).Devices)
	}
	// An Update with the same devices wakes nobody.
	update("g0", "last")
	select {
	case m := <-stream.sent:
		require.FailNow(t, "unchanged list sent again", "%v", ids(m.Devices))
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	require.NoError(t, <-done)
}
