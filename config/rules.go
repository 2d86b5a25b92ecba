package config

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
