package cluster

import (
	"context"
	"fmt"
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
	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpublocks/gpublocks/tests/cluster/fixture"
)

const (
	// migParent is the simulated GPU with MIG enabled and no instances;
	// GPUs 0 and 2 around it have MIG off, so a container that sees
	// another GPU's node is caught whichever way an index is off.
	migParent = 1
	// migSimulation is the --simulate file of TestDRAMIG: `mig: []` is MIG
	// on with no instances (gpu/sim), so every placement is free.
	migSimulation = `gpus:
  - model: A100-SXM4-80GB
  - model: A100-SXM4-80GB
    mig: []
  - model: A100-SXM4-80GB
`
	// migProfile is the profile the test's claim asks for, and
	// a100Placements1g how many placements NVML reports for it on an A100
	// (memory slices 0 to 6).
	migProfile       = "1g.10gb"
	a100Placements1g = 7

	// The driver's mig-minors table (/proc/driver/nvidia-caps/mig-minors):
	// config is minor 1, monitor 2, then per GPU 15 GPU instances, each
	// its access minor followed by those of its 8 compute instances. The
	// simulation numbers its capability nodes the same way.
	migMinorsFirstGI = 3
	migMinorsPerGI   = 1 + 8
	migMinorsPerGPU  = 15 * migMinorsPerGI
)

// migDevice1g matches the pool's devices for the 1g.10gb placements of the
// MIG GPU: gpu-1-mig-1g-10gb-<start> (not 1g.10gb+me, …-1g-10gb-me-<start>).
var migDevice1g = regexp.MustCompile(`^gpu-` + strconv.Itoa(migParent) + `-mig-1g-10gb-([0-9]+)$`)

// capNode matches a MIG capability node as a container lists it.
var capNode = regexp.MustCompile(`^nvidia-caps/nvidia-cap([0-9]+)$`)

// migScript lists the container's GPU device nodes, its MIG capability
// nodes and its environment, then waits for SIGTERM.
const migScript = `echo "devices: $(cd /dev && ls -d nvidia* nvidia-caps/* 2>/dev/null | tr '\n' ' ')"; env | grep -E '^(NVIDIA|GPUBLOCKS|CUDA)_' | sort; echo ` + devicesEnd + `; trap 'exit 0' TERM; sleep 1000000 & wait`

// TestDRAMIG installs the chart in DRA mode on a simulated A100 with MIG
// enabled and no instances, and follows one 1g.10gb claim through the real
// scheduler, kubelet and containerd (DESIGN §9, §10): the pool offers every
// free placement without a uuid; the prepare creates the instance, whose
// MIG UUID the placement's device then carries; the container sees its
// parent GPU's node and the instance's two capability nodes, nothing of
// another GPU; deleting the pod destroys the instance and the placement is
// offered again as it was.
func TestDRAMIG(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	chart, err := filepath.Abs(filepath.Join(repoRoot, "deployments", "helm", "gpublocks"))
	require.NoError(t, err)
	testStart := time.Now()

	// The simulation file is on the host, which the chart mounts read-only
	// at /host (hostPath /, recursively): no volume of its own is needed.
	simFile := filepath.Join(t.TempDir(), "simulation.yaml")
	require.NoError(t, os.WriteFile(simFile, []byte(migSimulation), 0o644))

	t.Cleanup(func() {
		if t.Failed() {
			logPluginLog(t, ctx)
		}
		logWarnings(t, ctx, namespace, podNamespace)
		cleanupDRA(t, ctx)
		t.Logf("TestDRAMIG took %s", time.Since(testStart).Round(time.Millisecond))
	})

	pool := readyForDRA(t, ctx)
	d := &draRun{t: t, ctx: ctx, pool: pool, shares: map[string]claimShare{}}

	var offered poolState // the pool before any claim
	var parentUUID string
	t.Run("the MIG GPU offers every free 1g.10gb placement without a uuid", func(t *testing.T) {
		d.t = t
		out, err := cl.InstallChart(ctx, release, namespace, chart, draValues(t, "--simulate=/host"+simFile))
		require.NoError(t, err, out)
		dsPod := waitDaemonSetReady(t, ctx, "")
		began, err := processStart(d.pluginPID(dsPod))
		require.NoError(t, err)
		offered = pool.waitSince(t, "GPUs 0 and 2 whole and as blocks, the MIG GPU's 1g.10gb placements", began, changeTimeout, func(s poolState) bool {
			_, whole0 := s.devices[gpuDeviceName(0)]
			_, whole2 := s.devices[gpuDeviceName(2)]
			return whole0 && whole2 && len(placements1g(s)) > 0
		})
		t.Logf("pool published %s after the plugin process started: %d devices %v",
			offered.at.Sub(began).Round(time.Millisecond), len(offered.devices), offered.names())

		// A MIG-enabled GPU is offered as MIG devices only (DESIGN §10).
		for _, name := range []string{gpuDeviceName(migParent), blocksDeviceName(migParent)} {
			require.NotContains(t, offered.devices, name, "a MIG-enabled GPU is offered neither whole nor as blocks")
		}
		starts := placements1g(offered)
		require.Len(t, starts, a100Placements1g, "an A100 with no instances has %d free %s placements: %v", a100Placements1g, migProfile, offered.names())
		for _, start := range starts {
			dev := offered.devices[migDeviceName(start)]
			require.Equal(t, "mig", attrString(t, dev, "type"), dev.Name)
			require.Equal(t, migProfile, attrString(t, dev, "profile"), dev.Name)
			require.Equal(t, int64(migParent), attrInt(t, dev, "parentIndex"), dev.Name)
			require.Equal(t, int64(start), attrInt(t, dev, "placementStart"), dev.Name)
			require.Equal(t, int64(1), attrInt(t, dev, "placementSize"), dev.Name)
			_, has := dev.Attributes["uuid"]
			require.False(t, has, "device %s: a placement without an instance has no uuid", dev.Name)
			require.Nil(t, offered.taint(dev.Name), dev.Name)
			pu := attrString(t, dev, "parentUUID")
			require.True(t, parentUUID == "" || parentUUID == pu, "device %s: parentUUID %s, others %s", dev.Name, pu, parentUUID)
			parentUUID = pu
		}
		require.True(t, strings.HasPrefix(parentUUID, "GPU-"), parentUUID)
	})
	require.NotEmpty(t, parentUUID, "the pool was never published")

	d.createTemplate("dra-mig-1g", resourceapi.ExactDeviceRequest{
		DeviceClassName: migClass,
		Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
			Expression: fmt.Sprintf(`device.attributes[%q].profile == %q`, draDriver, migProfile),
		}}},
	})

	const podName = "dra-mig-1g"
	var device, migUUID string
	var claim *resourceapi.ResourceClaim
	t.Run("a claim for one 1g.10gb creates the instance: its device gets a uuid, the container sees its parent's node and its caps", func(t *testing.T) {
		d.t = t
		before, err := kubeletDRAOps(ctx)
		require.NoError(t, err)
		pod := migPod(podName, "dra-mig-1g")
		created := time.Now()
		_, err = cl.Client.CoreV1().Pods(podNamespace).Create(ctx, pod, metav1.CreateOptions{})
		require.NoError(t, err)
		_, err = cl.WaitPod(ctx, podNamespace, podName, podTimeout, func(p *v1.Pod) bool { return p.Status.Phase == v1.PodRunning })
		require.NoError(t, err)
		running := time.Since(created)

		claim = d.podClaim(d.getPod(podName))
		require.NotNil(t, claim.Status.Allocation, "claim %s of running pod %s is not allocated", claim.Name, podName)
		results := claim.Status.Allocation.Devices.Results
		require.Len(t, results, 1, "one device for one request")
		r := results[0]
		require.Equal(t, draDriver, r.Driver)
		require.Equal(t, fixture.NodeName, r.Pool)
		m := migDevice1g.FindStringSubmatch(r.Device)
		require.NotNil(t, m, "claim %s got %s, not a %s placement of GPU %d", claim.Name, r.Device, migProfile, migParent)
		device = r.Device
		start, _ := strconv.Atoi(m[1])

		// The prepare rescans before it answers, so the instance's
		// device is republished with its MIG UUID.
		s := pool.waitSince(t, device+" carries the uuid of its instance", created, changeTimeout, func(s poolState) bool {
			dev, ok := s.devices[device]
			if !ok {
				return false
			}
			a, ok := dev.Attributes["uuid"]
			return ok && a.StringValue != nil
		})
		dev := s.devices[device]
		migUUID = attrString(t, dev, "uuid")
		require.True(t, strings.HasPrefix(migUUID, "MIG-"), "device %s: uuid %s is not a MIG device's", device, migUUID)
		require.Equal(t, migProfile, attrString(t, dev, "profile"))
		require.Equal(t, parentUUID, attrString(t, dev, "parentUUID"))
		require.Equal(t, int64(start), attrInt(t, dev, "placementStart"))
		// The other 1g.10gb placements stay free; no placement that
		// overlaps the instance's memory slice is offered.
		for n, other := range s.devices {
			if n == device || !strings.HasPrefix(n, fmt.Sprintf("gpu-%d-mig-", migParent)) {
				continue
			}
			_, has := other.Attributes["uuid"]
			require.False(t, has, "device %s has an instance, but only %s was claimed", n, device)
			ps, psize := attrInt(t, other, "placementStart"), attrInt(t, other, "placementSize")
			require.False(t, ps <= int64(start) && int64(start) < ps+psize, "device %s overlaps %s's instance at slice %d, yet is offered", n, device, start)
		}
		require.Len(t, placements1g(s), a100Placements1g, "the instance's device and the six other %s placements", migProfile)

		// The container: exactly the parent's /dev/nvidia<N> and the
		// instance's GPU-instance and compute-instance capability nodes,
		// as the base CDI spec's device for the MIG UUID lists them.
		var logs string
		require.NoError(t, cl.Wait(ctx, "pod "+podName+" printed its devices", podTimeout, func(ctx context.Context) (bool, error) {
			logs, err = cl.Logs(ctx, podNamespace, podName, "main")
			return err == nil && strings.Contains(logs, devicesEnd), nil
		}))
		gpus, caps, env := parseMIGLog(logs)
		t.Logf("pod %s: claim %s allocated %s (instance %s); sees /dev/%s and /dev/%s; env %v",
			podName, claim.Name, device, migUUID, strings.Join(gpus, " /dev/"), strings.Join(caps, " /dev/"), env)
		require.Equal(t, []string{"nvidia" + strconv.Itoa(migParent)}, gpus, "the MIG device's parent GPU's node, no other GPU's (the simulation gives GPU i minor i)")
		seen := append(slices.Clone(gpus), caps...)
		sort.Strings(seen)
		require.Equal(t, wantNodes(t, []string{migUUID}), seen, "the nodes of %s in %s", migUUID, cdiSpec)
		requireMIGCaps(t, caps, migParent)
		require.Equal(t, "void", env["NVIDIA_VISIBLE_DEVICES"], "a legacy NVIDIA hook must inject nothing more")
		require.Equal(t, parentUUID, env["GPUBLOCKS_GPU_UUID"], "a MIG device's GPUBLOCKS_GPU_UUID names its parent")
		require.NotContains(t, env, "GPUBLOCKS_BLOCKS", "a MIG slice is not blocks")
		_, haveSpec := d.claimSpecEnv(claim)
		require.True(t, haveSpec, "claim %s has no CDI spec %s", claim.Name, d.claimSpecPath(claim))

		after, err := kubeletDRAOps(ctx)
		require.NoError(t, err)
		prep := after["NodePrepareResources"].since(before["NodePrepareResources"])
		t.Logf("MIG claim %s: kubelet → plugin NodePrepareResources (creates the instance, rescans, republishes): %s over %d call(s) (kubelet's dra_grpc_operations_duration_seconds); "+
			"pod created → Running %s (200 ms polls); pod created → uuid visible through the API server %s",
			migProfile, prep.mean().Round(time.Microsecond), prep.count, running.Round(time.Millisecond), s.at.Sub(created).Round(time.Millisecond))
		require.Positive(t, prep.count, "the kubelet recorded no NodePrepareResources call")
	})
	require.NotEmpty(t, migUUID, "no MIG instance was created")

	t.Run("deleting the pod destroys the instance: the placement is offered again without a uuid", func(t *testing.T) {
		d.t = t
		before, err := kubeletDRAOps(ctx)
		require.NoError(t, err)
		spec := d.claimSpecPath(claim)
		deleted := time.Now()
		require.NoError(t, cl.Client.CoreV1().Pods(podNamespace).Delete(ctx, podName, metav1.DeleteOptions{}))
		// The unprepare destroys the instance and rescans: the pool is
		// back to what it offered before the claim.
		s := pool.waitSince(t, device+" without a uuid, the pool as before the claim", deleted, changeTimeout, func(s poolState) bool {
			dev, ok := s.devices[device]
			if !ok {
				return false
			}
			_, has := dev.Attributes["uuid"]
			return !has && slices.Equal(s.names(), offered.names())
		})
		t.Logf("instance %s destroyed: %s without a uuid, the pool as before the claim (%d devices), %s after the pod's deletion (30 s grace; the container ends on SIGTERM)",
			migUUID, device, len(s.devices), s.at.Sub(deleted).Round(time.Millisecond))
		require.NoError(t, cl.Wait(ctx, "pod "+podName+" gone", podTimeout, func(ctx context.Context) (bool, error) {
			_, err := cl.Client.CoreV1().Pods(podNamespace).Get(ctx, podName, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		}))
		d.waitFileGone(spec)
		data, err := os.ReadFile(cdiSpec)
		require.NoError(t, err)
		require.NotContains(t, string(data), migUUID, "%s still names the destroyed instance", cdiSpec)

		after, err := kubeletDRAOps(ctx)
		require.NoError(t, err)
		unprep := after["NodeUnprepareResources"].since(before["NodeUnprepareResources"])
		t.Logf("MIG claim %s: kubelet → plugin NodeUnprepareResources (destroys the instance, rescans): %s over %d call(s)",
			migProfile, unprep.mean().Round(time.Microsecond), unprep.count)
	})
}

// migPod is a busybox pod whose container lists its GPU and MIG
// capability nodes, with one claim from template; deleted gracefully, as
// draPod says why.
func migPod(name, template string) *v1.Pod {
	pod := fixture.BusyboxPod(podNamespace, name, migScript, nil)
	pod.Labels = map[string]string{draLabel: "dra"}
	grace := int64(30)
	pod.Spec.TerminationGracePeriodSeconds = &grace
	pod.Spec.ResourceClaims = []v1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: &template}}
	pod.Spec.Containers[0].Resources.Claims = []v1.ResourceClaim{{Name: "gpu"}}
	return pod
}

// parseMIGLog reads migScript's output: the GPU nodes (nvidia<N>) and
// capability nodes (nvidia-caps/nvidia-cap<M>), each sorted, and the
// environment.
func parseMIGLog(logs string) (gpus, caps []string, env map[string]string) {
	env = map[string]string{}
	for _, line := range strings.Split(logs, "\n") {
		if rest, ok := strings.CutPrefix(line, "devices:"); ok {
			for _, f := range strings.Fields(rest) {
				switch {
				case gpuNode.MatchString(f):
					gpus = append(gpus, f)
				case capNode.MatchString(f):
					caps = append(caps, f)
				}
			}
		} else if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	sort.Strings(gpus)
	sort.Strings(caps)
	return gpus, caps, env
}

// requireMIGCaps checks that caps are one GPU instance's access node and
// one of its compute instances' on GPU gpu, by the mig-minors numbering.
func requireMIGCaps(t *testing.T, caps []string, gpu int) {
	t.Helper()
	require.Len(t, caps, 2, "a MIG device's GPU-instance and compute-instance capability nodes")
	var minors []int
	for _, c := range caps {
		n, err := strconv.Atoi(capNode.FindStringSubmatch(c)[1])
		require.NoError(t, err)
		minors = append(minors, n)
	}
	sort.Ints(minors)
	gi, ci := minors[0], minors[1]
	first := migMinorsFirstGI + gpu*migMinorsPerGPU
	require.True(t, gi >= first && gi < first+migMinorsPerGPU && (gi-migMinorsFirstGI)%migMinorsPerGI == 0,
		"capability minor %d is not a GPU instance's access node of GPU %d (minors %d to %d, every %d)", gi, gpu, first, first+migMinorsPerGPU-1, migMinorsPerGI)
	require.True(t, ci > gi && ci < gi+migMinorsPerGI,
		"capability minor %d is not a compute instance's access node of the GPU instance with minor %d", ci, gi)
}

// placements1g lists the starts of the MIG GPU's 1g.10gb devices, sorted.
func placements1g(s poolState) []int {
	var out []int
	for n := range s.devices {
		if m := migDevice1g.FindStringSubmatch(n); m != nil {
			i, _ := strconv.Atoi(m[1])
			out = append(out, i)
		}
	}
	sort.Ints(out)
	return out
}

// migDeviceName is the MIG GPU's 1g.10gb device at memory slice start.
func migDeviceName(start int) string {
	return fmt.Sprintf("gpu-%d-mig-1g-10gb-%d", migParent, start)
}

func attrString(t *testing.T, dev resourceapi.Device, name string) string {
	t.Helper()
	a, ok := dev.Attributes[resourceapi.QualifiedName(name)]
	require.True(t, ok && a.StringValue != nil, "device %s: string attribute %s missing", dev.Name, name)
	return *a.StringValue
}

func attrInt(t *testing.T, dev resourceapi.Device, name string) int64 {
	t.Helper()
	a, ok := dev.Attributes[resourceapi.QualifiedName(name)]
	require.True(t, ok && a.IntValue != nil, "device %s: int attribute %s missing", dev.Name, name)
	return *a.IntValue
}

// draOps is the kubelet's count and total duration of one DRA gRPC method.
type draOps struct {
	count int
	sum   time.Duration
}

// since is what happened between an earlier reading and this one.
func (o draOps) since(earlier draOps) draOps {
	return draOps{count: o.count - earlier.count, sum: o.sum - earlier.sum}
}

func (o draOps) mean() time.Duration {
	if o.count == 0 {
		return 0
	}
	return o.sum / time.Duration(o.count)
}

// kubeletDRAOps reads the kubelet's dra_grpc_operations_duration_seconds
// per method (NodePrepareResources, …): the histogram's count and sum are
// exact, unlike its buckets, which start at 0.1 s.
func kubeletDRAOps(ctx context.Context) (map[string]draOps, error) {
	data, err := kubeletMetrics(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]draOps{}
	for _, line := range strings.Split(string(data), "\n") {
		isSum := strings.HasPrefix(line, "dra_grpc_operations_duration_seconds_sum{")
		if !isSum && !strings.HasPrefix(line, "dra_grpc_operations_duration_seconds_count{") {
			continue
		}
		m := grpcMethod.FindStringSubmatch(line)
		f := strings.Fields(line)
		if m == nil || len(f) < 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return nil, fmt.Errorf("kubelet metrics: %q: %w", line, err)
		}
		o := out[m[1]]
		if isSum {
			o.sum += time.Duration(v * float64(time.Second))
		} else {
			o.count += int(v)
		}
		out[m[1]] = o
	}
	return out, nil
}

// logPluginLog logs the plugin container's log, for a failed test.
func logPluginLog(t *testing.T, ctx context.Context) {
	pods, err := cl.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Logf("plugin pods: %v", err)
		return
	}
	for _, p := range pods.Items {
		logs, err := cl.Logs(ctx, namespace, p.Name, "gpublocks")
		if err != nil {
			t.Logf("plugin pod %s: %v", p.Name, err)
			continue
		}
		t.Logf("plugin pod %s log:\n%s", p.Name, logs)
	}
}
