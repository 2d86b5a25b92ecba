package blocks

import (
	"testing"

	"github.com/stretchr/testify/require"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/plugin"
)

func TestDevices(t *testing.T) {
	gpus := testGPUs(8)
	gpus[7].NUMANode = -1 // unknown: no topology hint
	r, err := NewResource("nvidia.com/gpu-blocks", gpus, Binpack, map[string]bool{"GPU-a2": true, "GPU-other": true}, (&fakeBase{}).fn)
	require.NoError(t, err)
	require.Equal(t, "nvidia.com/gpu-blocks", r.Name())
	require.Equal(t, Binpack, r.Policy())

	devs := r.Devices()
	require.Len(t, devs, 8*PerGPU)
	perGPU := map[string]int{}
	for i, d := range devs {
		uuid, n, err := ParseID(d.ID)
		require.NoError(t, err)
		require.Equal(t, i%PerGPU, n, "blocks in order")
		perGPU[uuid]++
		g := gpus[i/PerGPU]
		require.Equal(t, g.UUID, uuid, "GPUs in index order")

		wantHealth := pluginapi.Healthy
		if uuid == "GPU-a2" {
			wantHealth = pluginapi.Unhealthy
		}
		require.Equal(t, wantHealth, d.Health, "%s: GPU health applies to every block", d.ID)
		if g.NUMANode < 0 {
			require.Nil(t, d.Topology, d.ID)
		} else {
			require.Equal(t, []*pluginapi.NUMANode{{ID: int64(g.NUMANode)}}, d.Topology.Nodes, d.ID)
		}
	}
	require.Len(t, perGPU, 8)
	for uuid, c := range perGPU {
		require.Equal(t, PerGPU, c, uuid)
	}
}

func TestDevicesSortedByIndex(t *testing.T) {
	gpus := testGPUs(3)
	gpus[0], gpus[2] = gpus[2], gpus[0]
	r, err := NewResource("nvidia.com/gpu-blocks", gpus, Spread, nil, (&fakeBase{}).fn)
	require.NoError(t, err)
	require.Equal(t, "GPU-a0::0", r.Devices()[0].ID)
	require.Equal(t, "GPU-a2::99", r.Devices()[299].ID)
	var _ plugin.Resource = r
}

func TestNewResourceErrors(t *testing.T) {
	base := (&fakeBase{}).fn
	tests := map[string]struct {
		name   string
		gpus   func() []gpu.GPU
		policy Policy
		base   BaseFunc
		want   string
	}{
		"empty name":     {gpus: func() []gpu.GPU { return testGPUs(1) }, base: base, want: "empty resource name"},
		"nil base":       {name: "x/y", gpus: func() []gpu.GPU { return testGPUs(1) }, want: "no base"},
		"unknown policy": {name: "x/y", gpus: func() []gpu.GPU { return testGPUs(1) }, policy: 9, base: base, want: "unknown blocks policy"},
		"duplicate UUID": {name: "x/y", base: base, want: "GPU-a0 appears twice", gpus: func() []gpu.GPU {
			g := testGPUs(2)
			g[1].UUID = g[0].UUID
			return g
		}},
		"duplicate index": {name: "x/y", base: base, want: "index 0 appears twice", gpus: func() []gpu.GPU {
			g := testGPUs(2)
			g[1].Index = 0
			return g
		}},
		"colon in UUID": {name: "x/y", base: base, want: "contains ':'", gpus: func() []gpu.GPU {
			g := testGPUs(1)
			g[0].UUID = "GPU:a"
			return g
		}},
		"empty UUID": {name: "x/y", base: base, want: "empty GPU UUID", gpus: func() []gpu.GPU {
			g := testGPUs(1)
			g[0].UUID = ""
			return g
		}},
		"MIG enabled": {name: "x/y", base: base, want: "GPU 0 (GPU-a0) has MIG enabled", gpus: func() []gpu.GPU {
			g := testGPUs(1)
			g[0].MigEnabled = true
			return g
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := NewResource(tc.name, tc.gpus(), tc.policy, nil, tc.base)
			require.ErrorIs(t, err, ErrInvalidResource)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestNewResourceNoGPUs(t *testing.T) {
	r, err := NewResource("nvidia.com/gpu-blocks", nil, Binpack, nil, (&fakeBase{}).fn)
	require.NoError(t, err)
	require.Empty(t, r.Devices())
	_, err = r.Prefer(nil, nil, 10)
	require.ErrorIs(t, err, ErrNoFit)
}

// TestLookup: the prefix fast path agrees with the map for every kind of ID,
// including UUIDs that are prefixes of each other.
func TestLookup(t *testing.T) {
	r, _ := newTestResource(t, 12, Binpack, nil) // GPU-a1 is a prefix of GPU-a10
	ids := []string{"GPU-a10::5", "GPU-a1::5", "GPU-a1::05", "GPU-a1::100", "GPU-a1::", "GPU-a1:5", "GPU-a1", "GPU-a11::99", "x", ""}
	for _, id := range ids {
		want, wantOK := r.byID[id]
		for hint := int32(-1); hint < int32(len(r.gpus)); hint++ {
			got, ok := r.lookup(id, hint)
			require.Equal(t, wantOK, ok, "%q hint %d", id, hint)
			if ok {
				require.Equal(t, want, got, "%q hint %d", id, hint)
			}
		}
	}
}

// TestManyGPUs covers nodes with more GPUs than the on-stack scratch space.
func TestManyGPUs(t *testing.T) {
	r, _ := newTestResource(t, 20, Binpack, nil)
	ids, err := r.Prefer(append(blocksOf(19, 0, 30), blocksOf(3, 0, 60)...), nil, 25)
	require.NoError(t, err)
	require.Equal(t, []int{19}, gpuIndices(t, ids))
	_, err = r.Allocate(append(blocksOf(18, 0, 5), blocksOf(19, 0, 5)...))
	require.ErrorContains(t, err, "5 blocks from GPU 18 (GPU-a18) and 5 from GPU 19 (GPU-a19)")
}
