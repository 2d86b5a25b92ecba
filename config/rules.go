package config

import "fmt"

// RuleFor returns the shape of the first rule that matches a GPU, and
// whether any did. DRA mode needs the difference between "no rule" (the
// GPU offers every shape and the scheduler picks per claim) and an explicit
// whole; the device-plugin mode reads no match as whole (ShapeFor).
func (c *Config) RuleFor(index int, uuid, model string) (shape string, matched bool) {
	for _, r := range c.GPUs {
		if r.Match.matches(index, uuid, model) {
			return r.Shape, true
		}
	}
	return "", false
}

// MigLayoutFor returns the MIG layout of the first rule that matches a GPU
// when that rule is `shape: mig`: its profiles (nil when it keeps whatever
// layout the GPU has, empty for no instances) and its key path, such as
// "gpus[2]", for messages. ok is false when no rule, or a rule of another
// shape, matches. It satisfies mig.Rules, whose CheckNode does the checks
// that need the GPU (profiles it offers, placement, MIG mode).
func (c *Config) MigLayoutFor(index int, uuid, model string) (profiles []string, key string, ok bool) {
	for i, r := range c.GPUs {
		if !r.Match.matches(index, uuid, model) {
			continue
		}
		if r.Shape != ShapeMig {
			return nil, "", false
		}
		if r.MIG != nil {
			profiles = append(make([]string, 0, len(r.MIG)), r.MIG...)
		}
		return profiles, fmt.Sprintf("gpus[%d]", i), true
	}
	return nil, "", false
}
