package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	podresources "k8s.io/kubelet/pkg/apis/podresources/v1"
	"sigs.k8s.io/yaml"

	"github.com/gpublocks/gpublocks/tests/cluster/fixture"
)

const (
	release   = "gpublocks"
	namespace = "gpublocks"
	// podNamespace holds the test pods.
	podNamespace = "default"

	gpuResource    = "nvidia.com/gpu"
	blocksResource = "nvidia.com/gpu-blocks"
	// dgxa100GPUs is what --simulate=dgxa100 offers: 8 A100-SXM4-40GB.
	dgxa100GPUs   = 8
	a100MemoryMiB = 40960
	blocksPerGPU  = 100

	// cdiSpec is gpublocks' CDI spec on the host (the chart's paths.cdiDir).
	cdiSpec = "/var/run/cdi/gpublocks.io-gpu.yaml"
	// podResourcesSocket is the kubelet's PodResources API.
	podResourcesSocket = fixture.KubeletRoot + "/pod-resources/kubelet.sock"

	// Generous bounds for a machine that CI shares between jobs; the
	// conditions are observed, never slept on.
	podTimeout    = 2 * time.Minute
	changeTimeout = 2 * time.Minute
)

// gpuNode matches a GPU's device node, /dev/nvidia<N>, not nvidiactl or
// nvidia-uvm.
var gpuNode = regexp.MustCompile(`^nvidia([0-9]+)$`)

// devicesScript lists a container's GPU-related device nodes and
// environment, ends the list with devicesEnd, then keeps the container
// running so later steps can look again.
const devicesScript = `echo "devices: $(cd /dev && ls -d nvidia* 2>/dev/null | tr '\n' ' ')"; env | grep -E '^(NVIDIA|GPUBLOCKS|CUDA)_' | sort; echo ` + devicesEnd + `; exec sleep 1000000`

// devicesEnd ends devicesScript's output: a log that has it has the whole
// list (the environment comes from a pipeline after the devices line, so
// a log read between the two would miss it).
const devicesEnd = "end-of-devices"

// TestDevicePlugin installs the chart in device-plugin mode on simulated
// GPUs and checks, step by step, what users rely on. The steps share the
// cluster's state and run in order.
func TestDevicePlugin(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	chart, err := filepath.Abs(filepath.Join(repoRoot, "deployments", "helm", "gpublocks"))
	require.NoError(t, err)

	// Leave the cluster empty for whichever test runs next (DRA mode
	// installs the chart again, differently).
	t.Cleanup(func() {
		logWarnings(t, ctx, namespace, podNamespace)
		for _, name := range []string{"two-gpus", "blocks-30", "after-kubelet-restart", "after-plugin-restart"} {
			if err := cl.DeletePod(ctx, podNamespace, name, podTimeout); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		if out, err := cl.Helm(ctx, "uninstall", release, "--namespace", namespace, "--wait", "--ignore-not-found"); err != nil {
			t.Errorf("cleanup: %v\n%s", err, out)
		}
	})

	var dsPod *v1.Pod
	t.Run("the chart's DaemonSet becomes Ready", func(t *testing.T) {
		require.NoError(t, cl.ImportImage(ctx, imageArchive))
		// The chart's default affinity picks GPU nodes; say this is one.
		require.NoError(t, cl.LabelNode(ctx, map[string]string{"gpublocks.io/enabled": "true"}))
		metricsPort := freePort(t)
		out, err := cl.InstallChart(ctx, release, namespace, chart, map[string]any{
			"extraArgs":   []string{"--simulate=dgxa100"},
			"hostNetwork": true,
			// No kube-proxy: the apiserver is reached on loopback.
			"extraEnv": []map[string]string{
				{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
				{"name": "KUBERNETES_SERVICE_PORT", "value": strconv.Itoa(cl.APIServerPort)},
			},
			// On the host network, a port nobody else uses.
			"metrics": map[string]any{"port": metricsPort},
		})
		require.NoError(t, err, out)
		start := time.Now()
		dsPod = waitDaemonSetReady(t, ctx, "")
		t.Logf("DaemonSet %s/%s Ready: pod %s, image %s, %s after helm install", namespace, release, dsPod.Name, dsPod.Spec.Containers[0].Image, time.Since(start).Round(time.Millisecond))
		waitCapacity(t, ctx, map[string]int64{gpuResource: dgxa100GPUs})
	})
	require.NotNil(t, dsPod, "the DaemonSet never became Ready")

	var twoGPUs []string // the UUIDs the long-running two-GPU pod holds
	t.Run("a pod asking for 2 GPUs sees exactly its two", func(t *testing.T) {
		devs := runGPUPod(t, ctx, "two-gpus", map[string]int64{gpuResource: 2})
		require.Equal(t, devs.ids, devs.gpus, "whole GPUs are allocated by UUID")
		twoGPUs = devs.gpus
		require.Len(t, twoGPUs, 2)
		require.Equal(t, "void", devs.env["NVIDIA_VISIBLE_DEVICES"], "a legacy NVIDIA hook must inject nothing more")
	})
	require.Len(t, twoGPUs, 2)

	t.Run("a ConfigMap change to blocks changes the capacity live", func(t *testing.T) {
		// Every GPU to blocks, except the two the running pod holds: those
		// keep their shape until released (DESIGN §4).
		setConfig(t, ctx, []map[string]any{{"match": map[string]any{"model": "*"}, "shape": "blocks"}})
		waitCapacity(t, ctx, map[string]int64{gpuResource: 2, blocksResource: (dgxa100GPUs - 2) * blocksPerGPU})
		requireSamePod(t, ctx, dsPod)
	})

	t.Run("a pod asking for 30 blocks gets one GPU and its share's environment", func(t *testing.T) {
		devs := runGPUPod(t, ctx, "blocks-30", map[string]int64{blocksResource: 30})
		require.Len(t, devs.ids, 30, "30 blocks allocated")
		require.Len(t, devs.gpus, 1, "the blocks of one request come from one GPU")
		blocksGPU := devs.gpus[0]
		require.NotContains(t, twoGPUs, blocksGPU)
		for k, v := range map[string]string{
			"GPUBLOCKS_BLOCKS":                  "30",
			"GPUBLOCKS_GPU_UUID":                blocksGPU,
			"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30",
			"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT":  fmt.Sprintf("0=%dM", a100MemoryMiB*30/blocksPerGPU),
			"NVIDIA_VISIBLE_DEVICES":            "void",
		} {
			require.Equal(t, v, devs.env[k], k)
		}
	})

	t.Run("a ConfigMap change back to whole changes the capacity live", func(t *testing.T) {
		setConfig(t, ctx, []map[string]any{})
		// The 30-block pod's GPU stays in blocks while the pod runs.
		waitCapacity(t, ctx, map[string]int64{gpuResource: dgxa100GPUs - 1, blocksResource: blocksPerGPU})
		require.NoError(t, cl.DeletePod(ctx, podNamespace, "blocks-30", podTimeout))
		waitCapacity(t, ctx, map[string]int64{gpuResource: dgxa100GPUs, blocksResource: 0})
		requireSamePod(t, ctx, dsPod)
	})

	t.Run("the plugin re-registers when the kubelet restarts", func(t *testing.T) {
		before := registrations(t, ctx, dsPod.Name, gpuResource)
		require.NoError(t, cl.RestartKubelet(ctx))
		require.NoError(t, cl.Wait(ctx, "gpublocks registered "+gpuResource+" again", changeTimeout, func(ctx context.Context) (bool, error) {
			return registrations(t, ctx, dsPod.Name, gpuResource) > before, nil
		}))
		t.Logf("%s registrations in the plugin's log: %d before the kubelet restart, %d after", gpuResource, before, registrations(t, ctx, dsPod.Name, gpuResource))
		waitCapacity(t, ctx, map[string]int64{gpuResource: dgxa100GPUs})
		// The kubelet (1.37) refuses a second registration of a socket it
		// already serves, and in refusing forgets the live connection too:
		// when that plugin later goes, its resource is never released and
		// every registration after is refused, until the kubelet restarts.
		kubeletLog, err := cl.KubeletLog()
		require.NoError(t, err)
		for _, line := range strings.Split(kubeletLog, "\n") {
			require.NotContains(t, line, "device plugin already connected",
				"gpublocks registered a resource twice with the restarted kubelet, which leaves the kubelet unable to take a new registration of it once this plugin pod goes")
		}
		_, err = cl.WaitPod(ctx, namespace, dsPod.Name, podTimeout, podReady)
		require.NoError(t, err, "the plugin pod is not Ready after the kubelet restart")
		// The restarted kubelet allocates again, and not what it gave before.
		devs := runGPUPod(t, ctx, "after-kubelet-restart", map[string]int64{gpuResource: 1})
		require.Len(t, devs.gpus, 1)
		require.NotContains(t, twoGPUs, devs.gpus[0])
		require.NoError(t, cl.DeletePod(ctx, podNamespace, "after-kubelet-restart", podTimeout))
		requireSamePod(t, ctx, dsPod)
		requireDevices(t, ctx, "two-gpus", twoGPUs)
	})

	t.Run("a deleted DaemonSet pod is recreated and running pods keep their devices", func(t *testing.T) {
		require.NoError(t, cl.Client.CoreV1().Pods(namespace).Delete(ctx, dsPod.Name, metav1.DeleteOptions{}))
		start := time.Now()
		next := waitDaemonSetReady(t, ctx, dsPod.UID)
		t.Logf("DaemonSet %s/%s Ready again: pod %s replaced %s after %s", namespace, release, next.Name, dsPod.Name, time.Since(start).Round(time.Millisecond))
		dsPod = next
		requireDevices(t, ctx, "two-gpus", twoGPUs)
		p, err := cl.Client.CoreV1().Pods(podNamespace).Get(ctx, "two-gpus", metav1.GetOptions{})
		require.NoError(t, err)
		require.Equal(t, v1.PodRunning, p.Status.Phase)
		require.Zero(t, p.Status.ContainerStatuses[0].RestartCount)
		waitCapacity(t, ctx, map[string]int64{gpuResource: dgxa100GPUs})
		// The new plugin hands out what the kubelet still holds free.
		devs := runGPUPod(t, ctx, "after-plugin-restart", map[string]int64{gpuResource: 2})
		require.Len(t, devs.gpus, 2)
		for _, g := range devs.gpus {
			require.NotContains(t, twoGPUs, g)
		}
	})
}

// podDevices is what one container received.
type podDevices struct {
	ids   []string          // device IDs the kubelet allocated (PodResources)
	gpus  []string          // the GPU UUIDs those IDs belong to, in ID order
	nodes []string          // /dev/nvidia<N> seen in the container
	env   map[string]string // NVIDIA_*, GPUBLOCKS_*, CUDA_* seen in the container
}

// runGPUPod starts a busybox pod asking for resources and checks that its
// container sees exactly the /dev/nvidia<N> of the GPUs the kubelet
// allocated to it (PodResources API, mapped through the CDI spec), plus the
// control nodes. The pod keeps running; its log is in the test log.
func runGPUPod(t *testing.T, ctx context.Context, name string, resources map[string]int64) podDevices {
	t.Helper()
	pod := fixture.BusyboxPod(podNamespace, name, devicesScript, resources)
	_, err := cl.CreatePod(ctx, pod, podTimeout)
	require.NoError(t, err)
	var logs string
	require.NoError(t, cl.Wait(ctx, "pod "+name+" printed its devices", podTimeout, func(ctx context.Context) (bool, error) {
		logs, err = cl.Logs(ctx, podNamespace, name, "main")
		return err == nil && strings.Contains(logs, devicesEnd), nil
	}))
	t.Logf("pod %s (%v) log:\n%s", name, resources, strings.TrimSpace(logs))

	var d podDevices
	d.ids = allocatedIDs(t, ctx, name)
	d.env = map[string]string{}
	for _, line := range strings.Split(logs, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "devices:") && line != devicesEnd {
			d.env[k] = v
		}
	}
	for _, id := range d.ids {
		uuid, _, _ := strings.Cut(id, "::") // a block's ID is <GPU-UUID>::<n>
		if !slices.Contains(d.gpus, uuid) {
			d.gpus = append(d.gpus, uuid)
		}
	}
	d.nodes = listGPUNodes(t, ctx, name)
	want := wantNodes(t, d.ids)
	allocated := fmt.Sprint(d.ids)
	if len(d.ids) != len(d.gpus) {
		allocated = fmt.Sprintf("%d blocks of %v", len(d.ids), d.gpus)
	}
	t.Logf("pod %s: allocated %s; sees /dev/%s (want %v)", name, allocated, strings.Join(d.nodes, " /dev/"), want)
	require.Equal(t, want, d.nodes, "the container must see exactly the GPUs it was allocated")

	ls, err := cl.Exec(ctx, podNamespace, name, "main", "ls", "/dev")
	require.NoError(t, err)
	require.Contains(t, strings.Fields(ls), "nvidiactl")
	return d
}

// requireDevices checks that a running pod still sees exactly the GPUs
// gpus (looked at again with exec).
func requireDevices(t *testing.T, ctx context.Context, pod string, gpus []string) {
	t.Helper()
	got := listGPUNodes(t, ctx, pod)
	want := wantNodes(t, gpus)
	t.Logf("pod %s still sees /dev/%s", pod, strings.Join(got, " /dev/"))
	require.Equal(t, want, got)
}

// listGPUNodes returns the nvidia<N> nodes in a running container's /dev.
func listGPUNodes(t *testing.T, ctx context.Context, pod string) []string {
	t.Helper()
	out, err := cl.Exec(ctx, podNamespace, pod, "main", "ls", "/dev")
	require.NoError(t, err)
	var nodes []string
	for _, f := range strings.Fields(out) {
		if gpuNode.MatchString(f) {
			nodes = append(nodes, f)
		}
	}
	sort.Strings(nodes)
	return nodes
}

// wantNodes maps device IDs (GPU UUIDs, or blocks <uuid>::<n>) to the
// nvidia<N> nodes the CDI spec on the host gives their GPUs.
func wantNodes(t *testing.T, ids []string) []string {
	t.Helper()
	data, err := os.ReadFile(cdiSpec)
	require.NoError(t, err)
	var spec struct {
		Devices []struct {
			Name           string `json:"name"`
			ContainerEdits struct {
				DeviceNodes []struct {
					Path string `json:"path"`
				} `json:"deviceNodes"`
			} `json:"containerEdits"`
		} `json:"devices"`
	}
	require.NoError(t, yaml.Unmarshal(data, &spec))
	byName := map[string][]string{}
	for _, d := range spec.Devices {
		for _, n := range d.ContainerEdits.DeviceNodes {
			byName[d.Name] = append(byName[d.Name], strings.TrimPrefix(n.Path, "/dev/"))
		}
	}
	set := map[string]bool{}
	for _, id := range ids {
		uuid, _, _ := strings.Cut(id, "::")
		nodes, ok := byName[uuid]
		require.True(t, ok, "GPU %s is not in %s", uuid, cdiSpec)
		for _, n := range nodes {
			set[n] = true
		}
	}
	var out []string
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// allocatedIDs asks the kubelet's PodResources API which device IDs the
// pod's container holds.
func allocatedIDs(t *testing.T, ctx context.Context, pod string) []string {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+podResourcesSocket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", podResourcesSocket)
		}))
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := podresources.NewPodResourcesListerClient(conn).Get(ctx, &podresources.GetPodResourcesRequest{PodName: pod, PodNamespace: podNamespace})
	require.NoError(t, err)
	var ids []string
	for _, c := range resp.GetPodResources().GetContainers() {
		for _, d := range c.GetDevices() {
			ids = append(ids, d.GetDeviceIds()...)
		}
	}
	sort.Strings(ids)
	return ids
}

// setConfig replaces the default config's GPU rules with a helm upgrade, as
// an operator would; the running plugin applies it live.
func setConfig(t *testing.T, ctx context.Context, rules []map[string]any) {
	t.Helper()
	chart, err := filepath.Abs(filepath.Join(repoRoot, "deployments", "helm", "gpublocks"))
	require.NoError(t, err)
	out, err := cl.UpgradeChart(ctx, release, namespace, chart, map[string]any{
		"config": map[string]any{"default": map[string]any{"gpus": rules}},
	})
	require.NoError(t, err, out)
}

// waitCapacity waits until the node's capacity and allocatable are want
// (a zero means absent or zero) and logs how long the change took.
func waitCapacity(t *testing.T, ctx context.Context, want map[string]int64) {
	t.Helper()
	start := time.Now()
	var capacity, allocatable map[string]int64
	err := cl.Wait(ctx, fmt.Sprintf("node capacity %v", want), changeTimeout, func(ctx context.Context) (bool, error) {
		var err error
		capacity, allocatable, err = cl.NodeResources(ctx, "nvidia.com/")
		if err != nil {
			return false, nil
		}
		for r, n := range want {
			if capacity[r] != n || allocatable[r] != n {
				return false, nil
			}
		}
		return true, nil
	})
	require.NoError(t, err, "capacity %v allocatable %v", capacity, allocatable)
	t.Logf("node capacity %v after %s", capacity, time.Since(start).Round(time.Millisecond))
}

// waitDaemonSetReady waits until the chart's DaemonSet has one pod, Ready,
// that is not oldUID, and returns it.
func waitDaemonSetReady(t *testing.T, ctx context.Context, oldUID types.UID) *v1.Pod {
	t.Helper()
	return waitDaemonSetReadyNamed(t, ctx, namespace, release, oldUID)
}

// waitDaemonSetReadyNamed waits until a DaemonSet has one pod, Ready, that
// is not oldUID, and returns it; on timeout it reports the pods' states,
// events and logs.
func waitDaemonSetReadyNamed(t *testing.T, ctx context.Context, namespace, name string, oldUID types.UID) *v1.Pod {
	t.Helper()
	var ready *v1.Pod
	var ds *appsv1.DaemonSet
	err := cl.Wait(ctx, "DaemonSet "+namespace+"/"+name+" Ready", 3*time.Minute, func(ctx context.Context) (bool, error) {
		got, err := cl.Client.AppsV1().DaemonSets(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		ds = got
		pods, err := cl.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=gpublocks"})
		if err != nil {
			return false, nil
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.DeletionTimestamp != nil || p.UID == oldUID {
				continue
			}
			// A plugin that keeps exiting will not become Ready: say so
			// now, with its log, rather than at the deadline.
			for _, cs := range p.Status.ContainerStatuses {
				if w := cs.State.Waiting; w != nil && w.Reason == "CrashLoopBackOff" {
					return false, fmt.Errorf("pod %s: container %s: %s: %s", p.Name, cs.Name, w.Reason, w.Message)
				}
			}
			if podReady(p) && ds.Status.DesiredNumberScheduled == 1 && ds.Status.NumberReady == 1 {
				ready = p
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		msg := "DaemonSet not found"
		if ds != nil {
			msg = fmt.Sprintf("DaemonSet status %+v", ds.Status)
		}
		if pods, lerr := cl.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{}); lerr == nil {
			for _, p := range pods.Items {
				msg += "\n" + cl.Describe(ctx, namespace, p.Name)
				if logs, err := cl.Logs(ctx, namespace, p.Name, "gpublocks"); err == nil {
					msg += "\nlog:\n" + logs
				}
				if logs, err := cl.Client.CoreV1().Pods(namespace).GetLogs(p.Name, &v1.PodLogOptions{Container: "gpublocks", Previous: true}).DoRaw(ctx); err == nil {
					msg += "\nlog of the previous container:\n" + string(logs)
				}
			}
		}
		require.NoError(t, err, msg)
	}
	return ready
}

func podReady(p *v1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// requireSamePod checks that a config change or kubelet restart did not
// restart the plugin: same pod, container never restarted.
func requireSamePod(t *testing.T, ctx context.Context, want *v1.Pod) {
	t.Helper()
	p, err := cl.Client.CoreV1().Pods(namespace).Get(ctx, want.Name, metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, want.UID, p.UID)
	require.Zero(t, p.Status.ContainerStatuses[0].RestartCount, "the plugin restarted")
}

// registrations counts the plugin's log lines saying that resource
// registered with the kubelet (not the "not registered …; retrying" ones).
func registrations(t *testing.T, ctx context.Context, pod, resource string) int {
	t.Helper()
	logs, err := cl.Logs(ctx, namespace, pod, "gpublocks")
	if err != nil {
		return -1 // the kubelet is restarting; asked again
	}
	n := 0
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `] "registered with the kubelet"`) && strings.Contains(line, ` resource="`+resource+`"`) {
			n++
		}
	}
	return n
}

// freePort returns a TCP port free on this machine.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// logWarnings logs the Warning events of the namespaces: what a user would
// see in `kubectl get events` (a failed probe, a volume that did not mount).
func logWarnings(t *testing.T, ctx context.Context, namespaces ...string) {
	t.Helper()
	for _, ns := range namespaces {
		events, err := cl.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "type=Warning"})
		if err != nil {
			t.Logf("events in %s: %v", ns, err)
			continue
		}
		for _, e := range events.Items {
			t.Logf("warning event in %s: %s %s/%s: %s (%d×)", ns, e.Reason, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Message, e.Count)
		}
	}
}
