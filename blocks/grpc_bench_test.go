package blocks

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/plugin"
	"github.com/gpublocks/gpublocks/plugin/fakekubelet"
)

// BenchmarkPreferOverGRPC is DESIGN §8's "GetPreferredAllocation of 40
// blocks out of 800": the real blocks resource behind the real plugin
// server, called over its unix socket the way the kubelet calls it, next to
// an empty round trip (GetDevicePluginOptions) on the same connection.
// Medians of interleaved calls, so both see the same machine load.
func BenchmarkPreferOverGRPC(b *testing.B) {
	gpus := testGPUs(8)
	for i := range gpus {
		gpus[i].UUID = fmt.Sprintf("GPU-8c1b%04x-5d2e-4a7b-9c3d-%012x", i, i*7919)
	}
	res, err := NewResource("nvidia.com/gpu-blocks", gpus, Binpack, nil, (&fakeBase{}).fn)
	if err != nil {
		b.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "gbb")
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = os.RemoveAll(dir) }()
	k, err := fakekubelet.Start(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer k.Stop()
	quiet := logr.Discard()
	m := plugin.NewManager(plugin.Options{PluginDir: dir, KubeletSocket: filepath.Join(dir, "kubelet.sock"), Logger: &quiet})
	if err := m.Update([]plugin.Resource{res}); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	p, err := k.Plugin(ctx, res.Name())
	if err != nil {
		b.Fatal(err)
	}

	// Half the node is in use, in a realistic pattern: the kubelet's free
	// list still holds hundreds of IDs.
	var available []string
	for i, d := range res.Devices() {
		if i%100 < 50+i/100*5 {
			available = append(available, d.ID)
		}
	}
	req := &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{
		AvailableDeviceIDs: available, AllocationSize: 40,
	}}}
	empty := &pluginapi.Empty{}
	for range 100 { // warm the connection
		if _, err := p.Client.GetPreferredAllocation(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	pref := make([]time.Duration, 0, b.N)
	rtt := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		_, err := p.Client.GetDevicePluginOptions(ctx, empty)
		t1 := time.Now()
		resp, err2 := p.Client.GetPreferredAllocation(ctx, req)
		t2 := time.Now()
		if err != nil || err2 != nil || len(resp.ContainerResponses[0].DeviceIDs) != 40 {
			b.Fatalf("round trip failed: %v, %v", err, err2)
		}
		rtt = append(rtt, t1.Sub(t0))
		pref = append(pref, t2.Sub(t1))
	}
	b.StopTimer()
	slices.Sort(pref)
	slices.Sort(rtt)
	pm, rm := pref[len(pref)/2], rtt[len(rtt)/2]
	b.ReportMetric(float64(len(available)), "available-ids")
	b.ReportMetric(float64(pm.Nanoseconds()), "prefer-p50-ns")
	b.ReportMetric(float64(rm.Nanoseconds()), "empty-p50-ns")
	b.ReportMetric(float64(pm)/float64(rm), "prefer/empty")
}
