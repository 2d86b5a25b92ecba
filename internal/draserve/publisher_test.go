package draserve

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/daemon"
	"github.com/gpublocks/gpublocks/dra"
	"github.com/gpublocks/gpublocks/draplugin"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/shape"
)

type fakeDriver struct {
	published []dra.Pool
	prepared  []draplugin.PreparedDevice
}

func (f *fakeDriver) Publish(_ context.Context, pool dra.Pool, _ *gpu.Inventory) error {
	f.published = append(f.published, pool)
	return nil
}
func (f *fakeDriver) Prepared() []draplugin.PreparedDevice { return f.prepared }
func (f *fakeDriver) Registered() bool                     { return true }

// state is a DRA state of the dgxa100 preset under cfg, with GPU 1 faulted.
func state(t *testing.T, cfgYAML string) *daemon.State {
	t.Helper()
	b, err := sim.New("dgxa100")
	require.NoError(t, err)
	inv, err := gpu.Discover(context.Background(), b)
	require.NoError(t, err)
	cfg, err := config.Parse([]byte(cfgYAML))
	require.NoError(t, err)
	return &daemon.State{Inventory: inv, Config: cfg, Offers: shape.Offers(inv, cfg, nil),
		Faults: map[string]string{inv.GPUs[1].UUID: "xid-79"}}
}

func TestPoolTaintsFaultedGPUsWithTheConfigsEffect(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg  string
		want resourceapi.DeviceTaintEffect
	}{
		"default":   {cfg: "{}", want: resourceapi.DeviceTaintEffectNoSchedule},
		"NoExecute": {cfg: "health: {draTaintEffect: NoExecute}", want: resourceapi.DeviceTaintEffectNoExecute},
	} {
		t.Run(name, func(t *testing.T) {
			pool := PoolOf(state(t, tc.cfg))
			for _, d := range pool.Devices {
				if d.Name == "gpu-1" || d.Name == "gpu-1-blocks" {
					require.Equal(t, []resourceapi.DeviceTaint{{Key: dra.UnhealthyTaintKey, Value: "xid-79", Effect: tc.want}}, d.Taints, d.Name)
				} else {
					require.Empty(t, d.Taints, d.Name)
				}
			}
		})
	}
}

func TestPublishRefusesToDropPreparedDevices(t *testing.T) {
	f := &fakeDriver{prepared: []draplugin.PreparedDevice{{Device: "gpu-0-blocks", Type: dra.TypeBlocks}}}
	p := NewPublisher(f)
	// GPU 0 whole only: its prepared blocks would vanish.
	st := state(t, "gpus: [{match: {index: [0]}, shape: whole}]")
	err := p.Publish(context.Background(), st)
	require.ErrorContains(t, err, "leaves out prepared devices gpu-0-blocks")
	require.Empty(t, f.published)
	require.ErrorContains(t, p.Check(st), "gpu-0-blocks")

	st = state(t, "{}")
	require.NoError(t, p.Publish(context.Background(), st))
	require.Len(t, f.published, 1)
}

func TestServedCountsPerDeviceClass(t *testing.T) {
	p := NewPublisher(&fakeDriver{})
	got := p.Served(state(t, "gpus: [{match: {index: [0]}, shape: whole}]"))
	require.Equal(t, []string{"blocks.gpu.gpublocks.io", "gpu.gpublocks.io"}, []string{got[0].Name, got[1].Name})
	require.Equal(t, 6, got[0].Healthy)   // GPUs 2-7
	require.Equal(t, 1, got[0].Unhealthy) // GPU 1
	require.Equal(t, 7, got[1].Healthy)   // GPUs 0, 2-7
	require.Equal(t, 1, got[1].Unhealthy)
}

func TestPreparedInTheDaemonsTerms(t *testing.T) {
	p := NewPublisher(&fakeDriver{prepared: []draplugin.PreparedDevice{
		{Device: "gpu-0", Type: dra.TypeGPU, GPUUUID: "G0", UUID: "G0"},
		{Device: "gpu-1-blocks", Type: dra.TypeBlocks, GPUUUID: "G1", UUID: "G1", Blocks: 30},
		{Device: "gpu-2-mig-1g-10gb-0", Type: dra.TypeMIG, GPUUUID: "G2", UUID: "MIG-1"},
	}})
	require.Equal(t, []daemon.PreparedDevice{
		{Device: "gpu-0", Shape: shape.Whole, GPUUUID: "G0", UUID: "G0"},
		{Device: "gpu-1-blocks", Shape: shape.Blocks, GPUUUID: "G1", UUID: "G1"},
		{Device: "gpu-2-mig-1g-10gb-0", Shape: shape.MIG, GPUUUID: "G2", UUID: "MIG-1"},
	}, p.Prepared())
}
