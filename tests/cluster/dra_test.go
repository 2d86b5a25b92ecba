package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/gpublocks/gpublocks/tests/cluster/fixture"
)

const (
	// draDriver is gpublocks' DRA driver name and attribute domain (DESIGN §9).
	draDriver = "gpu.gpublocks.io"
	// The DeviceClasses the chart ships in DRA mode.
	gpuClass    = "gpu.gpublocks.io"
	blocksClass = "blocks.gpu.gpublocks.io"
	migClass    = "mig.gpu.gpublocks.io"
	// unhealthyTaint is the device taint of an unhealthy GPU's devices.
	unhealthyTaint = draDriver + "/unhealthy"
	// cdiDir is where the chart has gpublocks write CDI specs on the host.
	cdiDir = "/var/run/cdi"
	// claimSpecPrefix starts a per-claim CDI spec's file name:
	// gpublocks.io-claim_<claim-uid>.yaml.
	claimSpecPrefix = "gpublocks.io-claim_"
	// claimKind is the CDI kind of the per-claim devices.
	claimKind = "gpublocks.io/claim"

	// draLabel marks the DRA test's pods and claim templates, for cleanup.
	draLabel = "gpublocks.io/test"
)

// draDevice matches a whole-GPU or blocks device name, gpu-<i>[-blocks].
var draDevice = regexp.MustCompile(`^gpu-([0-9]+)(-blocks)?$`)

// TestDRA installs the chart in DRA mode (kubeletAPI: dra) on simulated
// GPUs and checks what DESIGN §9 promises, through the real scheduler,
// kubelet and containerd: the slices, blocks of one GPU shared by claims
// and placed by the scheduler, a claim that cannot fit waiting, the
// extended resource served through the DeviceClass, per-claim CDI specs,
// XIDs as device taints, and a plugin killed and restarted under running
// pods. The steps share the cluster's state and run in order.
func TestDRA(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	chart, err := filepath.Abs(filepath.Join(repoRoot, "deployments", "helm", "gpublocks"))
	require.NoError(t, err)
	testStart := time.Now()

	t.Cleanup(func() {
		logWarnings(t, ctx, namespace, podNamespace)
		cleanupDRA(t, ctx)
		t.Logf("TestDRA took %s", time.Since(testStart).Round(time.Millisecond))
	})

	slicesSeen := readyForDRA(t, ctx)
	// Fault injection for the simulated GPUs, on loopback: the plugin runs
	// on the host network, so the test reaches it there.
	simAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	d := &draRun{t: t, ctx: ctx, pool: slicesSeen, simAddr: simAddr, shares: map[string]claimShare{}}

	var dsPod *v1.Pod
	t.Run("the DaemonSet becomes Ready and publishes the node's slices", func(t *testing.T) {
		d.t = t
		values := draValues(t, "--simulate=dgxa100", "--simulate-addr="+simAddr)
		// A faulted GPU recovers a second after its last fault (once its
		// probe passes), so the XID step can fault and watch recovery
		// within the test's time.
		values["config"] = map[string]any{"default": map[string]any{"health": map[string]any{"quietPeriod": "1s"}}}
		out, err := cl.InstallChart(ctx, release, namespace, chart, values)
		require.NoError(t, err, out)
		start := time.Now()
		dsPod = waitDaemonSetReady(t, ctx, "")
		t.Logf("DaemonSet %s/%s Ready in DRA mode: pod %s, %s after helm install", namespace, release, dsPod.Name, time.Since(start).Round(time.Millisecond))

		pid := d.pluginPID(dsPod)
		began, err := processStart(pid)
		require.NoError(t, err)
		pool := slicesSeen.waitSince(t, "every GPU's gpu-<i> and gpu-<i>-blocks", began, changeTimeout, func(s poolState) bool {
			return len(s.devices) == 2*dgxa100GPUs
		})
		t.Logf("ResourceSlices published %s after the plugin process started (pid %d; %d slices, generation %d): %v",
			pool.at.Sub(began).Round(time.Millisecond), pid, pool.slices, pool.generation, pool.names())
		d.checkPool(pool)

		for _, name := range []string{gpuClass, blocksClass, migClass} {
			_, err := cl.Client.ResourceV1().DeviceClasses().Get(ctx, name, metav1.GetOptions{})
			require.NoError(t, err, "the chart's DeviceClass %s", name)
		}
		dc, err := cl.Client.ResourceV1().DeviceClasses().Get(ctx, gpuClass, metav1.GetOptions{})
		require.NoError(t, err)
		require.NotNil(t, dc.Spec.ExtendedResourceName, "DeviceClass %s must map %s", gpuClass, gpuResource)
		require.Equal(t, gpuResource, *dc.Spec.ExtendedResourceName)
	})
	require.NotNil(t, dsPod, "the DaemonSet never became Ready")
	require.NotEmpty(t, d.uuids, "no slices")

	for _, k := range []int{20, 30, 40, 50, 60} {
		d.blocksTemplate(k)
	}
	d.gpusTemplate(1)
	d.gpusTemplate(dgxa100GPUs - 3)

	var shared, other int // the GPU of the 30 + 50 + 20, and of the 60
	t.Run("claims for 30, 50 and 20 blocks share one GPU and a 60 goes to another", func(t *testing.T) {
		d.t = t
		// Any order of the three fills one GPU exactly: the scheduler's
		// allocator takes the first device with room.
		for _, k := range []int{30, 50, 20} {
			d.startClaimPod(fmt.Sprintf("dra-b%d", k), blocksTemplateName(k))
		}
		var got []podClaim
		for _, k := range []int{30, 50, 20} {
			got = append(got, d.checkClaimPod(fmt.Sprintf("dra-b%d", k)))
		}
		shared = got[0].gpu
		for _, pc := range got {
			require.Equal(t, shared, pc.gpu, "30 + 50 + 20 blocks fit one GPU: the scheduler must put them together")
		}
		d.startClaimPod("dra-b60", blocksTemplateName(60))
		pc := d.checkClaimPod("dra-b60")
		other = pc.gpu
		require.NotEqual(t, shared, other, "GPU %d has no room left for 60 blocks", shared)
		// One GPU, four shares: their share IDs tell them apart.
		ids := map[string]bool{}
		for _, pc := range append(got, pc) {
			require.False(t, ids[pc.shareID], "share ID %s given twice", pc.shareID)
			ids[pc.shareID] = true
		}
	})
	require.NotEqual(t, shared, other)

	var extGPU int
	t.Run("a pod asking nvidia.com/gpu: 1 is served through the DeviceClass", func(t *testing.T) {
		d.t = t
		// KEP-5004: the scheduler serves nvidia.com/gpu through the
		// DeviceClass only on nodes that do not offer it as a device
		// plugin's resource; the kubelet zeroes what the device-plugin
		// test's plugin left once it notices the plugin gone.
		waitNoDevicePluginGPUs(t, ctx)
		pc := d.runExtendedResourcePod("dra-ext-gpu", 1)
		require.Len(t, pc.gpus, 1)
		extGPU = pc.gpus[0]
		require.NotContains(t, []int{shared, other}, extGPU, "a GPU whose blocks are allocated cannot be allocated whole")
	})

	t.Run("a claim for 60 blocks with no GPU room stays Pending until a GPU has room", func(t *testing.T) {
		d.t = t
		// The other GPUs whole: no GPU then has 60 blocks free (shared
		// has 0, other 40).
		d.startClaimPod("dra-fill", gpusTemplateName(dgxa100GPUs-3))
		fill := d.checkClaimPod("dra-fill")
		require.Len(t, fill.gpus, dgxa100GPUs-3)
		for _, g := range fill.gpus {
			require.NotContains(t, []int{shared, other, extGPU}, g)
		}

		d.startClaimPod("dra-b60-waits", blocksTemplateName(60))
		p := d.waitUnschedulable("dra-b60-waits")
		t.Logf("pod dra-b60-waits is Pending: %s", unschedulableMessage(p))
		claim := d.podClaim(p)
		require.Nil(t, claim.Status.Allocation, "a claim that fits no GPU must not be allocated")

		// Room on other: the waiting claim goes there, and runs.
		gone := d.claimSpecPath(d.podClaim(d.getPod("dra-b60")))
		require.NoError(t, cl.DeletePod(ctx, podNamespace, "dra-b60", podTimeout))
		d.waitFileGone(gone)
		t.Logf("per-claim CDI spec %s removed with its pod", filepath.Base(gone))
		_, err := cl.WaitPod(ctx, podNamespace, "dra-b60-waits", podTimeout, func(p *v1.Pod) bool { return p.Status.Phase == v1.PodRunning })
		require.NoError(t, err)
		pc := d.checkClaimPod("dra-b60-waits")
		require.Equal(t, other, pc.gpu)
		d.requireNoAdmissionFailure("dra-b60-waits")
	})

	var free []int // whole GPUs free after the fill is gone
	for i := range dgxa100GPUs {
		if !slices.Contains([]int{shared, other, extGPU}, i) {
			free = append(free, i)
		}
	}
	var latencies []time.Duration
	t.Run("an XID taints the GPU's devices and a new claim avoids it", func(t *testing.T) {
		d.t = t
		require.Len(t, free, dgxa100GPUs-3)
		require.NoError(t, cl.DeletePod(ctx, podNamespace, "dra-fill", podTimeout))
		// All free GPUs but the last fall off the bus (XID 79; their
		// probes fail, so they stay tainted until restored): a claim for
		// one whole GPU can only get the last.
		faulted, spare := free[:len(free)-1], free[len(free)-1]
		for _, g := range faulted {
			latencies = append(latencies, d.inject(g, "lost", "79"))
		}
		d.startClaimPod("dra-after-xid", gpusTemplateName(1))
		pc := d.checkClaimPod("dra-after-xid")
		require.Equal(t, []int{spare}, pc.gpus, "the only untainted free GPU")
		state := d.pool.current()
		for _, g := range faulted {
			require.NotNil(t, state.taint(gpuDeviceName(g)), "GPU %d must still be tainted when the claim was allocated", g)
		}

		// Restored, they recover: the taints go.
		restored := time.Now()
		for _, g := range faulted {
			d.simulate("restore", g, "")
		}
		s := d.pool.waitSince(t, fmt.Sprintf("GPUs %v untainted after restore", faulted), restored, changeTimeout, func(s poolState) bool {
			for _, g := range faulted {
				if s.taint(gpuDeviceName(g)) != nil || s.taint(blocksDeviceName(g)) != nil {
					return false
				}
			}
			return true
		})
		t.Logf("GPUs %v recovered: taints removed %s after restore (quiet period 1s, then a passing probe)", faulted, s.at.Sub(restored).Round(time.Millisecond))

		// XID 48 (double-bit ECC) on GPUs in use: tainted, then recovered.
		for _, g := range []int{shared, other, extGPU, spare} {
			latencies = append(latencies, d.inject(g, "xid", "48"))
		}
		recovering := time.Now()
		d.pool.waitSince(t, "every GPU untainted", recovering, changeTimeout, func(s poolState) bool {
			return describeTaints(s) == "none"
		})
		p50, p99 := percentile(latencies, 50), percentile(latencies, 99)
		t.Logf("XID → device taint visible through the API server: p50 %s, p99 %s, max %s over %d injections (%v)",
			p50.Round(time.Microsecond), p99.Round(time.Microsecond), slices.Max(latencies).Round(time.Microsecond), len(latencies), roundAll(latencies))
	})

	t.Run("kill -9 of the plugin: running pods keep their devices, new claims are served, nothing is prepared twice", func(t *testing.T) {
		d.t = t
		running := []string{"dra-b30", "dra-b50", "dra-b20", "dra-b60-waits", "dra-ext-gpu", "dra-after-xid"}
		specs := map[string][]byte{}
		nodes := map[string][]string{}
		for _, name := range running {
			for _, path := range d.claimSpecsOf(d.getPod(name)) {
				data, err := os.ReadFile(path)
				require.NoError(t, err)
				specs[path] = data
			}
			nodes[name] = listGPUNodes(t, ctx, name)
		}

		pod, err := cl.Client.CoreV1().Pods(namespace).Get(ctx, dsPod.Name, metav1.GetOptions{})
		require.NoError(t, err)
		pid := d.pluginPID(pod)
		restarts := pod.Status.ContainerStatuses[0].RestartCount
		killed := time.Now()
		require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
		t.Logf("killed the plugin (pid %d) with SIGKILL", pid)
		// Not WaitPod: a container the kubelet restarts may pass through
		// a back-off, which is no failure here.
		var after *v1.Pod
		err = cl.Wait(ctx, "the plugin container restarted and Ready", podTimeout, func(ctx context.Context) (bool, error) {
			p, err := cl.Client.CoreV1().Pods(namespace).Get(ctx, dsPod.Name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			after = p
			return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount > restarts && podReady(p), nil
		})
		require.NoError(t, err, "%s", cl.Describe(ctx, namespace, dsPod.Name))
		t.Logf("plugin container restarted and Ready %s after SIGKILL (restarts: %d)", time.Since(killed).Round(time.Millisecond), after.Status.ContainerStatuses[0].RestartCount)
		newPID := d.pluginPID(after)
		require.NotEqual(t, pid, newPID)

		for _, name := range running {
			p := d.getPod(name)
			require.Equal(t, v1.PodRunning, p.Status.Phase, name)
			require.Zero(t, p.Status.ContainerStatuses[0].RestartCount, "%s restarted", name)
			require.Equal(t, nodes[name], listGPUNodes(t, ctx, name), "%s lost or gained devices", name)
		}
		for path, data := range specs {
			now, err := os.ReadFile(path)
			require.NoError(t, err, "a running claim's CDI spec must survive the plugin's restart")
			require.Equal(t, string(data), string(now), "%s was prepared again, differently", path)
		}

		// New claims are served by the restarted plugin: 40 blocks fill
		// other (60 + 40), a whole GPU is one of the restored ones.
		served := time.Now()
		d.startClaimPod("dra-after-kill-b40", blocksTemplateName(40))
		b40 := d.checkClaimPod("dra-after-kill-b40")
		d.startClaimPod("dra-after-kill-gpu", gpusTemplateName(1))
		g1 := d.checkClaimPod("dra-after-kill-gpu")
		t.Logf("after the restart: 40 blocks on GPU %d, a whole GPU %v, both running %s after they were created", b40.gpu, g1.gpus, time.Since(served).Round(time.Millisecond))
		require.NotContains(t, []int{shared, other, extGPU, free[len(free)-1]}, g1.gpus[0])
		for _, s := range d.shares {
			if s.pod != "dra-after-kill-b40" {
				require.NotEqual(t, s.shareID, b40.shareID, "share ID of %s given again", s.pod)
			}
		}
		d.requireOneSpecPerClaim()
	})

	t.Run("per-claim CDI specs are removed when their pods are deleted", func(t *testing.T) {
		d.t = t
		paths := d.allClaimSpecs()
		require.NotEmpty(t, paths)
		d.deletePods()
		for _, p := range paths {
			d.waitFileGone(p)
		}
		left, err := filepath.Glob(filepath.Join(cdiDir, claimSpecPrefix+"*"))
		require.NoError(t, err)
		require.Empty(t, left, "per-claim CDI specs left after every pod is gone")
		t.Logf("all %d per-claim CDI specs removed after their pods were deleted (the last ones unprepared by the restarted plugin)", len(paths))
		d.logKubeletDRAMetrics()
	})
}

// logKubeletDRAMetrics logs how long the kubelet's DRA gRPC calls to the
// plugin took, from the kubelet's own histogram (its buckets start at
// 0.1 s, so only the count and the mean say anything here).
func (d *draRun) logKubeletDRAMetrics() {
	t := d.t
	ops, err := kubeletDRAOps(d.ctx)
	if err != nil {
		t.Logf("kubelet metrics: %v", err)
		return
	}
	for _, method := range []string{"NodePrepareResources", "NodeUnprepareResources"} {
		if o := ops[method]; o.count > 0 {
			t.Logf("kubelet → plugin %s: %d calls, mean %s (kubelet's dra_grpc_operations_duration_seconds)", method, o.count, o.mean().Round(time.Microsecond))
		} else {
			t.Logf("kubelet → plugin %s: no calls in the kubelet's metrics", method)
		}
	}
}

// kubeletMetrics reads the kubelet's /metrics on loopback, as the admin
// (the API server will not proxy to a loopback node address).
func kubeletMetrics(ctx context.Context) ([]byte, error) {
	n, err := cl.Client.CoreV1().Nodes().Get(ctx, fixture.NodeName, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	tlsConfig, err := rest.TLSConfigFor(cl.RESTConfig)
	if err != nil {
		return nil, err
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig}, Timeout: 10 * time.Second}
	url := fmt.Sprintf("https://127.0.0.1:%d/metrics", n.Status.DaemonEndpoints.KubeletEndpoint.Port)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, data)
	}
	return data, nil
}

// grpcMethod finds the DRA gRPC method in a kubelet metric's labels.
var grpcMethod = regexp.MustCompile(`method_name="[^"]*/(Node[A-Za-z]+)"`)

// draRun carries the DRA test's state between its steps.
type draRun struct {
	t       *testing.T
	ctx     context.Context
	pool    *poolWatch
	simAddr string
	uuids   map[int]string // GPU index → UUID, from the slices
	// shares are the blocks allocations seen, by claim UID.
	shares map[string]claimShare
}

type claimShare struct {
	pod     string
	gpu     int
	shareID string
}

// podClaim is what one pod's claim got and what its container saw.
type podClaim struct {
	claim   *resourceapi.ResourceClaim
	gpus    []int // GPU indexes allocated (whole or blocks), sorted
	gpu     int   // for a blocks claim: its GPU
	blocks  int64 // for a blocks claim: consumed blocks
	shareID string
	nodes   []string // /dev/nvidia<N> in the container
	env     map[string]string
}

// checkPool checks the published devices against DESIGN §9 and records
// each GPU's UUID.
func (d *draRun) checkPool(s poolState) {
	t := d.t
	d.uuids = map[int]string{}
	str := func(dev resourceapi.Device, name string) string {
		a, ok := dev.Attributes[resourceapi.QualifiedName(name)]
		require.True(t, ok && a.StringValue != nil, "device %s: string attribute %s missing", dev.Name, name)
		return *a.StringValue
	}
	integer := func(dev resourceapi.Device, name string) int64 {
		a, ok := dev.Attributes[resourceapi.QualifiedName(name)]
		require.True(t, ok && a.IntValue != nil, "device %s: int attribute %s missing", dev.Name, name)
		return *a.IntValue
	}
	for i := range dgxa100GPUs {
		whole, ok := s.devices[gpuDeviceName(i)]
		require.True(t, ok, "device %s missing: %v", gpuDeviceName(i), s.names())
		blocks, ok := s.devices[blocksDeviceName(i)]
		require.True(t, ok, "device %s missing: %v", blocksDeviceName(i), s.names())

		require.Equal(t, "gpu", str(whole, "type"))
		require.Equal(t, int64(i), integer(whole, "index"))
		uuid := str(whole, "uuid")
		require.True(t, strings.HasPrefix(uuid, "GPU-"), uuid)
		d.uuids[i] = uuid
		require.Contains(t, str(whole, "productName"), "A100")
		for _, attr := range []string{"architecture", "pciBusID"} {
			str(whole, attr)
		}
		integer(whole, "numaNode")
		for _, attr := range []string{"cudaComputeCapability", "driverVersion"} {
			a := whole.Attributes[resourceapi.QualifiedName(attr)]
			require.NotNil(t, a.VersionValue, "device %s: version attribute %s missing", whole.Name, attr)
		}
		mem := whole.Capacity["memory"]
		require.Equal(t, int64(a100MemoryMiB)<<20, mem.Value.Value(), "gpu-%d memory", i)

		require.Equal(t, "blocks", str(blocks, "type"))
		require.Equal(t, uuid, str(blocks, "uuid"))
		require.Equal(t, int64(i), integer(blocks, "index"))
		require.True(t, blocks.AllowMultipleAllocations != nil && *blocks.AllowMultipleAllocations, "%s allowMultipleAllocations", blocks.Name)
		bc, ok := blocks.Capacity["blocks"]
		require.True(t, ok, "%s has no blocks capacity", blocks.Name)
		require.Equal(t, int64(blocksPerGPU), bc.Value.Value())
		require.NotNil(t, bc.RequestPolicy, "%s blocks request policy", blocks.Name)
		require.NotNil(t, bc.RequestPolicy.ValidRange)
		require.Equal(t, int64(1), bc.RequestPolicy.ValidRange.Min.Value())
		require.Equal(t, int64(blocksPerGPU), bc.RequestPolicy.ValidRange.Max.Value())
		require.Equal(t, int64(1), bc.RequestPolicy.ValidRange.Step.Value())
		require.Len(t, blocks.Capacity, 1, "a multi-allocatable device carries only blocks: a capacity without a request policy is consumed whole")

		// Whole and blocks exclude each other through the GPU's counters.
		require.NotEmpty(t, whole.ConsumesCounters)
		require.NotEmpty(t, blocks.ConsumesCounters)
		require.Equal(t, whole.ConsumesCounters[0].CounterSet, blocks.ConsumesCounters[0].CounterSet)
		_, ok = s.counters[whole.ConsumesCounters[0].CounterSet]
		require.True(t, ok, "counter set %s not published", whole.ConsumesCounters[0].CounterSet)
		require.Nil(t, s.taint(whole.Name))
		require.Nil(t, s.taint(blocks.Name))
	}
}

func gpuDeviceName(i int) string    { return fmt.Sprintf("gpu-%d", i) }
func blocksDeviceName(i int) string { return fmt.Sprintf("gpu-%d-blocks", i) }

func blocksTemplateName(k int) string { return fmt.Sprintf("dra-blocks-%d", k) }
func gpusTemplateName(n int) string   { return fmt.Sprintf("dra-gpus-%d", n) }

// blocksTemplate creates a ResourceClaimTemplate for k blocks of one GPU.
func (d *draRun) blocksTemplate(k int) {
	d.createTemplate(blocksTemplateName(k), resourceapi.ExactDeviceRequest{
		DeviceClassName: blocksClass,
		Capacity: &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{
			"blocks": *resource.NewQuantity(int64(k), resource.DecimalSI),
		}},
	})
}

// gpusTemplate creates a ResourceClaimTemplate for n whole GPUs.
func (d *draRun) gpusTemplate(n int) {
	d.createTemplate(gpusTemplateName(n), resourceapi.ExactDeviceRequest{
		DeviceClassName: gpuClass,
		AllocationMode:  resourceapi.DeviceAllocationModeExactCount,
		Count:           int64(n),
	})
}

func (d *draRun) createTemplate(name string, req resourceapi.ExactDeviceRequest) {
	tmpl := &resourceapi.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: podNamespace, Labels: map[string]string{draLabel: "dra"}},
		Spec: resourceapi.ResourceClaimTemplateSpec{Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
			Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &req}},
		}}},
	}
	_, err := cl.Client.ResourceV1().ResourceClaimTemplates(podNamespace).Create(d.ctx, tmpl, metav1.CreateOptions{})
	require.NoError(d.t, err)
}

// draScript is devicesScript for pods that end on SIGTERM at once.
const draScript = `echo "devices: $(cd /dev && ls -d nvidia* 2>/dev/null | tr '\n' ' ')"; env | grep -E '^(NVIDIA|GPUBLOCKS|CUDA)_' | sort; echo ` + devicesEnd + `; trap 'exit 0' TERM; sleep 1000000 & wait`

// draPod is a busybox pod for the DRA test, deleted gracefully: a pod
// deleted with a zero grace period leaves the API at once, so its claims
// are released (and may be allocated again) while the kubelet has yet to
// stop its container and unprepare them; the plugin then rightly refuses
// the new claim's prepare until the old unprepare arrives. With a grace
// period the kubelet unprepares before the pod's status changes, as for
// any pod a user deletes.
func draPod(name string, resources map[string]int64) *v1.Pod {
	pod := fixture.BusyboxPod(podNamespace, name, draScript, resources)
	pod.Labels = map[string]string{draLabel: "dra"}
	grace := int64(30)
	pod.Spec.TerminationGracePeriodSeconds = &grace
	return pod
}

// startClaimPod creates a busybox pod with one claim from a template; it
// does not wait.
func (d *draRun) startClaimPod(name, template string) {
	pod := draPod(name, nil)
	pod.Spec.ResourceClaims = []v1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: &template}}
	pod.Spec.Containers[0].Resources.Claims = []v1.ResourceClaim{{Name: "gpu"}}
	_, err := cl.Client.CoreV1().Pods(podNamespace).Create(d.ctx, pod, metav1.CreateOptions{})
	require.NoError(d.t, err)
}

// runExtendedResourcePod runs a pod asking n nvidia.com/gpu, which the
// scheduler serves through the DeviceClass's extendedResourceName with a
// claim of its own, and checks it like a claim pod.
func (d *draRun) runExtendedResourcePod(name string, n int64) podClaim {
	pod := draPod(name, map[string]int64{gpuResource: n})
	_, err := cl.Client.CoreV1().Pods(podNamespace).Create(d.ctx, pod, metav1.CreateOptions{})
	require.NoError(d.t, err)
	pc := d.checkClaimPod(name)
	require.Len(d.t, pc.gpus, int(n))
	return pc
}

func (d *draRun) getPod(name string) *v1.Pod {
	p, err := cl.Client.CoreV1().Pods(podNamespace).Get(d.ctx, name, metav1.GetOptions{})
	require.NoError(d.t, err)
	return p
}

// podClaim returns the pod's ResourceClaim: the one made from its template,
// or the scheduler's claim for its extended resources.
func (d *draRun) podClaim(p *v1.Pod) *resourceapi.ResourceClaim {
	t := d.t
	var name string
	if s := p.Status.ExtendedResourceClaimStatus; s != nil {
		name = s.ResourceClaimName
	}
	for _, s := range p.Status.ResourceClaimStatuses {
		if s.ResourceClaimName != nil {
			name = *s.ResourceClaimName
		}
	}
	if name == "" {
		// The resourceclaim controller fills the status shortly after
		// the pod is created.
		require.NoError(t, cl.Wait(d.ctx, "pod "+p.Name+"'s claim created", podTimeout, func(ctx context.Context) (bool, error) {
			got, err := cl.Client.CoreV1().Pods(podNamespace).Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			for _, s := range got.Status.ResourceClaimStatuses {
				if s.ResourceClaimName != nil {
					name = *s.ResourceClaimName
				}
			}
			return name != "", nil
		}))
	}
	c, err := cl.Client.ResourceV1().ResourceClaims(podNamespace).Get(d.ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	return c
}

// checkClaimPod waits until the pod runs and has printed its devices, then
// checks its claim's allocation against what the container sees: exactly
// the /dev/nvidia<N> of the allocated GPUs (through the base CDI spec),
// and for blocks the share's environment, which the per-claim CDI spec on
// the node carries too.
func (d *draRun) checkClaimPod(name string) podClaim {
	t := d.t
	t.Helper()
	_, err := cl.WaitPod(d.ctx, podNamespace, name, podTimeout, func(p *v1.Pod) bool { return p.Status.Phase == v1.PodRunning })
	require.NoError(t, err)
	var logs string
	require.NoError(t, cl.Wait(d.ctx, "pod "+name+" printed its devices", podTimeout, func(ctx context.Context) (bool, error) {
		logs, err = cl.Logs(ctx, podNamespace, name, "main")
		return err == nil && strings.Contains(logs, devicesEnd), nil
	}))
	p := d.getPod(name)
	pc := podClaim{claim: d.podClaim(p), env: map[string]string{}, gpu: -1}
	for _, line := range strings.Split(logs, "\n") {
		if rest, ok := strings.CutPrefix(line, "devices:"); ok {
			for _, f := range strings.Fields(rest) {
				if gpuNode.MatchString(f) {
					pc.nodes = append(pc.nodes, f)
				}
			}
		} else if k, v, ok := strings.Cut(line, "="); ok {
			pc.env[k] = v
		}
	}
	sort.Strings(pc.nodes)

	alloc := pc.claim.Status.Allocation
	require.NotNil(t, alloc, "claim %s of running pod %s is not allocated", pc.claim.Name, name)
	var uuids []string
	blocksResults := 0
	for _, r := range alloc.Devices.Results {
		require.Equal(t, draDriver, r.Driver)
		require.Equal(t, fixture.NodeName, r.Pool)
		m := draDevice.FindStringSubmatch(r.Device)
		require.NotNil(t, m, "claim %s got device %s, not a GPU or its blocks", pc.claim.Name, r.Device)
		i, _ := strconv.Atoi(m[1])
		pc.gpus = append(pc.gpus, i)
		uuids = append(uuids, d.uuids[i])
		if m[2] != "" {
			blocksResults++
			pc.gpu = i
			q, ok := r.ConsumedCapacity["blocks"]
			require.True(t, ok, "claim %s: no consumed blocks in %+v", pc.claim.Name, r)
			pc.blocks = q.Value()
			require.NotNil(t, r.ShareID, "claim %s: a blocks allocation has a share ID", pc.claim.Name)
			pc.shareID = string(*r.ShareID)
		}
	}
	sort.Ints(pc.gpus)
	want := wantNodes(t, uuids)
	t.Logf("pod %s: claim %s allocated %s; sees /dev/%s (want %v); env %v", name, pc.claim.Name, describeResults(alloc.Devices.Results), strings.Join(pc.nodes, " /dev/"), want, pc.env)
	require.Equal(t, want, pc.nodes, "the container must see exactly the GPUs its claim was allocated")
	require.Equal(t, "void", pc.env["NVIDIA_VISIBLE_DEVICES"], "a legacy NVIDIA hook must inject nothing more")

	specEnv, haveSpec := d.claimSpecEnv(pc.claim)
	if blocksResults > 0 {
		require.Equal(t, 1, blocksResults, "one blocks request per test claim")
		require.True(t, haveSpec, "claim %s of running pod %s has no CDI spec %s", pc.claim.Name, name, d.claimSpecPath(pc.claim))
		k := pc.blocks
		wantEnv := map[string]string{
			"GPUBLOCKS_BLOCKS":                  strconv.FormatInt(k, 10),
			"GPUBLOCKS_GPU_UUID":                d.uuids[pc.gpu],
			"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": strconv.FormatInt(k, 10),
			"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT":  fmt.Sprintf("0=%dM", int64(a100MemoryMiB)*k/blocksPerGPU),
			"GPUBLOCKS_SHARE_ID":                pc.shareID,
		}
		for key, v := range wantEnv {
			require.Equal(t, v, pc.env[key], "pod %s: %s", name, key)
			require.Equal(t, v, specEnv[key], "claim %s's CDI spec: %s", pc.claim.Name, key)
		}
		d.shares[string(pc.claim.UID)] = claimShare{pod: name, gpu: pc.gpu, shareID: pc.shareID}
	} else {
		for _, key := range []string{"GPUBLOCKS_BLOCKS", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"} {
			require.NotContains(t, pc.env, key, "pod %s holds whole GPUs, not blocks", name)
		}
		if got, ok := pc.env["GPUBLOCKS_GPU_UUID"]; ok {
			var want []string
			for _, g := range pc.gpus {
				want = append(want, d.uuids[g])
			}
			require.Equal(t, strings.Join(want, ","), got, "pod %s: GPUBLOCKS_GPU_UUID names its GPUs in index order", name)
			require.Equal(t, got, specEnv["GPUBLOCKS_GPU_UUID"], "claim %s's CDI spec: GPUBLOCKS_GPU_UUID", pc.claim.Name)
		}
	}
	return pc
}

// claimSpecPath is where gpublocks writes a claim's CDI spec on the node.
func (d *draRun) claimSpecPath(c *resourceapi.ResourceClaim) string {
	return filepath.Join(cdiDir, claimSpecPrefix+string(c.UID)+".yaml")
}

// claimSpecsOf returns the per-claim CDI specs of a pod's claims that
// exist on the node.
func (d *draRun) claimSpecsOf(p *v1.Pod) []string {
	path := d.claimSpecPath(d.podClaim(p))
	if _, err := os.Stat(path); err != nil {
		return nil
	}
	return []string{path}
}

// cdiSpecFile is the part of a CDI spec the test reads.
type cdiSpecFile struct {
	Kind    string `json:"kind"`
	Devices []struct {
		Name           string `json:"name"`
		ContainerEdits struct {
			Env         []string `json:"env"`
			DeviceNodes []struct {
				Path string `json:"path"`
			} `json:"deviceNodes"`
		} `json:"containerEdits"`
	} `json:"devices"`
}

// claimSpecEnv reads a prepared claim's CDI spec: kind gpublocks.io/claim,
// one device per request named <claim-uid>-<request>, mode 0644, and
// returns the environment its devices set, and whether the spec exists (a
// claim of whole GPUs may have none: it has no environment of its own).
func (d *draRun) claimSpecEnv(c *resourceapi.ResourceClaim) (map[string]string, bool) {
	t := d.t
	path := d.claimSpecPath(c)
	env := map[string]string{}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return env, false
	}
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), fi.Mode().Perm(), "%s mode", path)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var spec cdiSpecFile
	require.NoError(t, yaml.Unmarshal(data, &spec), path)
	require.Equal(t, claimKind, spec.Kind, path)
	var names []string
	for _, dev := range spec.Devices {
		names = append(names, dev.Name)
		require.Empty(t, dev.ContainerEdits.DeviceNodes, "%s: a claim's device carries environment only; device nodes come from the GPU's device", path)
		for _, kv := range dev.ContainerEdits.Env {
			if k, v, ok := strings.Cut(kv, "="); ok {
				env[k] = v
			}
		}
	}
	for _, r := range c.Status.Allocation.Devices.Results {
		require.Contains(t, names, string(c.UID)+"-"+r.Request, "%s: device for request %s", path, r.Request)
	}
	return env, true
}

// allClaimSpecs lists the per-claim CDI specs on the node.
func (d *draRun) allClaimSpecs() []string {
	paths, err := filepath.Glob(filepath.Join(cdiDir, claimSpecPrefix+"*.yaml"))
	require.NoError(d.t, err)
	return paths
}

// requireOneSpecPerClaim checks that every per-claim CDI spec on the node
// belongs to a live, allocated claim: none left behind, none made twice.
func (d *draRun) requireOneSpecPerClaim() {
	t := d.t
	claims, err := cl.Client.ResourceV1().ResourceClaims(podNamespace).List(d.ctx, metav1.ListOptions{})
	require.NoError(t, err)
	live := map[string]bool{}
	for _, c := range claims.Items {
		if c.Status.Allocation != nil {
			live[d.claimSpecPath(&c)] = true
		}
	}
	for _, p := range d.allClaimSpecs() {
		require.True(t, live[p], "CDI spec %s belongs to no allocated claim", p)
	}
}

// waitFileGone waits until path no longer exists.
func (d *draRun) waitFileGone(path string) {
	require.NoError(d.t, cl.Wait(d.ctx, path+" removed", podTimeout, func(context.Context) (bool, error) {
		_, err := os.Stat(path)
		return errors.Is(err, os.ErrNotExist), nil
	}))
}

// waitUnschedulable waits until the scheduler reports the pod
// unschedulable, and checks it was never bound: a pod the scheduler cannot
// place must wait in the queue, not reach the kubelet and fail there.
func (d *draRun) waitUnschedulable(name string) *v1.Pod {
	t := d.t
	p, err := cl.WaitPod(d.ctx, podNamespace, name, podTimeout, func(p *v1.Pod) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == v1.PodScheduled && c.Status == v1.ConditionFalse && c.Reason == v1.PodReasonUnschedulable {
				return true
			}
		}
		return false
	})
	require.NoError(t, err)
	require.Empty(t, p.Spec.NodeName, "pod %s was bound though its claim fits no GPU", name)
	require.Equal(t, v1.PodPending, p.Status.Phase)
	return p
}

func unschedulableMessage(p *v1.Pod) string {
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodScheduled {
			return c.Message
		}
	}
	return ""
}

// requireNoAdmissionFailure checks the pod's events: the kubelet never
// refused or failed it (only the scheduler's FailedScheduling may appear).
func (d *draRun) requireNoAdmissionFailure(name string) {
	events, err := cl.Client.CoreV1().Events(podNamespace).List(d.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	require.NoError(d.t, err)
	for _, e := range events.Items {
		if e.Type == v1.EventTypeWarning {
			require.Equal(d.t, "FailedScheduling", e.Reason, "pod %s: %s", name, e.Message)
		}
	}
}

// pluginPID returns the host PID of the plugin process in the DaemonSet
// pod (a real process: the container's entrypoint is gpublocks itself,
// which DRA mode replaces with gpublocks-dra by exec).
func (d *draRun) pluginPID(p *v1.Pod) int {
	t := d.t
	require.NotEmpty(t, p.Status.ContainerStatuses, "pod %s has no container status", p.Name)
	pid, err := cl.ContainerPID(d.ctx, p.Status.ContainerStatuses[0].ContainerID)
	require.NoError(t, err)
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	require.NoError(t, err)
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	// gpublocks execs gpublocks-dra for --kubelet-api dra: same process.
	exe := filepath.Base(args[0])
	require.True(t, len(args) > 1 && (exe == "gpublocks" || exe == "gpublocks-dra") && args[1] == "serve", "pid %d is %q, not gpublocks serve", pid, args)
	return pid
}

// processStart returns when a process started, from /proc (10 ms
// resolution: the kernel counts in USER_HZ, 100 on Linux).
func processStart(pid int) (time.Time, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return time.Time{}, err
	}
	uptime, err := os.ReadFile("/proc/uptime")
	now := time.Now()
	if err != nil {
		return time.Time{}, err
	}
	// Fields after the command name, which is in parentheses and may
	// hold spaces; starttime is field 22 of the line, 20 after ")".
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return time.Time{}, fmt.Errorf("/proc/%d/stat: unexpected format %q", pid, stat)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 {
		return time.Time{}, fmt.Errorf("/proc/%d/stat: unexpected format %q", pid, stat)
	}
	ticks, err := strconv.ParseInt(f[19], 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("/proc/%d/stat starttime: %w", pid, err)
	}
	up, err := strconv.ParseFloat(strings.Fields(string(uptime))[0], 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("/proc/uptime: %w", err)
	}
	age := time.Duration((up - float64(ticks)/100) * float64(time.Second))
	return now.Add(-age), nil
}

// simulate POSTs a fault to the plugin's simulated GPUs (gpu/sim's
// /simulate/<what>?gpu=N[&xid=X]).
func (d *draRun) simulate(what string, gpu int, xid string) {
	t := d.t
	url := fmt.Sprintf("http://%s/simulate/%s?gpu=%d", d.simAddr, what, gpu)
	if xid != "" && what == "xid" {
		url += "&xid=" + xid
	}
	resp, err := http.Post(url, "", nil)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "POST %s: %s", url, body)
}

// inject faults a GPU (what: "xid" with an XID, or "lost") and returns how
// long until both its devices carried the unhealthy taint in a complete
// pool served by the API server.
func (d *draRun) inject(gpu int, what, xid string) time.Duration {
	t := d.t
	state := d.pool.current()
	require.Nil(t, state.taint(gpuDeviceName(gpu)), "GPU %d already tainted", gpu)
	start := time.Now()
	d.simulate(what, gpu, xid)
	s := d.pool.waitSince(t, fmt.Sprintf("GPU %d tainted after %s %s", gpu, what, xid), start, changeTimeout, func(s poolState) bool {
		return s.taint(gpuDeviceName(gpu)) != nil && s.taint(blocksDeviceName(gpu)) != nil
	})
	taint := s.taint(gpuDeviceName(gpu))
	require.Contains(t, taint.Value, xid, "the taint's value names the XID")
	require.Equal(t, resourceapi.DeviceTaintEffectNoSchedule, taint.Effect)
	for n := range s.devices {
		if m := draDevice.FindStringSubmatch(n); m != nil && m[1] != strconv.Itoa(gpu) && s.taint(n) != nil && state.taint(n) == nil {
			require.Failf(t, "taint on the wrong GPU", "an XID on GPU %d tainted %s", gpu, n)
		}
	}
	took := s.at.Sub(start)
	t.Logf("%s on GPU %d: %s=%s:%s on %s and %s after %s", what+" "+xid, gpu, taint.Key, taint.Value, taint.Effect, gpuDeviceName(gpu), blocksDeviceName(gpu), took.Round(time.Microsecond))
	return took
}

// deletePods deletes the DRA test's pods and waits until they are gone.
func (d *draRun) deletePods() {
	require.NoError(d.t, deleteDRAPods(d.ctx))
}

// deleteDRAPods deletes every pod of the DRA test at once (each ends
// gracefully, which takes the kubelet a moment) and waits until all are
// gone.
func deleteDRAPods(ctx context.Context) error {
	pods, err := cl.Client.CoreV1().Pods(podNamespace).List(ctx, metav1.ListOptions{LabelSelector: draLabel + "=dra"})
	if err != nil {
		return err
	}
	for _, p := range pods.Items {
		if err := cl.Client.CoreV1().Pods(podNamespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return cl.Wait(ctx, "the DRA test's pods gone", podTimeout, func(ctx context.Context) (bool, error) {
		left, err := cl.Client.CoreV1().Pods(podNamespace).List(ctx, metav1.ListOptions{LabelSelector: draLabel + "=dra"})
		return err == nil && len(left.Items) == 0, nil
	})
}

// cleanupDRA leaves the cluster as the test found it: pods, claim
// templates and the release gone, then the node's slices of the driver.
// readyForDRA waits until no plugin pod of an earlier test is left (two
// plugins must never share the node's CDI directory), imports the image,
// labels the node for the DaemonSet and starts watching its pool.
func readyForDRA(t *testing.T, ctx context.Context) *poolWatch {
	t.Helper()
	require.NoError(t, cl.Wait(ctx, "no plugin pod left in "+namespace, podTimeout, func(ctx context.Context) (bool, error) {
		pods, err := cl.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
		return err == nil && len(pods.Items) == 0, nil
	}))
	require.NoError(t, cl.ImportImage(ctx, imageArchive))
	require.NoError(t, cl.LabelNode(ctx, map[string]string{"gpublocks.io/enabled": "true"}))
	return startPoolWatch(t, ctx)
}

// draValues are the chart values of a DRA-mode install with args: the
// plugin on the host network (the test reaches fault injection on
// loopback), told where the API server is, metrics on a free port.
func draValues(t *testing.T, args ...string) map[string]any {
	return map[string]any{
		"kubeletAPI":  "dra",
		"extraArgs":   args,
		"hostNetwork": true,
		"extraEnv": []map[string]string{
			{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
			{"name": "KUBERNETES_SERVICE_PORT", "value": strconv.Itoa(cl.APIServerPort)},
		},
		"metrics": map[string]any{"port": freePort(t)},
	}
}

func cleanupDRA(t *testing.T, ctx context.Context) {
	sel := metav1.ListOptions{LabelSelector: draLabel + "=dra"}
	if err := deleteDRAPods(ctx); err != nil {
		t.Errorf("cleanup: %v", err)
	}
	if err := cl.Client.ResourceV1().ResourceClaimTemplates(podNamespace).DeleteCollection(ctx, metav1.DeleteOptions{}, sel); err != nil {
		t.Errorf("cleanup: claim templates: %v", err)
	}
	if out, err := cl.Helm(ctx, "uninstall", release, "--namespace", namespace, "--wait", "--ignore-not-found"); err != nil {
		t.Errorf("cleanup: %v\n%s", err, out)
	}
	if err := cl.Wait(ctx, "the plugin pod gone", podTimeout, func(ctx context.Context) (bool, error) {
		pods, err := cl.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
		return err == nil && len(pods.Items) == 0, nil
	}); err != nil {
		t.Errorf("cleanup: %v", err)
	}
	err := cl.Client.ResourceV1().ResourceSlices().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{FieldSelector: "spec.driver=" + draDriver})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("cleanup: ResourceSlices: %v", err)
	}
}

// waitNoDevicePluginGPUs waits until the node offers no nvidia.com/gpu
// of a device plugin (absent, or zero allocatable).
func waitNoDevicePluginGPUs(t *testing.T, ctx context.Context) {
	t.Helper()
	start := time.Now()
	require.NoError(t, cl.Wait(ctx, "no device-plugin "+gpuResource+" allocatable on the node", changeTimeout, func(ctx context.Context) (bool, error) {
		_, allocatable, err := cl.NodeResources(ctx, gpuResource)
		return err == nil && allocatable[gpuResource] == 0, nil
	}))
	if waited := time.Since(start); waited > time.Second {
		t.Logf("waited %s for the node's device-plugin %s to go", waited.Round(time.Millisecond), gpuResource)
	}
}

// describeResults renders allocation results for the log.
func describeResults(results []resourceapi.DeviceRequestAllocationResult) string {
	var out []string
	for _, r := range results {
		s := r.Device
		if q, ok := r.ConsumedCapacity["blocks"]; ok {
			s += fmt.Sprintf(" (%s blocks", q.String())
			if r.ShareID != nil {
				s += ", share " + string(*r.ShareID)
			}
			s += ")"
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}

// percentile returns the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := (p*len(s) + 99) / 100
	return s[max(rank, 1)-1]
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Microsecond)
	}
	return out
}
