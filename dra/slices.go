package dra

import (
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Slice is one ResourceSlice's worth of a pool: counter sets or devices,
// never both (the API allows one or the other per slice).
type Slice struct {
	SharedCounters []resourceapi.CounterSet
	Devices        []resourceapi.Device
}

// Slices splits the pool into slices within the API's limits: at most
// ResourceSliceMaxCounterSets counter sets per slice, and at most
// ResourceSliceMaxDevicesWithAdvancedFeatures devices per slice (every
// device here consumes counters). A GPU's devices stay in one slice where
// they fit, so a slice update touches as few GPUs as possible.
func (p Pool) Slices() []Slice {
	var out []Slice
	for start := 0; start < len(p.Counters); start += resourceapi.ResourceSliceMaxCounterSets {
		end := min(start+resourceapi.ResourceSliceMaxCounterSets, len(p.Counters))
		out = append(out, Slice{SharedCounters: p.Counters[start:end]})
	}
	var cur []resourceapi.Device
	for _, group := range p.byCounterSet() {
		if len(cur)+len(group) > resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures && len(cur) > 0 {
			out = append(out, Slice{Devices: cur})
			cur = nil
		}
		for len(group) > resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures {
			out = append(out, Slice{Devices: group[:resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures]})
			group = group[resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures:]
		}
		cur = append(cur, group...)
	}
	if len(cur) > 0 {
		out = append(out, Slice{Devices: cur})
	}
	return out
}

// byCounterSet groups devices by the GPU (counter set) they belong to, in
// pool order.
func (p Pool) byCounterSet() [][]resourceapi.Device {
	var groups [][]resourceapi.Device
	idx := map[string]int{}
	for _, d := range p.Devices {
		key := ""
		if len(d.ConsumesCounters) > 0 {
			key = d.ConsumesCounters[0].CounterSet
		}
		i, ok := idx[key]
		if !ok || key == "" {
			i = len(groups)
			idx[key] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], d)
	}
	return groups
}

// ResourceSlices renders the pool as the ResourceSlice objects a node
// publishes (names are left to the API server), for `inspect` and tests;
// serve hands the slices to the ResourceSlice controller instead.
func (p Pool) ResourceSlices(nodeName string, generation int64) []resourceapi.ResourceSlice {
	slices := p.Slices()
	out := make([]resourceapi.ResourceSlice, len(slices))
	for i, s := range slices {
		spec := resourceapi.ResourceSliceSpec{
			Driver: DriverName,
			Pool: resourceapi.ResourcePool{
				Name:               nodeName,
				Generation:         generation,
				ResourceSliceCount: int64(len(slices)),
			},
			// A slice of counters names the node too: every slice
			// needs a node selection.
			NodeName:       ptr.To(nodeName),
			SharedCounters: s.SharedCounters,
			Devices:        s.Devices,
		}
		out[i] = resourceapi.ResourceSlice{
			TypeMeta:   metav1.TypeMeta{APIVersion: resourceapi.SchemeGroupVersion.String(), Kind: "ResourceSlice"},
			ObjectMeta: metav1.ObjectMeta{GenerateName: nodeName + "-" + DriverName + "-"},
			Spec:       spec,
		}
	}
	return out
}
