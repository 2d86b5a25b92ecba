package dra

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/shape"
)

// DriverName is the DRA driver's name; it is also the attribute domain.
const DriverName = "gpu.gpublocks.io"

// UnhealthyTaintKey is the device taint an unhealthy GPU's devices carry.
const UnhealthyTaintKey = DriverName + "/unhealthy"

// Device types (the attribute "type").
const (
	TypeGPU    = "gpu"
	TypeBlocks = "blocks"
	TypeMIG    = "mig"
)

// BlocksPerGPU is the blocks capacity of one GPU (DESIGN §2).
const BlocksPerGPU = 100

// Capacity names.
const (
	CapacityBlocks resourceapi.QualifiedName = "blocks"
	CapacityMemory resourceapi.QualifiedName = "memory"
)

// PoolInput is everything a pool depends on.
type PoolInput struct {
	Offers        []shape.Offer
	DriverVersion string // NVML's, e.g. "550.54.15"
	// Unhealthy maps a GPU UUID (every device of the GPU) or a MIG UUID
	// (that device) to the reason, e.g. "xid-48".
	Unhealthy map[string]string
	// TaintEffect is the unhealthy taint's effect; default NoSchedule.
	TaintEffect resourceapi.DeviceTaintEffect
}

// Pool is the node's pool: the counter sets and the devices.
type Pool struct {
	Counters []resourceapi.CounterSet
	Devices  []resourceapi.Device
}

// BuildPool builds the node's pool from its offers.
func BuildPool(in PoolInput) Pool {
	effect := in.TaintEffect
	if effect == "" {
		effect = resourceapi.DeviceTaintEffectNoSchedule
	}
	driver := semver(in.DriverVersion)
	var p Pool
	for _, o := range in.Offers {
		g := o.GPU
		set := CounterSetName(g.Index)
		slices := counterSlices(o)
		p.Counters = append(p.Counters, resourceapi.CounterSet{Name: set, Counters: counters(slices)})
		all := []resourceapi.DeviceCounterConsumption{{CounterSet: set, Counters: counters(slices)}}
		attrs := gpuAttributes(g, driver)
		taint := func(uuids ...string) []resourceapi.DeviceTaint {
			for _, u := range uuids {
				if u == "" {
					continue // a placement without an instance
				}
				if reason, bad := in.Unhealthy[u]; bad {
					return []resourceapi.DeviceTaint{{Key: UnhealthyTaintKey, Value: taintValue(reason), Effect: effect}}
				}
			}
			return nil
		}
		if o.Whole {
			a := withType(attrs, TypeGPU)
			p.Devices = append(p.Devices, resourceapi.Device{
				Name:             GPUDeviceName(g.Index),
				Attributes:       a,
				Capacity:         map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{CapacityMemory: {Value: mebibytes(g.MemoryMiB)}},
				ConsumesCounters: all,
				Taints:           taint(g.UUID),
			})
		}
		if o.Blocks {
			p.Devices = append(p.Devices, resourceapi.Device{
				Name:       BlocksDeviceName(g.Index),
				Attributes: withType(attrs, TypeBlocks),
				// Only blocks: on a device that may be allocated many
				// times, a capacity without a request policy would be
				// consumed whole by every allocation.
				Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{CapacityBlocks: {
					Value: *resource.NewQuantity(BlocksPerGPU, resource.DecimalSI),
					RequestPolicy: &resourceapi.CapacityRequestPolicy{
						Default: ptr.To(*resource.NewQuantity(1, resource.DecimalSI)),
						ValidRange: &resourceapi.CapacityRequestPolicyRange{
							Min:  ptr.To(*resource.NewQuantity(1, resource.DecimalSI)),
							Max:  ptr.To(*resource.NewQuantity(BlocksPerGPU, resource.DecimalSI)),
							Step: ptr.To(*resource.NewQuantity(1, resource.DecimalSI)),
						},
					},
				}},
				AllowMultipleAllocations: ptr.To(true),
				ConsumesCounters:         all,
				Taints:                   taint(g.UUID),
			})
		}
		for _, md := range o.MIG {
			d := resourceapi.Device{
				Name:       MIGDeviceName(g.Index, md),
				Attributes: migAttributes(attrs, md),
				Capacity:   map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{CapacityMemory: {Value: mebibytes(md.MemoryMiB)}},
				Taints:     taint(g.UUID, md.UUID),
			}
			if md.Placement != nil {
				d.ConsumesCounters = []resourceapi.DeviceCounterConsumption{{
					CounterSet: set,
					Counters:   counters(span(md.Placement.Start, md.Placement.Size)),
				}}
			}
			p.Devices = append(p.Devices, d)
		}
	}
	return p
}

// CounterSetName names GPU i's counter set.
func CounterSetName(index int) string { return fmt.Sprintf("gpu-%d", index) }

// GPUDeviceName names GPU i offered whole.
func GPUDeviceName(index int) string { return fmt.Sprintf("gpu-%d", index) }

// BlocksDeviceName names GPU i offered as blocks.
func BlocksDeviceName(index int) string { return fmt.Sprintf("gpu-%d-blocks", index) }

// MIGDeviceName names a MIG device by its profile and placement; a profile's
// "." and "+" become "-" (1g.10gb+me at slice 0 → gpu-0-mig-1g-10gb-me-0).
// A device whose placement NVML did not report is named by its GPU
// instance ID instead (…-gi<N>), which cannot collide with a placement.
func MIGDeviceName(parent int, md gpu.MigDevice) string {
	profile := strings.NewReplacer(".", "-", "+", "-").Replace(strings.ToLower(md.Profile))
	if md.Placement == nil {
		return fmt.Sprintf("gpu-%d-mig-%s-gi%d", parent, profile, md.GI)
	}
	return fmt.Sprintf("gpu-%d-mig-%s-%d", parent, profile, md.Placement.Start)
}

// counterSlices lists the counters of a GPU: one per memory slice its MIG
// placements span on a MIG-enabled GPU (all the GPU's placements, offered
// or not, so the set stays the same while instances come and go), else
// the single counter slice-0.
func counterSlices(o shape.Offer) []string {
	n := 1
	for _, md := range o.MIG {
		if md.Placement != nil {
			n = max(n, md.Placement.Start+md.Placement.Size)
		}
	}
	if o.GPU.MigEnabled {
		for _, p := range o.GPU.MigProfiles {
			for _, pl := range p.Placements {
				n = max(n, pl.Start+pl.Size)
			}
		}
	}
	return span(0, n)
}

func span(start, size int) []string {
	out := make([]string, size)
	for i := range size {
		out[i] = fmt.Sprintf("slice-%d", start+i)
	}
	return out
}

func counters(names []string) map[string]resourceapi.Counter {
	m := make(map[string]resourceapi.Counter, len(names))
	for _, n := range names {
		m[n] = resourceapi.Counter{Value: *resource.NewQuantity(1, resource.DecimalSI)}
	}
	return m
}

func mebibytes(mib uint64) resource.Quantity {
	return *resource.NewQuantity(int64(mib)<<20, resource.BinarySI)
}

type attributes = map[resourceapi.QualifiedName]resourceapi.DeviceAttribute

// gpuAttributes are the attributes every device of g carries (DESIGN §9).
func gpuAttributes(g *gpu.GPU, driverVersion string) attributes {
	a := attributes{
		"uuid":        {StringValue: ptr.To(g.UUID)},
		"index":       {IntValue: ptr.To(int64(g.Index))},
		"productName": {StringValue: ptr.To(limit(g.Model))},
	}
	if g.Architecture != "" {
		a["architecture"] = resourceapi.DeviceAttribute{StringValue: ptr.To(g.Architecture)}
	}
	if v := semver(g.CUDAComputeCapability); v != "" {
		a["cudaComputeCapability"] = resourceapi.DeviceAttribute{VersionValue: ptr.To(v)}
	}
	if driverVersion != "" {
		a["driverVersion"] = resourceapi.DeviceAttribute{VersionValue: ptr.To(driverVersion)}
	}
	if g.PCIBusID != "" {
		a["pciBusID"] = resourceapi.DeviceAttribute{StringValue: ptr.To(g.PCIBusID)}
	}
	if g.NUMANode >= 0 {
		a["numaNode"] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(g.NUMANode))}
	}
	return a
}

func withType(a attributes, typ string) attributes {
	out := make(attributes, len(a)+1)
	for k, v := range a {
		out[k] = v
	}
	out["type"] = resourceapi.DeviceAttribute{StringValue: ptr.To(typ)}
	return out
}

// migAttributes are a MIG device's: its own, and its parent's described as
// the parent's. uuid is the MIG device's own, and only once its instance
// exists: a placement offered for DRA to create (shape.Offer.MIG) has none.
func migAttributes(parent attributes, md gpu.MigDevice) attributes {
	a := withType(parent, TypeMIG)
	delete(a, "index")
	delete(a, "uuid")
	if md.UUID != "" {
		a["uuid"] = resourceapi.DeviceAttribute{StringValue: ptr.To(md.UUID)}
	}
	a["profile"] = resourceapi.DeviceAttribute{StringValue: ptr.To(md.Profile)}
	a["parentUUID"] = resourceapi.DeviceAttribute{StringValue: ptr.To(md.ParentUUID)}
	a["parentIndex"] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(md.ParentIndex))}
	if md.Placement != nil {
		a["placementStart"] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(md.Placement.Start))}
		a["placementSize"] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(md.Placement.Size))}
	}
	return a
}

var versionParts = regexp.MustCompile(`^\d+(\.\d+){0,2}$`)

// semver turns NVIDIA's versions into the semantic versions DRA's version
// attributes require: "8.0" → "8.0.0", "580.159.04" → "580.159.4". It
// returns "" for anything else.
func semver(v string) string {
	if !versionParts.MatchString(v) {
		return ""
	}
	parts := strings.Split(v, ".")
	for len(parts) < 3 {
		parts = append(parts, "0")
	}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return ""
		}
		parts[i] = strconv.FormatUint(n, 10)
	}
	return strings.Join(parts, ".")
}

// limit keeps a string attribute within the API's 64 characters.
func limit(s string) string {
	if len(s) <= resourceapi.DeviceAttributeMaxValueLength {
		return s
	}
	return s[:resourceapi.DeviceAttributeMaxValueLength]
}

// taintValue makes a reason a valid taint value (a label value: 63
// characters of alphanumerics, '-', '_' and '.').
func taintValue(reason string) string {
	b := []byte(reason)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			b[i] = '-'
		}
	}
	return strings.Trim(string(b[:min(len(b), 63)]), "-_.")
}
