package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
)

const (
	// blocksResource is the blocks shape's resource with the default config.
	blocksResource = "nvidia.com/gpu-blocks"
	// blocksPerGPU is how many blocks one GPU is cut into.
	blocksPerGPU = 100
	// a100MemoryMiB is the memory of the dgxa100 preset's A100-SXM4-40GB.
	a100MemoryMiB = 40960
)

// blocksConfig puts GPUs 0 and 1 in the blocks shape; the others stay whole.
const blocksConfig = `version: v1
gpus:
  - match: {index: [0, 1]}
    shape: blocks
`

// blocksPod is a one-container pod asking for k blocks.
func blocksPod(name string, k int64) *v1.Pod {
	return resourcePod(name, blocksResource, k)
}

// requireBlocksOfOneGPU checks an admitted container that asked for k ≤ 100
// blocks: k distinct blocks of one GPU, that GPU (and nothing else) as its
// CDI device, and the blocks environment of DESIGN §6. It returns the GPU's
// UUID.
func requireBlocksOfOneGPU(t *testing.T, a admitted, k int) string {
	t.Helper()
	require.Len(t, a.ids, k, "blocks checkpointed")
	uuid, _, ok := strings.Cut(a.ids[0], "::")
	require.True(t, ok, "block ID %q", a.ids[0])
	for _, id := range a.ids {
		require.True(t, strings.HasPrefix(id, uuid+"::"), "blocks of one request split across GPUs: %v", a.ids)
	}
	require.Equal(t, []string{cdiName(uuid)}, a.cdi, "CDI devices")
	require.Equal(t, map[string]string{
		"GPUBLOCKS_BLOCKS":                  strconv.Itoa(k),
		"GPUBLOCKS_GPU_UUID":                uuid,
		"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": strconv.Itoa(k),
		"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT":  fmt.Sprintf("0=%dM", a100MemoryMiB*k/blocksPerGPU),
	}, a.envs, "environment")
	return uuid
}

// requireNothingAllocated checks that a refused pod holds no devices.
func (n *kubeletNode) requireNothingAllocated(t *testing.T, pod *v1.Pod) {
	t.Helper()
	require.Empty(t, n.m.GetDevices(string(pod.UID), pod.Spec.Containers[0].Name), "refused pod %s holds devices", pod.Name)
}

// TestBlocks puts GPUs 0 and 1 of the dgxa100 preset in the blocks shape and
// admits pods through the kubelet's device manager: requests land on one
// GPU each (binpack), never split, and impossible ones are refused at
// admission with the plugin's reason.
func TestBlocks(t *testing.T) {
	configFile := writeFile(t, shortTempDir(t), "config.yaml", blocksConfig)
	n := startKubeletNode(t, func(o *pluginOptions) { o.config = configFile })
	want := map[string]int64{resourceName: dgxa100GPUs - 2, blocksResource: 2 * blocksPerGPU}

	t.Run("GPUs 0-1 are 200 blocks, the others whole", func(t *testing.T) {
		took := n.waitForCapacity(t, want, registerTimeout)
		t.Logf("capacity %v after %s", want, took)
		capacity, _ := n.capacities()
		require.Equal(t, want, capacity)
		n.plugin.requireRunning(t)
	})
	cache := cdiCache(t, n.opts.cdiDir)

	t.Run("150 blocks are refused with the rule", func(t *testing.T) {
		pod := blocksPod("b150", 150)
		_, err := n.tryAdmit(t, pod)
		require.Error(t, err)
		t.Logf("admission error: %v", err)
		require.ErrorContains(t, err, "150 blocks")
		require.ErrorContains(t, err, "multiple of 100")
		n.requireNothingAllocated(t, pod)
	})

	// blocksGPUs are the UUIDs of the two blocks GPUs, in index order.
	var blocksGPUs []string
	t.Run("200 blocks take both GPUs whole", func(t *testing.T) {
		pod := blocksPod("b200", 200)
		a := n.admit(t, pod)
		defer n.pods.remove(pod) // the pod ends: its blocks are free for the next step
		require.Len(t, a.ids, 200)
		require.Len(t, a.cdi, 2)
		minors := map[int]string{}
		for _, name := range a.cdi {
			uuid := strings.TrimPrefix(name, cdiKind+"=")
			for u, m := range gpuMinors(t, cache, []string{uuid}) {
				minors[m] = u
			}
		}
		require.Len(t, minors, 2)
		blocksGPUs = []string{minors[0], minors[1]}
		require.NotEmpty(t, blocksGPUs[0], "GPU 0 is not a blocks GPU")
		require.NotEmpty(t, blocksGPUs[1], "GPU 1 is not a blocks GPU")
		perGPU := map[string]int{}
		for _, id := range a.ids {
			uuid, _, _ := strings.Cut(id, "::")
			perGPU[uuid]++
		}
		require.Equal(t, map[string]int{blocksGPUs[0]: 100, blocksGPUs[1]: 100}, perGPU)
		require.Equal(t, map[string]string{
			"GPUBLOCKS_BLOCKS":                  "200",
			"GPUBLOCKS_GPU_UUID":                blocksGPUs[0] + "," + blocksGPUs[1],
			"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "100",
			"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT":  fmt.Sprintf("0=%dM,1=%dM", a100MemoryMiB, a100MemoryMiB),
		}, a.envs)
	})
	require.Len(t, blocksGPUs, 2, "the blocks GPUs are unknown")

	// Binpack: 30 takes a GPU, 50 joins it, 60 does not fit there and takes
	// the other, 20 fills the first.
	pods := map[string]*v1.Pod{}
	gpuOf := map[string]string{}
	steps := []struct {
		pod       string
		k         int
		sameGPUAs string
		otherThan string
	}{
		{pod: "b30", k: 30},
		{pod: "b50", k: 50, sameGPUAs: "b30"},
		{pod: "b60", k: 60, otherThan: "b30"},
		{pod: "b20", k: 20, sameGPUAs: "b30"},
	}
	for _, st := range steps {
		t.Run(fmt.Sprintf("%d blocks land on one GPU", st.k), func(t *testing.T) {
			pods[st.pod] = blocksPod(st.pod, int64(st.k))
			gpu := requireBlocksOfOneGPU(t, n.admit(t, pods[st.pod]), st.k)
			require.Contains(t, blocksGPUs, gpu)
			gpuOf[st.pod] = gpu
			if st.sameGPUAs != "" {
				require.Equal(t, gpuOf[st.sameGPUAs], gpu, "%s should share %s's GPU", st.pod, st.sameGPUAs)
			}
			if st.otherThan != "" {
				require.NotEqual(t, gpuOf[st.otherThan], gpu, "%s should not fit on %s's GPU", st.pod, st.otherThan)
			}
		})
	}

	t.Run("100 blocks are refused when only 50+50 are free", func(t *testing.T) {
		full, other := gpuOf["b30"], gpuOf["b60"]
		require.NotEmpty(t, full)
		require.NotEmpty(t, other)
		// 60 ends; a new 50 can only go where the 60 was (the other GPU is
		// full); then 30 and 20 end: 50 free on each GPU, 100 in total.
		n.pods.remove(pods["b60"])
		pods["b50b"] = blocksPod("b50b", 50)
		require.Equal(t, other, requireBlocksOfOneGPU(t, n.admit(t, pods["b50b"]), 50))
		n.pods.remove(pods["b30"], pods["b20"])

		pod := blocksPod("b100", 100)
		_, err := n.tryAdmit(t, pod)
		require.Error(t, err, "100 blocks must never be split 50+50 over two GPUs")
		t.Logf("admission error: %v", err)
		// The message says which GPUs the blocks would have come from.
		require.ErrorContains(t, err, full)
		require.ErrorContains(t, err, other)
		n.requireNothingAllocated(t, pod)
	})

	t.Run("the refusal leaked no blocks", func(t *testing.T) {
		gpu := requireBlocksOfOneGPU(t, n.admit(t, blocksPod("b50c", 50)), 50)
		require.Contains(t, blocksGPUs, gpu)
		capacity, allocatable := n.capacities()
		require.Equal(t, want, capacity)
		require.Equal(t, want, allocatable)
		n.plugin.requireRunning(t)
	})
}
