package dra

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/internal/packingtrace"
	"github.com/gpublocks/gpublocks/shape"
)

// The cluster packing simulation replays the blocks benchmark's arrival
// trace (internal/packingtrace) on a whole cluster of simulated 8-GPU nodes,
// once as the Kubernetes scheduler places DRA claims over the slices this
// package builds, and once as it places device-plugin pods.
//
// Both models choose the node as kube-scheduler does for pods that differ
// in nothing else: every node passes or fails the filter, and one of the
// feasible nodes is picked at random (equal scores tie-break randomly).
//
//   - DRA: the filter is the scheduler's own structured allocator
//     (k8s.io/dynamic-resource-allocation/structured, as the
//     DynamicResources plugin calls it) over the real ResourceSlices; the
//     allocation it returns names the GPU and the share, so a pod that is
//     scheduled always runs. A claim no GPU can take stays pending.
//   - Device plugin: the filter is the node's total of free blocks (all the
//     scheduler can see); on the chosen node our binpack plugin must fit
//     the request on one GPU, else admission fails and the pod fails.
var (
	clusterNodes = flag.Int("dra.nodes", 100, "nodes of the cluster packing benchmark")
	clusterTicks = flag.Int("dra.ticks", 100, "ticks of the cluster packing benchmark (one arrival per node per tick)")
	clusterLoad  = flag.Float64("dra.load", 0.9, "offered load of the cluster packing benchmark")
	clusterSweep = flag.Int("dra.sweep", 250, "every n-th claim is filtered over all nodes with all slices, as the scheduler does, and timed")
)

const (
	gpusPerNode       = 8
	blocksClass       = "blocks.gpu.gpublocks.io"
	clusterTraceSeed  = 1
	claimRequestName  = "blocks"
	clusterPoolPrefix = "gpu-node-"
)

// cluster is the simulated cluster's API objects.
type cluster struct {
	nodes   []*v1.Node
	slices  []*resourceapi.ResourceSlice
	classes classLister
}

type classLister []*resourceapi.DeviceClass

func (l classLister) List() ([]*resourceapi.DeviceClass, error) { return l, nil }
func (l classLister) Get(name string) (*resourceapi.DeviceClass, error) {
	for _, c := range l {
		if c.Name == name {
			return c, nil
		}
	}
	return nil, fmt.Errorf("device class %q not found", name)
}

// newCluster builds n nodes of 8 A100s, every GPU offered as blocks, with
// the slices BuildPool makes for them.
func newCluster(t testing.TB, n int) *cluster {
	t.Helper()
	base := inventory(t, "dgxa100")
	cfg, err := config.Parse([]byte("version: v1\ngpus: [{match: {model: \"*\"}, shape: blocks}]\n"))
	require.NoError(t, err)
	c := &cluster{classes: classLister{{
		ObjectMeta: metav1.ObjectMeta{Name: blocksClass},
		Spec: resourceapi.DeviceClassSpec{Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
			Expression: `device.driver == "gpu.gpublocks.io" && device.attributes["gpu.gpublocks.io"].type == "blocks"`,
		}}}},
	}}}
	for i := range n {
		name := fmt.Sprintf("%s%03d", clusterPoolPrefix, i)
		inv := *base
		inv.GPUs = slices.Clone(base.GPUs)
		for g := range inv.GPUs {
			inv.GPUs[g].UUID = fmt.Sprintf("GPU-%03d-%d", i, g)
		}
		c.nodes = append(c.nodes, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}})
		pool := BuildPool(PoolInput{Offers: shape.Offers(&inv, cfg, nil), DriverVersion: inv.DriverVersion})
		for j, s := range pool.ResourceSlices(name, 1) {
			s.Name = fmt.Sprintf("%s-%d", name, j)
			c.slices = append(c.slices, &s)
		}
	}
	return c
}

func blocksClaim(i, k int) *resourceapi.ResourceClaim {
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("claim-%d", i), Namespace: "default", UID: types.UID(fmt.Sprintf("uid-%d", i))},
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{
			Name: claimRequestName,
			Exactly: &resourceapi.ExactDeviceRequest{
				DeviceClassName: blocksClass,
				AllocationMode:  resourceapi.DeviceAllocationModeExactCount,
				Count:           1,
				Capacity: &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{
					CapacityBlocks: *resource.NewQuantity(int64(k), resource.DecimalSI),
				}},
			},
		}}}},
	}
}

// packingStats is one model's outcome over a trace.
type packingStats struct {
	arrivals, scheduled, pending, admissionFailures int
	utilSum                                         float64
	ticks                                           int
	// DRA: full scheduler filters (all nodes, all slices) and their time.
	sweeps    int
	sweepTime time.Duration
}

func (s packingStats) pct(v int) float64 { return 100 * float64(v) / float64(s.arrivals) }

// share is one running allocation on a GPU.
type share struct {
	until     int
	node, gpu int
	blocks    int
	// DRA only: what to release from the scheduler's allocated state.
	device   structured.DeviceID
	consumed map[resourceapi.QualifiedName]resource.Quantity
	sharedID structured.SharedDeviceID
}

// used is the independent ledger both models are checked against: blocks
// in use per node and GPU. A value above 100 is an over-commitment.
type used [][gpusPerNode]int

// runDRA replays the trace through the scheduler's allocator. Every
// allocation is checked: one device, a blocks device, exactly k blocks,
// and never more than 100 blocks of one GPU in use.
//
// The scheduler's Filter calls the allocator once per node, and each call
// walks every slice of the cluster, so one claim costs O(nodes²). To replay
// thousands of claims, the feasible nodes come from the ledger and the
// allocator is asked on the chosen node with that node's slices only (the
// same answer: no other node's slice can serve it). Every sweepEvery-th
// claim is also filtered exactly as the scheduler does, all nodes with all
// slices: those sweeps must find exactly the ledger's feasible nodes, and
// they time the allocator per claim at this scale.
func runDRA(t testing.TB, c *cluster, trace []packingtrace.Arrival, perTick, sweepEvery int) packingStats {
	t.Helper()
	ctx := context.Background()
	features := structured.Features{ConsumableCapacity: true, PartitionableDevices: true}
	celCache := cel.NewCache(10, cel.Features{EnableConsumableCapacity: true})
	state := structured.AllocatedState{
		AllocatedDevices:         sets.New[structured.DeviceID](),
		AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
		AggregatedCapacity:       structured.NewConsumedCapacityCollection(),
	}
	byNode := map[string][]*resourceapi.ResourceSlice{}
	for _, s := range c.slices {
		byNode[*s.Spec.NodeName] = append(byNode[*s.Spec.NodeName], s)
	}
	rng := rand.New(rand.NewPCG(clusterTraceSeed, 0xd7a))
	ledger := make(used, len(c.nodes))
	var live []share
	var st packingStats
	for i, a := range trace {
		tick := i / perTick
		if i%perTick == 0 {
			live = st.newTick(live, ledger, tick, func(s share) {
				state.AllocatedSharedDeviceIDs.Delete(s.sharedID)
				state.AggregatedCapacity.Remove(structured.NewDeviceConsumedCapacity(s.device, s.consumed))
			})
		}
		st.arrivals++
		claim := blocksClaim(i, a.Size)
		feasible := ledger.fits(a.Size)
		if i%sweepEvery == 0 {
			start := time.Now()
			alloc, err := structured.NewAllocator(ctx, features, state, c.classes, c.slices, celCache)
			require.NoError(t, err)
			var found []int
			for n, node := range c.nodes {
				res, err := alloc.Allocate(ctx, node, []*resourceapi.ResourceClaim{claim})
				require.NoError(t, err)
				if len(res) == 1 {
					found = append(found, n)
				}
			}
			st.sweepTime += time.Since(start)
			st.sweeps++
			require.Equal(t, feasible, found, "claim %d (%d blocks): the scheduler's filter disagrees with the ledger", i, a.Size)
		}
		if len(feasible) == 0 {
			st.pending++
			continue
		}
		n := feasible[rng.IntN(len(feasible))]
		alloc, err := structured.NewAllocator(ctx, features, state, c.classes, byNode[c.nodes[n].Name], celCache)
		require.NoError(t, err)
		res, err := alloc.Allocate(ctx, c.nodes[n], []*resourceapi.ResourceClaim{claim})
		require.NoError(t, err)
		require.Len(t, res, 1, "claim %d (%d blocks) on %s: the ledger says a GPU has room", i, a.Size, c.nodes[n].Name)
		devs := res[0].Devices.Results
		require.Len(t, devs, 1, "a claim is never split")
		r := devs[0]
		require.True(t, strings.HasSuffix(r.Device, "-blocks"), r.Device)
		require.Equal(t, c.nodes[n].Name, r.Pool)
		got := r.ConsumedCapacity[CapacityBlocks]
		require.Equal(t, int64(a.Size), got.Value(), "exactly the blocks asked")
		require.NotNil(t, r.ShareID, "a shared device's allocation has a share ID")
		var g int
		_, err = fmt.Sscanf(r.Device, "gpu-%d-blocks", &g)
		require.NoError(t, err)
		ledger[n][g] += a.Size
		require.LessOrEqual(t, ledger[n][g], packingtrace.BlocksPerGPU, "GPU %d of %s over-committed", g, r.Pool)
		id := structured.MakeDeviceID(r.Driver, r.Pool, r.Device)
		s := share{until: tick + a.Life, node: n, gpu: g, blocks: a.Size, device: id, consumed: r.ConsumedCapacity,
			sharedID: structured.MakeSharedDeviceID(id, r.ShareID)}
		state.AllocatedSharedDeviceIDs.Insert(s.sharedID)
		state.AggregatedCapacity.Insert(structured.NewDeviceConsumedCapacity(id, r.ConsumedCapacity))
		live = append(live, s)
		st.scheduled++
	}
	return st
}

// fits lists the nodes with a GPU that has k blocks free.
func (l used) fits(k int) []int {
	var out []int
	for n, node := range l {
		for _, u := range node {
			if packingtrace.BlocksPerGPU-u >= k {
				out = append(out, n)
				break
			}
		}
	}
	return out
}

// runDevicePlugin replays the trace as the scheduler and kubelet place
// device-plugin pods: the node by its total of free blocks, the GPU by
// our binpack policy on that node.
func runDevicePlugin(trace []packingtrace.Arrival, nodes, perTick int) packingStats {
	rng := rand.New(rand.NewPCG(clusterTraceSeed, 0xd7a))
	ledger := make(used, nodes)
	var live []share
	var st packingStats
	for i, a := range trace {
		tick := i / perTick
		if i%perTick == 0 {
			live = st.newTick(live, ledger, tick, func(share) {})
		}
		st.arrivals++
		var feasible []int
		for n := range ledger {
			free := 0
			for _, u := range ledger[n] {
				free += packingtrace.BlocksPerGPU - u
			}
			if free >= a.Size {
				feasible = append(feasible, n)
			}
		}
		if len(feasible) == 0 {
			st.pending++
			continue
		}
		n := feasible[rng.IntN(len(feasible))]
		best := -1
		for g, u := range ledger[n] {
			free := packingtrace.BlocksPerGPU - u
			if free >= a.Size && (best < 0 || free < packingtrace.BlocksPerGPU-ledger[n][best]) {
				best = g
			}
		}
		if best < 0 {
			st.admissionFailures++ // scheduled, then refused by the kubelet: the pod fails
			continue
		}
		ledger[n][best] += a.Size
		live = append(live, share{until: tick + a.Life, node: n, gpu: best, blocks: a.Size})
		st.scheduled++
	}
	return st
}

// newTick ends the shares whose time is up (release undoes what the
// model recorded besides the ledger) and samples the utilisation.
func (st *packingStats) newTick(live []share, ledger used, tick int, release func(share)) []share {
	live = slices.DeleteFunc(live, func(s share) bool {
		if s.until > tick {
			return false
		}
		ledger[s.node][s.gpu] -= s.blocks
		release(s)
		return true
	})
	st.utilSum += utilisation(ledger)
	st.ticks++
	return live
}

func utilisation(l used) float64 {
	total := 0
	for _, node := range l {
		for _, u := range node {
			total += u
		}
	}
	return float64(total) / float64(len(l)*gpusPerNode*packingtrace.BlocksPerGPU)
}

// offeredLoad is the offline bound: the blocks the trace asks for, per
// tick, over the cluster's blocks (as if every request could be packed
// perfectly and nothing ever waited).
func offeredLoad(trace []packingtrace.Arrival, nodes, perTick int) float64 {
	ticks := (len(trace) + perTick - 1) / perTick
	demand := make([]float64, ticks)
	for i, a := range trace {
		for t := i / perTick; t < min(ticks, i/perTick+a.Life); t++ {
			demand[t] += float64(a.Size)
		}
	}
	sum := 0.0
	for _, d := range demand {
		sum += min(d, float64(nodes*gpusPerNode*packingtrace.BlocksPerGPU))
	}
	return sum / float64(ticks) / float64(nodes*gpusPerNode*packingtrace.BlocksPerGPU)
}

// clusterTrace is the blocks benchmark's trace at cluster scale: the same
// sizes and lifetimes (sized for one 8-GPU node), one arrival per node per
// tick, so every node sees the node benchmark's load.
func clusterTrace(nodes, ticks int, load float64) []packingtrace.Arrival {
	return packingtrace.Make(clusterTraceSeed, nodes*ticks, load, gpusPerNode)
}

// TestClusterPackingNeverSplitsOrOvercommits runs a small cluster through
// the scheduler's allocator: every claim gets one GPU's blocks, exactly as
// many as asked, no GPU ever holds more than 100, and under load some
// claims wait rather than land where they cannot run.
func TestClusterPackingNeverSplitsOrOvercommits(t *testing.T) {
	const nodes, ticks = 3, 100
	c := newCluster(t, nodes)
	trace := clusterTrace(nodes, ticks, 1.5)
	dra := runDRA(t, c, trace, nodes, 7)
	dp := runDevicePlugin(trace, nodes, nodes)
	require.Equal(t, len(trace), dra.arrivals)
	require.Equal(t, dra.arrivals, dra.scheduled+dra.pending)
	require.Positive(t, dra.scheduled)
	require.Positive(t, dra.pending, "at 150 percent load some claims must wait")
	require.Zero(t, dra.admissionFailures)
	require.Positive(t, dra.sweeps)
	require.Positive(t, dp.admissionFailures, "the device-plugin model on the same trace does fail admissions")
}

// BenchmarkClusterPacking prints the cluster-scale comparison (make bench):
// admission failures, pending pods and utilisation for DRA and the
// device-plugin model on the same trace, the offline bound, and the
// allocator's time per claim over the whole cluster.
func BenchmarkClusterPacking(b *testing.B) {
	nodes, ticks := *clusterNodes, *clusterTicks
	c := newCluster(b, nodes)
	trace := clusterTrace(nodes, ticks, *clusterLoad)
	var dra, dp packingStats
	for b.Loop() {
		dra = runDRA(b, c, trace, nodes, *clusterSweep)
		dp = runDevicePlugin(trace, nodes, nodes)
	}
	bound := offeredLoad(trace, nodes, nodes)
	b.Logf("cluster %d nodes × %d GPUs, %d arrivals (%d ticks), load %.2f, seed %d", nodes, gpusPerNode, len(trace), ticks, *clusterLoad, clusterTraceSeed)
	b.Logf("%-14s %10s %9s %9s %8s", "model", "admit-fail", "pending", "running", "util")
	for _, r := range []struct {
		name string
		s    packingStats
	}{{"device-plugin", dp}, {"DRA", dra}} {
		b.Logf("%-14s %9.2f%% %8.2f%% %8.2f%% %7.1f%%", r.name, r.s.pct(r.s.admissionFailures), r.s.pct(r.s.pending), r.s.pct(r.s.scheduled), 100*r.s.utilSum/float64(r.s.ticks))
	}
	b.Logf("%-14s %10s %9s %9s %7.1f%%", "offline bound", "0", "-", "-", 100*bound)
	perClaim := dra.sweepTime / time.Duration(dra.sweeps)
	b.Logf("allocator: %v per claim filtered over %d nodes (%v per node; mean of %d full filters)", perClaim, nodes, perClaim/time.Duration(nodes), dra.sweeps)
	b.ReportMetric(dra.pct(dra.admissionFailures), "dra-admit-fail-%")
	b.ReportMetric(dp.pct(dp.admissionFailures), "dp-admit-fail-%")
	b.ReportMetric(100*dra.utilSum/float64(dra.ticks), "dra-util-%")
	b.ReportMetric(100*dp.utilSum/float64(dp.ticks), "dp-util-%")
	b.ReportMetric(float64(perClaim.Microseconds()), "µs/claim")
}
