package blocks

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/plugin"
)

// ErrInvalidResource is wrapped by every NewResource error.
var ErrInvalidResource = errors.New("invalid blocks resource")

// BaseFunc returns the part of an Allocate response that gives a container
// the parent GPUs, named by UUID in GPU index order: CDI devices, annotations
// or NVIDIA_VISIBLE_DEVICES, as the device list strategy says. The blocks
// resource adds its environment to a copy and never modifies what BaseFunc
// returns, so a BaseFunc may return shared, precomputed responses. It must be
// safe for concurrent use. A nil response means "nothing to add".
type BaseFunc func(gpuUUIDs []string) *pluginapi.ContainerAllocateResponse

// Resource serves GPUs in the blocks shape as one kubelet resource. It
// implements plugin.Resource and is immutable: safe for concurrent use.
type Resource struct {
	name    string
	policy  Policy
	gpus    []gpuBlocks // sorted by GPU index
	devices []*pluginapi.Device
	byID    map[string]blockRef
	base    BaseFunc
}

var _ plugin.Resource = (*Resource)(nil)

// gpuBlocks is what Prefer and Allocate need to know about one GPU.
type gpuBlocks struct {
	index     int
	uuid      string
	memoryMiB uint64
	healthy   bool
	ids       [PerGPU]string
	// base is BaseFunc's answer for this GPU alone, computed once.
	base *pluginapi.ContainerAllocateResponse
}

// String names the GPU the way users see it in error messages.
func (g *gpuBlocks) String() string { return fmt.Sprintf("GPU %d (%s)", g.index, g.uuid) }

// blockRef locates a block: slot is the GPU's position in Resource.gpus.
type blockRef struct {
	slot int32
	n    int32
}

// NewResource builds the resource name (e.g. "nvidia.com/gpu-blocks") over
// gpus, which must have MIG disabled. unhealthy is the set of GPU UUIDs that
// are unhealthy (true = unhealthy); a GPU's health applies to all its
// blocks, and UUIDs of other GPUs are ignored. base supplies the
// parent-GPU part of every Allocate response; NewResource calls it once per
// GPU, and Allocate calls it again only for multi-GPU requests.
func NewResource(name string, gpus []gpu.GPU, policy Policy, unhealthy map[string]bool, base BaseFunc) (*Resource, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: empty resource name", ErrInvalidResource)
	}
	if base == nil {
		return nil, fmt.Errorf("%w %s: no base response function", ErrInvalidResource, name)
	}
	if policy != Binpack && policy != Spread {
		return nil, fmt.Errorf("%w %s: %w %d", ErrInvalidResource, name, ErrUnknownPolicy, int(policy))
	}
	sorted := slices.Clone(gpus)
	slices.SortFunc(sorted, func(a, b gpu.GPU) int { return cmp.Compare(a.Index, b.Index) })

	r := &Resource{
		name:    name,
		policy:  policy,
		gpus:    make([]gpuBlocks, len(sorted)),
		devices: make([]*pluginapi.Device, 0, len(sorted)*PerGPU),
		byID:    make(map[string]blockRef, len(sorted)*PerGPU),
		base:    base,
	}
	for slot, g := range sorted {
		if err := checkUUID(g.UUID); err != nil {
			return nil, fmt.Errorf("%w %s: GPU %d: %w", ErrInvalidResource, name, g.Index, err)
		}
		if g.MigEnabled {
			return nil, fmt.Errorf("%w %s: %s has MIG enabled; blocks need MIG disabled", ErrInvalidResource, name, &g)
		}
		if slot > 0 && sorted[slot-1].Index == g.Index {
			return nil, fmt.Errorf("%w %s: GPU index %d appears twice", ErrInvalidResource, name, g.Index)
		}
		gb := &r.gpus[slot]
		gb.index, gb.uuid, gb.memoryMiB, gb.healthy = g.Index, g.UUID, g.MemoryMiB, !unhealthy[g.UUID]
		gb.base = base([]string{g.UUID})
		for n := range PerGPU {
			id := FormatID(g.UUID, n)
			if _, dup := r.byID[id]; dup {
				return nil, fmt.Errorf("%w %s: GPU UUID %s appears twice", ErrInvalidResource, name, g.UUID)
			}
			gb.ids[n] = id
			r.byID[id] = blockRef{slot: int32(slot), n: int32(n)}
			r.devices = append(r.devices, plugin.NewDevice(id, gb.healthy, g.NUMANode))
		}
	}
	return r, nil
}

// lookup finds the block an ID names. The kubelet's lists are mostly grouped
// by GPU, so it first tries the GPU of the previous ID (hint, a slot or -1):
// a prefix compare and a two-digit parse are several times cheaper than
// hashing the whole ID. A UUID never contains ':', so "<uuid>::" matches
// exactly one GPU.
func (r *Resource) lookup(id string, hint int32) (blockRef, bool) {
	if hint >= 0 {
		u := r.gpus[hint].uuid
		if len(id) > len(u)+len(Separator) && id[:len(u)] == u && id[len(u):len(u)+len(Separator)] == Separator {
			n, ok := parseBlockNumber(id[len(u)+len(Separator):])
			return blockRef{slot: hint, n: int32(n)}, ok
		}
	}
	ref, ok := r.byID[id]
	return ref, ok
}

// Name returns the resource name.
func (r *Resource) Name() string { return r.name }

// Devices returns all blocks, PerGPU per GPU in GPU index order, with the
// health of their GPU and its NUMA node. Callers must not modify it.
func (r *Resource) Devices() []*pluginapi.Device { return r.devices }

// Policy returns the policy Prefer uses.
func (r *Resource) Policy() Policy { return r.policy }
