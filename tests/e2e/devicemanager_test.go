package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
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

// remove forgets pods, as when they terminate: the device manager frees
// their devices at its next allocation.
func (a *activePods) remove(gone ...*v1.Pod) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pods = slices.DeleteFunc(a.pods, func(p *v1.Pod) bool {
		return slices.ContainsFunc(gone, func(g *v1.Pod) bool { return g.UID == p.UID })
	})
}

func (a *activePods) list() []*v1.Pod {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*v1.Pod(nil), a.pods...)
}

// gpuPod is a one-container pod asking for n GPUs.
func gpuPod(name string, n int64) *v1.Pod {
	return resourcePod(name, resourceName, n)
}

// resourcePod is a one-container pod asking for n of an extended resource,
// with requests equal to limits as the API server insists.
func resourcePod(name string, res v1.ResourceName, n int64) *v1.Pod {
	q := *resource.NewQuantity(n, resource.DecimalSI)
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "e2e", UID: types.UID("uid-" + name)},
		Spec: v1.PodSpec{Containers: []v1.Container{{
			Name: "cuda",
			Resources: v1.ResourceRequirements{
				Limits:   v1.ResourceList{res: q},
				Requests: v1.ResourceList{res: q},
			},
		}}},
	}
}

// claimKubeletDir makes sure no real kubelet uses the device-plugin directory
// and arranges for it to be left as it was found.
func claimKubeletDir(t *testing.T) {
	t.Helper()
	lockKubelet(t)
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

// kubeletNode is a gpublocks process registered with the kubelet's own
// device manager on the real device-plugin directory.
type kubeletNode struct {
	ctx    context.Context
	logger klog.Logger
	pods   *activePods
	// m is the running device manager; a simulated kubelet restart replaces it.
	m      *devicemanager.ManagerImpl
	opts   pluginOptions
	plugin *pluginProcess
}

// startKubeletNode claims /var/lib/kubelet/device-plugins, starts the
// kubelet's device manager there, then gpublocks with the options configure
// sets (simulation, config). It skips the test without root. Everything is
// stopped and the directory restored when the test ends; callers wait for
// the capacity they expect.
func startKubeletNode(t *testing.T, configure func(*pluginOptions)) *kubeletNode {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("skipping: the kubelet's device manager hard-codes %s and needs root", pluginapi.KubeletSocket)
	}
	claimKubeletDir(t)
	n := &kubeletNode{pods: &activePods{}}
	n.ctx, n.logger = testContext(t)
	n.m = startDeviceManager(t, n.logger, n.pods)
	// Stop whichever manager is current when the test ends.
	t.Cleanup(func() { _ = n.m.Stop(n.logger) })
	n.opts = newPluginOptions(t)
	n.opts.pluginDir = kubeletPluginDir
	if configure != nil {
		configure(&n.opts)
	}
	n.plugin = startPlugin(t, n.opts)
	return n
}

// restartKubelet stops the device manager and starts a new one, as a kubelet
// restart does. It returns when the new one listens, with the time it was
// started.
func (n *kubeletNode) restartKubelet(t *testing.T) time.Time {
	t.Helper()
	require.NoError(t, n.m.Stop(n.logger))
	// The kubelet deletes every socket in the directory on start; do it
	// before the new manager listens so the plugin sees its socket vanish.
	require.NoError(t, removeSockets(kubeletPluginDir))
	start := time.Now()
	n.m = startDeviceManager(t, n.logger, n.pods)
	return start
}

// capacities returns what the device manager would report in node status:
// capacity (healthy and unhealthy devices) and allocatable (healthy) per
// resource.
func (n *kubeletNode) capacities() (capacity, allocatable map[string]int64) {
	c, a, _ := n.m.GetCapacity(n.logger)
	capacity, allocatable = map[string]int64{}, map[string]int64{}
	for name, q := range c {
		capacity[string(name)] = q.Value()
	}
	for name, q := range a {
		allocatable[string(name)] = q.Value()
	}
	return capacity, allocatable
}

// waitForCapacity waits until the device manager reports exactly want[r]
// devices of each resource r in want, all allocatable (healthy), and returns
// how long that took. Resources not in want are not checked.
func (n *kubeletNode) waitForCapacity(t *testing.T, want map[string]int64, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		capacity, allocatable := n.capacities()
		if hasCapacity(capacity, allocatable, want) {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			require.FailNow(t, fmt.Sprintf("device manager did not report %v within %s", want, timeout),
				"last capacity %v, allocatable %v", capacity, allocatable)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func hasCapacity(capacity, allocatable, want map[string]int64) bool {
	for res, v := range want {
		if capacity[res] != v || allocatable[res] != v {
			return false
		}
	}
	return true
}

// admitted is what the kubelet recorded and hands the runtime for one
// container.
type admitted struct {
	ids  []string          // device IDs checkpointed for the container
	cdi  []string          // fully qualified CDI device names
	envs map[string]string // environment from the device plugin
}

// tryAdmit allocates pod's single container through the device manager, as
// the kubelet does at admission. On success the pod counts as active, and
// the result is what the container runtime would receive.
func (n *kubeletNode) tryAdmit(t *testing.T, pod *v1.Pod) (admitted, error) {
	t.Helper()
	c := &pod.Spec.Containers[0]
	// The kubelet counts a pod as active while it admits it.
	n.pods.add(pod)
	if err := n.m.Allocate(n.ctx, pod, c, lifecycle.AddOperation); err != nil {
		n.pods.remove(pod)
		return admitted{}, err
	}
	opts, err := n.m.GetDeviceRunContainerOptions(n.ctx, pod, c)
	require.NoError(t, err)
	require.NotNil(t, opts)
	require.Empty(t, opts.Devices, "cdi-cri must not send DeviceSpecs")
	require.Empty(t, opts.Mounts, "cdi-cri must not send Mounts")

	var a admitted
	for res := range c.Resources.Limits {
		for id := range n.m.GetDevices(string(pod.UID), c.Name)[string(res)] {
			a.ids = append(a.ids, id)
		}
	}
	for _, d := range opts.CDIDevices {
		a.cdi = append(a.cdi, d.Name)
	}
	requireDistinct(t, a.ids)
	requireDistinct(t, a.cdi)
	a.envs = map[string]string{}
	for _, e := range opts.Envs {
		a.envs[e.Name] = e.Value
	}
	return a, nil
}

// admit is tryAdmit for a pod that must be admitted.
func (n *kubeletNode) admit(t *testing.T, pod *v1.Pod) admitted {
	t.Helper()
	a, err := n.tryAdmit(t, pod)
	require.NoError(t, err, "admitting pod %s", pod.Name)
	return a
}

// admitGPUs admits a pod asking for whole GPUs and returns the CDI devices
// the runtime would get: one per GPU the kubelet checkpointed, by UUID.
func (n *kubeletNode) admitGPUs(t *testing.T, pod *v1.Pod) []string {
	t.Helper()
	a := n.admit(t, pod)
	for _, name := range a.cdi {
		require.True(t, strings.HasPrefix(name, cdiKind+"=GPU-"), "CDI device %q", name)
	}
	var want []string
	for _, id := range a.ids {
		want = append(want, cdiName(id))
	}
	require.ElementsMatch(t, want, a.cdi)
	return a.cdi
}

// TestKubeletDeviceManager runs gpublocks against the kubelet's device
// manager itself. The manager hard-codes /var/lib/kubelet/device-plugins, so
// this needs root, and its steps run in order in one test: two managers on
// that path at once would fight over kubelet.sock.
func TestKubeletDeviceManager(t *testing.T) {
	n := startKubeletNode(t, nil)
	all := map[string]int64{resourceName: dgxa100GPUs}

	var first, second []string
	t.Run("registers 8 allocatable GPUs", func(t *testing.T) {
		took := n.waitForCapacity(t, all, registerTimeout)
		t.Logf("capacity %s=%d after %s", resourceName, dgxa100GPUs, took)
		n.plugin.requireRunning(t)
	})

	t.Run("a pod asking for 2 GPUs gets 2 CDI devices", func(t *testing.T) {
		first = n.admitGPUs(t, gpuPod("first", 2))
		require.Len(t, first, 2)
	})

	t.Run("a second pod gets 2 other GPUs", func(t *testing.T) {
		second = n.admitGPUs(t, gpuPod("second", 2))
		require.Len(t, second, 2)
		require.NotContains(t, second, first[0])
		require.NotContains(t, second, first[1])
	})

	t.Run("re-registers within 2s after a kubelet restart", func(t *testing.T) {
		start := n.restartKubelet(t)
		n.waitForCapacity(t, all, registerTimeout)
		took := time.Since(start)
		t.Logf("re-registered with %s=%d %s after the kubelet restart", resourceName, dgxa100GPUs, took)
		require.Less(t, took, reregisterBudget)
		n.plugin.requireRunning(t)
	})

	t.Run("after the restart a pod gets only GPUs nobody holds", func(t *testing.T) {
		// The new manager restored the first two pods' devices from its
		// checkpoint; that only works because the plugin offers the same IDs.
		third := n.admitGPUs(t, gpuPod("third", 4))
		require.Len(t, third, 4)
		for _, name := range append(append([]string{}, first...), second...) {
			require.NotContains(t, third, name)
		}
	})
}
