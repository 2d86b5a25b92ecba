package draserve

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/draplugin"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/mig"
)

// ErrNoRefresh means the MIGManager was asked to refresh before SetRefresh
// wired it to the daemon.
var ErrNoRefresh = errors.New("MIG manager: no refresh wired")

// MIGManager creates and destroys MIG instances for the DRA plugin over
// the backend's NVML (package mig), and refreshes the daemon's view of the
// GPUs afterwards (draplugin.MIGManager). Create and Destroy look the GPU
// up by UUID on every call: the driver calls them one at a time, and only
// when a claim needs an instance.
//
// Wiring: create it with the backend before the DRA plugin starts and pass
// it as draplugin.Options.MIG (Start's mig argument); once the daemon
// exists, SetRefresh to a synchronous rescan of the daemon (rediscover the
// GPUs, rewrite the base CDI spec, republish), which must not wait for a
// prepare or unprepare in progress: the driver calls Refresh without its
// lock, but from within the kubelet's call.
type MIGManager struct {
	b gpu.Backend

	mu      sync.Mutex
	refresh func(context.Context) error
}

// NewMIGManager manages MIG instances through b.
func NewMIGManager(b gpu.Backend) *MIGManager { return &MIGManager{b: b} }

// SetRefresh sets what Refresh does: a synchronous rescan of the daemon.
// Until it is set, Refresh fails with ErrNoRefresh, and so does every
// prepare that creates an instance (the CDI device would not exist).
func (m *MIGManager) SetRefresh(f func(context.Context) error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.refresh = f
}

// Create makes the GPU instance of profile at memory slice start on the
// GPU gpuUUID, with one compute instance spanning it, or reuses an idle
// one there (mig.Create), and returns its MIG device UUID and whether it
// was created now. An instance NVML lists no MIG device for is destroyed
// again if it was created now, and is an error.
func (m *MIGManager) Create(ctx context.Context, gpuUUID, profile string, start int) (string, bool, error) {
	dev, err := m.device(gpuUUID)
	if err != nil {
		return "", false, err
	}
	in, created, err := mig.Create(ctx, dev, profile, start)
	if err != nil {
		return "", false, err
	}
	if uuid := in.UUID(); uuid != "" {
		return uuid, created, nil
	}
	err = fmt.Errorf("NVML lists no MIG device for %s", &in)
	if created {
		if derr := mig.Destroy(ctx, dev, in.GI); derr != nil {
			return "", false, fmt.Errorf("%w; destroying it again failed: %w", err, derr)
		}
	}
	return "", false, err
}

// Destroy destroys the GPU instance whose compute instance is the MIG
// device migUUID on the GPU gpuUUID (mig.Destroy): mig.ErrBusy while a
// process runs in it, mig.ErrNotFound when no instance holds that MIG
// device any more (an instance created at the same place since has another
// UUID, and is left alone).
func (m *MIGManager) Destroy(ctx context.Context, gpuUUID, migUUID string) error {
	dev, err := m.device(gpuUUID)
	if err != nil {
		return err
	}
	st, err := mig.Read(dev)
	if err != nil {
		return err
	}
	for _, in := range st.Instances {
		for _, ci := range in.CIs {
			if ci.UUID == migUUID {
				return mig.Destroy(ctx, dev, in.GI)
			}
		}
	}
	klog.FromContext(ctx).V(1).Info("No MIG instance holds the MIG device", "gpu", gpuUUID, "mig", migUUID)
	return fmt.Errorf("%w: MIG device %s on GPU %s", mig.ErrNotFound, migUUID, gpuUUID)
}

// Refresh runs the function SetRefresh gave.
func (m *MIGManager) Refresh(ctx context.Context) error {
	m.mu.Lock()
	f := m.refresh
	m.mu.Unlock()
	if f == nil {
		return fmt.Errorf("%w: the GPUs cannot be discovered again after a MIG change", ErrNoRefresh)
	}
	return f(ctx)
}

// device is the GPU gpuUUID's NVML handle.
func (m *MIGManager) device(gpuUUID string) (nvml.Device, error) {
	dev, ret := m.b.NVML().DeviceGetHandleByUUID(gpuUUID)
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GPU %s: getting it from NVML: %w", gpuUUID, ret)
	}
	return dev, nil
}

var _ draplugin.MIGManager = (*MIGManager)(nil)
