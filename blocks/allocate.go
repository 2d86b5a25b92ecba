package blocks

import (
	"maps"
	"slices"
	"strconv"
	"strings"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/plugin"
)

// Environment variables Allocate sets, besides what BaseFunc returns.
const (
	// EnvBlocks is the number of blocks the container got.
	EnvBlocks = "GPUBLOCKS_BLOCKS"
	// EnvGPUUUID is the UUID of the parent GPU; comma-joined in GPU index
	// order for whole-GPU requests over 100 blocks.
	EnvGPUUUID = "GPUBLOCKS_GPU_UUID"
	// EnvMPSThreadPercentage caps the share of SMs under MPS: the number of
	// blocks, at most 100.
	EnvMPSThreadPercentage = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
	// EnvMPSMemLimit caps device memory under MPS, per CUDA device ordinal:
	// "0=<floor(memoryMiB×k/100)>M" for k ≤ 100, and the whole memory of each
	// GPU ("0=40960M,1=40960M", ordinals in EnvGPUUUID order) above.
	EnvMPSMemLimit = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
)

// Allocate answers Allocate for one container. The IDs must be known blocks,
// without duplicates, and obey the blocks rules: k ≤ 100 blocks of one GPU,
// or k/100 whole GPUs for k a multiple of 100. Otherwise the answer is an
// InvalidArgument error wrapping ErrInvalidRequest that names the GPUs the
// IDs came from. On success the response is BaseFunc's for the parent GPUs
// plus the blocks environment (see EnvBlocks and the variables after it).
func (r *Resource) Allocate(ids []string) (*pluginapi.ContainerAllocateResponse, error) {
	k := len(ids)
	if k == 0 {
		return nil, invalidf("no blocks to allocate")
	}
	var buf [stackGPUs]gpuState
	st := r.scratch(buf[:])
	hint := int32(-1)
	for _, id := range ids {
		ref, ok := r.lookup(id, hint)
		if !ok {
			if _, _, err := ParseID(id); err != nil {
				return nil, invalidf("%v", err)
			}
			return nil, invalidf("block %s belongs to no GPU this resource serves", plugin.QuoteID(id))
		}
		hint = ref.slot
		s := &st[ref.slot]
		if s.free.has(int(ref.n)) {
			return nil, invalidf("block %s is listed twice", plugin.QuoteID(id))
		}
		s.free.add(ref.n)
	}

	var slotBuf [stackGPUs]int
	slots := slotBuf[:0]
	whole := true
	for i := range st {
		if c := st[i].free.len(); c > 0 {
			slots = append(slots, i)
			whole = whole && c == PerGPU
		}
	}
	switch {
	case k <= PerGPU && len(slots) > 1:
		return nil, invalidf("a request of %d blocks must come from one GPU, but got %s; "+
			"the kubelet chose these IDs without the plugin's preference: delete the pod to retry, "+
			"and check that the kubelet calls GetPreferredAllocation", k, r.countsOf(st, slots))
	case k > PerGPU && k%PerGPU != 0:
		return nil, invalidf("%d blocks is more than one GPU (%d blocks) but not a multiple of %d: "+
			"ask for at most %d blocks, or for %d or %d to get whole GPUs (got %s)",
			k, PerGPU, PerGPU, PerGPU, k/PerGPU*PerGPU, (k/PerGPU+1)*PerGPU, r.countsOf(st, slots))
	case k > PerGPU && !whole:
		return nil, invalidf("a request of %d blocks takes %d whole GPUs (%d blocks each), but got %s; "+
			"delete the pod to retry, and check that the kubelet calls GetPreferredAllocation",
			k, k/PerGPU, PerGPU, r.countsOf(st, slots))
	}
	return r.response(slots, k), nil
}

func (r *Resource) countsOf(st []gpuState, slots []int) string {
	counts := make([]int, len(st))
	for _, s := range slots {
		counts[s] = st[s].free.len()
	}
	return joinCounts(r, slots, counts)
}

// response copies the base response for the GPUs in slots (in index order)
// and adds the blocks environment. Slices and maps are copied so that no
// two responses, and no response and the base, share mutable state.
func (r *Resource) response(slots []int, k int) *pluginapi.ContainerAllocateResponse {
	var base *pluginapi.ContainerAllocateResponse
	var uuid, memLimit string
	if len(slots) == 1 {
		g := &r.gpus[slots[0]]
		base, uuid = g.base, g.uuid
		memLimit = "0=" + strconv.FormatUint(g.memoryMiB*uint64(k)/PerGPU, 10) + "M"
	} else {
		uuids := make([]string, len(slots))
		var lim strings.Builder
		for i, s := range slots {
			g := &r.gpus[s]
			uuids[i] = g.uuid
			if i > 0 {
				lim.WriteByte(',')
			}
			lim.WriteString(strconv.Itoa(i))
			lim.WriteByte('=')
			lim.WriteString(strconv.FormatUint(g.memoryMiB, 10))
			lim.WriteByte('M')
		}
		base, uuid, memLimit = r.base(uuids), strings.Join(uuids, ","), lim.String()
	}
	envs := make(map[string]string, len(base.GetEnvs())+4)
	maps.Copy(envs, base.GetEnvs())
	envs[EnvBlocks] = strconv.Itoa(k)
	envs[EnvGPUUUID] = uuid
	envs[EnvMPSThreadPercentage] = strconv.Itoa(min(k, PerGPU))
	envs[EnvMPSMemLimit] = memLimit
	return &pluginapi.ContainerAllocateResponse{
		Envs:        envs,
		Mounts:      slices.Clone(base.GetMounts()),
		Devices:     slices.Clone(base.GetDevices()),
		Annotations: maps.Clone(base.GetAnnotations()),
		CdiDevices:  slices.Clone(base.GetCdiDevices()),
	}
}
