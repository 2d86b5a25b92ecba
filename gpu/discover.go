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

// Paths of the node-wide control devices, in the order Inventory lists them.
var controlNodePaths = []string{"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"}

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
//     unreadable or without its entry, or the cap node missing): the device
//     is kept with CapErr set, so it is shown but never offered;
//   - a control node that does not exist is simply not listed; the CUDA
//     driver version is 0 when it cannot be read.
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

	for _, p := range controlNodePaths {
		n, err := host.DeviceNode(p)
		switch {
		case err == nil:
			inv.ControlNodes = append(inv.ControlNodes, n)
		case errors.Is(err, fs.ErrNotExist):
			logger.V(1).Info("Control device node absent", "path", p)
		default:
			logger.Error(err, "Control device node unusable, not injecting it", "path", p)
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
	}
	return g, nil
}

// migDevices fills g.MigDevices. Only an enumeration failure is returned; a
// MIG device that cannot be described is skipped on its own.
func (d *discovery) migDevices(g *GPU, dev device.Device) error {
	return dev.VisitMigDevices(func(j int, m device.MigDevice) error {
		md, err := d.migDevice(g, j, m)
		if err != nil {
			d.skip(fmt.Sprintf("MIG %d on %s", j, g), err)
			return nil
		}
		g.MigDevices = append(g.MigDevices, *md)
		return nil
	})
}

func (d *discovery) migDevice(g *GPU, j int, m device.MigDevice) (*MigDevice, error) {
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
	md.CapNodes, md.CapErr = d.capNodes(g, md)
	if md.CapErr != nil {
		klog.FromContext(d.ctx).Error(md.CapErr, "MIG device will not be offered", "mig", md.UUID)
	}
	return md, nil
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
	var nodes []DeviceNode
	for _, n := range []int{giMinor, ciMinor} {
		node, err := d.host.DeviceNode(CapNodePath(n))
		if err != nil {
			return fail(fmt.Errorf("capability node: %w", err))
		}
		nodes = append(nodes, node)
	}
	return nodes, nil
}
