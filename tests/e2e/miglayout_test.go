package e2e

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
	"k8s.io/kubernetes/pkg/kubelet/apis/podresources"
)

// laterNode is a kubeletNode that the PodResources server answers for: the
// server must listen before gpublocks starts (it asks at once), and the
// node exists once gpublocks has started. Questions wait for it.
type laterNode struct {
	ready chan struct{}
	n     *kubeletNode
}

func (l *laterNode) set(n *kubeletNode) {
	l.n = n
	close(l.ready)
}

func (l *laterNode) node() *kubeletNode {
	<-l.ready
	return l.n
}

// deviceManagerDevices answers the PodResources server's device questions
// from the running device manager, converting as the kubelet's container
// manager does (one ContainerDevices per device and NUMA node).
type deviceManagerDevices struct{ l *laterNode }

func (d deviceManagerDevices) UpdateAllocatedDevices(logger klog.Logger) {
	d.l.node().m.UpdateAllocatedDevices(logger)
}

func (d deviceManagerDevices) GetDevices(podUID, containerName string) []*podresourcesapi.ContainerDevices {
	var out []*podresourcesapi.ContainerDevices
	for resource, devs := range d.l.node().m.GetDevices(podUID, containerName) {
		for id, dev := range devs {
			cd := &podresourcesapi.ContainerDevices{ResourceName: resource, DeviceIds: []string{id}}
			if topo := dev.GetTopology(); topo != nil {
				for _, node := range topo.GetNodes() {
					cd.Topology = &podresourcesapi.TopologyInfo{Nodes: []*podresourcesapi.NUMANode{{ID: node.GetID()}}}
				}
			}
			out = append(out, cd)
		}
	}
	return out
}

func (d deviceManagerDevices) GetAllocatableDevices(klog.Logger) []*podresourcesapi.ContainerDevices {
	return nil
}

// nodePods are the kubelet's admitted pods, as the stand-in tracks them.
type nodePods struct{ l *laterNode }

func (p nodePods) GetActivePods() []*v1.Pod { return p.l.node().pods.list() }
func (p nodePods) GetPods() []*v1.Pod       { return p.l.node().pods.list() }
func (p nodePods) GetPodByName(namespace, name string) (*v1.Pod, bool) {
	for _, pod := range p.l.node().pods.list() {
		if pod.Namespace == namespace && pod.Name == name {
			return pod, true
		}
	}
	return nil, false
}

// noCPUsOrMemory stands for the kubelet's CPU and memory managers, which
// this node runs without, and for DRA, which it does not use.
type noCPUsOrMemory struct{}

func (noCPUsOrMemory) GetCPUs(*v1.Pod, *v1.Container) []int64 { return nil }
func (noCPUsOrMemory) GetPodCPUs(string) []int64              { return nil }
func (noCPUsOrMemory) GetAllocatableCPUs() []int64            { return nil }
func (noCPUsOrMemory) GetMemory(klog.Logger, *v1.Pod, *v1.Container) []*podresourcesapi.ContainerMemory {
	return nil
}
func (noCPUsOrMemory) GetPodMemory(klog.Logger, string) []*podresourcesapi.ContainerMemory {
	return nil
}
func (noCPUsOrMemory) GetAllocatableMemory(klog.Logger) []*podresourcesapi.ContainerMemory {
	return nil
}
func (noCPUsOrMemory) GetDynamicResources(klog.Logger, *v1.Pod, *v1.Container) []*podresourcesapi.DynamicResource {
	return nil
}

// servePodResources serves the kubelet's own PodResources server, over the
// allocations of the device manager of the node l will hold, on a socket
// in a fresh directory, and returns the socket's path.
func servePodResources(ctx context.Context, t *testing.T, l *laterNode) string {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "kubelet.sock")
	lis, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := grpc.NewServer()
	podresourcesapi.RegisterPodResourcesListerServer(srv, podresources.NewV1PodResourcesServer(ctx, podresources.PodResourcesProviders{
		Pods:             nodePods{l},
		Devices:          deviceManagerDevices{l},
		Cpus:             noCPUsOrMemory{},
		Memory:           noCPUsOrMemory{},
		DynamicResources: noCPUsOrMemory{},
	}))
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return sock
}

// MIG layouts for GPU 1 of dgxa100-mig (A100-SXM4-80GB; 7× 1g.10gb as
// simulated), by day and by night (DESIGN §10).
const (
	e2eDayConfig   = "version: v1\ngpus: [{match: {index: [1]}, shape: mig, mig: [1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb]}]\n"
	e2eNightConfig = "version: v1\ngpus: [{match: {index: [1]}, shape: mig, mig: [3g.40gb, 3g.40gb]}]\n"
)

// TestMIGLayoutLive changes GPU 1's MIG layout by config through the
// kubelet's device manager: an idle GPU follows at once and the kubelet
// sees the new devices (usable, parent and caps injected); a GPU with an
// allocated MIG device keeps its layout, as the kubelet's own PodResources
// server reports, until the pod is gone.
func TestMIGLayoutLive(t *testing.T) {
	dir := shortTempDir(t)
	configFile := writeFile(t, dir, "config.yaml", e2eDayConfig)
	ctx, _ := testContext(t)
	later := &laterNode{ready: make(chan struct{})}
	socket := servePodResources(ctx, t, later)
	n := startKubeletNode(t, func(o *pluginOptions) {
		o.simulate = "dgxa100-mig"
		o.config = configFile
		o.extraArgs = append(o.extraArgs, "--pod-resources-socket", socket)
	})
	later.set(n)
	day := map[string]int64{"nvidia.com/mig-1g.10gb": 9, "nvidia.com/mig-2g.20gb": 1, "nvidia.com/mig-3g.40gb": 1, resourceName: 6}
	night := map[string]int64{"nvidia.com/mig-1g.10gb": 2, "nvidia.com/mig-2g.20gb": 1, "nvidia.com/mig-3g.40gb": 3, resourceName: 6}
	n.waitForCapacity(t, day, registerTimeout)

	var hold *v1.Pod
	t.Run("an idle GPU follows the config live", func(t *testing.T) {
		replaceFile(t, configFile, e2eNightConfig)
		took := n.waitForCapacity(t, night, 10*time.Second)
		t.Logf("day -> night seen by the kubelet after %s", took)
		n.plugin.requireRunning(t)

		// The new slices are usable: the kubelet allocates all three
		// 3g.40gb, and each gets its parent and its own caps.
		cache := cdiCache(t, n.opts.cdiDir)
		hold = resourcePod("night-train", "nvidia.com/mig-3g.40gb", 3)
		uuids := n.admitMIG(t, hold)
		parents := map[string]int{}
		onGPU1 := 0
		for _, u := range uuids {
			parents[u] = migParent(t, cache, u)
			if parents[u] == 1 {
				onGPU1++
			}
		}
		require.Equal(t, 2, onGPU1, "GPU 1 holds two 3g.40gb now")
		requireInjectedMIG(t, injectAllocation(t, cache, cdiNamesOf(uuids)), parents)
	})

	t.Run("a GPU with an allocated MIG device keeps its layout until it is free", func(t *testing.T) {
		require.NotNil(t, hold, "needs the pod of the previous step")
		replaceFile(t, configFile, e2eDayConfig)
		eventually(t, 10*time.Second, func() bool {
			return strings.Contains(n.plugin.out.String(), "MIG layout change waits")
		}, "gpublocks never said the change waits")
		require.Contains(t, n.plugin.out.String(), "devices allocated to pods")
		capacity, allocatable := n.capacities()
		require.True(t, hasCapacity(capacity, allocatable, night), "capacity %v, allocatable %v: GPU 1 changed under an allocated device", capacity, allocatable)

		// The pod ends; within one defer poll (10 s) GPU 1 is day again.
		n.pods.remove(hold)
		took := n.waitForCapacity(t, day, 15*time.Second)
		t.Logf("night -> day after the pod ended: %s", took)
		n.plugin.requireRunning(t)
	})
}
