package resources

import (
	"slices"
	"sort"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/plugin"
)

// unit is one independently allocatable device: a whole GPU or a MIG device.
type unit struct {
	id      string
	healthy bool
	numa    int
}

// simpleResource serves devices that are allocated one by one with no
// grouping rule: whole GPUs and MIG devices. It is immutable.
type simpleResource struct {
	name    string
	devices []*pluginapi.Device
	numa    map[string]int
	rank    map[string]int // discovery order, for deterministic choices
	respond Responder
}

func newSimpleResource(name string, units []unit, respond Responder) *simpleResource {
	r := &simpleResource{name: name, numa: make(map[string]int, len(units)), rank: make(map[string]int, len(units)), respond: respond}
	for i, u := range units {
		r.devices = append(r.devices, plugin.NewDevice(u.id, u.healthy, u.numa))
		r.numa[u.id] = u.numa
		r.rank[u.id] = i
	}
	return r
}

func (r *simpleResource) Name() string                 { return r.name }
func (r *simpleResource) Devices() []*pluginapi.Device { return r.devices }

// Prefer keeps a container's devices on one NUMA node when it can: it starts
// from mustInclude, then fills from the NUMA node of mustInclude (or, with
// none, the smallest NUMA group that fits, to keep larger groups whole), then
// from anything, in discovery order. Each device is chosen at most once,
// however often the kubelet lists it.
func (r *simpleResource) Prefer(available, mustInclude []string, size int) ([]string, error) {
	out := make([]string, 0, size)
	taken := make(map[string]bool, size)
	for _, id := range mustInclude {
		if len(out) < size && !taken[id] {
			out = append(out, id)
			taken[id] = true
		}
	}
	free := make([]string, 0, len(available))
	for _, id := range available {
		if _, ok := r.rank[id]; ok && !taken[id] {
			free = append(free, id)
		}
	}
	sort.Slice(free, func(i, j int) bool { return r.rank[free[i]] < r.rank[free[j]] })
	// The kubelet's list may name a device twice; in rank order the copies
	// are neighbours, and one device must never be chosen twice.
	free = slices.Compact(free)
	need := size - len(out)
	if need <= 0 {
		return out, nil
	}
	byNUMA := map[int][]string{}
	for _, id := range free {
		byNUMA[r.numa[id]] = append(byNUMA[r.numa[id]], id)
	}
	target, found := 0, false
	if len(mustInclude) > 0 {
		target, found = r.numa[mustInclude[0]], true
	} else {
		for n, ids := range byNUMA {
			if len(ids) >= need && (!found || len(ids) < len(byNUMA[target]) || (len(ids) == len(byNUMA[target]) && n < target)) {
				target, found = n, true
			}
		}
	}
	if found {
		for _, id := range byNUMA[target] {
			if len(out) == size {
				break
			}
			out = append(out, id)
			taken[id] = true
		}
	}
	for _, id := range free {
		if len(out) == size {
			break
		}
		if !taken[id] {
			out = append(out, id)
		}
	}
	return out, nil
}

func (r *simpleResource) Allocate(ids []string) (*pluginapi.ContainerAllocateResponse, error) {
	return r.respond(ids), nil
}
