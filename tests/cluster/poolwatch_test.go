package cluster

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/gpublocks/gpublocks/tests/cluster/fixture"
)

// poolState is the node's DRA pool as the API server served it at one
// moment: complete when every slice of the newest generation is there
// (the scheduler's allocator only uses complete pools).
type poolState struct {
	at         time.Time // when this test's watch saw the change
	complete   bool
	generation int64
	slices     int
	devices    map[string]resourceapi.Device
	counters   map[string]resourceapi.CounterSet
}

// taint returns the device's unhealthy taint, or nil.
func (s poolState) taint(device string) *resourceapi.DeviceTaint {
	d, ok := s.devices[device]
	if !ok {
		return nil
	}
	for i := range d.Taints {
		if d.Taints[i].Key == unhealthyTaint {
			return &d.Taints[i]
		}
	}
	return nil
}

// names lists the devices, sorted, for messages.
func (s poolState) names() []string {
	out := make([]string, 0, len(s.devices))
	for n := range s.devices {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// poolWatch follows the node's ResourceSlices of gpublocks' driver through
// an informer and keeps every state of the pool it saw, with the time it
// saw it, so that a test can ask when a condition first held after an
// action (an XID → the taint visible through the API server) even if the
// condition held only briefly.
type poolWatch struct {
	mu      sync.Mutex
	states  []poolState
	changed chan struct{} // closed and replaced on every new state
	store   cache.Store
}

// startPoolWatch starts following the pool until the test ends.
func startPoolWatch(t *testing.T, ctx context.Context) *poolWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	factory := informers.NewSharedInformerFactoryWithOptions(cl.Client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "spec.driver=" + draDriver
	}))
	inf := factory.Resource().V1().ResourceSlices().Informer()
	w := &poolWatch{changed: make(chan struct{}), store: inf.GetStore()}
	record := func(any) { w.record() }
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    record,
		UpdateFunc: func(_, obj any) { record(obj) },
		DeleteFunc: record,
	})
	require.NoError(t, err)
	factory.Start(ctx.Done())
	t.Cleanup(func() {
		cancel()
		factory.Shutdown()
	})
	require.True(t, cache.WaitForCacheSync(ctx.Done(), inf.HasSynced), "ResourceSlice informer never synced")
	return w
}

// record appends the pool as the informer's store now holds it.
func (w *poolWatch) record() {
	now := time.Now()
	s := poolState{at: now, devices: map[string]resourceapi.Device{}, counters: map[string]resourceapi.CounterSet{}}
	var mine []*resourceapi.ResourceSlice
	for _, obj := range w.store.List() {
		rs, ok := obj.(*resourceapi.ResourceSlice)
		if !ok || rs.Spec.Pool.Name != fixture.NodeName || rs.DeletionTimestamp != nil {
			continue
		}
		mine = append(mine, rs)
		s.generation = max(s.generation, rs.Spec.Pool.Generation)
	}
	var want int64 = -1
	for _, rs := range mine {
		if rs.Spec.Pool.Generation != s.generation {
			continue
		}
		s.slices++
		want = rs.Spec.Pool.ResourceSliceCount
		for _, d := range rs.Spec.Devices {
			s.devices[d.Name] = d
		}
		for _, c := range rs.Spec.SharedCounters {
			s.counters[c.Name] = c
		}
	}
	s.complete = want > 0 && int64(s.slices) == want
	w.mu.Lock()
	w.states = append(w.states, s)
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
}

// current is the newest state seen (empty before any slice).
func (w *poolWatch) current() poolState {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.states) == 0 {
		return poolState{}
	}
	return w.states[len(w.states)-1]
}

// waitSince returns the first complete state, from the one current at
// since onwards, for which ok holds: the moment a change became visible
// through the API server. It fails the test after timeout with the last
// state seen.
func (w *poolWatch) waitSince(t *testing.T, what string, since time.Time, timeout time.Duration, ok func(poolState) bool) poolState {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	next := 0
	w.mu.Lock()
	for i := range w.states {
		if !w.states[i].at.After(since) {
			next = i // the state current at since
		}
	}
	w.mu.Unlock()
	for {
		w.mu.Lock()
		states, changed := w.states, w.changed
		w.mu.Unlock()
		for ; next < len(states); next++ {
			if s := states[next]; s.complete && ok(s) {
				return s
			}
		}
		select {
		case <-changed:
		case <-deadline.C:
			last := w.current()
			require.FailNow(t, "ResourceSlices: "+what+" not within "+timeout.String(),
				"last pool state: generation %d, %d slices, complete %v, devices %v, taints %s", last.generation, last.slices, last.complete, last.names(), describeTaints(last))
		}
	}
}

// describeTaints lists the tainted devices of a state, for messages.
func describeTaints(s poolState) string {
	var out []string
	for _, n := range s.names() {
		if tt := s.taint(n); tt != nil {
			out = append(out, fmt.Sprintf("%s=%s:%s", n, tt.Value, tt.Effect))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, " ")
}
