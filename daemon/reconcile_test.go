package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpublocks/gpublocks/blocks"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
)

// uuids discovers a preset's GPU UUIDs (deterministic), so that a test can
// set up the kubelet's allocations before the node starts.
func uuids(t *testing.T, preset string) []string {
	t.Helper()
	b, err := sim.New(preset)
	require.NoError(t, err)
	inv, err := gpu.Discover(context.Background(), b)
	require.NoError(t, err)
	var out []string
	for _, g := range inv.GPUs {
		out = append(out, g.UUID)
	}
	return out
}

// held reports whether a candidate config waits because it would rename
// allocated devices.
func (n *node) held() bool {
	n.d.mu.Lock()
	defer n.d.mu.Unlock()
	return n.d.candidate != nil && n.d.heldLogged
}

func TestUnservableConfigKeepsLastGood(t *testing.T) {
	n := startNode(t, "dgxa100", "version: v1\n", func(o *Options) { o.MetricsAddr = "127.0.0.1:0" })
	n.waitCount("nvidia.com/gpu", 8)

	// A config that parses but cannot be served: with this domain the
	// plugin sockets do not fit a unix socket address.
	long := strings.Repeat("a", 63) + ".example.com"
	replaceFile(t, n.configPath, "resourceDomain: "+long+"\n")
	require.Eventually(t, func() bool { return n.d.ConfigStatus().Errors == 1 }, 5*time.Second, 10*time.Millisecond)
	st := n.d.ConfigStatus()
	require.ErrorContains(t, st.LastError, fmt.Sprintf("config %q", n.configPath))
	require.ErrorContains(t, st.LastError, "socket path")
	require.EqualValues(t, 1, st.Generation)
	body := n.scrape("/metrics")
	require.Contains(t, body, "gpublocks_config_valid 0")
	require.Contains(t, body, "gpublocks_config_errors_total 1")

	// Nothing changed, and the node still follows the GPUs' health.
	n.d.Replan()
	n.settle()
	require.EqualValues(t, 1, n.d.ConfigStatus().Generation)
	require.Equal(t, []string{"nvidia.com/gpu"}, n.kubelet.Resources())
	require.Equal(t, "nvidia.com", n.d.State().Config.ResourceDomain)
	uuid := n.d.State().Inventory.GPUs[3].UUID
	n.inject(func() error { return n.sim.InjectXID(3, 48) })
	n.waitDevices("nvidia.com/gpu", unhealthyOnly(func(id string) bool { return id == uuid }))

	// A good config applies again.
	replaceFile(t, n.configPath, "gpus: [{match: {index: [0]}, shape: blocks}]\n")
	n.waitCount("nvidia.com/gpu-blocks", 100)
	n.waitGeneration(2)
	st = n.d.ConfigStatus()
	require.NoError(t, st.LastError)
	require.Contains(t, n.scrape("/metrics"), "gpublocks_config_valid 1")
}

func TestFailedReconcileIsRetried(t *testing.T) {
	n := startNode(t, "dgxa100", "")
	n.waitCount("nvidia.com/gpu", 8)

	// The CDI directory turns into a file: every write fails. The swap is
	// atomic (RENAME_EXCHANGE), so the spec healer cannot recreate the
	// directory in between.
	blocker := n.cdiDir + ".file"
	require.NoError(t, os.WriteFile(blocker, nil, 0o644))
	require.NoError(t, unix.Renameat2(unix.AT_FDCWD, blocker, unix.AT_FDCWD, n.cdiDir, unix.RENAME_EXCHANGE))
	uuid := n.d.State().Inventory.GPUs[2].UUID
	n.inject(func() error { return n.sim.InjectXID(2, 48) })
	require.Eventually(t, func() bool { return n.d.Unhealthy()[uuid] }, 5*time.Second, 10*time.Millisecond)
	n.settle()
	p, err := n.kubelet.Plugin(n.ctx, "nvidia.com/gpu")
	require.NoError(t, err)
	require.Equal(t, 8, p.Healthy(), "no update without the CDI spec")

	// Repaired: the retry delivers the fault, though nothing else happened.
	require.NoError(t, os.Remove(n.cdiDir))
	require.NoError(t, os.MkdirAll(n.cdiDir, 0o755)) // the healer may be first
	n.waitDevices("nvidia.com/gpu", unhealthyOnly(func(id string) bool { return id == uuid }))
	require.Len(t, n.cdiDevices(), 16)
}

func TestDeferralSurvivesRestart(t *testing.T) {
	// A plugin restarts while a pod holds GPU 0 whole, with a config that
	// now asks blocks of GPUs 0 and 1.
	gpus := uuids(t, "dgxa100")
	pr, sock := startPodResources(t)
	pr.set("nvidia.com/gpu", gpus[0])
	n := startNode(t, "dgxa100", "gpus: [{match: {index: [0, 1]}, shape: blocks}]\n", func(o *Options) {
		o.PodResourcesSocket = sock
		o.DeferPollInterval = 50 * time.Millisecond
	})
	n.waitCount("nvidia.com/gpu", 7)
	n.waitCount("nvidia.com/gpu-blocks", 100)
	plan := n.d.State().Plan
	require.Equal(t, "whole", plan.GPUs[0].Shape)
	require.Contains(t, plan.GPUs[0].Reason, "kept whole while its devices are allocated")
	require.Equal(t, "blocks", plan.GPUs[1].Shape)

	// The pod ends: GPU 0 follows the config.
	pr.set("nvidia.com/gpu")
	n.waitCount("nvidia.com/gpu", 6)
	n.waitCount("nvidia.com/gpu-blocks", 200)
}

func TestRestartKeepsBlocksOfAllocatedGPU(t *testing.T) {
	gpus := uuids(t, "dgxa100")
	pr, sock := startPodResources(t)
	pr.set("nvidia.com/gpu-blocks", blocks.FormatID(gpus[5], 7))
	n := startNode(t, "dgxa100", "version: v1\n", func(o *Options) {
		o.PodResourcesSocket = sock
		o.DeferPollInterval = time.Hour
	})
	n.waitCount("nvidia.com/gpu", 7)
	n.waitCount("nvidia.com/gpu-blocks", 100)
	require.Equal(t, "blocks", n.d.State().Plan.GPUs[5].Shape)
}

func TestRenameDeferredWhileAllocated(t *testing.T) {
	dgx, mig := uuids(t, "dgxa100"), ""
	b, err := sim.New("dgxa100-mig")
	require.NoError(t, err)
	inv, err := gpu.Discover(context.Background(), b)
	require.NoError(t, err)
	for _, g := range inv.GPUs {
		for _, d := range g.MigDevices {
			if d.Profile == "1g.10gb" && mig == "" {
				mig = d.UUID
			}
		}
	}
	require.NotEmpty(t, mig)

	cases := map[string]struct {
		preset, from, to string
		resource, id     string         // what a pod holds
		before, after    map[string]int // device counts
	}{
		"blocks resource renamed": {
			preset:   "dgxa100",
			from:     "gpus: [{match: {index: [0]}, shape: blocks}]\n",
			to:       "blocks: {resourceName: gpu-slices}\ngpus: [{match: {index: [0]}, shape: blocks}]\n",
			resource: "nvidia.com/gpu-blocks", id: blocks.FormatID(dgx[0], 3),
			before: map[string]int{"nvidia.com/gpu-blocks": 100, "nvidia.com/gpu": 7},
			after:  map[string]int{"nvidia.com/gpu-slices": 100, "nvidia.com/gpu-blocks": 0, "nvidia.com/gpu": 7},
		},
		"domain changed": {
			preset:   "dgxa100",
			from:     "version: v1\n",
			to:       "resourceDomain: example.com\n",
			resource: "nvidia.com/gpu", id: dgx[4],
			before: map[string]int{"nvidia.com/gpu": 8},
			after:  map[string]int{"example.com/gpu": 8, "nvidia.com/gpu": 0},
		},
		"migStrategy changed": {
			preset:   "dgxa100-mig",
			from:     "migStrategy: mixed\n",
			to:       "migStrategy: none\n",
			resource: "nvidia.com/mig-1g.10gb", id: mig,
			before: map[string]int{"nvidia.com/mig-1g.10gb": 9, "nvidia.com/gpu": 6},
			after:  map[string]int{"nvidia.com/mig-1g.10gb": 0, "nvidia.com/gpu": 8},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			pr, sock := startPodResources(t)
			n := startNode(t, tc.preset, tc.from, func(o *Options) {
				o.PodResourcesSocket = sock
				o.DeferPollInterval = 50 * time.Millisecond
			})
			for r, c := range tc.before {
				n.waitCount(r, c)
			}
			pr.set(tc.resource, tc.id)

			// The whole change waits: the kubelet would count the held
			// device as free under its new name.
			replaceFile(t, n.configPath, tc.to)
			require.Eventually(t, n.held, 5*time.Second, 10*time.Millisecond)
			n.settle()
			for r, c := range tc.before {
				n.waitCount(r, c)
			}
			st := n.d.ConfigStatus()
			require.EqualValues(t, 1, st.Generation)
			require.NoError(t, st.LastError)
			require.Zero(t, st.Errors)

			// Released: the change applies on the next poll.
			pr.set(tc.resource)
			for r, c := range tc.after {
				n.waitCount(r, c)
			}
			n.waitGeneration(2)
			require.False(t, n.d.pending())
		})
	}
}

// waitGeneration waits for a config generation: the devices of a change
// stream before the daemon records it as applied.
func (n *node) waitGeneration(want int64) {
	n.t.Helper()
	require.Eventually(n.t, func() bool { return n.d.ConfigStatus().Generation == want }, 5*time.Second, 10*time.Millisecond,
		"generation %d, want %d", n.d.ConfigStatus().Generation, want)
}

// deferredNow reports whether the config in force keeps gpu in its old
// shape: the candidate was applied, with that GPU deferred.
func (n *node) deferredNow(gpu string) bool {
	n.d.mu.Lock()
	defer n.d.mu.Unlock()
	_, kept := n.d.deferred[gpu]
	return kept && n.d.candidate == nil
}

func TestHealthReplanAsksNoPodResources(t *testing.T) {
	pr, sock := startPodResources(t)
	n := startNode(t, "dgxa100", "gpus: [{match: {index: [0]}, shape: blocks}]\n", func(o *Options) {
		o.PodResourcesSocket = sock
		o.DeferPollInterval = time.Hour
	})
	n.waitCount("nvidia.com/gpu-blocks", 100)
	gpu0 := n.d.State().Inventory.GPUs[0].UUID
	pr.set("nvidia.com/gpu-blocks", blocks.FormatID(gpu0, 0))
	replaceFile(t, n.configPath, "version: v1\n")
	// Applied, with GPU 0 deferred: the question it needed is answered.
	// (Seven whole GPUs, or a pending candidate, are both true before.)
	require.Eventually(t, func() bool { return n.deferredNow(gpu0) }, 5*time.Second, 10*time.Millisecond)
	require.EqualValues(t, 2, n.d.ConfigStatus().Generation)
	asked := pr.lists.Load()

	// A fault re-plans with the deferral in force and asks nothing.
	uuid := n.d.State().Inventory.GPUs[3].UUID
	n.inject(func() error { return n.sim.InjectXID(3, 48) })
	n.waitDevices("nvidia.com/gpu", unhealthyOnly(func(id string) bool { return id == uuid }))
	require.Equal(t, asked, pr.lists.Load(), "pod-resources asked on a health re-plan")
	require.Equal(t, "blocks", n.d.State().Plan.GPUs[0].Shape, "deferral kept")
}

// heldPodResources answers like fakePodResources, but while held each List
// takes its answer when called and then waits for release, or for the
// caller to give up: a kubelet that accepts a question and does not answer.
type heldPodResources struct {
	*fakePodResources
	mu      sync.Mutex
	gate    chan struct{} // nil: answer at once; closed to release
	calls   atomic.Int64  // List calls started
	holding atomic.Int64  // List calls held now
}

// hold makes every List from now on wait.
func (h *heldPodResources) hold() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gate = make(chan struct{})
}

// answer releases the held calls, with the answers they took when called,
// and answers at once from now on.
func (h *heldPodResources) answer() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gate != nil {
		close(h.gate)
		h.gate = nil
	}
}

func (h *heldPodResources) List(ctx context.Context, req *podresourcesapi.ListPodResourcesRequest) (*podresourcesapi.ListPodResourcesResponse, error) {
	h.calls.Add(1)
	resp, err := h.fakePodResources.List(ctx, req)
	h.mu.Lock()
	gate := h.gate
	h.mu.Unlock()
	if gate == nil {
		return resp, err
	}
	h.holding.Add(1)
	defer h.holding.Add(-1)
	select {
	case <-gate:
		return resp, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func startHeldPodResources(t testing.TB) (*heldPodResources, string) {
	t.Helper()
	h := &heldPodResources{fakePodResources: &fakePodResources{}}
	return h, servePodResources(t, h)
}

func TestHungPodResourcesStallsNeitherHealthNorPing(t *testing.T) {
	pr, sock := startHeldPodResources(t)
	n := startNode(t, "dgxa100", "gpus: [{match: {index: [0]}, shape: blocks}]\n", func(o *Options) {
		o.PodResourcesSocket = sock
		o.PodResourcesTimeout = time.Hour // a question hangs until the test ends
		o.DeferPollInterval = 20 * time.Millisecond
		o.MetricsAddr = "127.0.0.1:0"
	})
	n.waitCount("nvidia.com/gpu-blocks", 100)
	gpu0 := n.d.State().Inventory.GPUs[0].UUID
	pr.set("nvidia.com/gpu-blocks", blocks.FormatID(gpu0, 0))
	replaceFile(t, n.configPath, "version: v1\n")
	require.Eventually(t, func() bool { return n.deferredNow(gpu0) }, 5*time.Second, 10*time.Millisecond)

	// The kubelet stops answering while the change is deferred: the next
	// poll's question hangs.
	pr.hold()
	require.Eventually(t, func() bool { return pr.holding.Load() == 1 }, 5*time.Second, 10*time.Millisecond)
	calls := pr.calls.Load()

	// An XID reaches ListAndWatch, and /healthz answers, while that same
	// question still hangs.
	uuid := n.d.State().Inventory.GPUs[3].UUID
	n.inject(func() error { return n.sim.InjectXID(3, 48) })
	n.waitDevices("nvidia.com/gpu", unhealthyOnly(func(id string) bool { return id == uuid }))
	require.NoError(t, n.d.Ping(n.ctx))
	require.Equal(t, "ok\n", n.scrape("/healthz"))
	require.EqualValues(t, 1, pr.holding.Load(), "the question hung throughout")
	require.Equal(t, calls, pr.calls.Load(), "one question in flight at most")
	require.Equal(t, "blocks", n.d.State().Plan.GPUs[0].Shape, "deferral kept")
}

func TestAnswerAskedBeforeConfigChangeApprovesNothing(t *testing.T) {
	gpus := uuids(t, "dgxa100")
	pr, sock := startHeldPodResources(t)
	n := startNode(t, "dgxa100", "version: v1\n", func(o *Options) {
		o.PodResourcesSocket = sock
		o.PodResourcesTimeout = time.Hour
		o.DeferPollInterval = time.Hour
	})
	n.waitCount("nvidia.com/gpu", 8)

	// A question is asked while nothing is allocated; its answer is late.
	pr.hold()
	n.d.Rescan()
	require.Eventually(t, func() bool { return pr.holding.Load() == 1 }, 5*time.Second, 10*time.Millisecond)
	// Meanwhile a pod gets GPU 0 and the config asks blocks of it.
	pr.set("nvidia.com/gpu", gpus[0])
	replaceFile(t, n.configPath, "gpus: [{match: {index: [0]}, shape: blocks}]\n")
	require.Eventually(t, func() bool {
		n.d.mu.Lock()
		defer n.d.mu.Unlock()
		return n.d.candidate != nil
	}, 5*time.Second, 10*time.Millisecond)

	// The late answer ("nothing allocated") must not approve the change it
	// did not see: the kubelet is asked again, and GPU 0 stays whole.
	pr.answer()
	require.Eventually(t, func() bool { return n.deferredNow(gpus[0]) }, 5*time.Second, 10*time.Millisecond)
	require.EqualValues(t, 2, n.d.ConfigStatus().Generation)
	require.GreaterOrEqual(t, pr.calls.Load(), int64(3), "start-up, the late answer, the question asked again")
	a := n.d.State().Plan.GPUs[0]
	require.Equal(t, "whole", a.Shape)
	require.Contains(t, a.Reason, "kept whole while its devices are allocated")
	require.Equal(t, []string{"nvidia.com/gpu"}, n.kubelet.Resources(), "GPU 0 was never offered as blocks")
}

func TestReloadConfigSerialised(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"default": "version: v1\n",
		"a":       "gpus: [{match: {index: [0]}, shape: blocks}]\n",
		"b":       "gpus: [{match: {index: [1]}, shape: blocks}]\n",
	} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	n := newNode(t, "dgxa100", "", func(o *Options) { o.ConfigPath = dir })
	// The label informer and the file watcher reload at once; whichever
	// label is set last, the pending config must be the one it names.
	for i := range 200 {
		labels := [2]string{"a", "b"}
		if i%2 == 1 {
			labels = [2]string{"b", "a"}
		}
		var wg sync.WaitGroup
		for _, l := range labels {
			wg.Go(func() {
				n.d.mu.Lock()
				n.d.label = l
				n.d.mu.Unlock()
				n.d.reloadConfig(n.ctx, "test")
			})
		}
		wg.Wait()
		n.d.mu.Lock()
		label, pending := n.d.label, n.d.candidateSource.Name
		n.d.mu.Unlock()
		require.Equal(t, label, pending, "iteration %d", i)
	}
}

func TestConfigEditBeforeWatchIsNotMissed(t *testing.T) {
	defer func(w time.Duration) { labelWait = w }(labelWait)
	labelWait = 300 * time.Millisecond
	api := newFakeAPIServer(t, nil) // the node's label never comes
	n := newNode(t, "dgxa100", "version: v1\n", func(o *Options) {
		o.NodeName = "gpu-node-1"
		o.NodeClient = api.Client("")
	})
	// Edited after New loaded the config, before the daemon watched it.
	replaceFile(t, n.configPath, "gpus: [{match: {index: [0]}, shape: blocks}]\n")
	n.run()
	n.waitCount("nvidia.com/gpu-blocks", 100)
	n.waitCount("nvidia.com/gpu", 7)
	p, err := n.kubelet.Plugin(n.ctx, "nvidia.com/gpu")
	require.NoError(t, err)
	require.Len(t, p.FirstDevices(), 7, "the first plan already has the edit")
	require.EqualValues(t, 1, n.d.ConfigStatus().Generation)
}

func TestMetricsKeepEmptiedResource(t *testing.T) {
	n := startNode(t, "dgxa100", "gpus: [{match: {index: [0]}, shape: blocks}]\n", func(o *Options) { o.MetricsAddr = "127.0.0.1:0" })
	n.waitCount("nvidia.com/gpu-blocks", 100)
	replaceFile(t, n.configPath, "version: v1\n")
	n.waitCount("nvidia.com/gpu", 8)
	n.waitCount("nvidia.com/gpu-blocks", 0)
	body := n.scrape("/metrics")
	for _, want := range []string{
		`gpublocks_devices{health="healthy",resource="nvidia.com/gpu"} 8`,
		`gpublocks_devices{health="healthy",resource="nvidia.com/gpu-blocks"} 0`,
		`gpublocks_devices{health="unhealthy",resource="nvidia.com/gpu-blocks"} 0`,
	} {
		require.Contains(t, body, want)
	}
}

func TestConfigWithdrawnWhileEvaluatedIsAskedAgain(t *testing.T) {
	// Driven by hand, without Run's loop, to place the withdrawal exactly.
	n := newNode(t, "dgxa100", "version: v1\n")
	first := n.d.question(0)
	first.alloc = &allocations{}
	require.NoError(t, n.d.reconcile(n.ctx, true, first))
	require.Equal(t, "whole", n.d.State().Plan.GPUs[0].Shape)

	// A change is asked about; before its answer is applied the file goes
	// back to what serves, which withdraws it.
	replaceFile(t, n.configPath, "gpus: [{match: {index: [0]}, shape: blocks}]\n")
	n.d.reloadConfig(n.ctx, "test")
	q := n.d.question(0)
	require.NotNil(t, q.cand)
	q.alloc = &allocations{}
	replaceFile(t, n.configPath, "version: v1\n")
	n.d.reloadConfig(n.ctx, "test")
	<-n.d.reconfig // the first change's signal

	// The change that was asked about is served, and the file's config is
	// pending again, signalled, so that the next reconcile restores it.
	require.NoError(t, n.d.reconcile(n.ctx, false, q))
	require.Equal(t, "blocks", n.d.State().Plan.GPUs[0].Shape)
	select {
	case <-n.d.reconfig:
	default:
		t.Fatal("the withdrawn change's config is not asked for again")
	}
	again := n.d.question(0)
	again.alloc = &allocations{}
	require.NoError(t, n.d.reconcile(n.ctx, false, again))
	require.Equal(t, "whole", n.d.State().Plan.GPUs[0].Shape)
	require.False(t, n.d.pending())
	require.EqualValues(t, 3, n.d.ConfigStatus().Generation)
}
