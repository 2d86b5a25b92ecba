package draplugin

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceclaim"
	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/blocks"
	"github.com/gpublocks/gpublocks/cdi"
	"github.com/gpublocks/gpublocks/dra"
)

// EnvShareID carries the blocks shares' IDs (DRA's allocation share IDs),
// comma-joined in the order of GPUBLOCKS_GPU_UUID.
const EnvShareID = "GPUBLOCKS_SHARE_ID"

// reallocate is what every refusal tells the user to do: the kubelet
// retries a failed prepare, but only a new allocation can change a claim.
const reallocate = "delete the pod (and its claim, if it is not generated from a template) so that the scheduler allocates it again"

// PrepareResourceClaims implements kubeletplugin.DRAPlugin: for each claim
// it checks the devices allocated from this node's pool, writes the
// claim's CDI spec, records the claim in the checkpoint, and returns the
// CDI device names per device. A claim that would take a device this node
// does not publish, an unhealthy one, or a device or GPU share already
// prepared for another claim gets an error naming the device; the other
// claims of the call are prepared all the same.
//
// A MIG device published as a placement without an instance gets one
// (Options.MIG): created, or an idle one at that placement reused, before
// the claim's spec is written; the claim is then checkpointed with the MIG
// UUID and whether this driver created it, and the base spec is refreshed
// so that it holds the new MIG device, before prepare returns.
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	out, refresh := d.prepare(ctx, claims)
	if len(refresh) == 0 {
		return out, nil
	}
	// Without the lock: refreshing republishes through Publish.
	if err := d.opts.MIG.Refresh(ctx); err != nil {
		for uid, ref := range refresh {
			// Prepared and checkpointed all the same: the kubelet's
			// retry finds the claim and refreshes again.
			out[uid] = kubeletplugin.PrepareResult{Err: fmt.Errorf("%w: claim %s: its MIG devices exist, but the CDI spec could not be rewritten to hold them: %w",
				ErrMIG, ref, err)}
		}
		klog.FromContext(ctx).Error(err, "Cannot refresh the CDI spec after creating MIG instances")
	}
	return out, nil
}

// prepare is PrepareResourceClaims under the lock. It returns the claims
// whose MIG devices the base spec may not hold yet.
func (d *Driver) prepare(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, map[types.UID]klog.ObjectRef) {
	logger := klog.FromContext(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()

	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	refresh := map[types.UID]klog.ObjectRef{}
	u := d.usage()
	var added []types.UID
	dropped := false // a pending claim left the checkpoint's claims
	fail := func(claim *resourceapi.ResourceClaim, err error) {
		logger.Error(err, "Cannot prepare claim", "claim", klog.KObj(claim), "claimUID", claim.UID)
		out[claim.UID] = kubeletplugin.PrepareResult{Err: err}
		if pc, ok := d.claims[claim.UID]; ok && pc.Pending {
			delete(d.claims, claim.UID)
			dropped = true
		}
	}
	for _, claim := range claims {
		pc, ok := d.claims[claim.UID]
		if ok && !pc.Pending {
			out[claim.UID] = d.reprepare(ctx, claim, pc)
			if out[claim.UID].Err == nil && d.unpublishedMIG(pc) {
				refresh[claim.UID] = klog.KObj(claim)
			}
			continue
		}
		next := u // a pending claim's devices count already
		resumed := ok
		if resumed {
			// A prepare cut short by a restart: finish it as recorded.
			if err := d.sameAllocation(claim, pc); err != nil {
				fail(claim, err)
				continue
			}
			logger.Info("Finishing the prepare of a claim that a restart interrupted", "claim", klog.KObj(claim), "claimUID", claim.UID)
		} else {
			var err error
			if pc, next, err = d.resolve(claim, u); err != nil {
				fail(claim, err)
				continue
			}
			if len(pc.Devices) == 0 {
				out[claim.UID] = kubeletplugin.PrepareResult{} // nothing of ours to prepare
				continue
			}
			if toCreate(pc) {
				// Recorded before the first instance is created: a driver
				// killed half-way still knows what it may have made.
				pc.Pending = true
				d.claims[claim.UID] = pc
				if err := saveCheckpoint(d.checkpoint, d.claims); err != nil {
					fail(claim, fmt.Errorf("claim %s: %w", klog.KObj(claim), err))
					continue
				}
			}
		}
		if err := d.createMIG(ctx, pc, resumed); err != nil {
			fail(claim, fmt.Errorf("claim %s: %w", klog.KObj(claim), err))
			continue
		}
		if _, err := d.claimSpecs.Write(ctx, string(claim.UID), claimDevices(pc.Devices)); err != nil {
			d.rollbackMIG(ctx, pc)
			fail(claim, fmt.Errorf("claim %s: %w", klog.KObj(claim), err))
			continue
		}
		pc.Pending = false
		u = next
		d.claims[claim.UID] = pc
		added = append(added, claim.UID)
	}
	if len(added) == 0 {
		if dropped {
			if err := saveCheckpoint(d.checkpoint, d.claims); err != nil {
				// The pending entries stay on disk: a restart finishes
				// or unprepares them; nothing is handed out twice.
				logger.Error(err, "Cannot record claims that failed to prepare")
			}
		}
		return out, refresh
	}
	// One checkpoint for the call, before any of its claims is reported
	// prepared: a claim the kubelet was told about is never forgotten, nor
	// a MIG instance created for it.
	if err := saveCheckpoint(d.checkpoint, d.claims); err != nil {
		for _, uid := range added {
			d.rollbackMIG(ctx, d.claims[uid])
			delete(d.claims, uid)
			if _, rmErr := d.claimSpecs.Remove(string(uid)); rmErr != nil {
				logger.Error(rmErr, "Cannot remove the CDI spec of a claim that failed to prepare", "claimUID", uid)
			}
			out[uid] = kubeletplugin.PrepareResult{Err: err}
		}
		logger.Error(err, "Cannot record prepared claims", "claims", added)
		return out, refresh
	}
	for _, uid := range added {
		pc := d.claims[uid]
		out[uid] = d.result(uid, pc)
		if d.unpublishedMIG(pc) {
			refresh[uid] = klog.KRef(pc.Namespace, pc.Name)
		}
		logger.Info("Prepared claim", "claim", klog.KRef(pc.Namespace, pc.Name), "claimUID", uid, "devices", deviceNames(pc.Devices))
	}
	return out, refresh
}

// unpublishedMIG tells whether pc has a MIG device that the published pool
// does not show with its UUID: an instance created since the GPUs were last
// discovered, which the base spec may not hold yet. The caller holds mu.
func (d *Driver) unpublishedMIG(pc *preparedClaim) bool {
	if d.opts.MIG == nil {
		return false
	}
	for _, dev := range pc.Devices {
		if dev.Type == dra.TypeMIG && d.devices[dev.Device].uuid != dev.UUID {
			return true
		}
	}
	return false
}

// reprepare answers a claim prepared before (the kubelet repeats prepare
// after its own restart): the same result, the spec rewritten only if it
// is gone or changed, provided the allocation is still the one prepared.
func (d *Driver) reprepare(ctx context.Context, claim *resourceapi.ResourceClaim, pc *preparedClaim) kubeletplugin.PrepareResult {
	if err := d.sameAllocation(claim, pc); err != nil {
		return kubeletplugin.PrepareResult{Err: err}
	}
	changed, err := d.claimSpecs.Write(ctx, string(claim.UID), claimDevices(pc.Devices))
	if err != nil {
		return kubeletplugin.PrepareResult{Err: fmt.Errorf("claim %s: %w", klog.KObj(claim), err)}
	}
	if changed {
		klog.FromContext(ctx).Info("Restored the CDI spec of a prepared claim", "claim", klog.KObj(claim), "claimUID", claim.UID)
	}
	return d.result(claim.UID, pc)
}

// sameAllocation checks that the claim's allocation is the one pc was
// prepared (or began to be prepared) with.
func (d *Driver) sameAllocation(claim *resourceapi.ResourceClaim, pc *preparedClaim) error {
	var now []string
	for _, r := range d.ours(claim) {
		now = append(now, resultKey(r.Request, r.Pool, r.Device, shareID(r)))
	}
	var then []string
	for _, dev := range pc.Devices {
		then = append(then, resultKey(dev.Request, dev.Pool, dev.Device, dev.ShareID))
	}
	if !slices.Equal(now, then) {
		return fmt.Errorf("%w: claim %s was prepared with %s, its allocation now names %s: "+
			"it must be unprepared first; %s", ErrInvalidAllocation, klog.KObj(claim), strings.Join(then, ", "), strings.Join(now, ", "), reallocate)
	}
	return nil
}

func resultKey(request, pool, device, share string) string {
	k := request + ":" + pool + "/" + device
	if share != "" {
		k += "#" + share
	}
	return k
}

func shareID(r resourceapi.DeviceRequestAllocationResult) string {
	if r.ShareID == nil {
		return ""
	}
	return string(*r.ShareID)
}

// ours lists the claim's allocation results for this driver.
func (d *Driver) ours(claim *resourceapi.ResourceClaim) []resourceapi.DeviceRequestAllocationResult {
	if claim.Status.Allocation == nil {
		return nil
	}
	var out []resourceapi.DeviceRequestAllocationResult
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver == d.opts.DriverName {
			out = append(out, r)
		}
	}
	return out
}

// resolve turns the claim's results into devices to prepare, checked
// against u (the devices already prepared). It returns u with the claim's
// devices added; u itself is left alone.
func (d *Driver) resolve(claim *resourceapi.ResourceClaim, u usage) (*preparedClaim, usage, error) {
	pc := &preparedClaim{Namespace: claim.Namespace, Name: claim.Name}
	if claim.Status.Allocation == nil {
		return nil, u, fmt.Errorf("%w: claim %s is not allocated; %s", ErrInvalidAllocation, klog.KObj(claim), reallocate)
	}
	next := u.clone()
	holder := holder{uid: claim.UID, ns: claim.Namespace, name: claim.Name}
	for _, r := range d.ours(claim) {
		dev, err := d.device(r)
		if err != nil {
			return nil, u, fmt.Errorf("claim %s: %w", klog.KObj(claim), err)
		}
		if err := next.take(dev, holder); err != nil {
			return nil, u, fmt.Errorf("claim %s: %w", klog.KObj(claim), err)
		}
		pc.Devices = append(pc.Devices, dev)
	}
	return pc, next, nil
}

// device checks one allocated device against the published pool.
func (d *Driver) device(r resourceapi.DeviceRequestAllocationResult) (preparedDevice, error) {
	if r.Pool != d.opts.NodeName {
		return preparedDevice{}, fmt.Errorf("%w: device %s/%s: node %s publishes only the pool %q; %s",
			ErrUnknownDevice, r.Pool, r.Device, d.opts.NodeName, d.opts.NodeName, reallocate)
	}
	p, ok := d.devices[r.Device]
	if !ok {
		return preparedDevice{}, fmt.Errorf("%w: device %s: node %s does not publish it "+
			"(its GPUs or configuration changed since the claim was allocated, or the plugin restarted and has not published yet); %s",
			ErrUnknownDevice, r.Device, d.opts.NodeName, reallocate)
	}
	if p.unhealthy != "" {
		return preparedDevice{}, fmt.Errorf("%w: device %s (%s) is unhealthy (%s); %s",
			ErrUnhealthy, r.Device, p.gpuUUID, p.unhealthy, reallocate)
	}
	if p.uuid == "" && d.opts.MIG == nil {
		return preparedDevice{}, fmt.Errorf("%w: device %s has no MIG instance to hand out, and this driver creates none; %s", ErrUnknownDevice, r.Device, reallocate)
	}
	dev := preparedDevice{
		Request: r.Request, Pool: r.Pool, Device: r.Device, Type: p.typ,
		GPUUUID: p.gpuUUID, GPUIndex: p.gpuIndex, UUID: p.uuid,
		ShareID:     shareID(r),
		AdminAccess: r.AdminAccess != nil && *r.AdminAccess,
	}
	if p.typ == dra.TypeMIG {
		dev.Profile = p.profile
		if p.place != nil {
			at := *p.place
			dev.Placement = &at
		}
	} else {
		dev.MemoryMiB = p.memoryMiB
	}
	if p.typ == dra.TypeBlocks {
		k, err := consumedBlocks(r)
		if err != nil {
			return preparedDevice{}, err
		}
		dev.Blocks = k
	}
	return dev, nil
}

// consumedBlocks is a blocks share's size. The scheduler always records it:
// for a device that allows multiple allocations, consumedCapacity holds
// every capacity, the request policy's default (1) when the claim asked
// for none. Its absence therefore means the allocation did not come from
// a scheduler with consumable capacity (feature gate off somewhere), which
// treated the device as exclusive and might hand it to others too:
// refused, rather than guessing a share.
func consumedBlocks(r resourceapi.DeviceRequestAllocationResult) (int, error) {
	q, ok := r.ConsumedCapacity[dra.CapacityBlocks]
	if !ok {
		return 0, fmt.Errorf("%w: device %s: the allocation records no consumedCapacity %q, so the scheduler did not "+
			"allocate it as a share: enable the DRAConsumableCapacity feature gate on kube-apiserver, kube-scheduler "+
			"and kubelet (on by default from Kubernetes 1.36), then %s", ErrInvalidAllocation, r.Device, dra.CapacityBlocks, reallocate)
	}
	k := q.Value()
	if q.Cmp(*resource.NewQuantity(k, resource.DecimalSI)) != 0 || k < 1 || k > dra.BlocksPerGPU {
		return 0, fmt.Errorf("%w: device %s: consumedCapacity %s is %s, want a whole number of blocks from 1 to %d; %s",
			ErrInvalidAllocation, r.Device, dra.CapacityBlocks, q.String(), dra.BlocksPerGPU, reallocate)
	}
	return int(k), nil
}

// UnprepareResourceClaims implements kubeletplugin.DRAPlugin: it removes
// each claim's CDI spec, then destroys the MIG instances this driver
// created for it (a busy one fails the claim's unprepare, which the kubelet
// retries), then removes its checkpoint entry. A claim that is not prepared
// (never, or already unprepared) succeeds. When instances were destroyed,
// the GPUs are discovered again (Options.MIG's Refresh) so that their
// placements are offered again.
func (d *Driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	out, destroyed := d.unprepare(ctx, claims)
	if destroyed {
		// Without the lock: refreshing republishes through Publish. The
		// claims are unprepared whatever happens here; a stale MIG device
		// in the base spec names an instance that no longer exists.
		if err := d.opts.MIG.Refresh(ctx); err != nil {
			klog.FromContext(ctx).Error(err, "Cannot refresh the published devices after destroying MIG instances; the next rescan does")
		}
	}
	return out, nil
}

// unprepare is UnprepareResourceClaims under the lock; it reports whether
// MIG instances were destroyed.
func (d *Driver) unprepare(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, bool) {
	logger := klog.FromContext(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()

	out := make(map[types.UID]error, len(claims))
	removed := map[types.UID]*preparedClaim{}
	destroyed := false
	for _, c := range claims {
		out[c.UID] = nil
		pc, ok := d.claims[c.UID]
		if !ok {
			logger.V(4).Info("Claim not prepared, nothing to unprepare", "claim", klog.KRef(c.Namespace, c.Name), "claimUID", c.UID)
			continue
		}
		if _, err := d.claimSpecs.Remove(string(c.UID)); err != nil {
			out[c.UID] = fmt.Errorf("claim %s: %w", klog.KRef(c.Namespace, c.Name), err)
			logger.Error(err, "Cannot unprepare claim", "claim", klog.KRef(c.Namespace, c.Name), "claimUID", c.UID)
			continue
		}
		// The claim stays prepared (its devices counting) until every
		// instance created for it is gone.
		did, err := d.destroyMIG(ctx, pc)
		destroyed = destroyed || did
		if err != nil {
			out[c.UID] = err
			logger.Error(err, "Cannot unprepare claim", "claim", klog.KRef(c.Namespace, c.Name), "claimUID", c.UID)
			continue
		}
		delete(d.claims, c.UID)
		removed[c.UID] = pc
	}
	if len(removed) == 0 {
		return out, destroyed
	}
	if err := saveCheckpoint(d.checkpoint, d.claims); err != nil {
		// Still prepared as far as anyone can tell: the kubelet retries,
		// and the devices keep counting until it succeeds.
		maps.Copy(d.claims, removed)
		for uid := range removed {
			out[uid] = err
		}
		logger.Error(err, "Cannot record unprepared claims")
		return out, destroyed
	}
	for uid, pc := range removed {
		logger.Info("Unprepared claim", "claim", klog.KRef(pc.Namespace, pc.Name), "claimUID", uid, "devices", deviceNames(pc.Devices))
	}
	return out, destroyed
}

// result is the kubelet's answer for a prepared claim: per device the base
// spec's device (by GPU or MIG UUID) and, on the first device of each
// request, the claim spec's device for that request.
func (d *Driver) result(uid types.UID, pc *preparedClaim) kubeletplugin.PrepareResult {
	res := kubeletplugin.PrepareResult{Devices: make([]kubeletplugin.Device, 0, len(pc.Devices))}
	seen := map[string]bool{}
	for _, dev := range pc.Devices {
		ids := []string{d.opts.CDIKind.QualifiedName(dev.UUID)}
		if req := resourceclaim.BaseRequestRef(dev.Request); !seen[req] {
			seen[req] = true
			ids = append(ids, d.claimSpecs.QualifiedName(string(uid), req))
		}
		out := kubeletplugin.Device{
			Requests:     []string{dev.Request},
			PoolName:     dev.Pool,
			DeviceName:   dev.Device,
			CDIDeviceIDs: ids,
		}
		if dev.ShareID != "" {
			share := types.UID(dev.ShareID)
			out.ShareID = &share
		}
		res.Devices = append(res.Devices, out)
	}
	return res
}

// claimDevices is a claim's CDI devices: one per request (subrequests
// belong to their request: containers name requests), with the request's
// environment:
//
//   - GPUBLOCKS_GPU_UUID: the GPUs (a MIG device's parent), in index order;
//   - with blocks, the blocks environment (blocks.SetEnv) over the
//     request's GPUs, a whole GPU counting as 100 blocks, and
//     GPUBLOCKS_SHARE_ID. A request that mixes MIG devices with blocks
//     (only a hand-written selector does) gets the blocks environment
//     for its blocks and whole GPUs alone.
func claimDevices(devs []preparedDevice) []cdi.ClaimDevice {
	var order []string
	byRequest := map[string][]preparedDevice{}
	for _, dev := range devs {
		req := resourceclaim.BaseRequestRef(dev.Request)
		if _, ok := byRequest[req]; !ok {
			order = append(order, req)
		}
		byRequest[req] = append(byRequest[req], dev)
	}
	out := make([]cdi.ClaimDevice, 0, len(order))
	for _, req := range order {
		group := slices.Clone(byRequest[req])
		slices.SortStableFunc(group, func(a, b preparedDevice) int {
			return cmp.Or(cmp.Compare(a.GPUIndex, b.GPUIndex), cmp.Compare(a.GPUUUID, b.GPUUUID))
		})
		env := map[string]string{}
		var shares []blocks.Share
		var shareIDs, gpus []string
		hasBlocks := false
		for _, dev := range group {
			if !slices.Contains(gpus, dev.GPUUUID) {
				gpus = append(gpus, dev.GPUUUID)
			}
			n := 0
			switch dev.Type {
			case dra.TypeBlocks:
				hasBlocks, n = true, dev.Blocks
				if dev.ShareID != "" {
					shareIDs = append(shareIDs, dev.ShareID)
				}
			case dra.TypeGPU:
				n = blocks.PerGPU
			default:
				continue
			}
			// Two shares of one GPU in one request are one share of
			// their sum: the container sees the GPU once.
			if i := len(shares) - 1; i >= 0 && shares[i].UUID == dev.GPUUUID {
				shares[i].Blocks = min(shares[i].Blocks+n, blocks.PerGPU)
				continue
			}
			shares = append(shares, blocks.Share{UUID: dev.GPUUUID, MemoryMiB: dev.MemoryMiB, Blocks: n})
		}
		env[blocks.EnvGPUUUID] = strings.Join(gpus, ",")
		if hasBlocks {
			blocks.SetEnv(env, shares)
			if len(shareIDs) > 0 {
				env[EnvShareID] = strings.Join(shareIDs, ",")
			}
		}
		out = append(out, cdi.ClaimDevice{Request: req, Env: env})
	}
	return out
}

func deviceNames(devs []preparedDevice) []string {
	out := make([]string, len(devs))
	for i, dev := range devs {
		out[i] = dev.Device
		if dev.Type == dra.TypeBlocks {
			out[i] += " (" + strconv.Itoa(dev.Blocks) + " blocks)"
		}
	}
	return out
}
