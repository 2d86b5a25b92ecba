package blocks

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/gpu"
)

// testGPUs returns n 40 GB GPUs "GPU-a<i>", indices 0…n-1, the first half on
// NUMA node 0 and the rest on node 1.
func testGPUs(n int) []gpu.GPU {
	gpus := make([]gpu.GPU, n)
	for i := range gpus {
		gpus[i] = gpu.GPU{
			Index:     i,
			UUID:      fmt.Sprintf("GPU-a%d", i),
			Model:     "NVIDIA A100-SXM4-40GB",
			MemoryMiB: 40960,
			NUMANode:  i * 2 / n,
		}
	}
	return gpus
}

// fakeBase is a BaseFunc that records its calls and returns a response that
// names the GPUs the way the cdi package would.
type fakeBase struct {
	mu    sync.Mutex
	calls [][]string
}

func (f *fakeBase) fn(uuids []string) *pluginapi.ContainerAllocateResponse {
	f.mu.Lock()
	f.calls = append(f.calls, slices.Clone(uuids))
	f.mu.Unlock()
	resp := &pluginapi.ContainerAllocateResponse{
		Envs:        map[string]string{"BASE_UUIDS": strings.Join(uuids, ",")},
		Annotations: map[string]string{"base": "yes"},
	}
	for _, u := range uuids {
		resp.CdiDevices = append(resp.CdiDevices, &pluginapi.CDIDevice{Name: "gpublocks.io/gpu=" + u})
	}
	return resp
}

func newTestResource(t testing.TB, n int, policy Policy, unhealthy map[string]bool) (*Resource, *fakeBase) {
	t.Helper()
	fb := &fakeBase{}
	r, err := NewResource("nvidia.com/gpu-blocks", testGPUs(n), policy, unhealthy, fb.fn)
	require.NoError(t, err)
	return r, fb
}

// blocksOf returns the IDs of blocks from…from+count-1 of GPU "GPU-a<index>".
func blocksOf(index, from, count int) []string {
	ids := make([]string, 0, count)
	for n := from; n < from+count; n++ {
		ids = append(ids, FormatID(fmt.Sprintf("GPU-a%d", index), n))
	}
	return ids
}

// freeList builds an available list: free[i] blocks of GPU i, the highest
// block numbers, so that tests also see that Prefer is not positional.
func freeList(free map[int]int) []string {
	var ids []string
	for i, c := range free {
		ids = append(ids, blocksOf(i, PerGPU-c, c)...)
	}
	slices.Sort(ids)
	return ids
}

// gpuIndices returns the sorted GPU indices the IDs come from.
func gpuIndices(t testing.TB, ids []string) []int {
	t.Helper()
	var out []int
	for _, id := range ids {
		uuid, _, err := ParseID(id)
		require.NoError(t, err)
		var i int
		_, err = fmt.Sscanf(uuid, "GPU-a%d", &i)
		require.NoError(t, err)
		if !slices.Contains(out, i) {
			out = append(out, i)
		}
	}
	slices.Sort(out)
	return out
}
