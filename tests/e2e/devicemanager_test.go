package e2e

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"k8s.io/kubernetes/pkg/kubelet/cm/containermap"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
	"k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"
)

// kubeletPluginDir is where the kubelet's device manager insists on living.
var kubeletPluginDir = filepath.Dir(pluginapi.KubeletSocket)

// allSourcesReady tells the device manager the kubelet has seen every pod
// source, so it allocates instead of assuming containers already run.
type allSourcesReady struct{}

func (allSourcesReady) AddSource(string) {}
func (allSourcesReady) AllReady() bool   { return true }

// activePods is the kubelet's list of admitted pods; the device manager uses
// it to free devices of pods that are gone.
type activePods struct {
	mu   sync.Mutex
	pods []*v1.Pod
}

func (a *activePods) add(p *v1.Pod) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pods = append(a.pods, p)
}

func (a *activePods) list() []*v1.Pod {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*v1.Pod(nil), a.pods...)
}

// gpuPod is a one-container pod asking for n GPUs.
func gpuPod(name string, n int64) *v1.Pod {
	q := *resource.NewQuantity(n, resource.DecimalSI)
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "e2e", UID: types.UID("uid-" + name)},
		Spec: v1.PodSpec{Containers: []v1.Container{{
			Name: "cuda",
			Resources: v1.ResourceRequirements{
				Limits:   v1.ResourceList{resourceName: q},
				Requests: v1.ResourceList{resourceName: q},
			},
		}}},
	}
}

// claimKubeletDir makes sure no real kubelet uses the device-plugin directory
// and arranges for it to be left as it was found.
func claimKubeletDir(t *testing.T) {
	t.Helper()
	if conn, err := net.DialTimeout("unix", pluginapi.KubeletSocket, time.Second); err == nil {
		_ = conn.Close()
		t.Skipf("skipping: a kubelet is serving %s; this test would take its place", pluginapi.KubeletSocket)
	}
	kubeletRoot := filepath.Dir(kubeletPluginDir)
	_, statErr := os.Stat(kubeletRoot)
	createdRoot := os.IsNotExist(statErr)
	checkpoint := filepath.Join(kubeletPluginDir, "kubelet_internal_checkpoint")
	saved, readErr := os.ReadFile(checkpoint)
	require.NoError(t, os.MkdirAll(kubeletPluginDir, 0o750))
	_ = os.Remove(checkpoint) // start from a clean slate: no allocations

	t.Cleanup(func() {
		if createdRoot {
			_ = os.RemoveAll(kubeletRoot)
			return
		}
		_ = removeSockets(kubeletPluginDir)
		if readErr == nil {
			_ = os.WriteFile(checkpoint, saved, 0o644)
		} else {
			_ = os.Remove(checkpoint)
		}
	})
}

// startDeviceManager starts the kubelet's device manager on the real
// kubelet.sock path. The caller stops it.
func startDeviceManager(t *testing.T, logger klog.Logger, pods *activePods) *devicemanager.ManagerImpl {
	t.Helper()
	m, err := devicemanager.NewManagerImpl(logger, nil, topologymanager.NewFakeManager(logger))
	require.NoError(t, err)
	require.NoError(t, m.Start(logger, pods.list, allSourcesReady{}, containermap.NewContainerMap(), sets.New[string]()))
	return m
}

// gpuCapacity returns how many GPUs the device manager would report in node
// status, capacity and allocatable.
func gpuCapacity(logger klog.Logger, m *devicemanager.ManagerImpl) (capacity, allocatable int64) {
	c, a, _ := m.GetCapacity(logger)
	cq, aq := c[resourceName], a[resourceName]
	return cq.Value(), aq.Value()
}

// waitForCapacity waits until the device manager reports n allocatable GPUs
// and returns how long that took.
func waitForCapacity(t *testing.T, logger klog.Logger, m *devicemanager.ManagerImpl, n int64, timeout time.Duration) time.Duration {
	t.Helper()
	return eventually(t, timeout, func() bool {
		c, a := gpuCapacity(logger, m)
		return c == n && a == n
	}, "device manager never reported %d allocatable %s", n, resourceName)
}

// admit allocates pod's container through the device manager, as the kubelet
// does at admission, and returns the CDI devices the runtime would get.
func admit(ctx context.Context, t *testing.T, m *devicemanager.ManagerImpl, pods *activePods, pod *v1.Pod) []string {
	t.Helper()
	pods.add(pod)
	c := &pod.Spec.Containers[0]
	require.NoError(t, m.Allocate(ctx, pod, c, lifecycle.AddOperation))
	opts, err := m.GetDeviceRunContainerOptions(ctx, pod, c)
	require.NoError(t, err)
	require.NotNil(t, opts)
	require.Empty(t, opts.Devices, "cdi-cri must not send DeviceSpecs")
	require.Empty(t, opts.Mounts, "cdi-cri must not send Mounts")

	var names []string
	for _, d := range opts.CDIDevices {
		require.True(t, strings.HasPrefix(d.Name, cdiKind+"=GPU-"), "CDI device %q", d.Name)
		names = append(names, d.Name)
	}
	requireDistinct(t, names)

	// The names are the devices the kubelet checkpointed for the container.
	var want []string
	for id := range m.GetDevices(string(pod.UID), c.Name)[resourceName] {
		want = append(want, cdiName(id))
	}
	require.ElementsMatch(t, want, names)
	return names
}

// TestKubeletDeviceManager runs gpublocks against the kubelet's device
// manager itself. The manager hard-codes /var/lib/kubelet/device-plugins, so
// this needs root, and its steps run in order in one test: two managers on
// that path at once would fight over kubelet.sock.
func TestKubeletDeviceManager(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skipf("skipping: the kubelet's device manager hard-codes %s and needs root", pluginapi.KubeletSocket)
	}
	claimKubeletDir(t)
	ctx, logger := testContext(t)
	pods := &activePods{}

	m := startDeviceManager(t, logger, pods)
	// m is replaced on the simulated kubelet restart; stop whichever is current.
	t.Cleanup(func() { _ = m.Stop(logger) })
	opts := newPluginOptions(t)
	opts.pluginDir = kubeletPluginDir
	plugin := startPlugin(t, opts)

	var first, second []string
	t.Run("registers 8 allocatable GPUs", func(t *testing.T) {
		took := waitForCapacity(t, logger, m, dgxa100GPUs, registerTimeout)
		t.Logf("capacity %s=%d after %s", resourceName, dgxa100GPUs, took)
		plugin.requireRunning(t)
	})

	t.Run("a pod asking for 2 GPUs gets 2 CDI devices", func(t *testing.T) {
		first = admit(ctx, t, m, pods, gpuPod("first", 2))
		require.Len(t, first, 2)
	})

	t.Run("a second pod gets 2 other GPUs", func(t *testing.T) {
		second = admit(ctx, t, m, pods, gpuPod("second", 2))
		require.Len(t, second, 2)
		require.NotContains(t, second, first[0])
		require.NotContains(t, second, first[1])
	})

	t.Run("re-registers within 2s after a kubelet restart", func(t *testing.T) {
		require.NoError(t, m.Stop(logger))
		// The kubelet deletes every socket in the directory on start; do it
		// before the new manager listens so the plugin sees its socket vanish.
		require.NoError(t, removeSockets(kubeletPluginDir))

		start := time.Now()
		m = startDeviceManager(t, logger, pods)
		waitForCapacity(t, logger, m, dgxa100GPUs, registerTimeout)
		took := time.Since(start)
		t.Logf("re-registered with %s=%d %s after the kubelet restart", resourceName, dgxa100GPUs, took)
		require.Less(t, took, reregisterBudget)
		plugin.requireRunning(t)
	})

	t.Run("after the restart a pod gets only GPUs nobody holds", func(t *testing.T) {
		// The new manager restored the first two pods' devices from its
		// checkpoint; that only works because the plugin offers the same IDs.
		third := admit(ctx, t, m, pods, gpuPod("third", 4))
		require.Len(t, third, 4)
		for _, name := range append(append([]string{}, first...), second...) {
			require.NotContains(t, third, name)
		}
	})
}
