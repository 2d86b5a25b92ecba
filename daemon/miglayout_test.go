package daemon

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/gpublocks/gpublocks/cdi"
	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/dra"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/migminors"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/mig"
)

// The dgxa100-mig preset's GPU 1 (A100-SXM4-80GB) holds seven 1g.10gb
// slices; GPU 0 holds 3g.40gb, 2g.20gb and two 1g.10gb. Day and night are
// the seed's two layouts for GPU 1.
const (
	dayConfig   = "gpus: [{match: {index: [1]}, shape: mig, mig: [1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb]}]\n"
	nightConfig = "gpus: [{match: {index: [1]}, shape: mig, mig: [3g.40gb, 3g.40gb]}]\n"
)

// waitDay and waitNight wait until the kubelet sees GPU 1 by day (7 small
// slices; 9 with GPU 0's two) or by night (2 large ones; 3 with GPU 0's).
func (n *node) waitDay() {
	n.t.Helper()
	n.waitCount("nvidia.com/mig-1g.10gb", 9)
	n.waitCount("nvidia.com/mig-3g.40gb", 1)
}

func (n *node) waitNight() {
	n.t.Helper()
	n.waitCount("nvidia.com/mig-1g.10gb", 2)
	n.waitCount("nvidia.com/mig-3g.40gb", 3)
}

// migStatusOf returns GPU index's layout status in the state served.
func (n *node) migStatusOf(index int) (MigLayoutStatus, bool) {
	st := n.d.State()
	if st == nil {
		return MigLayoutStatus{}, false
	}
	for _, l := range st.MigLayouts {
		if l.GPU == index {
			return l, true
		}
	}
	return MigLayoutStatus{}, false
}

// waitMigWaiting waits until GPU index's layout change waits for a reason
// containing why.
func (n *node) waitMigWaiting(index int, why string) MigLayoutStatus {
	n.t.Helper()
	var last MigLayoutStatus
	require.Eventually(n.t, func() bool {
		var ok bool
		last, ok = n.migStatusOf(index)
		return ok && strings.Contains(last.Waiting, why)
	}, 10*time.Second, 10*time.Millisecond, "GPU %d never waited for %q; last status %+v", index, why, last)
	require.True(n.t, last.Pending())
	require.NotEmpty(n.t, last.Plan)
	return last
}

// migUUIDs lists GPU index's MIG device UUIDs as served.
func (n *node) migUUIDs(index int) []string {
	n.t.Helper()
	var out []string
	for _, m := range n.d.State().Inventory.GPUs[index].MigDevices {
		out = append(out, m.UUID)
	}
	return out
}

// instances reads GPU index's MIG instances from the simulated NVML.
func (n *node) instances(index int) []mig.Instance {
	n.t.Helper()
	return simInstances(n.t, n.sim, index)
}

func simInstances(t *testing.T, b *sim.Backend, index int) []mig.Instance {
	t.Helper()
	dev, ret := b.NVML().DeviceGetHandleByIndex(index)
	require.Equal(t, nvml.SUCCESS, ret)
	st, err := mig.Read(dev)
	require.NoError(t, err)
	return st.Instances
}

func profilesOf(ins []mig.Instance) []string {
	out := make([]string, 0, len(ins))
	for _, in := range ins {
		out = append(out, in.Profile)
	}
	return out
}

func TestMigLayoutChangeAppliesLive(t *testing.T) {
	n := startNode(t, "dgxa100-mig", dayConfig, func(o *Options) { o.MetricsAddr = "127.0.0.1:0" })
	n.waitDay()
	day := n.migUUIDs(1)
	require.Len(t, day, 7)
	st, ok := n.migStatusOf(1)
	require.True(t, ok)
	require.False(t, st.Pending(), "GPU 1 holds the day layout already: %+v", st)
	gpu0 := n.migUUIDs(0)

	replaceFile(t, n.configPath, nightConfig)
	n.waitNight()
	n.waitGeneration(2)
	require.ElementsMatch(t, []string{"3g.40gb", "3g.40gb"}, profilesOf(n.instances(1)))
	require.Equal(t, gpu0, n.migUUIDs(0), "GPU 0 has no layout rule and is left alone")
	night := n.migUUIDs(1)
	require.Len(t, night, 2)
	st, _ = n.migStatusOf(1)
	require.False(t, st.Pending(), "%+v", st)
	require.Contains(t, n.scrape("/metrics"), fmt.Sprintf(`gpublocks_mig_layout_pending{gpu="1",uuid="%s"} 0`, n.d.State().Inventory.GPUs[1].UUID))

	// The CDI spec names the new devices, with the capability nodes the
	// updated mig-minors table gives their GPU and compute instances; the
	// old devices are gone.
	minorsData, err := n.sim.Host().MigCapMinors()
	require.NoError(t, err)
	minors, err := migminors.Parse(minorsData)
	require.NoError(t, err)
	cache, err := cdiapi.NewCache(cdiapi.WithSpecDirs(n.cdiDir), cdiapi.WithAutoRefresh(false))
	require.NoError(t, err)
	g1 := n.d.State().Inventory.GPUs[1]
	for _, md := range g1.MigDevices {
		giMinor, ok := minors.GIAccess(g1.Minor, md.GI)
		require.True(t, ok)
		ciMinor, ok := minors.CIAccess(g1.Minor, md.GI, md.CI)
		require.True(t, ok)
		dev := cache.GetDevice("gpublocks.io/gpu=" + md.UUID)
		require.NotNil(t, dev, md.UUID)
		var paths []string
		for _, dn := range dev.ContainerEdits.DeviceNodes {
			paths = append(paths, dn.Path)
		}
		require.Contains(t, paths, gpu.CapNodePath(giMinor))
		require.Contains(t, paths, gpu.CapNodePath(ciMinor))
	}
	for _, uuid := range day {
		require.Nil(t, cache.GetDevice("gpublocks.io/gpu="+uuid), "destroyed %s still in the CDI spec", uuid)
	}

	// And back to day: seven new slices.
	replaceFile(t, n.configPath, dayConfig)
	n.waitDay()
	n.waitGeneration(3) // the state is recorded once streamed
	require.Len(t, n.migUUIDs(1), 7)
	require.NotContains(t, n.migUUIDs(1), night[0])
}

// runLogged runs n with a logger whose output the test can read.
func (n *node) runLogged() interface{ String() string } {
	logger := ktesting.NewLogger(n.t, ktesting.NewConfig(ktesting.BufferLogs(true)))
	n.ctx = klog.NewContext(n.ctx, logger)
	n.run()
	return logger.GetSink().(ktesting.Underlier).GetBuffer()
}

func TestMigLayoutWaitsForAllocatedDevice(t *testing.T) {
	pr, sock := startPodResources(t)
	n := newNode(t, "dgxa100-mig", dayConfig, func(o *Options) {
		o.PodResourcesSocket = sock
		o.DeferPollInterval = 20 * time.Millisecond
		o.MetricsAddr = "127.0.0.1:0"
	})
	logs := n.runLogged()
	n.waitDay()
	day := n.migUUIDs(1)
	uuid := n.d.State().Inventory.GPUs[1].UUID
	// A pod holds one of GPU 1's slices.
	pr.set("nvidia.com/mig-1g.10gb", day[3])

	replaceFile(t, n.configPath, nightConfig)
	st := n.waitMigWaiting(1, "devices allocated to pods: "+day[3])
	require.Contains(t, st.Plan, "destroy")
	n.waitGeneration(2) // the config is in force; the GPU waits
	require.Contains(t, n.scrape("/metrics"), fmt.Sprintf(`gpublocks_mig_layout_pending{gpu="1",uuid="%s"} 1`, uuid))
	// Several defer polls later the GPU still serves its day slices.
	polls := pr.lists.Load()
	require.Eventually(t, func() bool { return pr.lists.Load() >= polls+3 }, 5*time.Second, 5*time.Millisecond)
	n.waitDay()
	require.Equal(t, day, n.migUUIDs(1))
	require.Len(t, n.instances(1), 7)
	require.Equal(t, 1, strings.Count(logs.String(), "MIG layout change waits"), "the wait is logged once, not per poll")

	// The pod ends: the next poll applies the night layout.
	pr.set("nvidia.com/mig-1g.10gb")
	n.waitNight()
	require.Eventually(t, func() bool {
		st, _ := n.migStatusOf(1)
		return !st.Pending()
	}, 5*time.Second, 10*time.Millisecond)
	require.Contains(t, n.scrape("/metrics"), fmt.Sprintf(`gpublocks_mig_layout_pending{gpu="1",uuid="%s"} 0`, uuid))
}

func TestMigLayoutWaitsForProcess(t *testing.T) {
	n := startNode(t, "dgxa100-mig", dayConfig, func(o *Options) { o.DeferPollInterval = 20 * time.Millisecond })
	n.waitDay()
	day := n.migUUIDs(1)
	// No pod holds a device (no PodResources), but a CUDA process runs in
	// one of GPU 1's slices.
	pid, err := n.sim.StartProcess(1, day[5])
	require.NoError(t, err)

	replaceFile(t, n.configPath, nightConfig)
	n.waitMigWaiting(1, fmt.Sprintf("compute processes running: %d", pid))
	n.waitGeneration(2)
	n.waitDay()
	require.Equal(t, day, n.migUUIDs(1))

	require.NoError(t, n.sim.StopProcess(pid))
	n.waitNight()
}

func TestMigLayoutFailureHalfWayIsRepaired(t *testing.T) {
	n := newNode(t, "dgxa100-mig", dayConfig)
	logs := n.runLogged()
	n.waitDay()
	// The driver refuses the second of the two GPU instances: the first
	// attempt destroys the seven slices, creates one 3g.40gb and fails.
	require.NoError(t, n.sim.FailMigOp(1, sim.OpCreateGpuInstance, 2, nvml.ERROR_UNKNOWN))

	replaceFile(t, n.configPath, nightConfig)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "MIG layout change failed") }, 10*time.Second, 10*time.Millisecond)
	require.Contains(t, logs.String(), "ERROR_UNKNOWN")
	// The retry (the daemon's backoff) finishes the layout.
	n.waitNight()
	ins := n.instances(1)
	require.ElementsMatch(t, []string{"3g.40gb", "3g.40gb"}, profilesOf(ins))
	for _, in := range ins {
		require.True(t, in.Complete(), "%s", &in)
	}
	require.Eventually(t, func() bool {
		st, _ := n.migStatusOf(1)
		return !st.Pending()
	}, 5*time.Second, 10*time.Millisecond)
}

func TestMigLayoutWaitsWhileTheKubeletDoesNotAnswer(t *testing.T) {
	// A socket that accepts and hangs up: every PodResources question fails.
	dir, err := os.MkdirTemp("", "gbpr")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "kubelet.sock")
	lis, err := net.Listen("unix", sock)
	require.NoError(t, err)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	n := startNode(t, "dgxa100-mig", dayConfig, func(o *Options) {
		o.PodResourcesSocket = sock
		o.PodResourcesTimeout = time.Second
		o.DeferPollInterval = 20 * time.Millisecond
	})
	n.waitDay()
	replaceFile(t, n.configPath, nightConfig)
	n.waitMigWaiting(1, "did not answer")
	n.waitDay()
	require.Len(t, n.instances(1), 7)

	// The kubelet answers again, with nothing allocated: the change applies.
	require.NoError(t, lis.Close())
	_ = os.Remove(sock)
	lis2, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := grpc.NewServer()
	podresourcesapi.RegisterPodResourcesListerServer(srv, &fakePodResources{})
	go func() { _ = srv.Serve(lis2) }()
	t.Cleanup(srv.Stop)
	n.waitNight()
}

func TestMigLayoutThatCannotBeHonouredIsRejected(t *testing.T) {
	tests := map[string]struct {
		config string
		want   []string
	}{
		"does not fit": {
			config: "gpus: [{match: {index: [1]}, shape: mig, mig: [4g.40gb, 4g.40gb]}]\n",
			want:   []string{"gpus[0]", "GPU 1", "4g.40gb", mig.ErrDoesNotFit.Error()},
		},
		"profile of another model": {
			config: "gpus: [{match: {index: [1]}, shape: mig, mig: [1g.5gb]}]\n",
			want:   []string{"gpus[0]", "GPU 1", "1g.5gb", mig.ErrUnknownProfile.Error()},
		},
		"MIG mode off": {
			config: "gpus: [{match: {index: [3]}, shape: mig, mig: [7g.80gb]}]\n",
			want:   []string{"gpus[0]", "GPU 3", mig.ErrDisabled.Error()},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			// At start there is no last good config: New fails.
			_, ctx := ktesting.NewTestContext(t)
			b, err := sim.New("dgxa100-mig")
			require.NoError(t, err)
			path := t.TempDir() + "/config.yaml"
			replaceFile(t, path, tc.config)
			_, err = New(ctx, Options{ConfigPath: path, CDIDir: t.TempDir(), DriverRoot: t.TempDir()}, b)
			require.Error(t, err)
			for _, w := range tc.want {
				require.ErrorContains(t, err, w)
			}

			// Live, the config is rejected whole and the last good one
			// serves on: GPU 1 keeps its day layout.
			n := startNode(t, "dgxa100-mig", dayConfig)
			n.waitDay()
			replaceFile(t, n.configPath, tc.config)
			require.Eventually(t, func() bool { return n.d.ConfigStatus().Errors == 1 }, 5*time.Second, 10*time.Millisecond)
			for _, w := range tc.want {
				require.ErrorContains(t, n.d.ConfigStatus().LastError, w)
			}
			n.d.Rescan()
			n.settle()
			require.EqualValues(t, 1, n.d.ConfigStatus().Generation)
			n.waitDay()
			require.Len(t, n.instances(1), 7)
		})
	}
}

func TestMigLayoutNotAppliedInDRAMode(t *testing.T) {
	n, f := startDRANode(t, "dgxa100-mig", nightConfig)
	f.waitPool(t, func(p *dra.Pool) bool { return len(p.Devices) > 0 })
	n.d.Rescan()
	n.settle()
	require.Len(t, n.instances(1), 7, "DRA mode creates MIG devices per claim, not from a layout")
	require.Empty(t, n.d.State().MigLayouts)
}

func TestGPUsInUse(t *testing.T) {
	inv := &gpu.Inventory{GPUs: []gpu.GPU{
		{Index: 0, UUID: "GPU-a"},
		{Index: 1, UUID: "GPU-b", MigEnabled: true, MigDevices: []gpu.MigDevice{{UUID: "MIG-b1"}, {UUID: "MIG-b2"}}},
		{Index: 2, UUID: "GPU-c"},
	}}
	ids := func(list ...string) *allocations {
		a := &allocations{ids: map[string]bool{}}
		for _, id := range list {
			a.ids[id] = true
		}
		return a
	}
	tests := map[string]struct {
		alloc *allocations
		want  map[string][]string
	}{
		"nothing allocated": {alloc: ids(), want: map[string][]string{}},
		"whole GPU":         {alloc: ids("GPU-a"), want: map[string][]string{"GPU-a": {"GPU-a"}}},
		"blocks":            {alloc: ids("GPU-c::3", "GPU-c::4"), want: map[string][]string{"GPU-c": {"GPU-c::3", "GPU-c::4"}}},
		"MIG devices count for their parent": {
			alloc: ids("MIG-b2", "MIG-b1"),
			want:  map[string][]string{"GPU-b": {"MIG-b1", "MIG-b2"}},
		},
		"another node's device": {alloc: ids("MIG-zz"), want: map[string][]string{}},
		"kubelet not answering": {
			alloc: &allocations{unknown: true},
			want: map[string][]string{
				"GPU-a": {"(the kubelet could not be asked)"},
				"GPU-b": {"(the kubelet could not be asked)"},
				"GPU-c": {"(the kubelet could not be asked)"},
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			require.Equal(t, tc.want, gpusInUse(inv, tc.alloc))
		})
	}
}

func TestInspectShowsPendingMigLayout(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	b, err := sim.New("dgxa100-mig")
	require.NoError(t, err)
	path := t.TempDir() + "/config.yaml"
	replaceFile(t, path, nightConfig)
	cfg, _, err := config.Load(path, "")
	require.NoError(t, err)
	st, err := Compute(ctx, b, Options{}, cfg, cdi.DriverFiles{}, nil)
	require.NoError(t, err)
	require.Len(t, st.MigLayouts, 1)
	require.True(t, st.MigLayouts[0].Pending())
	var out strings.Builder
	require.NoError(t, st.WriteReport(&out, b.Name()))
	require.Contains(t, out.String(), "MIG LAYOUT")
	require.Contains(t, out.String(), "[3g.40gb 3g.40gb]")
	require.Contains(t, out.String(), "pending: destroy")
	require.Contains(t, out.String(), "create 3g.40gb")
	require.Len(t, simInstances(t, b, 1), 7, "inspect changes nothing")
}
