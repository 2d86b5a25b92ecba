// Package gpu discovers the node's NVIDIA GPUs and MIG devices through NVML.
//
// Discovery runs the same code over two backends: the real NVML library
// (loaded from --driver-root, with device nodes read under --dev-root) and a
// simulated one (package gpu/sim) built on go-nvml's own mock servers. Both
// satisfy Backend, so every test, the demo and production share one path.
package gpu
