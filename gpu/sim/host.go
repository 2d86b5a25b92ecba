package sim

import (
	"bytes"
	"fmt"
	"io/fs"
	"strconv"
	"sync"

	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/migminors"
)

// Device majors of the simulated host. 195 is the NVIDIA driver's fixed
// major; the UVM and capability majors are dynamic on a real host, so the
// simulation picks fixed ones.
const (
	MajorNVIDIA = 195
	MajorUVM    = 235
	MajorCaps   = 236
	// MinorCtl is nvidiactl's minor.
	MinorCtl = 255
)

// Layout of the driver's mig-minors table: every GPU gets 15 GPU instances
// (IDs 0..14) with 8 compute instances each, numbered after config (1) and
// monitor (2).
const (
	migGIsPerGPU = 15
	migCIsPerGI  = 8
)

// procDevices is the simulated /proc/devices: the character device drivers
// a real host with the NVIDIA, UVM and caps modules loaded lists.
var procDevices = []byte(fmt.Sprintf(`Character devices:
  1 mem
  4 /dev/vc/0
  5 /dev/tty
%d nvidia-frontend
%d nvidia-uvm
%d nvidia-caps

Block devices:
  7 loop
  8 sd
`, MajorNVIDIA, MajorUVM, MajorCaps))

// host answers gpu.Host from tables built with the simulation.
type host struct {
	nodes map[string]gpu.DeviceNode

	// The MIG capability nodes and mig-minors table (over a thousand
	// entries on 8 GPUs) are built on first use: discovery reads them only
	// for MIG devices, and most runs have none.
	gpuCount int
	capsOnce sync.Once
	caps     map[string]gpu.DeviceNode
	minors   []byte
}

var _ gpu.Host = (*host)(nil)

// newHost builds the device nodes of a machine with gpuCount GPUs, minors
// 0..gpuCount-1.
func newHost(gpuCount int) *host {
	h := &host{nodes: map[string]gpu.DeviceNode{}, gpuCount: gpuCount}
	add := func(path string, major, minor uint32) {
		h.nodes[path] = gpu.DeviceNode{Path: path, HostPath: path, Major: major, Minor: minor}
	}
	add("/dev/nvidiactl", MajorNVIDIA, MinorCtl)
	add("/dev/nvidia-uvm", MajorUVM, 0)
	add("/dev/nvidia-uvm-tools", MajorUVM, 1)
	for i := range gpuCount {
		add("/dev/nvidia"+strconv.Itoa(i), MajorNVIDIA, uint32(i))
	}
	return h
}

// buildCaps builds the capability nodes and the mig-minors table once.
func (h *host) buildCaps() {
	h.capsOnce.Do(func() {
		h.caps = map[string]gpu.DeviceNode{}
		var b bytes.Buffer
		line := func(name string, n int) {
			fmt.Fprintf(&b, "%s %d\n", name, n)
			path := gpu.CapNodePath(n)
			h.caps[path] = gpu.DeviceNode{Path: path, HostPath: path, Major: MajorCaps, Minor: uint32(n)}
		}
		line("config", 1)
		line("monitor", 2)
		n := 3
		for g := range h.gpuCount {
			for gi := range migGIsPerGPU {
				line(migminors.GIAccessName(g, gi), n)
				n++
				for ci := range migCIsPerGI {
					line(migminors.CIAccessName(g, gi, ci), n)
					n++
				}
			}
		}
		h.minors = b.Bytes()
	})
}

// DeviceNode returns the simulated node at path, or an error wrapping
// fs.ErrNotExist.
func (h *host) DeviceNode(path string) (gpu.DeviceNode, error) {
	if n, ok := h.nodes[path]; ok {
		return n, nil
	}
	h.buildCaps()
	if n, ok := h.caps[path]; ok {
		return n, nil
	}
	return gpu.DeviceNode{}, &fs.PathError{Op: "stat", Path: path, Err: fs.ErrNotExist}
}

// MigCapMinors returns the generated mig-minors table.
func (h *host) MigCapMinors() ([]byte, error) {
	h.buildCaps()
	return bytes.Clone(h.minors), nil
}

// CharMajor answers from the simulated /proc/devices, with the parser the
// real host uses.
func (h *host) CharMajor(name string) (uint32, error) {
	major, ok, err := gpu.ParseCharMajor(procDevices, name)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("%s: no character device %q: %w", gpu.ProcDevicesPath, name, fs.ErrNotExist)
	}
	return major, nil
}
