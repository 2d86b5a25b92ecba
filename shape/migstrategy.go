package shape

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/mig"
)

// ErrMigStrategy is wrapped when a MIG layout cannot be served under the
// chosen strategy (e.g. "single" over different profiles).
var ErrMigStrategy = errors.New("mig layout does not fit the strategy")

// MigGroup is the MIG devices offered under one resource name, in
// discovery order. Devices whose capability nodes could not be resolved are
// never in one.
type MigGroup struct {
	Resource string // fully qualified, e.g. nvidia.com/mig-1g.10gb
	Profile  string // "" under strategy single when several would fit
	Devices  []gpu.MigDevice
}

// migResult is a strategy applied to the node's GPUs.
type migResult struct {
	Groups []MigGroup
	// Whole lists the indexes of MIG-enabled GPUs that are offered whole
	// (strategy none).
	Whole []int
	// Skipped explains each MIG device that is not offered and why.
	Skipped []string
}

// applyMigStrategy groups the MIG devices of the MIG-enabled GPUs into resources.
//
//   - none: MIG devices are not offered; MIG-enabled GPUs are offered whole.
//   - single: every MIG device is offered as <domain>/gpu; all MIG-enabled
//     GPUs must hold devices of one profile and no GPU may have MIG disabled,
//     or nothing MIG is offered and the error names the GPUs and profiles.
//   - mixed: one resource per profile, <domain>/mig-<profile>.
//
// Devices whose capability nodes could not be resolved are never offered.
func applyMigStrategy(gpus []gpu.GPU, strategy, domain string) (migResult, error) {
	var res migResult
	var enabled, disabled []*gpu.GPU
	for i := range gpus {
		if gpus[i].MigEnabled {
			enabled = append(enabled, &gpus[i])
		} else {
			disabled = append(disabled, &gpus[i])
		}
	}
	if len(enabled) == 0 {
		return res, nil
	}
	if strategy == config.MigNone {
		for _, g := range enabled {
			res.Whole = append(res.Whole, g.Index)
		}
		return res, nil
	}
	byResource := map[string]*MigGroup{}
	var problems []string
	for _, g := range enabled {
		if len(g.MigDevices) == 0 {
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s has MIG enabled but no MIG devices: create instances with nvidia-smi mig or a MIG manager", g))
		}
		for _, d := range g.MigDevices {
			if d.CapErr != nil {
				res.Skipped = append(res.Skipped, fmt.Sprintf("MIG device %d:%d (%s) not offered: %v", g.Index, d.Index, d.UUID, d.CapErr))
				continue
			}
			suffix, err := mig.ResourceSuffix(d.Profile)
			if err != nil {
				res.Skipped = append(res.Skipped, fmt.Sprintf("MIG device %d:%d (%s) not offered: %v", g.Index, d.Index, d.UUID, err))
				continue
			}
			name, profile := domain+"/"+suffix, d.Profile
			if strategy == config.MigSingle {
				name = domain + "/gpu"
			}
			grp := byResource[name]
			if grp == nil {
				grp = &MigGroup{Resource: name, Profile: profile}
				byResource[name] = grp
			}
			if grp.Profile != profile {
				grp.Profile = ""
			}
			grp.Devices = append(grp.Devices, d)
		}
	}
	if strategy == config.MigSingle {
		profiles := map[string][]string{}
		for _, g := range enabled {
			for _, d := range g.MigDevices {
				profiles[d.Profile] = appendOnce(profiles[d.Profile], fmt.Sprintf("GPU %d", g.Index))
			}
		}
		if len(profiles) > 1 {
			var parts []string
			for p, where := range profiles {
				parts = append(parts, fmt.Sprintf("%s on %s", p, strings.Join(where, ", ")))
			}
			sort.Strings(parts)
			problems = append(problems, fmt.Sprintf("strategy single needs one MIG profile on every GPU, found %s; use migStrategy mixed or re-partition", strings.Join(parts, "; ")))
		}
		if len(disabled) > 0 {
			var idx []string
			for _, g := range disabled {
				idx = append(idx, fmt.Sprint(g.Index))
			}
			problems = append(problems, fmt.Sprintf("strategy single needs MIG enabled on every GPU, but GPU %s have it disabled; use migStrategy mixed", strings.Join(idx, ", ")))
		}
		if len(problems) > 0 {
			return migResult{Skipped: res.Skipped}, fmt.Errorf("%w: %s", ErrMigStrategy, strings.Join(problems, "; "))
		}
	}
	for _, grp := range byResource {
		res.Groups = append(res.Groups, *grp)
	}
	sort.Slice(res.Groups, func(i, j int) bool { return res.Groups[i].Resource < res.Groups[j].Resource })
	return res, nil
}

func appendOnce(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}
