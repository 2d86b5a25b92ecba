package gpu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/NVIDIA/go-nvlib/pkg/nvlib/device"
	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/gpu/migminors"
)

// A lazyNode is a device node the driver may not have created yet, and how
// to describe it without it: the /proc/devices name of its driver, which
// gives the major, and its minor in the driver's fixed numbering. A node
// with no driver name must exist.
type lazyNode struct {
	path   string
	driver string
	minor  uint32
}

// controlNodes are the node-wide control devices, in the order Inventory
// lists them. nvidiactl exists whenever a GPU node does; the UVM nodes are
// created by nvidia-modprobe on the first CUDA call.
var controlNodes = []lazyNode{
	{path: "/dev/nvidiactl"},
	{path: "/dev/nvidia-uvm", driver: "nvidia-uvm", minor: 0},
	{path: "/dev/nvidia-uvm-tools", driver: "nvidia-uvm", minor: 1},
}

// capsDriver is the /proc/devices name of the MIG capability nodes' driver.
const capsDriver = "nvidia-caps"

// MigMinorsPath is where the driver publishes the MIG capability minors,
// relative to the dev root.
const MigMinorsPath = "/proc/driver/nvidia-caps/mig-minors"

// CapNodePath is the device node of nvidia-caps minor n.
func CapNodePath(n int) string { return fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", n) }

const mib = 1024 * 1024

// Discover takes one consistent look at the backend's GPUs. The library must
// already be initialised (backends do that when they are created).
//
// What fails and what is skipped:
//   - the driver version or the GPU count cannot be read: the whole discovery
//     fails with an error wrapping ErrDiscovery (nothing is known);
//   - one GPU's NVML calls fail, its MIG mode is unknown, or its device node
//     /dev/nvidia<minor> is missing or not a character device: that GPU is
//     left out, logged and listed in Inventory.Skipped; the others are served;
//   - one MIG device cannot be described (handle, UUID, IDs, profile): that
//     MIG device is left out the same way;
//   - a MIG device's capability nodes cannot be resolved (mig-minors missing,
//     unreadable or without its entry, or the cap node missing and
//     nvidia-caps not in /proc/devices): the device is kept with CapErr set,
//     so it is shown but never offered;
//   - a control node that does not exist is not listed, unless it is a UVM
//     node whose module is loaded; the CUDA driver version is 0 when it
//     cannot be read.
//
// UVM and capability nodes that the driver has not created yet (it does so
// lazily, and only nvidia-persistenced or nvidia-modprobe create them ahead
// of the first CUDA process) are described from /proc/devices and marked
// DeviceNode.Absent; nothing is created on the host.
func Discover(ctx context.Context, b Backend) (*Inventory, error) {
	logger := klog.FromContext(ctx).WithValues("backend", b.Name())
	lib := b.NVML()
	host := b.Host()

	driver, ret := lib.SystemGetDriverVersion()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("%w: reading driver version: %w", ErrDiscovery, ret)
	}
	count, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("%w: counting GPUs: %w", ErrDiscovery, ret)
	}
	inv := &Inventory{DriverVersion: driver}
	if cuda, ret := lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
		inv.CUDADriverVersion = cuda
	} else {
		logger.Info("Cannot read CUDA driver version", "err", ret)
	}

	d := &discovery{
		ctx:     ctx,
		lib:     lib,
		devlib:  device.New(lib, device.WithVerifySymbols(false)),
		host:    host,
		inv:     inv,
		hasNuma: lib.Extensions().LookupSymbol("nvmlDeviceGetNumaNodeId") == nil,
	}
	for i := range count {
		g, err := d.gpu(i)
		if err != nil {
			d.skip(fmt.Sprintf("GPU %d", i), err)
			continue
		}
		inv.GPUs = append(inv.GPUs, *g)
	}

	for _, c := range controlNodes {
		n, err := d.node(c)
		switch {
		case err == nil:
			inv.ControlNodes = append(inv.ControlNodes, n)
		case errors.Is(err, fs.ErrNotExist):
			logger.V(1).Info("Control device node absent, not injecting it", "path", c.path, "err", err)
		default:
			logger.Error(err, "Control device node unusable, not injecting it", "path", c.path)
		}
	}
	logger.V(1).Info("Discovered GPUs", "driver", driver, "gpus", len(inv.GPUs), "skipped", len(inv.Skipped))
	return inv, nil
}

// discovery holds what one Discover call shares between GPUs.
type discovery struct {
	ctx     context.Context
	lib     nvml.Interface
	devlib  device.Interface
	host    Host
	inv     *Inventory
	hasNuma bool

	minorsRead bool
	minors     migminors.Table
	minorsErr  error

	majors map[string]majorResult // CharMajor answers, by driver name
}

type majorResult struct {
	major uint32
	err   error
}

// node describes the device node n. When the node does not exist and n names
// its driver, it is described from the driver's major and n's minor and
// marked Absent; an error then says why neither worked.
func (d *discovery) node(n lazyNode) (DeviceNode, error) {
	dn, err := d.host.DeviceNode(n.path)
	if err == nil || n.driver == "" || !errors.Is(err, fs.ErrNotExist) {
		return dn, err
	}
	r, ok := d.majors[n.driver]
	if !ok {
		r.major, r.err = d.host.CharMajor(n.driver)
		if d.majors == nil {
			d.majors = map[string]majorResult{}
		}
		d.majors[n.driver] = r
	}
	if r.err != nil {
		return DeviceNode{}, fmt.Errorf("%w, and its major is unknown: %w", err, r.err)
	}
	klog.FromContext(d.ctx).V(1).Info("Device node not created yet, describing it from /proc/devices",
		"path", n.path, "major", r.major, "minor", n.minor)
	return DeviceNode{Path: n.path, Major: r.major, Minor: n.minor, Absent: true}, nil
}

func (d *discovery) skip(what string, err error) {
	klog.FromContext(d.ctx).Error(err, "Skipping device, it will not be offered", "device", what)
	d.inv.Skipped = append(d.inv.Skipped, SkippedDevice{Device: what, Reason: err})
}

// gpu describes GPU i, or returns why it must be left out.
func (d *discovery) gpu(i int) (*GPU, error) {
	fail := func(what string, err error) (*GPU, error) {
		return nil, fmt.Errorf("%w: GPU %d: %s: %w", ErrDiscovery, i, what, err)
	}
	h, ret := d.lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return fail("getting handle", ret)
	}
	g := &GPU{Index: i, NUMANode: -1}
	if g.UUID, ret = h.GetUUID(); ret != nvml.SUCCESS {
		return fail("reading UUID", ret)
	}
	if g.Minor, ret = h.GetMinorNumber(); ret != nvml.SUCCESS {
		return fail("reading minor number", ret)
	}
	if g.Model, ret = h.GetName(); ret != nvml.SUCCESS {
		return fail("reading name", ret)
	}
	mem, ret := h.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return fail("reading memory info", ret)
	}
	g.MemoryMiB = mem.Total / mib

	dev, err := d.devlib.NewDevice(h)
	if err != nil {
		return fail("wrapping device", err)
	}
	logger := klog.FromContext(d.ctx).WithValues("gpu", g.Index, "uuid", g.UUID)
	if g.PCIBusID, err = dev.GetPCIBusID(); err != nil {
		logger.V(1).Info("PCI bus ID unknown", "err", err)
		g.PCIBusID = ""
	}
	if d.hasNuma {
		if n, ret := h.GetNumaNodeId(); ret == nvml.SUCCESS {
			g.NUMANode = n
		}
	}
	if g.Architecture, err = dev.GetArchitectureAsString(); err != nil {
		logger.V(1).Info("Architecture unknown", "err", err)
		g.Architecture = ""
	}
	if g.CUDAComputeCapability, err = dev.GetCudaComputeCapabilityAsString(); err != nil {
		logger.V(1).Info("CUDA compute capability unknown", "err", err)
		g.CUDAComputeCapability = ""
	}
	if g.MigCapable, err = dev.IsMigCapable(); err != nil {
		return fail("reading MIG mode", err)
	}
	if g.MigEnabled, err = dev.IsMigEnabled(); err != nil {
		return fail("reading MIG mode", err)
	}

	path := fmt.Sprintf("/dev/nvidia%d", g.Minor)
	if g.Node, err = d.host.DeviceNode(path); err != nil {
		return fail("device node "+path, err)
	}

	if g.MigEnabled {
		if err := d.migDevices(g, dev); err != nil {
			// The GPU cannot run work itself while MIG is on, so without
			// its MIG devices there is nothing safe to offer.
			return fail("listing MIG devices", err)
		}
		if g.MigProfiles, err = migProfiles(h, dev); err != nil {
			// Existing MIG devices are still served; only DRA's
			// devices to create on demand are missing.
			logger.Error(err, "Cannot read the GPU's MIG profiles; only its existing MIG devices are offered")
		}
	}
	return g, nil
}

// migProfiles reads the GPU instance profiles of a MIG-enabled GPU and their
// possible placements (VisitMigProfiles).
func migProfiles(h nvml.Device, dev device.Device) ([]MigProfile, error) {
	var out []MigProfile
	err := VisitMigProfiles(h, dev, func(mp device.MigProfile, info nvml.GpuInstanceProfileInfo, placements []nvml.GpuInstancePlacement) error {
		p := MigProfile{Name: mp.String(), MemoryMiB: info.MemorySizeMB}
		for _, pl := range placements {
			p.Placements = append(p.Placements, Placement{Start: int(pl.Start), Size: int(pl.Size)})
		}
		out = append(out, p)
		return nil
	})
	return out, err
}

// VisitMigProfiles calls visit for each GPU instance profile of a
// MIG-capable GPU that go-nvlib can name, in the form whose one compute
// instance spans the GPU instance, with NVML's profile info and its
// possible placements. A profile NVML does not support on this GPU, or
// one with no placement, is skipped. Discovery and package mig's catalog
// both read the GPU through it.
func VisitMigProfiles(h nvml.Device, dev device.Device, visit func(device.MigProfile, nvml.GpuInstanceProfileInfo, []nvml.GpuInstancePlacement) error) error {
	named, err := dev.GetMigProfiles()
	if err != nil {
		return fmt.Errorf("listing MIG profiles: %w", err)
	}
	seen := map[int]bool{}
	for _, mp := range named {
		pi := mp.GetInfo()
		// go-nvlib lists the compute instance profiles of each GPU
		// instance profile; the one whose size equals the GPU
		// instance's spans it.
		if pi.C != pi.G || seen[pi.GIProfileID] {
			continue
		}
		seen[pi.GIProfileID] = true
		info, ret := h.GetGpuInstanceProfileInfo(pi.GIProfileID)
		if ret != nvml.SUCCESS {
			return fmt.Errorf("reading GPU instance profile %s: %w", mp, ret)
		}
		ps, ret := h.GetGpuInstancePossiblePlacements(&info)
		switch {
		case ret == nvml.ERROR_NOT_SUPPORTED:
			continue // a profile no instance can take here
		case ret != nvml.SUCCESS:
			return fmt.Errorf("reading placements of %s: %w", mp, ret)
		}
		if len(ps) == 0 {
			continue
		}
		if err := visit(mp, info, ps); err != nil {
			return err
		}
	}
	return nil
}

// migDevices fills g.MigDevices. Only an enumeration failure is returned; a
// MIG device that cannot be described is skipped on its own.
func (d *discovery) migDevices(g *GPU, dev device.Device) error {
	return dev.VisitMigDevices(func(j int, m device.MigDevice) error {
		md, err := d.migDevice(g, dev, j, m)
		if err != nil {
			d.skip(fmt.Sprintf("MIG %d on %s", j, g), err)
			return nil
		}
		g.MigDevices = append(g.MigDevices, *md)
		return nil
	})
}

func (d *discovery) migDevice(g *GPU, parent nvml.Device, j int, m device.MigDevice) (*MigDevice, error) {
	fail := func(what string, err error) (*MigDevice, error) {
		return nil, fmt.Errorf("%w: MIG device %d on %s: %s: %w", ErrDiscovery, j, g, what, err)
	}
	md := &MigDevice{Index: j, ParentIndex: g.Index, ParentUUID: g.UUID}
	var ret nvml.Return
	if md.UUID, ret = m.GetUUID(); ret != nvml.SUCCESS {
		return fail("reading UUID", ret)
	}
	if md.GI, ret = m.GetGpuInstanceId(); ret != nvml.SUCCESS {
		return fail("reading GPU instance ID", ret)
	}
	if md.CI, ret = m.GetComputeInstanceId(); ret != nvml.SUCCESS {
		return fail("reading compute instance ID", ret)
	}
	mem, ret := m.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return fail("reading memory info", ret)
	}
	md.MemoryMiB = mem.Total / mib
	p, err := m.GetProfile()
	if err != nil {
		return fail("reading profile", err)
	}
	md.Profile = p.String()
	md.Placement = placement(parent, md.GI)
	if md.Placement == nil {
		klog.FromContext(d.ctx).V(1).Info("MIG placement unknown", "mig", md.UUID, "gi", md.GI)
	}
	md.CapNodes, md.CapErr = d.capNodes(g, md)
	if md.CapErr != nil {
		klog.FromContext(d.ctx).Error(md.CapErr, "MIG device will not be offered", "mig", md.UUID)
	}
	return md, nil
}

// placement asks the parent GPU where GPU instance gi sits; nil when NVML
// cannot say.
func placement(parent nvml.Device, gi int) *Placement {
	inst, ret := parent.GetGpuInstanceById(gi)
	if ret != nvml.SUCCESS {
		return nil
	}
	info, ret := inst.GetInfo()
	if ret != nvml.SUCCESS {
		return nil
	}
	return &Placement{Start: int(info.Placement.Start), Size: int(info.Placement.Size)}
}

// capNodes resolves the GI and CI access capability nodes of md.
func (d *discovery) capNodes(g *GPU, md *MigDevice) ([]DeviceNode, error) {
	fail := func(cause error) ([]DeviceNode, error) {
		return nil, fmt.Errorf("%w: MIG device %s (GPU %d, GI %d, CI %d): %w",
			ErrDiscovery, md.UUID, g.Index, md.GI, md.CI, cause)
	}
	if !d.minorsRead {
		d.minorsRead = true
		data, err := d.host.MigCapMinors()
		if err == nil {
			d.minors, err = migminors.Parse(data)
		}
		d.minorsErr = err
	}
	if d.minorsErr != nil {
		return fail(fmt.Errorf("reading %s: %w", MigMinorsPath, d.minorsErr))
	}
	giMinor, ok := d.minors.GIAccess(g.Minor, md.GI)
	if !ok {
		return fail(fmt.Errorf("no %s entry in %s", migminors.GIAccessName(g.Minor, md.GI), MigMinorsPath))
	}
	ciMinor, ok := d.minors.CIAccess(g.Minor, md.GI, md.CI)
	if !ok {
		return fail(fmt.Errorf("no %s entry in %s", migminors.CIAccessName(g.Minor, md.GI, md.CI), MigMinorsPath))
	}
	caps := []struct {
		minor int
		proc  string // the capability's file under /proc/driver/nvidia/capabilities
	}{
		{giMinor, fmt.Sprintf("gpu%d/mig/gi%d/access", g.Minor, md.GI)},
		{ciMinor, fmt.Sprintf("gpu%d/mig/gi%d/ci%d/access", g.Minor, md.GI, md.CI)},
	}
	var nodes []DeviceNode
	for _, c := range caps {
		node, err := d.node(lazyNode{path: CapNodePath(c.minor), driver: capsDriver, minor: uint32(c.minor)})
		if err != nil {
			return fail(fmt.Errorf("capability node: %w; create it with "+
				"`nvidia-modprobe -f /proc/driver/nvidia/capabilities/%s` or `nvidia-ctk system create-device-nodes`",
				err, c.proc))
		}
		nodes = append(nodes, node)
	}
	return nodes, nil
}
