package daemon

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpublocks/gpublocks/blocks"
	"github.com/gpublocks/gpublocks/config"
)

// replaceFile swaps a file's content by rename, as editors and ConfigMap
// volumes (symlink swap) do: the watcher sees the directory change.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	require.NoError(t, os.WriteFile(tmp, []byte(content), 0o644))
	require.NoError(t, os.Rename(tmp, path))
}

func TestConfigChangeAppliesLive(t *testing.T) {
	n := startNode(t, "dgxa100", "version: v1\n")
	n.waitCount("nvidia.com/gpu", 8)
	require.EqualValues(t, 1, n.d.ConfigStatus().Generation)

	replaceFile(t, n.configPath, "gpus: [{match: {index: [0, 1]}, shape: blocks}]\n")
	n.waitCount("nvidia.com/gpu", 6)
	n.waitCount("nvidia.com/gpu-blocks", 200)
	n.waitGeneration(2)
	require.Len(t, n.cdiDevices(), 16, "blocks GPUs keep their CDI devices")

	// A broken config changes nothing and is reported.
	replaceFile(t, n.configPath, "blocks: {polcy: spread}\n")
	require.Eventually(t, func() bool { return n.d.ConfigStatus().Errors == 1 }, 5*time.Second, 10*time.Millisecond)
	require.ErrorContains(t, n.d.ConfigStatus().LastError, "blocks.polcy")
	n.d.Replan()
	n.settle()
	require.EqualValues(t, 2, n.d.ConfigStatus().Generation)
	n.waitCount("nvidia.com/gpu", 6)
	n.waitCount("nvidia.com/gpu-blocks", 200)

	// Fixing it clears the error; the same content as before is no change.
	replaceFile(t, n.configPath, "gpus: [{match: {index: [0, 1]}, shape: blocks}]\n")
	require.Eventually(t, func() bool { return n.d.ConfigStatus().LastError == nil }, 5*time.Second, 10*time.Millisecond)
	require.EqualValues(t, 2, n.d.ConfigStatus().Generation)

	// Back to all whole: the blocks resource stays registered, empty.
	replaceFile(t, n.configPath, "version: v1\n")
	n.waitCount("nvidia.com/gpu", 8)
	n.waitCount("nvidia.com/gpu-blocks", 0)
}

// settle gives the daemon's loop time to act on what was signalled: it
// waits for two answered pings (a ping and a pending trigger are picked in
// random order) and a little more.
func (n *node) settle() {
	n.t.Helper()
	for range 2 {
		require.Eventually(n.t, func() bool {
			ctx, cancel := context.WithTimeout(n.ctx, time.Second)
			defer cancel()
			return n.d.Ping(ctx) == nil
		}, 5*time.Second, 10*time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
}

// fakePodResources is the kubelet's PodResources API with a settable answer.
type fakePodResources struct {
	podresourcesapi.UnimplementedPodResourcesListerServer
	mu      sync.Mutex
	devices map[string][]string // resource → allocated IDs
	lists   atomic.Int64        // List calls answered
}

func (f *fakePodResources) set(resource string, ids ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devices = map[string][]string{resource: ids}
	if len(ids) == 0 {
		f.devices = nil
	}
}

func (f *fakePodResources) List(context.Context, *podresourcesapi.ListPodResourcesRequest) (*podresourcesapi.ListPodResourcesResponse, error) {
	f.lists.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	c := &podresourcesapi.ContainerResources{Name: "main"}
	for r, ids := range f.devices {
		c.Devices = append(c.Devices, &podresourcesapi.ContainerDevices{ResourceName: r, DeviceIds: ids})
	}
	return &podresourcesapi.ListPodResourcesResponse{PodResources: []*podresourcesapi.PodResources{{Name: "p", Namespace: "ns", Containers: []*podresourcesapi.ContainerResources{c}}}}, nil
}

func startPodResources(t *testing.T) (*fakePodResources, string) {
	t.Helper()
	f := &fakePodResources{}
	return f, servePodResources(t, f)
}

// servePodResources serves lister as the kubelet's PodResources API on a
// socket of its own (a short path: unix socket paths are limited) until
// the test ends, and returns the socket.
func servePodResources(t testing.TB, lister podresourcesapi.PodResourcesListerServer) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gbpr")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "kubelet.sock")
	lis, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := grpc.NewServer()
	podresourcesapi.RegisterPodResourcesListerServer(srv, lister)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return sock
}

func TestShapeChangeDeferredWhileAllocated(t *testing.T) {
	pr, sock := startPodResources(t)
	n := startNode(t, "dgxa100", "gpus: [{match: {index: [0, 1]}, shape: blocks}]\n", func(o *Options) {
		o.PodResourcesSocket = sock
		o.DeferPollInterval = 50 * time.Millisecond
	})
	n.waitCount("nvidia.com/gpu-blocks", 200)
	gpu0 := n.d.State().Inventory.GPUs[0].UUID
	gpu1 := n.d.State().Inventory.GPUs[1].UUID
	// A pod holds 2 blocks of GPU 0.
	pr.set("nvidia.com/gpu-blocks", blocks.FormatID(gpu0, 0), blocks.FormatID(gpu0, 1))

	// The operator turns every GPU whole: GPU 1 changes now, GPU 0 waits.
	replaceFile(t, n.configPath, "version: v1\n")
	n.waitCount("nvidia.com/gpu", 7)
	n.waitCount("nvidia.com/gpu-blocks", 100)
	n.waitGeneration(2) // the state is recorded once streamed
	for _, a := range n.d.State().Plan.GPUs {
		if a.GPU.UUID == gpu0 {
			require.Equal(t, "blocks", a.Shape)
			require.Contains(t, a.Reason, "kept blocks while its devices are allocated")
		}
		if a.GPU.UUID == gpu1 {
			require.Equal(t, "whole", a.Shape)
		}
	}

	// The pod ends: GPU 0 follows the config on the next poll.
	pr.set("nvidia.com/gpu-blocks")
	n.waitCount("nvidia.com/gpu", 8)
	n.waitCount("nvidia.com/gpu-blocks", 0)
}

func TestShapeChangeWithoutPodResourcesAppliesAtOnce(t *testing.T) {
	n := startNode(t, "dgxa100", "gpus: [{match: {index: [0]}, shape: blocks}]\n", func(o *Options) {
		o.PodResourcesSocket = filepath.Join(t.TempDir(), "absent.sock")
	})
	n.waitCount("nvidia.com/gpu-blocks", 100)
	replaceFile(t, n.configPath, "version: v1\n")
	n.waitCount("nvidia.com/gpu", 8)
}

func TestNodeLabelPicksNamedConfig(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "default"), []byte("version: v1\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "blocks"), []byte("gpus: [{match: {model: \"*\"}, shape: blocks}]\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "half"), []byte("gpus: [{match: {index: [0, 1, 2, 3]}, shape: blocks}]\n"), 0o644))

	api := newFakeAPIServer(t, map[string]map[string]string{"gpu-node-1": {config.NodeLabel: "blocks"}})
	n := startNode(t, "dgxa100", "", func(o *Options) {
		o.ConfigPath = dir
		o.NodeName = "gpu-node-1"
		o.NodeClient = api.Client("")
	})
	// The first plan already uses the labelled config: no flap through
	// default. The kubelet's first list holds all 800 blocks, whole GPUs
	// were never offered, and that first config is generation 1.
	n.waitCount("nvidia.com/gpu-blocks", 800)
	p, err := n.kubelet.Plugin(n.ctx, "nvidia.com/gpu-blocks")
	require.NoError(t, err)
	require.Len(t, p.FirstDevices(), 800)
	require.Equal(t, []string{"nvidia.com/gpu-blocks"}, n.kubelet.Resources())
	require.Equal(t, "blocks", n.d.ConfigStatus().Name)
	require.EqualValues(t, 1, n.d.ConfigStatus().Generation)

	// Relabel the node: the plan follows without a restart.
	api.SetLabels("gpu-node-1", map[string]string{config.NodeLabel: "half"})
	n.waitCount("nvidia.com/gpu-blocks", 400)
	n.waitCount("nvidia.com/gpu", 4)

	// A label naming no config is rejected; the last good one stays.
	api.SetLabels("gpu-node-1", map[string]string{config.NodeLabel: "nope"})
	require.Eventually(t, func() bool { return n.d.ConfigStatus().LastError != nil }, 5*time.Second, 10*time.Millisecond)
	require.ErrorContains(t, n.d.ConfigStatus().LastError, "names no config")
	n.waitCount("nvidia.com/gpu-blocks", 400)
}

func TestBrokenOtherKeyDoesNotStopNode(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "default"), []byte("gpus: [{match: {index: [0]}, shape: blocks}]\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "team-b"), []byte("blocks: {polcy: spread}\n"), 0o644))
	n := startNode(t, "dgxa100", "", func(o *Options) { o.ConfigPath = dir })
	n.waitCount("nvidia.com/gpu-blocks", 100)
	n.waitCount("nvidia.com/gpu", 7)
	st := n.d.ConfigStatus()
	require.NoError(t, st.LastError)
	require.Equal(t, "default", st.Name)

	// Fixing the other key, or breaking it more, changes nothing here.
	replaceFile(t, filepath.Join(dir, "team-b"), "version: v9\n")
	time.Sleep(300 * time.Millisecond)
	require.NoError(t, n.d.ConfigStatus().LastError)
	n.waitCount("nvidia.com/gpu-blocks", 100)
}
