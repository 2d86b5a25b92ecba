package mig

import (
	"context"
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/gpu"
)

// Result is what Apply did. After a failure half-way it holds the plan and
// the steps that succeeded; it is nil when Apply failed before planning.
type Result struct {
	Plan *Plan
	// Kept are the instances left as they were.
	Kept []Instance
	// Created are the instances created or repaired, each with its one
	// compute instance (and its MIG UUID where NVML lists it).
	Created []Instance
	// Destroyed are the instances destroyed, compute instances first.
	Destroyed []Instance
}

// PlanFor reads dev (Read) and plans layout on it (Solve) without changing
// anything: a plan without Changes means the GPU already holds the layout;
// one with changes is a pending layout change, which the caller applies
// when the GPU is idle.
func PlanFor(dev nvml.Device, layout Layout) (*Plan, error) {
	st, err := Read(dev)
	if err != nil {
		return nil, err
	}
	return Solve(st.Catalog, st.Instances, layout)
}

// Apply makes dev's MIG instances equal layout (DESIGN §10): it plans with
// Solve, then destroys the instances the layout has no use for (compute
// instances first, then the GPU instance), repairs kept GPU instances whose
// compute instances are not one spanning compute instance, and creates the
// missing instances with CreateGpuInstanceWithPlacement plus their full-size
// compute instance. Complete instances the layout uses are left alone, with
// their UUIDs. Nothing is done when the GPU already holds the layout.
//
// Apply refuses, before changing anything, when NVML lists a compute
// process in an instance it would destroy or repair (ErrBusy); the driver's
// ERROR_IN_USE is reported as ErrBusy too. It does not look at the
// instances it keeps: deciding that the whole GPU is idle (no allocated
// devices, Processes empty) is the caller's policy.
//
// A failure half-way returns the error (naming the step, wrapping NVML's
// Return) and the steps done; the GPU is then in a state the next Apply
// plans from and finishes. MIG mode must be on (ErrDisabled).
func Apply(ctx context.Context, dev nvml.Device, layout Layout) (*Result, error) {
	st, err := Read(dev)
	if err != nil {
		return nil, err
	}
	plan, err := Solve(st.Catalog, st.Instances, layout)
	if err != nil {
		return nil, err
	}
	res := &Result{Plan: plan, Kept: plan.Keep}
	if !plan.Changes() {
		return res, nil
	}
	logger := klog.FromContext(ctx).WithValues("model", plan.Model, "layout", layout.String())
	logger.V(1).Info("Applying MIG layout", "plan", plan.String())
	touched := append(append([]Instance{}, plan.Destroy...), plan.Repair...)
	if err := refuseBusy(st.Catalog.Model, touched); err != nil {
		return res, err
	}
	step := func() error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("applying MIG layout %s on %s: stopped half-way (the next apply finishes it): %w", layout, plan.Model, err)
		}
		return nil
	}
	for _, in := range plan.Destroy {
		if err := step(); err != nil {
			return res, err
		}
		if err := destroy(&in); err != nil {
			return res, fmt.Errorf("applying MIG layout %s on %s: %w", layout, plan.Model, err)
		}
		logger.Info("Destroyed MIG instance", "profile", in.Profile, "gi", in.GI, "start", in.Placement.Start)
		res.Destroyed = append(res.Destroyed, in)
	}
	for _, in := range plan.Repair {
		if err := step(); err != nil {
			return res, err
		}
		if err := destroyCIs(&in); err != nil {
			return res, fmt.Errorf("applying MIG layout %s on %s: %w", layout, plan.Model, err)
		}
		if err := addCI(&in); err != nil {
			return res, fmt.Errorf("applying MIG layout %s on %s: %w", layout, plan.Model, err)
		}
		logger.Info("Repaired MIG instance", "profile", in.Profile, "gi", in.GI, "ci", in.CIs[0].ID)
		res.Created = append(res.Created, in)
	}
	for _, c := range plan.Create {
		if err := step(); err != nil {
			return res, err
		}
		in, err := createGI(dev, c.profile, c.Placement)
		if err != nil {
			return res, fmt.Errorf("applying MIG layout %s on %s: %w", layout, plan.Model, err)
		}
		if err := addCI(&in); err != nil {
			return res, fmt.Errorf("applying MIG layout %s on %s: %w", layout, plan.Model, err)
		}
		logger.Info("Created MIG instance", "profile", in.Profile, "gi", in.GI, "ci", in.CIs[0].ID, "start", in.Placement.Start)
		res.Created = append(res.Created, in)
	}
	fillUUIDs(dev, res.Created)
	return res, nil
}

// Create makes sure an instance of profile sits at the placement that
// starts at memory slice start, with one compute instance spanning it, for
// DRA's NodePrepareResources. An instance already there is reused (its
// compute instances repaired if they have to be, unless busy); otherwise
// one is created. created says whether anything was created. Nothing else
// on the GPU changes: an instance in the way fails with an error wrapping
// nvml.ERROR_INSUFFICIENT_RESOURCES. When the compute instance cannot be
// created, the GPU instance just created is destroyed again, so a failed
// prepare leaves nothing behind.
func Create(ctx context.Context, dev nvml.Device, profile string, start int) (in Instance, created bool, err error) {
	st, err := Read(dev)
	if err != nil {
		return Instance{}, false, err
	}
	p, err := st.Catalog.Profile(profile)
	if err != nil {
		return Instance{}, false, err
	}
	var at *gpu.Placement
	for i := range p.Placements {
		if p.Placements[i].Start == start {
			at = &p.Placements[i]
		}
	}
	if at == nil {
		return Instance{}, false, fmt.Errorf("%s on %s cannot start at memory slice %d; it may start at %s: %w",
			p.Name, st.Catalog.Model, start, startsText(p.Placements), nvml.ERROR_INVALID_ARGUMENT)
	}
	logger := klog.FromContext(ctx).WithValues("model", st.Catalog.Model, "profile", p.Name, "start", start)
	for _, ex := range st.Instances {
		if ex.profile.Info.Id != p.Info.Id || ex.Placement != *at {
			continue
		}
		if ex.Complete() {
			return ex, false, nil
		}
		if err := refuseBusy(st.Catalog.Model, []Instance{ex}); err != nil {
			return Instance{}, false, err
		}
		if err := destroyCIs(&ex); err != nil {
			return Instance{}, false, err
		}
		if err := addCI(&ex); err != nil {
			return Instance{}, false, err
		}
		logger.Info("Repaired MIG instance", "gi", ex.GI, "ci", ex.CIs[0].ID)
		fillUUIDs(dev, []Instance{ex})
		return ex, true, nil
	}
	in, err = createGI(dev, p, *at)
	if err != nil {
		return Instance{}, false, err
	}
	if err := addCI(&in); err != nil {
		if ret := in.handle.Destroy(); ret != nvml.SUCCESS {
			return Instance{}, false, fmt.Errorf("%w; destroying the GPU instance again also failed (the next Create at this placement repairs it): %w", err, ret)
		}
		return Instance{}, false, err
	}
	logger.Info("Created MIG instance", "gi", in.GI, "ci", in.CIs[0].ID)
	fillUUIDs(dev, []Instance{in})
	return in, true, nil
}

// Destroy destroys the GPU instance with ID gi and its compute instances,
// for DRA's NodeUnprepareResources. It refuses (ErrBusy) while NVML lists a
// process in it. No such instance is ErrNotFound: the caller may count the
// work as done.
func Destroy(ctx context.Context, dev nvml.Device, gi int) error {
	st, err := Read(dev)
	if err != nil {
		return err
	}
	for _, in := range st.Instances {
		if in.GI != gi {
			continue
		}
		if err := refuseBusy(st.Catalog.Model, []Instance{in}); err != nil {
			return err
		}
		if err := destroy(&in); err != nil {
			return fmt.Errorf("%s: %w", st.Catalog.Model, err)
		}
		klog.FromContext(ctx).Info("Destroyed MIG instance", "model", st.Catalog.Model, "profile", in.Profile, "gi", in.GI)
		return nil
	}
	return fmt.Errorf("%w: GPU instance %d on %s", ErrNotFound, gi, st.Catalog.Model)
}

// refuseBusy fails with ErrBusy when NVML listed a compute process in one
// of ins (Read). A GPU whose driver cannot list processes relies on the
// driver's own ERROR_IN_USE.
func refuseBusy(model string, ins []Instance) error {
	var errs []error
	for _, in := range ins {
		if len(in.Processes) > 0 {
			errs = append(errs, fmt.Errorf("%w: %s on %s runs process %d; it can change once the process ends", ErrBusy, &in, model, in.Processes[0]))
		}
	}
	return errors.Join(errs...)
}

// destroy destroys in's compute instances, then in.
func destroy(in *Instance) error {
	if err := destroyCIs(in); err != nil {
		return err
	}
	if ret := in.handle.Destroy(); ret != nvml.SUCCESS {
		return fmt.Errorf("destroying GPU instance %s: %w", in, busy(ret))
	}
	return nil
}

// destroyCIs destroys in's compute instances, leaving in.CIs with those
// that remain.
func destroyCIs(in *Instance) error {
	for len(in.CIs) > 0 {
		ci := in.CIs[0]
		if ret := ci.handle.Destroy(); ret != nvml.SUCCESS {
			return fmt.Errorf("destroying compute instance %d of %s: %w", ci.ID, in, busy(ret))
		}
		in.CIs = in.CIs[1:]
	}
	return nil
}

// busy marks the driver's ERROR_IN_USE as ErrBusy.
func busy(ret nvml.Return) error {
	if ret == nvml.ERROR_IN_USE {
		return fmt.Errorf("%w: %w", ErrBusy, ret)
	}
	return ret
}

// createGI creates a GPU instance of p at pl.
func createGI(dev nvml.Device, p *Profile, pl gpu.Placement) (Instance, error) {
	h, ret := dev.CreateGpuInstanceWithPlacement(&p.Info, &nvml.GpuInstancePlacement{Start: uint32(pl.Start), Size: uint32(pl.Size)})
	if ret != nvml.SUCCESS {
		return Instance{}, fmt.Errorf("creating GPU instance %s at %s: %w", p.Name, slicesText(pl), ret)
	}
	info, ret := h.GetInfo()
	if ret != nvml.SUCCESS {
		return Instance{}, fmt.Errorf("reading the GPU instance %s created at %s: %w", p.Name, slicesText(pl), ret)
	}
	return Instance{
		Profile:   p.Name,
		GI:        int(info.Id),
		Placement: gpu.Placement{Start: int(info.Placement.Start), Size: int(info.Placement.Size)},
		profile:   p,
		handle:    h,
	}, nil
}

// addCI creates in's compute instance that spans it.
func addCI(in *Instance) error {
	p := in.profile
	info, ret := in.handle.GetComputeInstanceProfileInfo(p.ciProfile, p.ciEngProfile)
	if ret != nvml.SUCCESS {
		return fmt.Errorf("reading the compute instance profile of %s: %w", in, ret)
	}
	h, ret := in.handle.CreateComputeInstance(&info)
	if ret != nvml.SUCCESS {
		return fmt.Errorf("creating the compute instance of %s: %w", in, ret)
	}
	ci, ret := h.GetInfo()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("reading the compute instance created in %s: %w", in, ret)
	}
	in.CIs = []ComputeInstance{{ID: int(ci.Id), Full: true, handle: h}}
	return nil
}

// fillUUIDs sets the MIG UUIDs of instances just created.
func fillUUIDs(dev nvml.Device, ins []Instance) {
	uuids := migUUIDs(dev)
	for i := range ins {
		for j := range ins[i].CIs {
			ins[i].CIs[j].UUID = uuids[[2]int{ins[i].GI, ins[i].CIs[j].ID}]
		}
	}
}
