package mig

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Errors a caller can tell apart with errors.Is.
var (
	// ErrInvalidProfile: a string that is not a GPU instance profile name.
	ErrInvalidProfile = errors.New("invalid MIG profile")
	// ErrUnknownProfile: a well-formed profile the GPU does not offer.
	ErrUnknownProfile = errors.New("unknown MIG profile")
	// ErrDoesNotFit: a layout the GPU cannot hold all at once.
	ErrDoesNotFit = errors.New("MIG layout does not fit")
	// ErrNotCapable: the GPU does not support MIG at all.
	ErrNotCapable = errors.New("GPU does not support MIG")
	// ErrDisabled: MIG mode is off; gpublocks never turns it on.
	ErrDisabled = errors.New("MIG mode is disabled")
	// ErrBusy: an instance that would have to go runs work (NVML lists a
	// process in it, or the driver answers ERROR_IN_USE).
	ErrBusy = errors.New("MIG instance in use")
	// ErrNotFound: no GPU instance with the ID asked for.
	ErrNotFound = errors.New("no such MIG instance")
)

// MaxInstances bounds a layout: a GPU has at most eight memory slices, and
// every GPU instance holds at least one (the driver numbers GPU instances
// 0-14 as a binary tree over them, of which eight are leaves).
const MaxInstances = 8

// ValidateProfile checks that name is a GPU instance profile as NVIDIA
// writes it ("1g.10gb", "3g.40gb", "1g.10gb+me") with go-nvlib's parser. It
// needs no GPU: whether the GPU offers the profile is Catalog.Profile's
// question. Compute instance profiles ("1c.3g.40gb") are refused, since a
// layout's instances each get one compute instance that spans them. Errors
// wrap ErrInvalidProfile.
func ValidateProfile(name string) error {
	if err := profileParser.AssertValidMigProfileFormat(name); err != nil {
		return fmt.Errorf("%w %q: write it as NVIDIA does, such as 1g.10gb, 3g.40gb or 1g.10gb+me: %w", ErrInvalidProfile, name, err)
	}
	base, _, _ := strings.Cut(strings.SplitN(name, "-", 2)[0], "+")
	if strings.Count(base, ".") != 1 {
		return fmt.Errorf("%w %q: a layout lists GPU instance profiles such as %s; each gets one compute instance that spans it, so compute instance profiles cannot be asked for",
			ErrInvalidProfile, name, giName(base))
	}
	return nil
}

// giName turns "1c.3g.40gb" into "3g.40gb" for a hint.
func giName(ci string) string {
	_, rest, ok := strings.Cut(ci, ".")
	if !ok {
		return ci
	}
	return rest
}

// Layout is the MIG instances wanted on one GPU: GPU instance profile
// names, one entry per instance. Order does not matter; ParseLayout sorts
// it, so equal layouts compare equal.
type Layout []string

// ParseLayout validates every profile (ValidateProfile) and returns the
// layout in canonical order. An empty layout asks for no instances at all.
func ParseLayout(profiles []string) (Layout, error) {
	if len(profiles) > MaxInstances {
		return nil, fmt.Errorf("%w: %d instances asked; a GPU holds at most %d", ErrDoesNotFit, len(profiles), MaxInstances)
	}
	var errs []error
	for i, p := range profiles {
		if err := ValidateProfile(p); err != nil {
			errs = append(errs, fmt.Errorf("entry %d: %w", i, err))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	// Never nil: an empty layout asks for no instances, which is not the
	// same as no layout (keep what the GPU has).
	l := make(Layout, len(profiles))
	copy(l, profiles)
	slices.Sort(l)
	return l, nil
}

// Equal reports whether both layouts ask for the same instances.
func (l Layout) Equal(o Layout) bool {
	a, b := slices.Clone(l), slices.Clone(o)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// String writes the layout as "[3g.40gb 1g.10gb 1g.10gb]".
func (l Layout) String() string { return "[" + strings.Join(l, " ") + "]" }
