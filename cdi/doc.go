// Package cdi publishes gpublocks' devices to the container runtime through
// the Container Device Interface, and answers Allocate in the forms the
// runtime understands.
//
// # Container Device Interface
//
// CDI (tags.cncf.io/container-device-interface) lets a device vendor describe,
// in a spec file under /var/run/cdi, what a container needs to use a device:
// device nodes, mounts, environment, hooks. A runtime (containerd, CRI-O,
// podman) that is asked for the fully qualified device name
// "gpublocks.io/gpu=GPU-8c1b…" looks it up in the specs it has loaded and
// applies that device's edits, plus the spec-wide edits, to the container's
// OCI spec. The device plugin therefore only has to name devices in its
// Allocate response; it never hands out paths itself.
//
// # The spec
//
// BuildSpec turns a gpu.Inventory into one spec of kind gpublocks.io/gpu (a
// kind of our own, so it can sit next to the NVIDIA toolkit's nvidia.com/gpu
// spec without two specs defining one device name, which makes the device
// vanish). It contains
//
//   - every GPU offered whole or as blocks, named by UUID and by index
//     ("0"), with its /dev/nvidia<minor> node;
//   - every MIG device of a MIG-enabled GPU, named by MIG UUID and by
//     "<gpu-index>:<mig-index>", with its parent's node and its GI and CI
//     capability nodes (/dev/nvidia-caps/nvidia-cap<N>). A MIG device whose
//     capability nodes are unknown is left out and reported, never
//     published half-usable. A MIG-enabled GPU has no whole-GPU device
//     unless it is offered whole, which the planner does only under
//     migStrategy none (that strategy advertises MIG GPUs whole); it then
//     has both;
//   - spec-wide edits that every container with at least one of our devices
//     gets: the control nodes (nvidiactl, nvidia-uvm, nvidia-uvm-tools), the
//     driver's user-space libraries and tools as read-only bind mounts, and
//     NVIDIA_VISIBLE_DEVICES=void so that a legacy NVIDIA hook adds nothing.
//
// Every device node carries its type, major and minor, so a runtime never has
// to stat the host path (which it may not see) and creates the node in the
// container even where the driver has not created it on the host yet (UVM
// and MIG capability nodes appear lazily; discovery takes their majors from
// /proc/devices, see gpu.DeviceNode.Absent). The spec's cdiVersion is the
// lowest version its content needs (specs.MinimumRequiredVersion), not the
// library's current one: older runtimes reject versions they do not know.
// Output is deterministic, so an unchanged inventory gives identical bytes.
//
// # Driver files without a hook
//
// We install no OCI hook, so nothing runs ldconfig in the container.
// FindDriverFiles therefore mounts each library's real file at its own path
// (relative to the driver root) and again under its soname (libcuda.so.1) in
// that directory and in the directories glibc's loader searches by default
// without an ld.so.cache entry: /usr/lib/<triplet> for Debian-family images
// and /usr/lib64 for RHEL-family images. Tools go to /usr/bin. Symlinks are
// resolved inside the driver root, so a driver root such as /host is never
// escaped by an absolute link. Every file is checked before it is mounted
// into every GPU container: a library must resolve to a regular ELF shared
// object directly inside one of the driver root's library directories, a
// tool to an executable regular file inside one of its tool directories,
// and every container path lies in those directories; anything else
// (libcuda.so.1 -> /etc/passwd) is left out, logged and listed in
// DriverFiles.Skipped.
//
// # Writing
//
// A Writer keeps <cdi-dir>/<vendor>-<class>.yaml current: it validates the
// spec with the CDI library's rules, encodes it as the library does, writes
// it with internal/atomicfile (0644 from the first byte, no temporary file
// left on a full filesystem, never a partial file at the final name, even
// after kill -9; the library's own writer fails all three), skips the write
// when the bytes are unchanged and removes the file when no device is left
// (a spec without devices is invalid). Writer.Heal puts the last spec back
// within moments when the file or its directory is deleted or changed
// behind our back: Allocate keeps naming its devices, and a runtime that
// cannot find them fails every new container.
//
// # Allocate
//
// A Responder, built once per resource from the configured
// deviceListStrategy (ParseStrategies), turns allocated device IDs into a
// ContainerAllocateResponse: CdiDevices for cdi-cri, a cdi.k8s.io/
// annotation for cdi-annotations, NVIDIA_VISIBLE_DEVICES for envvar.
package cdi
