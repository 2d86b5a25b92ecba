package mig

import (
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpublocks/gpublocks/gpu"
)

// Check tells whether layout can be applied to dev, changing nothing: MIG
// mode is on (ErrDisabled, ErrNotCapable), the GPU offers every profile
// (ErrUnknownProfile), and the layout fits (ErrDoesNotFit, naming the
// profile that does not). A nil layout only checks MIG mode. Whether the
// GPU is idle enough to apply it now is not Check's question.
func Check(dev nvml.Device, layout Layout) error {
	if err := MigEnabled(dev); err != nil {
		return err
	}
	if layout == nil {
		return nil
	}
	cat, err := ReadCatalog(dev)
	if err != nil {
		return err
	}
	// Existing instances never make a layout unplaceable (Apply may
	// destroy them all), so the check plans on an empty GPU.
	_, err = Solve(cat, nil, layout)
	return err
}

// CheckProfiles tells whether dev offers every one of profiles, with MIG
// mode on, changing nothing. It is DRA mode's check of a rule's `mig:`
// list, which narrows the profiles a GPU publishes: they need not fit
// together, since the scheduler places one claim at a time.
func CheckProfiles(dev nvml.Device, profiles []string) error {
	if err := MigEnabled(dev); err != nil {
		return err
	}
	if len(profiles) == 0 {
		return nil
	}
	cat, err := ReadCatalog(dev)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range profiles {
		if _, err := cat.Profile(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Mode says what a config's `mig:` list means to CheckNode.
type Mode int

const (
	// AsLayout is the device-plugin mode's meaning: the instances the GPU
	// holds, all at once (Check).
	AsLayout Mode = iota
	// AsAllowed is DRA mode's: the profiles the GPU may publish
	// (CheckProfiles).
	AsAllowed
)

// Rules is what CheckNode needs from a config: which GPUs a `shape: mig`
// rule matches, and its layout. *config.Config satisfies it.
type Rules interface {
	// MigLayoutFor returns the `mig:` profiles of the first rule matching
	// the GPU and that rule's key path ("gpus[2]"), with ok set when that
	// rule is `shape: mig`. profiles is nil when the rule keeps whatever
	// layout the GPU has.
	MigLayoutFor(index int, uuid, model string) (profiles []string, key string, ok bool)
}

// CheckNode runs Check (AsLayout) or CheckProfiles (AsAllowed) for every
// GPU of inv that rules give a `shape: mig` rule, for `gpublocks config
// validate` and the daemon's config loader: a config it refuses is refused
// whole (DESIGN §4). Each error names the rule's key and the GPU, and wraps
// the check's sentinel.
func CheckNode(lib nvml.Interface, inv *gpu.Inventory, rules Rules, mode Mode) error {
	var errs []error
	for i := range inv.GPUs {
		g := &inv.GPUs[i]
		profiles, key, ok := rules.MigLayoutFor(g.Index, g.UUID, g.Model)
		if !ok {
			continue
		}
		fail := func(err error) { errs = append(errs, fmt.Errorf("%s (shape: mig) on %s: %w", key, g, err)) }
		var layout Layout
		if profiles != nil {
			var err error
			if layout, err = ParseLayout(profiles); err != nil {
				fail(err)
				continue
			}
		}
		dev, ret := lib.DeviceGetHandleByUUID(g.UUID)
		if ret != nvml.SUCCESS {
			fail(fmt.Errorf("getting the GPU from NVML: %w", ret))
			continue
		}
		check := Check
		if mode == AsAllowed {
			check = func(dev nvml.Device, l Layout) error { return CheckProfiles(dev, l) }
		}
		if err := check(dev, layout); err != nil {
			fail(err)
		}
	}
	return errors.Join(errs...)
}
