package sim

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// noInstance is what NVML puts in ProcessInfo's GpuInstanceId and
// ComputeInstanceId for a process on a GPU without MIG.
const noInstance = 0xFFFFFFFF

// firstPID is the first simulated process ID: well clear of the small PIDs
// a container's own processes have.
const firstPID = 4000

// procMiB is the memory NVML reports a simulated process using.
const procMiB = 256

// StartProcess simulates a CUDA process on GPU index: on the whole GPU when
// migUUID is "", else in that MIG device of it. Until StopProcess, NVML
// lists it in GetComputeRunningProcesses (on the GPU, with its GPU and
// compute instance IDs, and on the MIG device) and refuses to destroy its
// compute instance (ERROR_IN_USE), as the driver does for a context in use.
func (b *Backend) StartProcess(index int, migUUID string) (pid uint32, err error) {
	if index < 0 || index >= len(b.gpus) {
		return 0, fmt.Errorf("no simulated GPU %d (have %d)", index, len(b.gpus))
	}
	g := b.gpus[index]
	b.mu.Lock()
	defer b.mu.Unlock()
	var at *server.ComputeInstance
	switch {
	case migUUID == "" && g.dev.MigMode == nvml.DEVICE_MIG_ENABLE:
		return 0, fmt.Errorf("GPU %d has MIG enabled: processes run in its MIG devices; name one", index)
	case migUUID != "":
		for _, m := range g.migDevicesLocked() {
			if m.uuid == migUUID {
				at = m.ci
			}
		}
		if at == nil {
			return 0, fmt.Errorf("GPU %d has no MIG device %s", index, migUUID)
		}
	}
	b.nextPID++
	pid = firstPID + b.nextPID
	g.procs[pid] = at
	return pid, nil
}

// StopProcess ends a process StartProcess started.
func (b *Backend) StopProcess(pid uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, g := range b.gpus {
		if _, ok := g.procs[pid]; ok {
			delete(g.procs, pid)
			return nil
		}
	}
	return fmt.Errorf("no simulated process %d", pid)
}

// processesLocked lists the processes on g, or only those in ci when ci is
// not nil, ordered by PID.
func (g *simGPU) processesLocked(ci *server.ComputeInstance) []nvml.ProcessInfo {
	var out []nvml.ProcessInfo
	for pid, at := range g.procs {
		if ci != nil && at != ci {
			continue
		}
		p := nvml.ProcessInfo{Pid: pid, UsedGpuMemory: procMiB * mib, GpuInstanceId: noInstance, ComputeInstanceId: noInstance}
		if at != nil {
			p.GpuInstanceId = at.Info.GpuInstance.(*server.GpuInstance).Info.Id
			p.ComputeInstanceId = at.Info.Id
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b nvml.ProcessInfo) int { return cmp.Compare(a.Pid, b.Pid) })
	return out
}

// busyLocked tells whether a process runs in ci.
func (g *simGPU) busyLocked(ci *server.ComputeInstance) bool {
	for _, at := range g.procs {
		if at == ci {
			return true
		}
	}
	return false
}

// MigOp is an NVML MIG call that FailMigOp can make fail.
type MigOp int

// The MIG calls FailMigOp knows.
const (
	// OpCreateGpuInstance is CreateGpuInstance and
	// CreateGpuInstanceWithPlacement.
	OpCreateGpuInstance MigOp = iota
	OpCreateComputeInstance
	OpDestroyGpuInstance
	OpDestroyComputeInstance
)

// fault is one pending injected failure.
type fault struct {
	op   MigOp
	left int // calls of op still to let through before failing
	ret  nvml.Return
}

// FailMigOp makes the nth call of op on GPU index from now on (1: the next)
// fail with ret, once, changing nothing: the driver refusing half-way
// through a layout change. SetMigLayout, the operator's tool, is not
// affected.
func (b *Backend) FailMigOp(index int, op MigOp, nth int, ret nvml.Return) error {
	if index < 0 || index >= len(b.gpus) {
		return fmt.Errorf("no simulated GPU %d (have %d)", index, len(b.gpus))
	}
	if nth < 1 || ret == nvml.SUCCESS {
		return fmt.Errorf("FailMigOp needs nth >= 1 and a failure, got %d and %s", nth, ret.Error())
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	g := b.gpus[index]
	g.faults = append(g.faults, &fault{op: op, left: nth - 1, ret: ret})
	return nil
}

// faultLocked counts a call of op and returns the failure due now, if any.
func (g *simGPU) faultLocked(op MigOp) (nvml.Return, bool) {
	var due *fault
	for _, f := range g.faults {
		switch {
		case f.op != op:
		case f.left > 0:
			f.left--
		case due == nil:
			due = f
		}
	}
	if due == nil {
		return nvml.SUCCESS, false
	}
	g.faults = slices.DeleteFunc(g.faults, func(f *fault) bool { return f == due })
	return due.ret, true
}
