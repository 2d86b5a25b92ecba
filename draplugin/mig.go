package draplugin

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/dra"
	// Imported as migapi: the tests have a helper named mig.
	migapi "github.com/gpublocks/gpublocks/mig"
)

// MIGManager creates and destroys MIG instances for claims (DESIGN §10, DRA
// mode). The driver calls Create and Destroy while it holds its lock, so
// one at a time; Refresh without it, since refreshing republishes through
// Publish. internal/draserve implements it over NVML.
type MIGManager interface {
	// Create makes (or reuses an idle, matching) GPU instance of profile
	// at placement start on the GPU, with its full compute instance, and
	// returns the MIG device's UUID and whether it was created now. When
	// it fails it leaves nothing it created behind.
	Create(ctx context.Context, gpuUUID, profile string, start int) (migUUID string, created bool, err error)
	// Destroy destroys the instance holding migUUID on the GPU (refusing a
	// busy one: mig.ErrBusy). An instance that is gone is an error
	// wrapping mig.ErrNotFound.
	Destroy(ctx context.Context, gpuUUID, migUUID string) error
	// Refresh rediscovers the GPUs and rewrites the base CDI spec (and
	// republishes), so that gpublocks.io/gpu=<MIG-UUID> exists before
	// prepare returns.
	Refresh(ctx context.Context) error
}

// toCreate tells whether a device of pc has no MIG instance yet.
func toCreate(pc *preparedClaim) bool {
	for _, dev := range pc.Devices {
		if dev.Type == dra.TypeMIG && dev.UUID == "" {
			return true
		}
	}
	return false
}

// createMIG creates the MIG instances of pc's devices that have none yet
// (published placements without a uuid), filling in their UUIDs and
// whether this driver created them. resumed says pc is a pending claim of
// a driver killed half-way, so an idle instance at one of its placements
// is the one that driver created. On failure it destroys what it created
// for pc, so a failed prepare leaves nothing behind, and returns an error
// naming the device and the reason.
func (d *Driver) createMIG(ctx context.Context, pc *preparedClaim, resumed bool) error {
	logger := klog.FromContext(ctx)
	for i := range pc.Devices {
		dev := &pc.Devices[i]
		if dev.Type != dra.TypeMIG || dev.UUID != "" {
			continue
		}
		if d.opts.MIG == nil || dev.Placement == nil {
			// A claim recorded as pending by a driver that created MIG
			// instances, resumed by one that does not.
			d.rollbackMIG(ctx, pc)
			return fmt.Errorf("%w: device %s has no MIG instance to hand out, and this driver creates none; %s", ErrUnknownDevice, dev.Device, reallocate)
		}
		uuid, created, err := d.opts.MIG.Create(ctx, dev.GPUUUID, dev.Profile, dev.Placement.Start)
		if err == nil && uuid == "" {
			err = errors.New("the MIG manager returned no MIG device UUID")
		}
		if err != nil {
			d.rollbackMIG(ctx, pc)
			return fmt.Errorf("%w: device %s: creating the %s instance at memory slice %d of GPU %s: %w",
				ErrMIG, dev.Device, dev.Profile, dev.Placement.Start, dev.GPUUUID, err)
		}
		dev.UUID, dev.Created = uuid, created || resumed
		logger.Info("MIG instance for claim", "claim", klog.KRef(pc.Namespace, pc.Name), "device", dev.Device, "uuid", uuid, "created", created)
	}
	return nil
}

// rollbackMIG destroys the instances created for pc, which is not
// prepared: nothing uses them. One that cannot be destroyed stays on the
// GPU as an idle instance, which the pool offers and a later claim reuses.
func (d *Driver) rollbackMIG(ctx context.Context, pc *preparedClaim) {
	for i := range pc.Devices {
		dev := &pc.Devices[i]
		if !dev.Created {
			continue
		}
		if err := d.opts.MIG.Destroy(ctx, dev.GPUUUID, dev.UUID); err != nil && !errors.Is(err, migapi.ErrNotFound) {
			klog.FromContext(ctx).Error(err, "Cannot destroy the MIG instance of a claim that failed to prepare; it stays, idle, for a later claim",
				"claim", klog.KRef(pc.Namespace, pc.Name), "device", dev.Device, "uuid", dev.UUID)
		}
		dev.Created = false
	}
}

// destroyMIG destroys the instances this driver created for pc (its claim
// spec already removed). An instance that existed before the claim
// (Created false) is never destroyed, and one already gone counts as
// destroyed. A busy one (mig.ErrBusy) fails the unprepare, which the
// kubelet retries; the devices destroyed so far are marked so, and not
// destroyed again. It reports whether it destroyed anything.
func (d *Driver) destroyMIG(ctx context.Context, pc *preparedClaim) (bool, error) {
	logger := klog.FromContext(ctx)
	destroyed := false
	for i := range pc.Devices {
		dev := &pc.Devices[i]
		if pc.Pending && dev.Type == dra.TypeMIG && dev.UUID == "" {
			// Its prepare was cut short before it learnt the UUID.
			logger.Info("A MIG instance created for a claim whose prepare a restart interrupted may remain, idle, offered to later claims",
				"claim", klog.KRef(pc.Namespace, pc.Name), "device", dev.Device)
		}
		if !dev.Created {
			continue
		}
		if d.opts.MIG == nil {
			// Not serving MIG creation now (a restart without it): the
			// instance is left for the operator, never blocking the pod.
			logger.Error(nil, "MIG instance created for a claim is left on the GPU: this driver runs without MIG management",
				"claim", klog.KRef(pc.Namespace, pc.Name), "device", dev.Device, "uuid", dev.UUID)
			dev.Created = false
			continue
		}
		err := d.opts.MIG.Destroy(ctx, dev.GPUUUID, dev.UUID)
		switch {
		case errors.Is(err, migapi.ErrNotFound):
			logger.V(1).Info("MIG instance of the claim already gone", "claim", klog.KRef(pc.Namespace, pc.Name), "device", dev.Device, "uuid", dev.UUID)
		case err != nil:
			return destroyed, fmt.Errorf("%w: claim %s: device %s: destroying MIG device %s: %w", ErrMIG, klog.KRef(pc.Namespace, pc.Name), dev.Device, dev.UUID, err)
		default:
			destroyed = true
			logger.Info("Destroyed the MIG instance created for the claim", "claim", klog.KRef(pc.Namespace, pc.Name), "device", dev.Device, "uuid", dev.UUID)
		}
		dev.Created = false
	}
	return destroyed, nil
}
