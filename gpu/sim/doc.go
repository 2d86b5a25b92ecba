// Package sim simulates a GPU node for gpublocks: go-nvml's mock NVML server,
// completed where it panics or is unfaithful, plus the host tables (device
// nodes, mig-minors) a real node provides. It satisfies gpu.Backend, so
// discovery, the plugin, the CDI writer and the demo run the same code as on
// hardware.
//
// What the completion adds to the mock:
//   - deterministic GPU and MIG UUIDs, so restarts keep device IDs: a GPU's
//     from the preset name, or for a file from its model, plus its index; a
//     MIG device's from its GPU's and its GPU/compute instance IDs and
//     profiles. Editing a file elsewhere (comments, MIG layouts, GPUs
//     appended) keeps a GPU's UUID;
//   - PCI bus IDs (0000:<index>:00.0), NUMA nodes (first half of the GPUs on
//     node 0), minors equal to the index;
//   - MIG device handles (GetMaxMigDeviceCount, GetMigDeviceHandleByIndex,
//     IsMigDeviceHandle, GetDeviceHandleFromMigDeviceHandle, GetAttributes,
//     GetUUID and GetMemoryInfo on MIG handles), enough for go-nvlib;
//   - the driver's capacity rules: GPU instances only with MIG enabled, only
//     at the profile's possible placements (memory slices of eight on
//     A100/H100-class GPUs), never overlapping, never more than the profile's
//     instance count; compute instances within their GPU instance; GPU
//     instance IDs numbered by placement as the driver does.
//
// Layouts change at runtime with (*Backend).SetMigLayout, so tests and the
// demo can exercise rescans.
//
// Faults are injected through a working NVML event set (events.go):
// EventSetCreate, Wait, Free, RegisterEvents and GetSupportedEventTypes
// behave as on hardware, and InjectXID, InjectMigXID, InjectDoubleBitECC and
// InjectGPULost raise the events a health monitor waits for. A lost GPU
// fails its probes (GetMemoryInfo, handle lookups) until RestoreGPU.
package sim
