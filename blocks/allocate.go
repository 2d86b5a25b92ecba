package blocks

import (
	"maps"
	"slices"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/plugin"
)

// Allocate answers Allocate for one container. The IDs must be known blocks,
// without duplicates, and obey the blocks rules: k ≤ 100 blocks of one GPU,
// or k/100 whole GPUs for k a multiple of 100. Otherwise the answer is an
// InvalidArgument error wrapping ErrInvalidRequest that names the GPUs the
// IDs came from. On success the response is BaseFunc's for the parent GPUs
// plus the blocks environment (SetEnv).
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
// and adds the blocks environment (SetEnv). Slices and maps are copied so
// that no two responses, and no response and the base, share mutable state.
func (r *Resource) response(slots []int, k int) *pluginapi.ContainerAllocateResponse {
	var buf [stackGPUs]Share
	shares := buf[:0]
	for _, s := range slots {
		g := &r.gpus[s]
		// k ≤ 100 comes from one GPU; above, every GPU is held whole.
		shares = append(shares, Share{UUID: g.uuid, MemoryMiB: g.memoryMiB, Blocks: min(k, PerGPU)})
	}
	var base *pluginapi.ContainerAllocateResponse
	if len(slots) == 1 {
		base = r.gpus[slots[0]].base
	} else {
		uuids := make([]string, len(shares))
		for i := range shares {
			uuids[i] = shares[i].UUID
		}
		base = r.base(uuids)
	}
	envs := make(map[string]string, len(base.GetEnvs())+4)
	maps.Copy(envs, base.GetEnvs())
	SetEnv(envs, shares)
	return &pluginapi.ContainerAllocateResponse{
		Envs:        envs,
		Mounts:      slices.Clone(base.GetMounts()),
		Devices:     slices.Clone(base.GetDevices()),
		Annotations: maps.Clone(base.GetAnnotations()),
		CdiDevices:  slices.Clone(base.GetCdiDevices()),
	}
}
