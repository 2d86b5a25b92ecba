package e2e

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	dpserver "k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1"
)

// kubeletStandIn is the kubelet's own registration server
// (pkg/kubelet/cm/devicemanager/plugin/v1beta1) on a socket in a temporary
// directory, with handlers that record what the plugin does. It needs no
// root: the server takes any socket path.
type kubeletStandIn struct {
	t      *testing.T
	server dpserver.Server

	// cdiSpec, when set, is checked at every registration: DESIGN §5 wants
	// the CDI spec written before the plugin registers.
	cdiSpec string

	mu             sync.Mutex
	specAtRegister []bool                           // per registration: did cdiSpec exist?
	plugins        map[string]dpserver.DevicePlugin // resource -> connected plugin
	devices        map[string][]*pluginapi.Device   // resource -> last ListAndWatch snapshot
	changed        chan struct{}                    // closed and replaced on every event
}

// startKubelet serves kubelet.sock in dir, as the kubelet does on start:
// plugin sockets left in dir are removed first. cdiSpec is the spec file to
// look for at each registration ("" for none).
func startKubelet(ctx context.Context, t *testing.T, dir, cdiSpec string) *kubeletStandIn {
	t.Helper()
	k := &kubeletStandIn{
		t:       t,
		cdiSpec: cdiSpec,
		plugins: map[string]dpserver.DevicePlugin{},
		devices: map[string][]*pluginapi.Device{},
		changed: make(chan struct{}),
	}
	logger := klog.FromContext(ctx)
	srv, err := dpserver.NewServer(logger, filepath.Join(dir, "kubelet.sock"), k, k)
	require.NoError(t, err)
	require.NoError(t, srv.Start(logger))
	k.server = srv
	t.Cleanup(func() { _ = srv.Stop(logger) })
	return k
}

// stop stops the registration server, which disconnects every plugin client.
func (k *kubeletStandIn) stop(ctx context.Context) {
	require.NoError(k.t, k.server.Stop(klog.FromContext(ctx)))
}

// CleanupPluginDirectory removes the sockets in dir, like the kubelet's
// device manager does before it listens.
func (k *kubeletStandIn) CleanupPluginDirectory(_ klog.Logger, dir string) error {
	return removeSockets(dir)
}

// PluginConnected records the client the kubelet built for a plugin.
func (k *kubeletStandIn) PluginConnected(_ context.Context, resource string, p dpserver.DevicePlugin) error {
	specExists := false
	if k.cdiSpec != "" {
		_, err := os.Stat(k.cdiSpec)
		specExists = err == nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.specAtRegister = append(k.specAtRegister, specExists)
	k.plugins[resource] = p
	k.notifyLocked()
	return nil
}

// PluginDisconnected forgets a plugin whose connection ended.
func (k *kubeletStandIn) PluginDisconnected(_ klog.Logger, resource, socketPath string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if p, ok := k.plugins[resource]; ok && p.SocketPath() == socketPath {
		delete(k.plugins, resource)
		delete(k.devices, resource)
	}
	k.notifyLocked()
}

// PluginListAndWatchReceiver records the latest full snapshot of a resource.
func (k *kubeletStandIn) PluginListAndWatchReceiver(_ klog.Logger, resource string, resp *pluginapi.ListAndWatchResponse) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.devices[resource] = resp.Devices
	k.notifyLocked()
}

func (k *kubeletStandIn) notifyLocked() {
	close(k.changed)
	k.changed = make(chan struct{})
}

// snapshot returns the plugin connected for resource and its latest devices.
func (k *kubeletStandIn) snapshot(resource string) (dpserver.DevicePlugin, []*pluginapi.Device) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.plugins[resource], k.devices[resource]
}

// waitForDevices waits until a plugin for resource is connected and has
// streamed n devices, and returns the client, the devices and how long the
// wait took. Waiting on change notifications rather than polling keeps the
// measured time precise.
func (k *kubeletStandIn) waitForDevices(resource string, n int, timeout time.Duration) (dpserver.DevicePlugin, []*pluginapi.Device, time.Duration) {
	k.t.Helper()
	start := time.Now()
	deadline := time.After(timeout)
	for {
		k.mu.Lock()
		p, devs, changed := k.plugins[resource], k.devices[resource], k.changed
		k.mu.Unlock()
		if p != nil && len(devs) == n {
			return p, devs, time.Since(start)
		}
		select {
		case <-changed:
		case <-deadline:
			require.FailNow(k.t, "plugin did not register with the expected devices",
				"resource %s: want %d devices within %s, connected=%v, got %d devices", resource, n, timeout, p != nil, len(devs))
		}
	}
}

// removeSockets deletes every unix socket directly inside dir.
func removeSockets(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Type()&os.ModeSocket == 0 {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

// stack is a gpublocks process registered with a kubelet stand-in.
type stack struct {
	opts    pluginOptions
	kubelet *kubeletStandIn
	plugin  *pluginProcess
	client  dpserver.DevicePlugin
	devices []*pluginapi.Device
}

// startStack starts the kubelet stand-in, then gpublocks, and waits until all
// dgxa100 GPUs are advertised.
func startStack(ctx context.Context, t *testing.T) *stack {
	t.Helper()
	s := &stack{opts: newPluginOptions(t)}
	s.kubelet = startKubelet(ctx, t, s.opts.pluginDir, filepath.Join(s.opts.cdiDir, cdiSpecFile))
	s.plugin = startPlugin(t, s.opts)
	s.client, s.devices, _ = s.kubelet.waitForDevices(resourceName, dgxa100GPUs, registerTimeout)
	s.plugin.requireRunning(t)
	return s
}

// specWrittenBeforeRegistering reports, for each registration so far,
// whether the CDI spec already existed when the plugin registered.
func (k *kubeletStandIn) specWrittenBeforeRegistering() []bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]bool(nil), k.specAtRegister...)
}

// deviceIDs returns the IDs of devs in stream order.
func deviceIDs(devs []*pluginapi.Device) []string {
	ids := make([]string, 0, len(devs))
	for _, d := range devs {
		ids = append(ids, d.ID)
	}
	return ids
}

// allocate asks the plugin for one container's devices, as the kubelet does.
func allocate(ctx context.Context, t *testing.T, client dpserver.DevicePlugin, ids ...string) *pluginapi.ContainerAllocateResponse {
	t.Helper()
	resp, err := client.API().Allocate(ctx, &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}},
	})
	require.NoError(t, err)
	require.Len(t, resp.ContainerResponses, 1)
	return resp.ContainerResponses[0]
}
