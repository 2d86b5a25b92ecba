// Package health watches the node's GPUs through NVML and says which devices
// are faulted, so that the daemon can stream them as Unhealthy and stream
// them as Healthy again once they recover (DESIGN §7).
//
// A Monitor listens on one NVML event set for critical XIDs and double-bit
// ECC errors. An event marks a key unhealthy:
//
//   - a GPU UUID for a fault of the whole GPU (no GPU instance in the event,
//     XID 79 "fallen off the bus", a double-bit ECC error, a failed probe):
//     every device on that GPU — the GPU itself, its MIG devices, its blocks;
//   - a MIG UUID when NVML scopes the event to a GPU instance (and compute
//     instance): only that MIG device.
//
// XIDs on the ignore list (application errors such as 13, 31, 43, 45, 68,
// 109) are counted but change nothing.
//
// A faulted key recovers after a quiet period without new faults on it,
// once a probe of the device through NVML (a fresh handle that answers
// GetMemoryInfo) passes; while the probe fails it stays unhealthy and is
// probed again every ProbeInterval. A device that faults again soon after
// recovering is flapping: each such fault doubles its quiet period (capped
// at MaxQuietPeriod); a clean stretch as long as the current quiet period
// after recovery resets it. Faults during the quiet period restart it
// without doubling, so one incident's burst of XIDs is one episode.
//
// GPUs whose event registration fails (ERROR_NOT_SUPPORTED and the like)
// are not left unwatched: they are probed every ProbeInterval, and a failed
// probe marks the GPU the same way an XID does.
//
// The monitor follows the inventory (Update after every rescan): GPUs that
// appear are registered, faults of devices that vanished are dropped.
package health
