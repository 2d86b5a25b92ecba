//go:build ignore

// This file is not built here: the footprint benchmark copies it into
// NVIDIA's cmd/nvidia-device-plugin (package main) and replaces the one
// nvml.New(...) call in startPlugins with newMockNVML(), so NVIDIA's plugin
// runs its own start-up path unchanged on go-nvml's dgxa100 mock, as
// gpublocks does with --simulate dgxa100.
//
// NVIDIA's plugin serves its sockets from the fixed
// /var/lib/kubelet/device-plugins; the benchmark starts it in a mount
// namespace of its own (CLONE_NEWNS), where init below binds the
// benchmark's directory there, so the real kubelet directory is never
// touched.

package main

import (
	"os"
	"syscall"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
)

func init() {
	dir := os.Getenv("FOOTPRINT_PLUGIN_DIR")
	if dir == "" {
		return
	}
	// Private mounts first, so nothing below propagates to the host.
	must(syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""))
	// A tmpfs over /var/lib (inside this namespace only) gives a
	// kubelet directory that need not exist on the host.
	must(syscall.Mount("tmpfs", "/var/lib", "tmpfs", 0, "size=1m"))
	must(os.MkdirAll("/var/lib/kubelet/device-plugins", 0o755))
	must(syscall.Mount(dir, "/var/lib/kubelet/device-plugins", "", syscall.MS_BIND, ""))
}

func must(err error) {
	if err != nil {
		panic("footprint wrapper: " + err.Error())
	}
}

// newMockNVML is go-nvml's dgxa100 mock with the calls NVIDIA's start-up
// and health check make filled in: the mock leaves them nil (they panic).
func newMockNVML() nvml.Interface {
	s := dgxa100.New()
	s.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &mock.EventSet{
			WaitFunc: func(timeout uint32) (nvml.EventData, nvml.Return) {
				time.Sleep(time.Duration(timeout) * time.Millisecond)
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			},
			FreeFunc: func() nvml.Return { return nvml.SUCCESS },
		}, nvml.SUCCESS
	}
	s.ErrorStringFunc = func(r nvml.Return) string { return r.String() }
	for _, d := range s.Devices {
		d := d.(*dgxa100.Device)
		d.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
			return nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError | nvml.EventTypeSingleBitEccError, nvml.SUCCESS
		}
		d.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS }
		d.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 7, nvml.SUCCESS }
		d.GetMigDeviceHandleByIndexFunc = func(int) (nvml.Device, nvml.Return) { return nil, nvml.ERROR_NOT_FOUND }
		d.IsMigDeviceHandleFunc = func() (bool, nvml.Return) { return false, nvml.SUCCESS }
		d.GetNumaNodeIdFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	}
	return s
}
