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

// benchResource precomputes one Allocate response per device, as real
// resources should.
type benchResource struct {
	testResource
	resp map[string]*pluginapi.ContainerAllocateResponse
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
	return r
}

func (r *benchResource) Allocate(ids []string) (*pluginapi.ContainerAllocateResponse, error) {
	if len(ids) == 1 {
		return r.resp[ids[0]], nil
	}
	return r.testResource.Allocate(ids)
}

// BenchmarkAllocate measures an Allocate round trip over the real unix
// socket against an empty round trip (GetDevicePluginOptions) on the same
// connection, interleaved so both see the same machine state. It reports
// both medians and their ratio (DESIGN §8: alloc/empty ≤ 1.10).
func BenchmarkAllocate(b *testing.B) {
	const devices = 100
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
	reqs := make([]*pluginapi.AllocateRequest, devices)
	for i, d := range res.devs {
		reqs[i] = containers([]string{d.ID})
	}
	for i := range 200 { // connection set-up and warm-up
		_, err := c.GetDevicePluginOptions(ctx, empty)
		require.NoError(b, err)
		_, err = c.Allocate(ctx, reqs[i%devices])
		require.NoError(b, err)
	}

	alloc := make([]time.Duration, 0, b.N)
	rtt := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		_, err := c.GetDevicePluginOptions(ctx, empty)
		t1 := time.Now()
		resp, err2 := c.Allocate(ctx, reqs[i%devices])
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

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
