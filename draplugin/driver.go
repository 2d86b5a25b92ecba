package draplugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/gpublocks/gpublocks/cdi"
	"github.com/gpublocks/gpublocks/dra"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/internal/atomicfile"
)

// DefaultCDIDir is where per-claim specs go when Options.CDIDir is empty.
const DefaultCDIDir = "/var/run/cdi"

// Options configure Start.
type Options struct {
	// DriverName is the DRA driver's name; default dra.DriverName.
	DriverName string
	// NodeName is the node's name, and the name of its pool. Required.
	NodeName string
	// KubeClient publishes ResourceSlices and reads ResourceClaims. Required.
	KubeClient kubernetes.Interface
	// RegistrarDir is where the kubelet looks for registration sockets
	// (--kubelet-registrar-dir); default /var/lib/kubelet/plugins_registry.
	RegistrarDir string
	// PluginsDir is the kubelet's plugins directory (--kubelet-plugins-dir),
	// default /var/lib/kubelet/plugins. The driver's data directory, which
	// holds the DRA socket and the checkpoint, is PluginsDir/<DriverName>.
	PluginsDir string
	// CDIDir is where per-claim specs go: the base spec's directory
	// (--cdi-dir); default DefaultCDIDir.
	CDIDir string
	// CDIKind is the base spec's kind, default cdi.DefaultKind
	// (gpublocks.io/gpu). Per-claim devices have the same vendor and the
	// class "claim".
	CDIKind cdi.Kind
	// MIG creates the MIG instance of a published placement that has none
	// when a claim is prepared, and destroys it again on unprepare
	// (DESIGN §10). Nil: MIG devices must already exist, and a claim for a
	// placement without an instance is refused.
	MIG MIGManager
}

// A Driver serves the kubelet's DRA API for one node: it publishes the
// node's pool and prepares and unprepares the claims allocated from it.
// Its methods are safe for concurrent use.
type Driver struct {
	opts       Options
	logger     klog.Logger
	claimSpecs *cdi.ClaimSpecs
	checkpoint string
	helper     *kubeletplugin.Helper
	registered atomic.Bool
	fatal      chan error

	// Publishing: Publish leaves the newest resources in pending and wakes
	// the publisher, which hands them to the helper. The helper's first
	// publish waits for its ResourceSlice informer to sync with the API
	// server, so Publish itself never blocks on the network.
	pending atomic.Pointer[resourceslice.DriverResources]
	wake    chan struct{}
	stop    context.CancelFunc
	done    chan struct{}

	// mu guards the published devices and the prepared claims; prepare and
	// unprepare hold it while they write, so the checkpoint on disk always
	// matches claims once it is released.
	mu      sync.Mutex
	devices map[string]publishedDevice
	claims  map[types.UID]*preparedClaim
	// healthChanged is closed (and replaced) when a Publish changes the
	// health of a device, at healthAt.
	healthChanged chan struct{}
	healthAt      time.Time
}

// publishedDevice is what Prepare needs of a device in the published pool.
type publishedDevice struct {
	typ       string
	uuid      string // the CDI device; "" for a MIG placement without an instance
	gpuUUID   string
	gpuIndex  int
	memoryMiB uint64
	unhealthy string // the unhealthy taint's value; "" when healthy
	// profile and place are a MIG device's (place nil when the pool gives
	// no placement).
	profile string
	place   *placement
}

// PreparedDevice is one device of a prepared claim, for `inspect`,
// metrics and the MIG layout's safety check.
type PreparedDevice struct {
	Claim   types.UID
	Request string // as allocated, "request" or "request/subrequest"
	Device  string // the device's name in the pool, e.g. gpu-0-blocks
	Type    string // dra.TypeGPU, dra.TypeBlocks or dra.TypeMIG
	GPUUUID string // the physical GPU (the parent of a MIG device)
	UUID    string // the CDI device's UUID: the GPU's, or the MIG device's
	Blocks  int    // the blocks share; 0 unless Type is dra.TypeBlocks
	// Created says the driver created the MIG instance for the claim and
	// destroys it on unprepare.
	Created bool
}

// Start loads the checkpoint (recovering the prepared claims, which keep
// their devices), removes what an interrupted run left in the CDI and data
// directories, then starts the kubeletplugin helper: the registration
// socket in RegistrarDir and, in PluginsDir/<DriverName>, the DRA gRPC
// service (v1 and v1beta1) and the device health service (v1 and
// v1alpha1). Nothing is published until Publish. The driver stops when
// ctx ends or Stop is called; fatal errors of the helper are reported on
// Fatal.
func Start(ctx context.Context, o Options) (*Driver, error) {
	d, err := newDriver(ctx, o)
	if err != nil {
		return nil, err
	}
	o = d.opts
	ctx = klog.NewContext(ctx, d.logger)
	dataDir := filepath.Dir(d.checkpoint)
	helper, err := kubeletplugin.Start(ctx, d,
		kubeletplugin.DriverName(o.DriverName),
		kubeletplugin.NodeName(o.NodeName),
		kubeletplugin.KubeClient(o.KubeClient),
		kubeletplugin.RegistrarDirectoryPath(o.RegistrarDir),
		kubeletplugin.PluginDataDirectoryPath(dataDir),
		kubeletplugin.GRPCInterceptor(d.watchRegistration),
	)
	if err != nil {
		return nil, fmt.Errorf("start the DRA kubelet plugin: %w", err)
	}
	d.helper = helper
	pubCtx, cancel := context.WithCancel(ctx)
	d.stop = cancel
	d.done = make(chan struct{})
	go d.publisher(pubCtx)
	d.logger.Info("DRA kubelet plugin started", "driver", o.DriverName, "node", o.NodeName,
		"registrarDir", o.RegistrarDir, "dataDir", dataDir, "preparedClaims", len(d.claims))
	return d, nil
}

// newDriver checks the options and recovers the prepared claims: a Driver
// that prepares and unprepares but serves nothing (tests drive it).
func newDriver(ctx context.Context, o Options) (*Driver, error) {
	if o.DriverName == "" {
		o.DriverName = dra.DriverName
	}
	if o.RegistrarDir == "" {
		o.RegistrarDir = kubeletplugin.KubeletRegistryDir
	}
	if o.PluginsDir == "" {
		o.PluginsDir = kubeletplugin.KubeletPluginsDir
	}
	if o.CDIDir == "" {
		o.CDIDir = DefaultCDIDir
	}
	if o.CDIKind == (cdi.Kind{}) {
		o.CDIKind = cdi.DefaultKind
	}
	switch {
	case o.NodeName == "":
		return nil, fmt.Errorf("%w: the DRA kubelet API needs the node's name: pass --node-name", ErrInvalidOptions)
	case o.KubeClient == nil:
		return nil, fmt.Errorf("%w: the DRA kubelet API needs API server credentials (in-cluster, or --kubeconfig)", ErrInvalidOptions)
	}
	if err := o.CDIKind.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	claimSpecs, err := cdi.NewClaimSpecs(o.CDIDir, o.CDIKind)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	logger := klog.FromContext(ctx).WithName("draplugin")

	dataDir := filepath.Join(o.PluginsDir, o.DriverName)
	for _, dir := range []string{dataDir, o.RegistrarDir} {
		// The helper needs both to exist; the kubelet creates its own on
		// start, and a DaemonSet's hostPath may not have yet.
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("dra plugin directory: %w", err)
		}
	}
	d := &Driver{
		opts:       o,
		logger:     logger,
		claimSpecs: claimSpecs,
		checkpoint: filepath.Join(dataDir, CheckpointFile),
		fatal:      make(chan error, 1),
		wake:       make(chan struct{}, 1),
		devices:    map[string]publishedDevice{},

		healthChanged: make(chan struct{}),
	}
	if err := d.recover(klog.NewContext(ctx, logger)); err != nil {
		return nil, err
	}
	return d, nil
}

// recover loads the checkpoint, sweeps temporary files of interrupted
// writes, and removes claim specs that no checkpointed claim owns: such a
// spec was written by a prepare that died before its checkpoint, so no
// container was ever told its name.
func (d *Driver) recover(ctx context.Context) error {
	dataDir := filepath.Dir(d.checkpoint)
	if removed, err := atomicfile.RemoveTemps(dataDir, CheckpointFile); err != nil {
		return fmt.Errorf("%w: %w", ErrCheckpoint, err)
	} else if len(removed) > 0 {
		d.logger.Info("Removed temporary files left by an interrupted checkpoint write", "files", removed)
	}
	claims, err := loadCheckpoint(d.checkpoint)
	if err != nil {
		return err
	}
	d.claims = claims
	if err := d.claimSpecs.RemoveTemps(ctx); err != nil {
		d.logger.Error(err, "Cannot remove temporary claim spec files")
	}
	uids, err := d.claimSpecs.List()
	if err != nil {
		return err
	}
	for _, uid := range uids {
		if _, ok := claims[types.UID(uid)]; ok {
			continue
		}
		if _, err := d.claimSpecs.Remove(uid); err != nil {
			return err
		}
		d.logger.Info("Removed the CDI spec of a claim that was never prepared", "claimUID", uid)
	}
	for uid, c := range claims {
		d.logger.V(2).Info("Recovered prepared claim", "claim", klog.KRef(c.Namespace, c.Name), "claimUID", uid, "devices", deviceNames(c.Devices))
	}
	return nil
}

// Publish makes pool the node's published pool (handed to the
// ResourceSlice controller, pool name = NodeName) and the set of devices
// Prepare accepts from now on. Devices of prepared claims that the pool
// no longer has stay prepared and keep counting against new claims. inv
// gives each GPU's memory for the blocks environment.
//
// Publish does not wait for the API server: the slices are written in the
// background (the first time only once the helper's informer has synced),
// the newest pool winning. Errors are about the pool itself.
func (d *Driver) Publish(ctx context.Context, pool dra.Pool, inv *gpu.Inventory) error {
	devices, err := indexPool(pool, inv)
	if err != nil {
		return err
	}
	slicesOut := pool.Slices()
	if len(slicesOut) == 0 {
		// An empty pool is one empty slice: "no devices here", where no
		// slice at all would read as "no driver here".
		slicesOut = []dra.Slice{{}}
	}
	res := &resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{
		d.opts.NodeName: {Slices: make([]resourceslice.Slice, len(slicesOut))},
	}}
	for i, s := range slicesOut {
		res.Pools[d.opts.NodeName].Slices[i] = resourceslice.Slice{SharedCounters: s.SharedCounters, Devices: s.Devices}
	}
	// The caller keeps its pool: the controller gets its own copy.
	res = res.DeepCopy()

	d.mu.Lock()
	// Under mu, so that concurrent calls publish in the order Prepare
	// sees them.
	d.setDevices(devices)
	d.pending.Store(res)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
	klog.FromContext(ctx).V(2).Info("Publishing DRA pool", "pool", d.opts.NodeName, "devices", len(pool.Devices), "slices", len(slicesOut))
	return nil
}

// publisher hands the newest pending resources to the helper.
func (d *Driver) publisher(ctx context.Context) {
	defer close(d.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		}
		res := d.pending.Swap(nil)
		if res == nil {
			continue
		}
		if err := d.helper.PublishResources(ctx, *res); err != nil && ctx.Err() == nil {
			// Only a stop ends the first publish early; anything else
			// is logged, and the next Publish tries again.
			d.logger.Error(err, "Cannot publish ResourceSlices")
		}
	}
}

// indexPool checks the pool and maps device names to what Prepare needs.
func indexPool(pool dra.Pool, inv *gpu.Inventory) (map[string]publishedDevice, error) {
	out := make(map[string]publishedDevice, len(pool.Devices))
	for _, dev := range pool.Devices {
		if _, dup := out[dev.Name]; dup {
			return nil, fmt.Errorf("%w: device %q is in the pool twice", ErrInvalidPool, dev.Name)
		}
		p := publishedDevice{
			typ:  stringAttr(dev, "type"),
			uuid: stringAttr(dev, "uuid"),
		}
		switch p.typ {
		case dra.TypeGPU, dra.TypeBlocks:
			p.gpuUUID = p.uuid
			p.gpuIndex = intAttr(dev, "index")
		case dra.TypeMIG:
			p.gpuUUID = stringAttr(dev, "parentUUID")
			p.gpuIndex = intAttr(dev, "parentIndex")
			p.profile = stringAttr(dev, "profile")
			if start, size := intAttr(dev, "placementStart"), intAttr(dev, "placementSize"); start >= 0 && size > 0 {
				p.place = &placement{Start: start, Size: size}
			}
			if p.uuid == "" && (p.profile == "" || p.place == nil) {
				return nil, fmt.Errorf("%w: MIG device %q has no uuid, so it needs a profile and a placement to be created", ErrInvalidPool, dev.Name)
			}
		default:
			return nil, fmt.Errorf("%w: device %q has type %q, want %s, %s or %s", ErrInvalidPool, dev.Name, p.typ, dra.TypeGPU, dra.TypeBlocks, dra.TypeMIG)
		}
		if p.gpuUUID == "" {
			return nil, fmt.Errorf("%w: device %q names no GPU UUID", ErrInvalidPool, dev.Name)
		}
		if p.typ != dra.TypeMIG {
			var g *gpu.GPU
			if inv != nil {
				g = inv.ByUUID(p.gpuUUID)
			}
			switch {
			case g != nil:
				p.memoryMiB = g.MemoryMiB
			case p.typ == dra.TypeBlocks:
				return nil, fmt.Errorf("%w: blocks device %q: GPU %s is not in the inventory (its memory sets the blocks' MPS limit)", ErrInvalidPool, dev.Name, p.gpuUUID)
			}
		}
		for _, t := range dev.Taints {
			if t.Key == dra.UnhealthyTaintKey {
				p.unhealthy = t.Value
				if p.unhealthy == "" {
					p.unhealthy = "unhealthy"
				}
			}
		}
		out[dev.Name] = p
	}
	return out, nil
}

func stringAttr(dev resourceapi.Device, name resourceapi.QualifiedName) string {
	if a, ok := dev.Attributes[name]; ok && a.StringValue != nil {
		return *a.StringValue
	}
	return ""
}

func intAttr(dev resourceapi.Device, name resourceapi.QualifiedName) int {
	if a, ok := dev.Attributes[name]; ok && a.IntValue != nil {
		return int(*a.IntValue)
	}
	return -1
}

// Prepared lists every device of every prepared claim, by claim UID and
// then in allocation order. It is the checkpoint's content.
func (d *Driver) Prepared() []PreparedDevice {
	d.mu.Lock()
	defer d.mu.Unlock()
	uids := make([]types.UID, 0, len(d.claims))
	for uid := range d.claims {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	var out []PreparedDevice
	for _, uid := range uids {
		for _, dev := range d.claims[uid].Devices {
			out = append(out, PreparedDevice{
				Claim: uid, Request: dev.Request, Device: dev.Device, Type: dev.Type,
				GPUUUID: dev.GPUUUID, UUID: dev.UUID, Blocks: dev.Blocks, Created: dev.Created,
			})
		}
	}
	return out
}

// Registered reports whether the kubelet has registered the plugin: the
// status of its last NotifyRegistrationStatus call.
func (d *Driver) Registered() bool { return d.registered.Load() }

// Fatal delivers the first error after which the plugin cannot serve (its
// gRPC servers failed). The caller should shut down, cancelling Start's
// context, and let the DaemonSet restart it.
func (d *Driver) Fatal() <-chan error { return d.fatal }

// Stop stops the helper and the publisher. The published slices stay:
// the kubelet and the scheduler keep using them until a new instance
// publishes, and the API server removes them with the node.
func (d *Driver) Stop() {
	d.stop() // first: a publish that the helper's stop cuts short is no error
	d.helper.Stop()
	<-d.done
}

// watchRegistration records the kubelet's verdict on our registration. It
// is a gRPC interceptor on the helper's servers; the helper's own
// RegistrationStatus is read without synchronisation.
func (d *Driver) watchRegistration(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if st, ok := req.(*registerapi.RegistrationStatus); ok {
		d.registered.Store(st.PluginRegistered)
		if st.PluginRegistered {
			d.logger.Info("Registered with the kubelet", "driver", d.opts.DriverName)
		} else {
			d.logger.Error(nil, "The kubelet refused the registration", "driver", d.opts.DriverName, "reason", st.Error)
		}
	}
	return resp, err
}

// HandleError implements kubeletplugin.DRAPlugin: errors of the helper's
// background work. Recoverable ones (publishing slices) are logged, with
// what to do where we know; anything else means the gRPC servers are
// gone, and is delivered on Fatal.
func (d *Driver) HandleError(ctx context.Context, err error, msg string) {
	logger := klog.FromContext(ctx)
	if errors.Is(err, kubeletplugin.ErrRecoverable) {
		var dropped *resourceslice.DroppedFieldsError
		if errors.As(err, &dropped) {
			logger.Error(err, "The API server dropped fields of the published ResourceSlices: without shared counters "+
				"and consumable capacity the scheduler cannot keep a GPU's devices apart, and Prepare will refuse "+
				"what it double-books; enable these feature gates on kube-apiserver, kube-scheduler and kubelet (on by default from Kubernetes 1.36)",
				"disabledFeatures", dropped.DisabledFeatures())
			return
		}
		logger.Error(err, msg)
		return
	}
	logger.Error(err, msg+": the DRA kubelet plugin cannot continue")
	select {
	case d.fatal <- fmt.Errorf("%s: %w", msg, err):
	default:
	}
}

var _ kubeletplugin.DRAPlugin = (*Driver)(nil)
