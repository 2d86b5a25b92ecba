package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/gpu/sim"
)

// quietConfig recovers devices one second after their last fault.
const quietConfig = "health: {quietPeriod: 1s}\n"

// healthOf maps device IDs to their streamed health.
func healthOf(devs []*pluginapi.Device) map[string]string {
	out := make(map[string]string, len(devs))
	for _, d := range devs {
		out[d.ID] = d.Health
	}
	return out
}

// waitDevices waits until resource's streamed list satisfies cond.
func (n *node) waitDevices(resource string, cond func(map[string]string) bool) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
	defer cancel()
	p, err := n.kubelet.Plugin(ctx, resource)
	require.NoError(n.t, err)
	require.NoError(n.t, p.WaitFor(ctx, func(devs []*pluginapi.Device) bool { return cond(healthOf(devs)) }),
		"resource %s: last list %v", resource, healthOf(p.Devices()))
}

// inject retries until the health monitor listens on the GPU.
func (n *node) inject(raise func() error) {
	n.t.Helper()
	var err error
	require.Eventually(n.t, func() bool {
		err = raise()
		return !errors.Is(err, sim.ErrNoListener)
	}, 10*time.Second, time.Millisecond)
	require.NoError(n.t, err)
}

// unhealthyOnly says whether exactly the IDs accepted by bad are unhealthy.
func unhealthyOnly(bad func(id string) bool) func(map[string]string) bool {
	return func(h map[string]string) bool {
		if len(h) == 0 {
			return false
		}
		for id, health := range h {
			if (health == pluginapi.Unhealthy) != bad(id) {
				return false
			}
		}
		return true
	}
}

func allHealthy(h map[string]string) bool {
	return unhealthyOnly(func(string) bool { return false })(h)
}

func TestXIDMarksOneWholeGPUAndRecovers(t *testing.T) {
	n := startNode(t, "dgxa100", quietConfig)
	n.waitCount("nvidia.com/gpu", 8)
	uuid := n.d.State().Inventory.GPUs[3].UUID

	n.inject(func() error { return n.sim.InjectXID(3, 48) })
	n.waitDevices("nvidia.com/gpu", unhealthyOnly(func(id string) bool { return id == uuid }))
	require.Equal(t, map[string]bool{uuid: true}, n.d.Unhealthy())

	// After the quiet period, with the GPU answering its probe, it is back.
	n.waitDevices("nvidia.com/gpu", allHealthy)
	require.Empty(t, n.d.Unhealthy())
}

func TestXIDMarksAllBlocksOfItsGPU(t *testing.T) {
	n := startNode(t, "dgxa100", quietConfig+"gpus: [{match: {index: [2, 5]}, shape: blocks}]\n")
	n.waitCount("nvidia.com/gpu-blocks", 200)
	n.waitCount("nvidia.com/gpu", 6)
	uuid := n.d.State().Inventory.GPUs[2].UUID

	n.inject(func() error { return n.sim.InjectXID(2, 48) })
	n.waitDevices("nvidia.com/gpu-blocks", func(h map[string]string) bool {
		bad := 0
		for id, health := range h {
			onGPU := strings.HasPrefix(id, uuid+"::")
			if onGPU != (health == pluginapi.Unhealthy) {
				return false
			}
			if onGPU {
				bad++
			}
		}
		return bad == 100
	})
	n.waitCount("nvidia.com/gpu", 6) // whole GPUs untouched

	n.waitDevices("nvidia.com/gpu-blocks", allHealthy)
}

func TestMigScopedXIDMarksOneMigDevice(t *testing.T) {
	n := startNode(t, "dgxa100-mig", quietConfig)
	n.waitCount("nvidia.com/mig-1g.10gb", 9)
	var target, sibling string
	var gi, ci uint32
	for _, md := range n.d.State().Inventory.GPUs[0].MigDevices {
		if md.Profile != "1g.10gb" {
			continue
		}
		if target == "" {
			target, gi, ci = md.UUID, uint32(md.GI), uint32(md.CI)
		} else if sibling == "" {
			sibling = md.UUID
		}
	}
	require.NotEmpty(t, sibling)

	n.inject(func() error { return n.sim.InjectMigXID(0, gi, ci, 48) })
	n.waitDevices("nvidia.com/mig-1g.10gb", unhealthyOnly(func(id string) bool { return id == target }))
	n.waitCount("nvidia.com/mig-3g.40gb", 1)
	n.waitDevices("nvidia.com/mig-1g.10gb", allHealthy)
}

func TestIgnoredXIDChangesNothingButIsCounted(t *testing.T) {
	n := startNode(t, "dgxa100", "", func(o *Options) { o.MetricsAddr = "127.0.0.1:0" })
	n.waitCount("nvidia.com/gpu", 8)
	uuid := n.d.State().Inventory.GPUs[1].UUID
	n.inject(func() error { return n.sim.InjectXID(1, 13) })

	want := fmt.Sprintf(`gpublocks_xid_events_total{gpu="1",ignored="true",uuid="%s",xid="13"} 1`, uuid)
	require.Eventually(t, func() bool { return strings.Contains(n.scrape("/metrics"), want) }, 5*time.Second, 10*time.Millisecond)
	require.Empty(t, n.d.Unhealthy())
	n.waitCount("nvidia.com/gpu", 8)
}

func TestMetricsEndpoint(t *testing.T) {
	n := startNode(t, "dgxa100", "gpus: [{match: {index: [0]}, shape: blocks}]\n", func(o *Options) { o.MetricsAddr = "127.0.0.1:0" })
	n.waitCount("nvidia.com/gpu", 7)
	n.waitCount("nvidia.com/gpu-blocks", 100)
	require.NoError(t, n.d.Manager().WaitRegistered(n.ctx))
	p, err := n.kubelet.Plugin(n.ctx, "nvidia.com/gpu-blocks")
	require.NoError(t, err)
	_, _, err = p.Allocate(n.ctx, 30)
	require.NoError(t, err)

	uuid := n.d.State().Inventory.GPUs[0].UUID
	body := n.scrape("/metrics")
	for _, want := range []string{
		`gpublocks_devices{health="healthy",resource="nvidia.com/gpu"} 7`,
		`gpublocks_devices{health="unhealthy",resource="nvidia.com/gpu"} 0`,
		`gpublocks_devices{health="healthy",resource="nvidia.com/gpu-blocks"} 100`,
		fmt.Sprintf(`gpublocks_gpu_shape{gpu="0",model="NVIDIA A100-SXM4-40GB",shape="blocks",uuid="%s"} 1`, uuid),
		fmt.Sprintf(`gpublocks_gpu_healthy{gpu="0",uuid="%s"} 1`, uuid),
		`gpublocks_config_generation{config=""} 1`,
		`gpublocks_config_errors_total 0`,
		`gpublocks_config_valid 1`,
		`gpublocks_allocations_total{resource="nvidia.com/gpu-blocks",result="ok"} 1`,
		`gpublocks_allocate_duration_seconds_count{resource="nvidia.com/gpu-blocks"} 1`,
		`process_resident_memory_bytes`,
	} {
		require.Contains(t, body, want)
	}
	require.Equal(t, "ok\n", n.scrape("/healthz"))
	require.Equal(t, "ok\n", n.scrape("/readyz"))
}

// scrape GETs path from the node's metrics listener and returns the body
// of a 200 answer.
func (n *node) scrape(path string) string {
	n.t.Helper()
	addr := n.d.MetricsAddr()
	require.NotNil(n.t, addr)
	resp, err := http.Get("http://" + addr.String() + path)
	require.NoError(n.t, err)
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	require.NoError(n.t, err)
	require.Equal(n.t, http.StatusOK, resp.StatusCode, "%s: %s", path, body)
	return string(body)
}

func TestSimulatedFaultOverHTTP(t *testing.T) {
	n := startNode(t, "dgxa100", "health: {quietPeriod: 1s}\n", func(o *Options) {
		o.MetricsAddr = "127.0.0.1:0"
		o.SimulateAddr = "127.0.0.1:0"
	})
	n.waitCount("nvidia.com/gpu", 8)
	require.NoError(t, n.d.Manager().WaitRegistered(n.ctx))

	// The metrics address is reachable from other hosts: it must not take
	// GPUs out of service.
	resp, err := http.Post("http://"+n.d.MetricsAddr().String()+"/simulate/lost?gpu=0", "", nil)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	require.NotNil(t, n.d.SimulateAddr())
	// 409 means the health monitor does not watch the GPU yet (the fault
	// would be lost): ask again, as inject does.
	n.inject(func() error {
		resp, err := http.Post("http://"+n.d.SimulateAddr().String()+"/simulate/xid?gpu=5&xid=48", "", nil)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			return nil
		case http.StatusConflict:
			return sim.ErrNoListener
		}
		return fmt.Errorf("POST /simulate/xid: %s", resp.Status)
	})
	uuid := n.d.State().Inventory.GPUs[5].UUID
	p, err := n.kubelet.Plugin(n.ctx, "nvidia.com/gpu")
	require.NoError(t, err)
	require.NoError(t, p.WaitFor(n.ctx, func(devs []*pluginapi.Device) bool {
		for _, d := range devs {
			if d.ID == uuid {
				return d.Health == pluginapi.Unhealthy
			}
		}
		return false
	}))
	require.Equal(t, 7, p.Healthy())
	n.waitCount("nvidia.com/gpu", 8) // recovered after the quiet period
}

func TestSimulateAddrMustBeLoopback(t *testing.T) {
	for name, addr := range map[string]string{"every interface": ":0", "unspecified": "0.0.0.0:0", "other host": "192.0.2.1:9401"} {
		t.Run(name, func(t *testing.T) {
			n := newNode(t, "dgxa100", "", func(o *Options) { o.SimulateAddr = addr })
			err := n.d.Run(n.ctx)
			require.ErrorIs(t, err, sim.ErrNotLoopback)
			require.ErrorContains(t, err, "--simulate-addr")
			require.Nil(t, n.d.SimulateAddr())
		})
	}
}

func TestSimulateAddrDisabled(t *testing.T) {
	n := startNode(t, "dgxa100", "", func(o *Options) { o.MetricsAddr = "127.0.0.1:0" })
	n.waitCount("nvidia.com/gpu", 8)
	require.Nil(t, n.d.SimulateAddr())
}
