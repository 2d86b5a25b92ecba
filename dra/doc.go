// Package dra describes the node's GPUs the way Kubernetes' Dynamic
// Resource Allocation sees them (DESIGN §9): one pool per node of devices
// with attributes, capacity and taints, and shared counters that make the
// devices of one GPU mutually exclusive.
//
// Per GPU i the pool holds up to three kinds of device:
//
//   - gpu-<i>: the GPU whole (attribute type=gpu, capacity memory);
//   - gpu-<i>-blocks: the GPU shared in blocks. It may be allocated many
//     times (allowMultipleAllocations) and each allocation consumes part of
//     its one capacity, blocks=100, in steps of 1. This is what lets the
//     scheduler itself put a 60-block claim on a GPU with 60 free, where a
//     device plugin could only see the node's total;
//   - gpu-<i>-mig-<profile>-<start>: a MIG device at a placement: an
//     existing instance (attribute uuid set), or, in DRA mode, a placement
//     of an allowed profile that the driver creates when a claim is
//     prepared (no uuid until then; shape.Offer.MIG).
//
// Every device of GPU i consumes counters of the counter set gpu-<i>: the
// whole and blocks devices all of them, a MIG device the memory slices its
// placement covers. The scheduler therefore never hands out a GPU whole
// while blocks or a MIG slice of it are allocated, nor blocks while it is
// allocated whole. A device that may be allocated many times consumes its
// counters once, however many shares it has.
//
// The package is pure: the same inventory, config and health give the same
// pool. Publishing it (the kubelet plugin and the ResourceSlice controller)
// is the caller's job.
package dra
