package gpu_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
)

// DRA publishes the architecture, compute capability and MIG placements
// as device attributes; discovery must read them from NVML.
func TestDiscoverAttributesAndPlacements(t *testing.T) {
	b, err := sim.New("dgxa100-mig")
	require.NoError(t, err)
	defer func() { _ = b.Close() }()
	inv, err := gpu.Discover(context.Background(), b)
	require.NoError(t, err)
	for _, g := range inv.GPUs {
		require.Equal(t, "Ampere", g.Architecture, g.String())
		require.Equal(t, "8.0", g.CUDAComputeCapability, g.String())
	}

	// GPU 1 holds seven 1g.10gb instances: each one slice, no overlaps,
	// together the seven compute slices 0..6.
	starts := map[int]bool{}
	for _, md := range inv.GPUs[1].MigDevices {
		require.NotNil(t, md.Placement, md.UUID)
		require.Equal(t, 1, md.Placement.Size, md.UUID)
		require.False(t, starts[md.Placement.Start], "two instances at slice %d", md.Placement.Start)
		starts[md.Placement.Start] = true
	}
	require.Len(t, starts, 7)

	// GPU 0's mixed layout: no two instances share a memory slice.
	used := map[int]string{}
	for _, md := range inv.GPUs[0].MigDevices {
		require.NotNil(t, md.Placement, md.UUID)
		for s := md.Placement.Start; s < md.Placement.Start+md.Placement.Size; s++ {
			require.Empty(t, used[s], "slice %d used by %s and %s", s, used[s], md.Profile)
			used[s] = md.Profile
		}
	}
	require.Len(t, inv.GPUs[0].MigDevices, 4)
}
