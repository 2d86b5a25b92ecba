package cdi

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"k8s.io/klog/v2"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpublocks/gpublocks/gpu"
)

// VisibleDevicesVoid is set in every container that receives a gpublocks CDI
// device, so that a legacy NVIDIA runtime hook, if one is installed as well,
// injects nothing more.
const VisibleDevicesVoid = "NVIDIA_VISIBLE_DEVICES=void"

// Errors wrapped (after ErrDeviceOmitted) in an Omission.
var (
	// ErrUnknownGPU means an offered UUID is not in the inventory.
	ErrUnknownGPU = errors.New("gpu not in inventory")
)

// SpecInput is what a spec is built from.
type SpecInput struct {
	// Kind is the vendor and class; the zero value means DefaultKind.
	Kind Kind
	// Inventory is the node's GPUs and control nodes.
	Inventory *gpu.Inventory
	// Offered are the UUIDs of the GPUs offered whole or as blocks. MIG
	// devices need no entry: every usable MIG device of a MIG-enabled GPU
	// is always in the spec.
	Offered []string
	// Driver are the driver files that every container receives.
	Driver DriverFiles
}

// An Omission is a device left out of a spec, and why.
type Omission struct {
	UUID string // GPU or MIG UUID
	// Name is the index name the device would have had ("0", "2:1"), or ""
	// for an offered UUID that is not in the inventory.
	Name string
	Err  error // wraps ErrDeviceOmitted and the reason
}

// BuildSpec builds the CDI spec for the offered GPUs and every MIG device.
//
// Each GPU appears twice, by UUID and by index ("0"); each MIG device by
// UUID and by "<gpu-index>:<mig-index>". A GPU's device edits are its own
// node; a MIG device's are its parent's node and its GI and CI capability
// nodes. Spec-wide edits hold the control nodes, the driver files and
// NVIDIA_VISIBLE_DEVICES=void. Devices are ordered by GPU index, then MIG
// index, the UUID name first, so an unchanged inventory gives identical bytes.
//
// A MIG-enabled GPU normally has no whole-GPU device, only its MIG devices:
// it cannot run work itself. It gets one as well exactly when it is in
// Offered, which the planner does only under migStrategy none (DESIGN §2:
// none advertises MIG GPUs whole, as NVIDIA's plugin does); that device has
// the GPU's own node and no capability nodes.
//
// Devices that cannot be used (a MIG device whose capability nodes are
// unknown, an offered UUID that is not in the inventory) are left out,
// logged and returned as omissions. The spec's version is the
// minimum its content needs. The result may have no devices, which a CDI
// spec file may not: Writer.Write removes the file in that case.
func BuildSpec(ctx context.Context, in SpecInput) (*specs.Spec, []Omission, error) {
	logger := klog.FromContext(ctx)
	kind := in.Kind
	if kind == (Kind{}) {
		kind = DefaultKind
	}
	if err := kind.Validate(); err != nil {
		return nil, nil, err
	}
	if in.Inventory == nil {
		return nil, nil, fmt.Errorf("%w: no inventory", ErrInvalidSpec)
	}

	gpus := slices.Clone(in.Inventory.GPUs)
	slices.SortFunc(gpus, func(a, b gpu.GPU) int { return cmp.Compare(a.Index, b.Index) })

	var omitted []Omission
	omit := func(uuid, name string, reason error) {
		o := Omission{UUID: uuid, Name: name, Err: fmt.Errorf("%w: %s: %w", ErrDeviceOmitted, uuid, reason)}
		logger.Error(o.Err, "Leaving device out of the CDI spec", "uuid", uuid, "name", name)
		omitted = append(omitted, o)
	}

	offered := map[string]bool{}
	for _, u := range in.Offered {
		offered[u] = true
		if in.Inventory.ByUUID(u) == nil {
			omit(u, "", ErrUnknownGPU)
		}
	}

	spec := &specs.Spec{Kind: kind.String()}
	add := func(edits specs.ContainerEdits, names ...string) {
		for _, n := range names {
			spec.Devices = append(spec.Devices, specs.Device{Name: n, ContainerEdits: cloneEdits(edits)})
		}
	}
	for i := range gpus {
		g := &gpus[i]
		index := strconv.Itoa(g.Index)
		if offered[g.UUID] {
			// A MIG-enabled GPU is offered whole only under migStrategy
			// none (NVIDIA's semantics): it gets its own node and no caps.
			add(specs.ContainerEdits{DeviceNodes: []*specs.DeviceNode{deviceNode(g.Node)}}, g.UUID, index)
		}
		if !g.MigEnabled {
			continue
		}
		migs := slices.Clone(g.MigDevices)
		slices.SortFunc(migs, func(a, b gpu.MigDevice) int { return cmp.Compare(a.Index, b.Index) })
		for _, m := range migs {
			name := index + ":" + strconv.Itoa(m.Index)
			if m.CapErr != nil {
				omit(m.UUID, name, m.CapErr)
				continue
			}
			if len(m.CapNodes) != 2 {
				omit(m.UUID, name, fmt.Errorf("want 2 capability nodes (gi, ci), have %d", len(m.CapNodes)))
				continue
			}
			nodes := []*specs.DeviceNode{deviceNode(g.Node)}
			for _, c := range m.CapNodes {
				nodes = append(nodes, deviceNode(c))
			}
			add(specs.ContainerEdits{DeviceNodes: nodes}, m.UUID, name)
		}
	}

	for _, n := range in.Inventory.ControlNodes {
		spec.ContainerEdits.DeviceNodes = append(spec.ContainerEdits.DeviceNodes, deviceNode(n))
	}
	spec.ContainerEdits.Mounts = in.Driver.Mounts()
	spec.ContainerEdits.Env = []string{VisibleDevicesVoid}

	version, err := specs.MinimumRequiredVersion(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	spec.Version = version
	if len(spec.Devices) > 0 {
		if err := ValidateSpec(spec); err != nil {
			return nil, nil, err
		}
	}
	return spec, omitted, nil
}

// deviceNode describes a character device fully (type, major, minor), so
// that the runtime never needs to stat the host path, which a runtime
// outside this process's mount namespace may not see.
func deviceNode(n gpu.DeviceNode) *specs.DeviceNode {
	d := &specs.DeviceNode{
		Path:  n.Path,
		Type:  "c",
		Major: int64(n.Major),
		Minor: int64(n.Minor),
	}
	// No hostPath: n.HostPath is where this process sees the node (under
	// --dev-root, e.g. /host/dev/nvidia0), while the runtime reads the spec
	// in the host's own namespace, where the node is at Path.
	return d
}

// cloneEdits gives every device its own node values, so that the two names
// of one device never share pointers in the spec.
func cloneEdits(e specs.ContainerEdits) specs.ContainerEdits {
	out := e
	out.DeviceNodes = nil
	for _, n := range e.DeviceNodes {
		c := *n
		out.DeviceNodes = append(out.DeviceNodes, &c)
	}
	return out
}

// ValidateSpec checks a spec the way a runtime will when it loads it: a
// valid version no lower than the content needs, valid kind and device
// names, no duplicate names, at least one device, and valid container edits.
// Errors wrap ErrInvalidSpec.
func ValidateSpec(spec *specs.Spec) error {
	if spec == nil {
		return fmt.Errorf("%w: nil spec", ErrInvalidSpec)
	}
	if err := specs.ValidateVersion(spec); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	vendor, class := parser.ParseQualifier(spec.Kind)
	if err := (Kind{Vendor: vendor, Class: class}).Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	if len(spec.Devices) == 0 {
		return fmt.Errorf("%w: no devices", ErrInvalidSpec)
	}
	if err := (&cdiapi.ContainerEdits{ContainerEdits: &spec.ContainerEdits}).Validate(); err != nil {
		return fmt.Errorf("%w: spec-wide edits: %w", ErrInvalidSpec, err)
	}
	seen := map[string]bool{}
	for i := range spec.Devices {
		d := &spec.Devices[i]
		if err := parser.ValidateDeviceName(d.Name); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidSpec, err)
		}
		if seen[d.Name] {
			return fmt.Errorf("%w: device %q defined twice", ErrInvalidSpec, d.Name)
		}
		seen[d.Name] = true
		if err := (&cdiapi.ContainerEdits{ContainerEdits: &d.ContainerEdits}).Validate(); err != nil {
			return fmt.Errorf("%w: device %q: %w", ErrInvalidSpec, d.Name, err)
		}
	}
	return nil
}
