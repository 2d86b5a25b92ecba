package draserve

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/stretchr/testify/require"
	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpublocks/gpublocks/cdi"
	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/daemon"
	"github.com/gpublocks/gpublocks/dra"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/mig"
)

// migBackend simulates one MIG-enabled A100 40 GB without instances.
func migBackend(t *testing.T) (*sim.Backend, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sim.yaml")
	require.NoError(t, os.WriteFile(path, []byte("gpus:\n  - model: A100-SXM4-40GB\n    mig: []\n"), 0o600))
	b, err := sim.New(path)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	inv, err := gpu.Discover(context.Background(), b)
	require.NoError(t, err)
	return b, inv.GPUs[0].UUID
}

func instances(t *testing.T, b *sim.Backend) []mig.Instance {
	t.Helper()
	dev, ret := b.NVML().DeviceGetHandleByIndex(0)
	require.Equal(t, nvml.SUCCESS, ret)
	st, err := mig.Read(dev)
	require.NoError(t, err)
	return st.Instances
}

func TestMIGManager(t *testing.T) {
	ctx := context.Background()
	b, g := migBackend(t)
	m := NewMIGManager(b)

	uuid, created, err := m.Create(ctx, g, "2g.10gb", 2)
	require.NoError(t, err)
	require.True(t, created)
	ins := instances(t, b)
	require.Len(t, ins, 1)
	require.Equal(t, uuid, ins[0].UUID())
	require.Equal(t, 2, ins[0].Placement.Start)

	again, created, err := m.Create(ctx, g, "2g.10gb", 2)
	require.NoError(t, err)
	require.False(t, created, "an idle matching instance is reused")
	require.Equal(t, uuid, again)

	_, _, err = m.Create(ctx, g, "1g.5gb", 3)
	require.ErrorIs(t, err, nvml.ERROR_INSUFFICIENT_RESOURCES, "an instance in the way")
	_, _, err = m.Create(ctx, "GPU-nope", "1g.5gb", 0)
	require.ErrorContains(t, err, "GPU-nope")

	pid, err := b.StartProcess(0, uuid)
	require.NoError(t, err)
	require.ErrorIs(t, m.Destroy(ctx, g, uuid), mig.ErrBusy)
	require.NoError(t, b.StopProcess(pid))
	require.NoError(t, m.Destroy(ctx, g, uuid))
	require.Empty(t, instances(t, b))
	require.ErrorIs(t, m.Destroy(ctx, g, uuid), mig.ErrNotFound, "an instance already gone")

	// A new instance at the same place has another UUID: destroying the
	// old UUID leaves it alone.
	newer, _, err := m.Create(ctx, g, "2g.10gb", 2)
	require.NoError(t, err)
	require.NotEqual(t, uuid, newer)
	require.ErrorIs(t, m.Destroy(ctx, g, uuid), mig.ErrNotFound)
	require.Len(t, instances(t, b), 1)
}

func TestMIGManagerCreateFails(t *testing.T) {
	b, g := migBackend(t)
	require.NoError(t, b.FailMigOp(0, sim.OpCreateComputeInstance, 1, nvml.ERROR_UNKNOWN))
	_, _, err := NewMIGManager(b).Create(context.Background(), g, "1g.5gb", 0)
	require.ErrorIs(t, err, nvml.ERROR_UNKNOWN)
	require.Empty(t, instances(t, b), "the GPU instance is destroyed again")
}

func TestMIGManagerRefresh(t *testing.T) {
	b, _ := migBackend(t)
	m := NewMIGManager(b)
	require.ErrorIs(t, m.Refresh(context.Background()), ErrNoRefresh)
	calls := 0
	m.SetRefresh(func(context.Context) error { calls++; return nil })
	require.NoError(t, m.Refresh(context.Background()))
	require.Equal(t, 1, calls)
}

// After Create, what the daemon's rescan computes holds the new MIG
// device: the pool shows it under its placement's name with its uuid, and
// the base CDI spec has gpublocks.io/gpu=<MIG-UUID> (its capability nodes
// resolved from the updated mig-minors). After Destroy the placement is a
// device to create again.
func TestMIGManagerRescanSeesInstance(t *testing.T) {
	ctx := context.Background()
	b, g := migBackend(t)
	m := NewMIGManager(b)
	compute := func() *daemon.State {
		st, err := daemon.Compute(ctx, b, daemon.Options{KubeletAPI: daemon.KubeletAPIDRA}, config.Default(), cdi.DriverFiles{}, nil)
		require.NoError(t, err)
		return st
	}
	uuid, _, err := m.Create(ctx, g, "1g.5gb", 3)
	require.NoError(t, err)
	st := compute()
	var names []string
	for _, d := range st.Spec.Devices {
		names = append(names, d.Name)
	}
	require.Contains(t, names, uuid, "the base spec holds the MIG device")
	dev := byName(PoolOf(st))["gpu-0-mig-1g-5gb-3"]
	require.Equal(t, uuid, *dev.Attributes["uuid"].StringValue)

	require.NoError(t, m.Destroy(ctx, g, uuid))
	dev = byName(PoolOf(compute()))["gpu-0-mig-1g-5gb-3"]
	_, has := dev.Attributes["uuid"]
	require.False(t, has)
}

func byName(p dra.Pool) map[string]resourceapi.Device {
	out := map[string]resourceapi.Device{}
	for _, d := range p.Devices {
		out[d.Name] = d
	}
	return out
}
