package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/blocks"
	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/mig"
)

// MIG layouts from the config (DESIGN §10), device-plugin mode: a GPU whose
// `shape: mig` rule gives a layout is made to hold it, but only while
// nothing uses the GPU. The kubelet's PodResources answer must list none of
// its devices (a MIG device's UUID counts for its parent GPU) and NVML must
// list no compute process on it; otherwise the change waits, is logged
// once, shows in gpublocks_mig_layout_pending and in inspect, and is looked
// at again on every defer poll. After a change the GPUs are discovered
// again, so resources, CDI devices and capability minors follow the
// instances NVML now reports. In DRA mode the daemon applies no layout: the
// DRA driver creates MIG devices per claim.

// errMigApply marks a reconcile that served the node but could not finish
// a MIG layout change; Run retries it with its backoff.
var errMigApply = errors.New("MIG layout change failed")

// MigLayoutStatus is how one GPU stands against the layout its config rule
// asks for.
type MigLayoutStatus struct {
	GPU  int
	UUID string
	// Layout is what the config asks for.
	Layout mig.Layout
	// Plan is the change still to make (mig.Plan's String), "" when the
	// GPU holds the layout.
	Plan string
	// Waiting says why the change is not made now: devices allocated,
	// processes running, or the last attempt's error. "" when the GPU
	// holds the layout, or (inspect) when nothing on the GPU holds it up.
	Waiting string
}

// Pending reports whether the GPU does not hold its layout yet.
func (s *MigLayoutStatus) Pending() bool { return s.Plan != "" || s.Waiting != "" }

// migLayouts is what the daemon remembers between reconciles about the MIG
// layouts it applies. Only reconcile (Run's loop) touches it.
type migLayouts struct {
	// logged is, per GPU UUID, the plan and reason last logged as
	// waiting, so each wait is logged once.
	logged map[string]string
	// draLogged says the DRA-mode notice was logged.
	draLogged bool
	// rescanOwed says a GPU was changed and the GPUs have not been
	// discovered again since (a discovery failed): the next reconcile
	// with an answer discovers them.
	rescanOwed bool
}

// reconcileMig applies the layouts of the config st was planned from
// (applyMigLayouts) and, when a GPU changed, discovers the GPUs again and
// re-plans, so that what is served is what NVML now holds. A failed change
// is returned (wrapping errMigApply) with the state to serve regardless.
func (d *Daemon) reconcileMig(ctx context.Context, st *State, keep kept, prev *State, alloc *allocations, h faults) (*State, kept, error) {
	statuses, changed, applyErr := d.applyMigLayouts(ctx, st.Inventory, st.Config, alloc)
	if changed || d.migs.rescanOwed {
		d.migs.rescanOwed = true
		inv, err := gpu.Discover(ctx, d.backend)
		if err != nil {
			return nil, kept{}, errors.Join(applyErr, fmt.Errorf("discovering GPUs with %s after a MIG layout change: %w", d.backend.Name(), err))
		}
		d.migs.rescanOwed = false
		for _, s := range inv.Skipped {
			klog.FromContext(ctx).Error(s.Reason, "Device not offered", "device", s.Device)
		}
		nst, nkeep, err := d.planConfig(ctx, inv, st.Config, st.Source, prev, alloc, h)
		if err != nil {
			return nil, kept{}, errors.Join(applyErr, err)
		}
		st, keep = nst, nkeep
	}
	st.MigLayouts = statuses
	return st, keep, applyErr
}

// migTarget is a GPU whose config rule gives a layout, with that layout
// and the rule's key path.
type migTarget struct {
	gpu    *gpu.GPU
	layout mig.Layout
	key    string
}

// migTargets lists the GPUs of inv whose rule in cfg gives a layout. A
// rule whose layout does not parse was rejected at load, so it is skipped
// here.
func migTargets(inv *gpu.Inventory, cfg *config.Config) []migTarget {
	var out []migTarget
	for i := range inv.GPUs {
		g := &inv.GPUs[i]
		profiles, key, ok := cfg.MigLayoutFor(g.Index, g.UUID, g.Model)
		if !ok || profiles == nil {
			continue
		}
		layout, err := mig.ParseLayout(profiles)
		if err != nil {
			continue
		}
		out = append(out, migTarget{gpu: g, layout: layout, key: key})
	}
	return out
}

// gpusInUse maps each GPU of inv with allocated devices to those device
// IDs: the GPU's own UUID (whole), its blocks (<uuid>::<n>) and its MIG
// devices' UUIDs all count for it. When the kubelet could not be asked,
// every GPU counts as in use.
func gpusInUse(inv *gpu.Inventory, alloc *allocations) map[string][]string {
	parent := map[string]string{}
	for i := range inv.GPUs {
		g := &inv.GPUs[i]
		parent[g.UUID] = g.UUID
		for _, m := range g.MigDevices {
			parent[m.UUID] = g.UUID
		}
	}
	used := map[string][]string{}
	for _, id := range slices.Sorted(maps.Keys(alloc.ids)) {
		owner := parent[id]
		if uuid, _, err := blocks.ParseID(id); err == nil {
			owner = uuid
		}
		if owner != "" {
			used[owner] = append(used[owner], id)
		}
	}
	if alloc.unknown {
		for i := range inv.GPUs {
			if _, ok := used[inv.GPUs[i].UUID]; !ok {
				used[inv.GPUs[i].UUID] = []string{"(the kubelet could not be asked)"}
			}
		}
	}
	return used
}

// busyWith says what holds a GPU's layout change back, "" when nothing
// does: allocated devices, or compute processes NVML lists. A driver that
// cannot list processes leaves the question to the allocations and to
// Apply, which the driver refuses for an instance in use.
func busyWith(dev nvml.Device, allocated []string) string {
	if len(allocated) > 0 {
		return "devices allocated to pods: " + nameIDs(allocated)
	}
	ps, err := mig.Processes(dev)
	switch {
	case errors.Is(err, nvml.ERROR_NOT_SUPPORTED):
		return ""
	case err != nil:
		return fmt.Sprintf("cannot tell whether processes run on it: %v", err)
	case len(ps) > 0:
		pids := make([]string, len(ps))
		for i, p := range ps {
			pids[i] = fmt.Sprint(p.Pid)
		}
		return "compute processes running: " + nameIDs(pids)
	}
	return ""
}

// applyMigLayouts makes every GPU of inv whose rule in cfg gives a layout
// hold it, where nothing uses the GPU (alloc, processes). It returns each
// such GPU's status, whether any GPU was changed (or may have been, by a
// failure half-way), and the failures, wrapping errMigApply.
func (d *Daemon) applyMigLayouts(ctx context.Context, inv *gpu.Inventory, cfg *config.Config, alloc *allocations) ([]MigLayoutStatus, bool, error) {
	logger := klog.FromContext(ctx)
	targets := migTargets(inv, cfg)
	if d.opts.dra() {
		if len(targets) > 0 && !d.migs.draLogged {
			d.migs.draLogged = true
			logger.Info("MIG layouts in the config are not applied in DRA mode: the DRA driver creates MIG devices per claim", "gpus", len(targets))
		}
		return nil, false, nil
	}
	if d.migs.logged == nil {
		d.migs.logged = map[string]string{}
	}
	lib := d.backend.NVML()
	used := gpusInUse(inv, alloc)
	var (
		out     []MigLayoutStatus
		changed bool
		errs    []error
	)
	seen := map[string]bool{}
	for _, t := range targets {
		g := t.gpu
		seen[g.UUID] = true
		st := MigLayoutStatus{GPU: g.Index, UUID: g.UUID, Layout: t.layout}
		glog := logger.WithValues("gpu", g.Index, "uuid", g.UUID, "layout", t.layout.String(), "rule", t.key)
		wait := func(why string) {
			st.Waiting = why
			if d.migs.logged[g.UUID] != st.Plan+"\x00"+why {
				d.migs.logged[g.UUID] = st.Plan + "\x00" + why
				glog.Info("MIG layout change waits: a GPU in use keeps its layout until it is free", "waitingFor", why, "plan", st.Plan)
			}
		}
		dev, ret := lib.DeviceGetHandleByUUID(g.UUID)
		if ret != nvml.SUCCESS {
			st.Plan = "unknown"
			wait(fmt.Sprintf("getting the GPU from NVML: %v", ret))
			out = append(out, st)
			continue
		}
		plan, err := mig.PlanFor(dev, t.layout)
		if err != nil {
			st.Plan = "unknown"
			wait(err.Error())
			out = append(out, st)
			continue
		}
		if !plan.Changes() {
			delete(d.migs.logged, g.UUID)
			out = append(out, st)
			continue
		}
		st.Plan = plan.String()
		if alloc.unknown {
			wait("the kubelet's pod-resources API did not answer, so every device counts as allocated")
			out = append(out, st)
			continue
		}
		if why := busyWith(dev, used[g.UUID]); why != "" {
			wait(why)
			out = append(out, st)
			continue
		}
		glog.Info("Applying MIG layout", "plan", st.Plan)
		res, err := mig.Apply(ctx, dev, t.layout)
		// Even a failure may have changed the GPU half-way.
		changed = true
		if err != nil {
			err = fmt.Errorf("%w on %s (%s): %w", errMigApply, g, t.key, err)
			st.Waiting = "the last attempt failed: " + err.Error()
			d.migs.logged[g.UUID] = st.Plan + "\x00" + st.Waiting
			glog.Error(err, "MIG layout change failed; the GPU serves the instances it holds now and the change is retried")
			errs = append(errs, err)
			out = append(out, st)
			continue
		}
		delete(d.migs.logged, g.UUID)
		glog.Info("MIG layout applied", "created", len(res.Created), "destroyed", len(res.Destroyed), "kept", len(res.Kept))
		out = append(out, MigLayoutStatus{GPU: g.Index, UUID: g.UUID, Layout: t.layout})
	}
	for uuid := range d.migs.logged {
		if !seen[uuid] {
			// The config no longer asks this GPU for a layout.
			delete(d.migs.logged, uuid)
			logger.Info("MIG layout change no longer asked for", "uuid", uuid)
		}
	}
	return out, changed, errors.Join(errs...)
}

// migPendingLocked reports whether a GPU waits for its layout (the defer
// poll's work). The caller holds d.mu.
func (d *Daemon) migPendingLocked() bool {
	if d.state == nil {
		return false
	}
	for i := range d.state.MigLayouts {
		if d.state.MigLayouts[i].Pending() {
			return true
		}
	}
	return false
}

// checkMigLayouts checks cfg's `mig:` rules against the node's GPUs
// (mig.CheckNode: MIG mode on, profiles the model offers, a layout that
// fits), so that a config that cannot be honoured is rejected whole at
// load. The GPUs are those last discovered, else discovered now.
func (d *Daemon) checkMigLayouts(ctx context.Context, cfg *config.Config) error {
	d.mu.Lock()
	var inv *gpu.Inventory
	if d.state != nil {
		inv = d.state.Inventory
	}
	d.mu.Unlock()
	return CheckMigLayouts(ctx, d.backend, inv, cfg, d.opts.KubeletAPI)
}

// CheckMigLayouts runs mig.CheckNode for cfg over inv (discovered through b
// when nil): as layouts in device-plugin mode, as allowed profiles in DRA
// mode. `gpublocks config validate` and the daemon's config loader share
// it.
func CheckMigLayouts(ctx context.Context, b gpu.Backend, inv *gpu.Inventory, cfg *config.Config, kubeletAPI string) error {
	if inv == nil {
		var err error
		if inv, err = gpu.Discover(ctx, b); err != nil {
			return fmt.Errorf("discovering GPUs with %s to check the config's MIG layouts: %w", b.Name(), err)
		}
	}
	mode := mig.AsLayout
	if kubeletAPI == KubeletAPIDRA {
		mode = mig.AsAllowed
	}
	return mig.CheckNode(b.NVML(), inv, cfg, mode)
}

// migStatus is inspect's view of the layouts: the change each GPU still
// needs, and what would hold it back that inspect can see (processes; the
// kubelet's allocations are serve's to ask).
func migStatus(lib nvml.Interface, inv *gpu.Inventory, cfg *config.Config) []MigLayoutStatus {
	var out []MigLayoutStatus
	for _, t := range migTargets(inv, cfg) {
		st := MigLayoutStatus{GPU: t.gpu.Index, UUID: t.gpu.UUID, Layout: t.layout}
		dev, ret := lib.DeviceGetHandleByUUID(t.gpu.UUID)
		if ret != nvml.SUCCESS {
			st.Plan, st.Waiting = "unknown", fmt.Sprintf("getting the GPU from NVML: %v", ret)
			out = append(out, st)
			continue
		}
		plan, err := mig.PlanFor(dev, t.layout)
		switch {
		case err != nil:
			st.Plan, st.Waiting = "unknown", err.Error()
		case plan.Changes():
			st.Plan = plan.String()
			st.Waiting = busyWith(dev, nil)
		}
		out = append(out, st)
	}
	return out
}

// report says how the GPU stands against its layout, for inspect.
func (s *MigLayoutStatus) report() string {
	switch {
	case !s.Pending():
		return "in place"
	case s.Waiting == "":
		return "pending: " + s.Plan
	default:
		return fmt.Sprintf("pending: %s (waits: %s)", s.Plan, strings.TrimSpace(s.Waiting))
	}
}
