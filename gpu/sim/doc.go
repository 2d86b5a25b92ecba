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
//     appended) keeps a GPU's UUID. A MIG device created anew where an
//     earlier one was gets a UUID none had before, as on hardware;
//   - PCI bus IDs (0000:<index>:00.0), NUMA nodes (first half of the GPUs on
//     node 0), minors equal to the index;
//   - MIG device handles (GetMaxMigDeviceCount, GetMigDeviceHandleByIndex,
//     IsMigDeviceHandle, GetDeviceHandleFromMigDeviceHandle, GetAttributes,
//     GetUUID and GetMemoryInfo on MIG handles), enough for go-nvlib;
//   - the driver's capacity rules: GPU instances only with MIG enabled, only
//     at the profile's possible placements as NVML reports them (memory
//     slices of eight on A100/H100-class GPUs), never overlapping, never
//     more than the profile's instance count, with the driver's error codes
//     (ERROR_INVALID_ARGUMENT, ERROR_INSUFFICIENT_RESOURCES,
//     ERROR_NOT_SUPPORTED); compute instances within their GPU instance; GPU
//     instance IDs numbered by placement as the driver does; profile memory
//     within its share, so go-nvlib names H200 and B200 profiles as NVIDIA
//     does;
//   - compute processes (StartProcess, StopProcess) listed by
//     GetComputeRunningProcesses; a compute instance running one, or a GPU
//     instance holding a compute instance, is not destroyed (ERROR_IN_USE).
//
// In a simulation file, `mig: []` enables MIG with no instances.
//
// Layouts change at runtime with (*Backend).SetMigLayout (the operator's
// way: destroy everything, create the layout, placed by mig.Solve), or
// through NVML as gpublocks' mig package does; FailMigOp makes the nth MIG
// call fail, to test a change that stops half-way.
//
// Faults are injected through a working NVML event set (events.go):
// EventSetCreate, Wait, Free, RegisterEvents and GetSupportedEventTypes
// behave as on hardware, and InjectXID, InjectMigXID, InjectDoubleBitECC and
// InjectGPULost raise the events a health monitor waits for. A lost GPU
// fails its probes (GetMemoryInfo, handle lookups) until RestoreGPU.
package sim
