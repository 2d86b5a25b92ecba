// Package mig is gpublocks' home for MIG (DESIGN §10): profile names,
// layouts, the GPU's catalog of profiles and placements as NVML reports
// them, a placement solver, and applying a layout through NVML. Both kubelet
// APIs share it: the device-plugin mode applies whole layouts (Apply), the
// DRA mode creates and destroys single instances (Create, Destroy).
//
// A layout is a multiset of NVIDIA GPU instance profile names ("1g.10gb",
// "3g.40gb", "1g.10gb+me"); each instance gets one compute instance that
// spans it, so every instance is one MIG device. Names are checked with
// go-nvlib's profile parser, the same one discovery names MIG devices with.
//
// What the package reads from NVML (a Catalog, a GPU's Instances) and what
// it changes go through nvml.Device only, so the simulator (gpu/sim) and a
// real driver run the same code. gpublocks never changes a GPU's MIG mode:
// on Ampere that needs a GPU reset, which is the operator's call.
package mig
