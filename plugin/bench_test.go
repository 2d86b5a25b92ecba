package plugin

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// benchResource precomputes its Allocate responses, as real resources
// should: one per device, and one shared answer for multi-device requests.
type benchResource struct {
	testResource
	resp  map[string]*pluginapi.ContainerAllocateResponse
	multi *pluginapi.ContainerAllocateResponse
}

func newBenchResource(n int) *benchResource {
	r := &benchResource{resp: map[string]*pluginapi.ContainerAllocateResponse{}}
	r.name = gpu
	for i := range n {
		id := fmt.Sprintf("GPU-8c1b0000-0000-0000-0000-%012d", i)
		r.devs = append(r.devs, NewDevice(id, true, 0))
		r.resp[id] = &pluginapi.ContainerAllocateResponse{
			Envs:       map[string]string{"NVIDIA_VISIBLE_DEVICES": "void"},
			CdiDevices: []*pluginapi.CDIDevice{{Name: "gpublocks.io/gpu=" + id}},
		}
	}
	r.multi = &pluginapi.ContainerAllocateResponse{
		Envs:       map[string]string{"NVIDIA_VISIBLE_DEVICES": "void", "GPUBLOCKS_BLOCKS": "100"},
		CdiDevices: []*pluginapi.CDIDevice{{Name: "gpublocks.io/gpu=" + r.devs[0].ID}},
	}
	return r
}

func (r *benchResource) Allocate(ids []string) (*pluginapi.ContainerAllocateResponse, error) {
	if len(ids) == 1 {
		return r.resp[ids[0]], nil
	}
	return r.multi, nil
}

// BenchmarkAllocate measures an Allocate round trip over the real unix
// socket against an empty round trip (GetDevicePluginOptions) on the same
// connection, interleaved so both see the same machine state. It reports
// both medians and their ratio (DESIGN §8: alloc/empty ≤ 1.10). "100 IDs"
// is a container asking for a whole GPU's worth of blocks out of 800, so
// the plugin's ID validation (lookups and the repeat check) counts.
func BenchmarkAllocate(b *testing.B) {
	for _, bc := range []struct {
		name         string
		devices, ids int
	}{
		{"1 ID of 100", 100, 1},
		{"100 IDs of 800", 800, 100},
	} {
		b.Run(bc.name, func(b *testing.B) { benchmarkAllocate(b, bc.devices, bc.ids) })
	}
}

func benchmarkAllocate(b *testing.B, devices, perRequest int) {
	var allocations atomic.Int64
	e := newTestEnv(b, Options{OnAllocate: func(string, time.Duration, error) { allocations.Add(1) }})
	e.quiet = true
	res := newBenchResource(devices)
	startKubelet(b, e.kubelet)
	e.run(b)
	e.waitRegistered(b, 5*time.Second)              // running, with nothing to register yet
	require.NoError(b, e.m.Update([]Resource{res})) // logs through Run's (silent) logger
	e.waitRegistered(b, 5*time.Second)
	c := e.dial(b, gpu)
	ctx := context.Background()
	empty := &pluginapi.Empty{}
	reqs := make([]*pluginapi.AllocateRequest, devices/perRequest)
	for i := range reqs {
		ids := make([]string, perRequest)
		for j := range ids {
			ids[j] = res.devs[i*perRequest+j].ID
		}
		reqs[i] = containers(ids)
	}
	for i := range 200 { // connection set-up and warm-up
		_, err := c.GetDevicePluginOptions(ctx, empty)
		require.NoError(b, err)
		_, err = c.Allocate(ctx, reqs[i%len(reqs)])
		require.NoError(b, err)
	}

	alloc := make([]time.Duration, 0, b.N)
	rtt := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		_, err := c.GetDevicePluginOptions(ctx, empty)
		t1 := time.Now()
		resp, err2 := c.Allocate(ctx, reqs[i%len(reqs)])
		t2 := time.Now()
		if err != nil || err2 != nil || len(resp.ContainerResponses) != 1 {
			b.Fatalf("round trip failed: %v, %v", err, err2)
		}
		rtt = append(rtt, t1.Sub(t0))
		alloc = append(alloc, t2.Sub(t1))
	}
	b.StopTimer()
	a, r := median(alloc), median(rtt)
	b.ReportMetric(float64(a.Nanoseconds()), "alloc-p50-ns")
	b.ReportMetric(float64(r.Nanoseconds()), "empty-p50-ns")
	b.ReportMetric(float64(a)/float64(r), "alloc/empty")
}

// BenchmarkCheck measures the plugin's own validation of one container's
// IDs, without the socket: 1 and 100 IDs out of 800.
func BenchmarkCheck(b *testing.B) {
	res := newBenchResource(800)
	snap, err := newSnapshot(res)
	require.NoError(b, err)
	for _, n := range []int{1, 100} {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = res.devs[i].ID
		}
		b.Run(fmt.Sprintf("%d IDs of 800", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := snap.check(gpu, ids, true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
