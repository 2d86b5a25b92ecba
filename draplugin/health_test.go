package draplugin

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
)

func TestWatchHealthStatus(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	ctx, cancel := context.WithCancel(context.Background())
	reports := make(chan kubeletplugin.DeviceHealthReport)
	done := make(chan error, 1)
	go func() { done <- d.WatchHealthStatus(ctx, reports) }()

	healthOf := func(r kubeletplugin.DeviceHealthReport) map[string]string {
		out := map[string]string{}
		for _, h := range r.Devices {
			require.Equal(t, testNode, h.PoolName)
			require.False(t, h.LastUpdated.IsZero())
			out[h.DeviceName] = string(h.Health) + " " + h.Message
		}
		return out
	}
	pool := e.pool(t, nil, nil)
	first := healthOf(<-reports)
	require.Len(t, first, len(pool.Devices), "the first report covers every published device")
	for name, h := range first {
		require.Equal(t, "Healthy ", h, name)
	}

	// An XID on GPU 4 reaches the kubelet with the next Publish.
	g4 := e.inv.GPUs[4].UUID
	require.NoError(t, d.Publish(ctx, e.pool(t, nil, map[string]string{g4: "xid-48"}), e.inv))
	sick := healthOf(<-reports)
	require.Equal(t, "Unhealthy xid-48", sick["gpu-4"])
	require.Equal(t, "Unhealthy xid-48", sick["gpu-4-blocks"])
	require.Equal(t, "Healthy ", sick["gpu-5"])

	// Recovery too.
	require.NoError(t, d.Publish(ctx, pool, e.inv))
	require.Equal(t, "Healthy ", healthOf(<-reports)["gpu-4"])

	cancel()
	require.NoError(t, <-done, "a cancelled watch ends without error")
}
