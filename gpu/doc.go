// Package gpu discovers the node's NVIDIA GPUs and MIG devices through NVML.
//
// Discovery runs the same code over two backends: the real NVML library
// (loaded from --driver-root, with device nodes read under --dev-root) and a
// simulated one (package gpu/sim) built on go-nvml's own mock servers. Both
// satisfy Backend, so every test, the demo and production share one path.
//
// Discover is forgiving per device and strict per node: a GPU or MIG device
// that cannot be described safely is left out (and listed in
// Inventory.Skipped with the reason), while a node whose driver version or
// GPU count cannot be read fails as a whole. A MIG device whose capability
// nodes cannot be resolved stays listed with CapErr set, and must not be
// offered: injecting it without its caps would hand a container a device it
// cannot open.
//
// The driver creates some nodes lazily: /dev/nvidia-uvm and -uvm-tools on
// the first CUDA call, the MIG capability nodes on `nvidia-modprobe -f`.
// Where no nvidia-persistenced has done so yet, discovery describes such a
// node from its driver's major in /proc/devices (Host.CharMajor) and its
// known minor, and marks it DeviceNode.Absent; the container runtime then
// creates it inside the container. GPU nodes (/dev/nvidia<minor>) must exist.
//
// DriverLibraryDirs, DriverToolDirs and ResolveInRoot are the one
// description of where a driver lives under a driver root: NVML is loaded
// from there, and package cdi mounts the driver into containers from there.
package gpu
