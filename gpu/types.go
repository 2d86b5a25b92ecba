package gpu

import (
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// ErrNoDriver means NVML could not be loaded or initialised on this host.
var ErrNoDriver = errors.New("nvidia driver not available")

// ErrDiscovery is wrapped by every other discovery failure (an NVML call that
// failed, an inconsistent MIG layout, an unreadable mig-minors file).
var ErrDiscovery = errors.New("gpu discovery failed")

// DeviceNode is a character device that a container needs. Path is the path
// inside the container (and, below the dev root, on the host); HostPath is
// where it lives on the host as seen by this process.
type DeviceNode struct {
	Path     string // e.g. /dev/nvidia0
	HostPath string // e.g. /host/dev/nvidia0 when --dev-root=/host; "" when Absent
	Major    uint32
	Minor    uint32
	// Absent is set when the node does not exist on the host yet: the
	// driver creates /dev/nvidia-uvm* on the first CUDA call and the MIG
	// capability nodes on `nvidia-modprobe -f`, and without
	// nvidia-persistenced nothing may have done so. Major then comes from
	// /proc/devices and Minor from the driver's fixed numbering; the
	// runtime creates the node inside the container from type, major and
	// minor, so a container can use it all the same.
	Absent bool
}

// Inventory is one consistent look at the node's GPUs. It is immutable once
// returned: consumers share it without locks.
type Inventory struct {
	DriverVersion     string
	CUDADriverVersion int // e.g. 12040
	GPUs              []GPU
	// ControlNodes are the node-wide device nodes: nvidiactl,
	// nvidia-uvm, nvidia-uvm-tools, in that order, those that exist or
	// (the UVM nodes) whose driver module is loaded but has not created
	// them yet (DeviceNode.Absent).
	ControlNodes []DeviceNode
	// Skipped lists the GPUs and MIG devices that discovery left out of GPUs
	// and why, so that `inspect`, logs and metrics can tell the operator.
	Skipped []SkippedDevice
}

// SkippedDevice is a GPU or MIG device that discovery found but could not
// describe safely, so it is not offered.
type SkippedDevice struct {
	// Device names it, e.g. "GPU 3" or "MIG 2 on GPU 0 (GPU-…)".
	Device string
	// Reason wraps ErrDiscovery.
	Reason error
}

// GPU is one physical GPU.
type GPU struct {
	Index     int    // NVML index
	UUID      string // GPU-…
	Minor     int    // /dev/nvidia<Minor>
	Model     string // product name as NVML reports it, e.g. "NVIDIA A100-SXM4-40GB"
	MemoryMiB uint64
	PCIBusID  string // e.g. 0000:07:00.0; "" when unknown
	NUMANode  int    // -1 when unknown
	// Architecture is NVML's name for it (e.g. "Ampere") and
	// CUDAComputeCapability "major.minor" (e.g. "8.0"); "" when NVML
	// cannot tell. DRA publishes both as device attributes.
	Architecture          string
	CUDAComputeCapability string
	MigCapable            bool
	MigEnabled            bool // current MIG mode
	Node                  DeviceNode
	// MigDevices are the MIG devices on the GPU, ordered by MIG index; empty
	// unless MigEnabled.
	MigDevices []MigDevice
	// MigProfiles are the GPU instance profiles the GPU offers and the
	// placements each may take, as NVML reports them: what DRA mode
	// publishes as MIG devices to be created on demand. Empty unless
	// MigEnabled, and when NVML could not list them (the GPU then offers
	// its existing MIG devices only).
	MigProfiles []MigProfile
}

// MigProfile is a GPU instance profile of a MIG-enabled GPU, with one
// compute instance spanning it (one MIG device). Package mig reads the same
// catalog with what it needs to create instances (mig.Catalog).
type MigProfile struct {
	// Name is NVIDIA's, as go-nvlib writes it: "1g.10gb", "1g.10gb+me".
	Name      string
	MemoryMiB uint64
	// Placements are where an instance may sit
	// (GetGpuInstancePossiblePlacements), in NVML's order.
	Placements []Placement
}

// MigDevice is one MIG device (a GPU instance with one compute instance).
type MigDevice struct {
	Index       int    // NVML MIG device index on its parent
	UUID        string // MIG-…
	Profile     string // canonical NVIDIA name, e.g. "1g.10gb", "1g.10gb+me"
	GI          int    // GPU instance ID
	CI          int    // compute instance ID
	MemoryMiB   uint64
	ParentIndex int
	ParentUUID  string
	// Placement is where the GPU instance sits in the GPU's memory
	// slices; nil when NVML could not say (the device is still offered
	// where placement does not matter).
	Placement *Placement
	// CapNodes are the GI and CI access capability nodes
	// (/dev/nvidia-caps/nvidia-cap<N>), in that order. CapErr is set instead
	// when they could not be resolved: such a device must not be offered.
	CapNodes []DeviceNode
	CapErr   error
}

// Placement is a GPU instance's position: Size memory slices from Start.
type Placement struct {
	Start, Size int
}

// String names a GPU for logs and error messages.
func (g *GPU) String() string { return fmt.Sprintf("GPU %d (%s)", g.Index, g.UUID) }

// ByUUID returns the GPU with the given UUID, or nil.
func (inv *Inventory) ByUUID(uuid string) *GPU {
	for i := range inv.GPUs {
		if inv.GPUs[i].UUID == uuid {
			return &inv.GPUs[i]
		}
	}
	return nil
}

// Host is what discovery needs from the machine besides NVML: the device nodes
// under the dev root and the MIG capability minors. The real implementation
// reads <dev-root>/dev and <dev-root>/proc; the simulated one answers from its
// own tables, so both go through the same discovery code.
type Host interface {
	// DeviceNode describes the character device at path (e.g. /dev/nvidia0).
	// It returns an error wrapping fs.ErrNotExist when the node is absent.
	DeviceNode(path string) (DeviceNode, error)
	// MigCapMinors returns the contents of proc/driver/nvidia-caps/mig-minors.
	MigCapMinors() ([]byte, error)
	// CharMajor returns the major number that the kernel assigned to the
	// character device driver name (e.g. "nvidia-uvm", "nvidia-caps"), as
	// listed in /proc/devices. It returns an error wrapping fs.ErrNotExist
	// when the driver is not listed (its module is not loaded).
	CharMajor(name string) (uint32, error)
}

// Backend is an NVML library plus the host it runs on.
type Backend interface {
	NVML() nvml.Interface
	Host() Host
	// Name says what this backend is in logs, e.g. "nvml (driver root /)" or
	// "simulated dgxa100".
	Name() string
	// Close releases the library (nvmlShutdown). The backend must not be used
	// afterwards.
	Close() error
}
