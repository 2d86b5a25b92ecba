package sim

import (
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/stretchr/testify/require"
)

func TestEventSet(t *testing.T) {
	b, err := New("dgxa100")
	require.NoError(t, err)
	lib := b.NVML()
	require.ErrorIs(t, b.InjectXID(0, 48), ErrNoListener)

	set, ret := lib.EventSetCreate()
	require.Equal(t, nvml.SUCCESS, ret)
	dev, ret := lib.DeviceGetHandleByIndex(2)
	require.Equal(t, nvml.SUCCESS, ret)
	types, ret := dev.GetSupportedEventTypes()
	require.Equal(t, nvml.SUCCESS, ret)
	require.NotZero(t, types&nvml.EventTypeXidCriticalError)
	require.Equal(t, nvml.SUCCESS, dev.RegisterEvents(nvml.EventTypeXidCriticalError, set))

	_, ret = set.Wait(1)
	require.Equal(t, nvml.ERROR_TIMEOUT, ret)
	require.ErrorIs(t, b.InjectXID(1, 48), ErrNoListener, "GPU 1 is not registered")
	require.ErrorIs(t, b.InjectDoubleBitECC(2), ErrNoListener, "only XIDs are registered")

	require.NoError(t, b.InjectMigXID(2, 3, 0, 48))
	ev, ret := set.Wait(1000)
	require.Equal(t, nvml.SUCCESS, ret)
	require.Equal(t, nvml.EventData{Device: dev, EventType: nvml.EventTypeXidCriticalError, EventData: 48, GpuInstanceId: 3, ComputeInstanceId: 0}, ev)

	// A lost GPU fails its probes until restored.
	require.NoError(t, b.InjectGPULost(2))
	ev, ret = lib.EventSetWait(set, 1000)
	require.Equal(t, nvml.SUCCESS, ret)
	require.Equal(t, uint64(XIDGPULost), ev.EventData)
	_, ret = dev.GetMemoryInfo()
	require.Equal(t, nvml.ERROR_GPU_IS_LOST, ret)
	uuid, ret := dev.GetUUID()
	require.Equal(t, nvml.SUCCESS, ret)
	_, ret = lib.DeviceGetHandleByUUID(uuid)
	require.Equal(t, nvml.ERROR_GPU_IS_LOST, ret)
	require.NoError(t, b.RestoreGPU(2))
	_, ret = dev.GetMemoryInfo()
	require.Equal(t, nvml.SUCCESS, ret)

	require.Equal(t, nvml.SUCCESS, set.Free())
	_, ret = set.Wait(10_000)
	require.Equal(t, nvml.ERROR_UNINITIALIZED, ret, "a freed set returns at once")
	require.ErrorIs(t, b.InjectXID(2, 48), ErrNoListener)
	require.Error(t, b.InjectXID(99, 48))
}
