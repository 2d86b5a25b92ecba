package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2/ktesting"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/plugin/fakekubelet"
)

// node is a daemon serving a simulated node to a kubelet stand-in.
type node struct {
	t       *testing.T
	ctx     context.Context
	cancel  context.CancelFunc
	sim     *sim.Backend
	d       *Daemon
	kubelet *fakekubelet.Kubelet
	cdiDir  string
	// configPath is the config file the node was started with, if any.
	configPath string
}

func startNode(t *testing.T, preset, configYAML string, mods ...func(*Options)) *node {
	t.Helper()
	n := newNode(t, preset, configYAML, mods...)
	n.run()
	return n
}

// newNode prepares a node (New has loaded its config) without running it.
func newNode(t *testing.T, preset, configYAML string, mods ...func(*Options)) *node {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	dir, err := os.MkdirTemp("", "gbd") // short: unix socket paths are limited
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	pluginDir, cdiDir := filepath.Join(dir, "dp"), filepath.Join(dir, "cdi")
	require.NoError(t, os.Mkdir(pluginDir, 0o755))
	// Never the host's kubelet: a test that wants allocations serves them.
	o := Options{PluginDir: pluginDir, CDIDir: cdiDir, DriverRoot: t.TempDir(), DevRoot: "/",
		PodResourcesSocket: filepath.Join(dir, "no-kubelet.sock")}
	if configYAML != "" {
		o.ConfigPath = filepath.Join(dir, "config.yaml")
		require.NoError(t, os.WriteFile(o.ConfigPath, []byte(configYAML), 0o644))
	}
	for _, m := range mods {
		m(&o)
	}
	k, err := fakekubelet.Start(pluginDir)
	require.NoError(t, err)
	t.Cleanup(k.Stop)
	b, err := sim.New(preset)
	require.NoError(t, err)
	d, err := New(ctx, o, b)
	require.NoError(t, err)
	return &node{t: t, ctx: ctx, cancel: cancel, sim: b, d: d, kubelet: k, cdiDir: cdiDir, configPath: o.ConfigPath}
}

// run starts the daemon; the test's cleanup stops it and checks that Run
// returned cleanly.
func (n *node) run() {
	done := make(chan error, 1)
	go func() { done <- n.d.Run(n.ctx) }()
	n.t.Cleanup(func() {
		n.cancel()
		require.NoError(n.t, <-done)
	})
}

// waitCount waits until resource streams exactly n healthy devices.
func (n *node) waitCount(resource string, want int) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	p, err := n.kubelet.Plugin(ctx, resource)
	require.NoError(n.t, err)
	require.NoError(n.t, p.WaitFor(ctx, func(devs []*pluginapi.Device) bool {
		healthy := 0
		for _, d := range devs {
			if d.Health == pluginapi.Healthy {
				healthy++
			}
		}
		return len(devs) == want && healthy == want
	}), "resource %s", resource)
}

func (n *node) cdiDevices() []string {
	n.t.Helper()
	cache, err := cdiapi.NewCache(cdiapi.WithSpecDirs(n.cdiDir), cdiapi.WithAutoRefresh(false))
	require.NoError(n.t, err)
	require.Empty(n.t, cache.GetErrors())
	return cache.ListDevices()
}

func TestServeWholeGPUs(t *testing.T) {
	n := startNode(t, "dgxa100", "")
	n.waitCount("nvidia.com/gpu", 8)
	// Every offered GPU is in the CDI spec by UUID and by index.
	require.Len(t, n.cdiDevices(), 16)
	st := n.d.State()
	require.Len(t, st.Inventory.GPUs, 8)

	p, err := n.kubelet.Plugin(n.ctx, "nvidia.com/gpu")
	require.NoError(t, err)
	ids, resp, err := p.Allocate(n.ctx, 2)
	require.NoError(t, err)
	require.Len(t, resp.CdiDevices, 2)
	for i, id := range ids {
		require.Equal(t, "gpublocks.io/gpu="+id, resp.CdiDevices[i].Name)
	}
	require.Empty(t, resp.Devices, "CDI strategies carry no DeviceSpecs")
	require.Empty(t, resp.Mounts)
}

func TestServeAllShapes(t *testing.T) {
	n := startNode(t, "dgxa100-mig", "gpus: [{match: {index: [2, 3]}, shape: blocks}]\n")
	n.waitCount("nvidia.com/gpu", 4)
	n.waitCount("nvidia.com/gpu-blocks", 200)
	n.waitCount("nvidia.com/mig-1g.10gb", 9)
	n.waitCount("nvidia.com/mig-2g.20gb", 1)
	n.waitCount("nvidia.com/mig-3g.40gb", 1)
	// 6 offered GPUs + 11 MIG devices, each under two names.
	require.Len(t, n.cdiDevices(), 34)
}

func TestRescanPicksUpMigLayoutWithoutRestart(t *testing.T) {
	n := startNode(t, "dgxa100", "")
	n.waitCount("nvidia.com/gpu", 8)

	// An operator enables MIG on GPU 7 and creates two slices, then sends
	// SIGHUP (Rescan).
	require.NoError(t, n.sim.SetMigLayout(7, []string{"3g.20gb", "1g.5gb"}))
	n.d.Rescan()
	n.waitCount("nvidia.com/gpu", 7)
	n.waitCount("nvidia.com/mig-3g.20gb", 1)
	n.waitCount("nvidia.com/mig-1g.5gb", 1)
	require.Len(t, n.cdiDevices(), 7*2+2*2)

	// MIG off again: the MIG resources stay registered with no devices (so
	// the kubelet does not count stale capacity) and GPU 7 is whole again.
	require.NoError(t, n.sim.SetMigLayout(7, nil))
	n.d.Rescan()
	n.waitCount("nvidia.com/gpu", 8)
	n.waitCount("nvidia.com/mig-3g.20gb", 0)
	n.waitCount("nvidia.com/mig-1g.5gb", 0)
	require.Len(t, n.cdiDevices(), 16)
}
