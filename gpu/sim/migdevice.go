package sim

import (
	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// migDevice is the handle of one MIG device (a compute instance in a GPU
// instance), which the mock does not provide. Everything it answers is fixed
// when the compute instance is created.
type migDevice struct {
	mock.Device
	uuid string
	ci   *server.ComputeInstance
}

func newMigDevice(g *simGPU, gi *server.GpuInstance, ci *server.ComputeInstance) *migDevice {
	giProf := g.cfg.MIGProfiles.GpuInstanceProfiles[int(gi.Info.ProfileId)]
	ciProf := g.cfg.MIGProfiles.ComputeInstanceProfiles[int(gi.Info.ProfileId)][int(ci.Info.ProfileId)]
	m := &migDevice{uuid: migUUID(g.seed, g.index, gi.Info.Id, ci.Info.Id, gi.Info.ProfileId, ci.Info.ProfileId, g.gen[ci]), ci: ci}
	parent := g.dev
	attrs := nvml.DeviceAttributes{
		MultiprocessorCount:       ciProf.MultiprocessorCount,
		SharedCopyEngineCount:     ciProf.SharedCopyEngineCount,
		SharedDecoderCount:        ciProf.SharedDecoderCount,
		SharedEncoderCount:        ciProf.SharedEncoderCount,
		SharedJpegCount:           ciProf.SharedJpegCount,
		SharedOfaCount:            ciProf.SharedOfaCount,
		GpuInstanceSliceCount:     giProf.SliceCount,
		ComputeInstanceSliceCount: ciProf.SliceCount,
		MemorySizeMB:              giProf.MemorySizeMB,
	}
	mem := nvml.Memory{Total: giProf.MemorySizeMB * mib, Free: giProf.MemorySizeMB * mib}

	m.IsMigDeviceHandleFunc = func() (bool, nvml.Return) { return true, nvml.SUCCESS }
	m.GetDeviceHandleFromMigDeviceHandleFunc = func() (nvml.Device, nvml.Return) { return parent, nvml.SUCCESS }
	m.GetUUIDFunc = func() (string, nvml.Return) { return m.uuid, nvml.SUCCESS }
	m.GetGpuInstanceIdFunc = func() (int, nvml.Return) { return int(gi.Info.Id), nvml.SUCCESS }
	m.GetComputeInstanceIdFunc = func() (int, nvml.Return) { return int(ci.Info.Id), nvml.SUCCESS }
	m.GetAttributesFunc = func() (nvml.DeviceAttributes, nvml.Return) { return attrs, nvml.SUCCESS }
	m.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return mem, nvml.SUCCESS }
	m.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		g.b.mu.Lock()
		defer g.b.mu.Unlock()
		return g.processesLocked(ci), nvml.SUCCESS
	}
	m.GetNameFunc = func() (string, nvml.Return) { return g.cfg.Name, nvml.SUCCESS }
	m.GetArchitectureFunc = func() (nvml.DeviceArchitecture, nvml.Return) { return g.cfg.Architecture, nvml.SUCCESS }
	m.GetCudaComputeCapabilityFunc = func() (int, int, nvml.Return) {
		return g.cfg.CudaMajor, g.cfg.CudaMinor, nvml.SUCCESS
	}
	// Calls that only make sense on a physical GPU fail as they do in NVML.
	m.GetMigModeFunc = func() (int, int, nvml.Return) { return 0, 0, nvml.ERROR_NOT_SUPPORTED }
	m.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	m.GetMigDeviceHandleByIndexFunc = func(int) (nvml.Device, nvml.Return) { return nil, nvml.ERROR_INVALID_ARGUMENT }
	m.GetMinorNumberFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	return m
}
