// Package config parses and validates gpublocks' configuration (DESIGN §4):
// one YAML document per named config, strictly parsed, defaults for
// everything, and messages that say what to write instead.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// ErrInvalid is wrapped by every parse and validation failure.
var ErrInvalid = errors.New("invalid config")

// Version is the only config API version this build understands.
const Version = "v1"

// Shapes a GPU can be offered in.
const (
	ShapeWhole  = "whole"
	ShapeBlocks = "blocks"
)

// MIG strategies (NVIDIA-compatible semantics).
const (
	MigNone   = "none"
	MigSingle = "single"
	MigMixed  = "mixed"
)

// Device list strategies: how Allocate tells the runtime what to inject.
const (
	ListCDICRI         = "cdi-cri"
	ListCDIAnnotations = "cdi-annotations"
	ListEnvvar         = "envvar"
)

// Block placement policies.
const (
	PolicyBinpack = "binpack"
	PolicySpread  = "spread"
)

// Config is one named configuration, version v1.
type Config struct {
	Version            string   `json:"version"`
	ResourceDomain     string   `json:"resourceDomain"`
	MigStrategy        string   `json:"migStrategy"`
	DeviceListStrategy []string `json:"deviceListStrategy" maxItems:"3"`
	Blocks             Blocks   `json:"blocks"`
	Health             Health   `json:"health"`
	// GPUs are shape rules; the first matching rule wins, no match = whole.
	GPUs []Rule `json:"gpus" maxItems:"256"`
}

// Blocks configures the blocks shape.
type Blocks struct {
	ResourceName string `json:"resourceName"`
	Policy       string `json:"policy"`
}

// Health configures XID-driven device health.
type Health struct {
	// IgnoredXids are XIDs that never mark a device unhealthy (application
	// errors rather than GPU faults).
	IgnoredXids []uint64 `json:"ignoredXids" maxItems:"256"`
	// QuietPeriod is how long a faulted GPU must stay quiet (and pass a probe)
	// before its devices are healthy again.
	QuietPeriod Duration `json:"quietPeriod"`
	// Disabled turns XID monitoring off.
	Disabled bool `json:"disabled"`
	// DRATaintEffect is the effect of the device taint an unhealthy GPU's
	// devices get in DRA mode (DESIGN §9): NoSchedule (default) keeps
	// running pods, NoExecute evicts them.
	DRATaintEffect string `json:"draTaintEffect"`
}

// Device taint effects for health.draTaintEffect.
const (
	TaintNoSchedule = "NoSchedule"
	TaintNoExecute  = "NoExecute"
)

// Rule assigns a shape to the GPUs it matches.
type Rule struct {
	Match Match  `json:"match"`
	Shape string `json:"shape"`
}

// Match selects GPUs. Exactly one field is set.
type Match struct {
	Index []int    `json:"index,omitempty" maxItems:"1024"`
	UUID  []string `json:"uuid,omitempty" maxItems:"1024"`
	// Model is a shell glob (path.Match) over the NVML product name, e.g.
	// "*H100*".
	Model string `json:"model,omitempty"`
}

// Duration is a time.Duration written as "30s" in YAML.
type Duration struct{ time.Duration }

// UnmarshalJSON accepts a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"30s\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as \"30s\": %w", err)
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// DefaultIgnoredXids are application-caused XIDs that say nothing about the
// GPU's health (NVIDIA's own plugin skips the same set).
var DefaultIgnoredXids = []uint64{13, 31, 43, 45, 68, 109}

// Default returns the built-in configuration: every GPU whole, MIG mixed,
// CDI through the CRI.
func Default() *Config {
	c := &Config{}
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	if c.Version == "" {
		c.Version = Version
	}
	if c.ResourceDomain == "" {
		c.ResourceDomain = "nvidia.com"
	}
	if c.MigStrategy == "" {
		c.MigStrategy = MigMixed
	}
	if len(c.DeviceListStrategy) == 0 {
		c.DeviceListStrategy = []string{ListCDICRI}
	}
	if c.Blocks.ResourceName == "" {
		c.Blocks.ResourceName = "gpu-blocks"
	}
	if c.Blocks.Policy == "" {
		c.Blocks.Policy = PolicyBinpack
	}
	if c.Health.IgnoredXids == nil {
		c.Health.IgnoredXids = slices.Clone(DefaultIgnoredXids)
	}
	if c.Health.QuietPeriod.Duration == 0 {
		c.Health.QuietPeriod.Duration = 30 * time.Second
	}
	if c.Health.DRATaintEffect == "" {
		c.Health.DRATaintEffect = TaintNoSchedule
	}
}

// Parse strictly parses one config document, applies defaults and validates
// it. Unknown keys are reported with their full path (e.g. "blocks.polcy").
func Parse(data []byte) (*Config, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%w: not valid YAML: %w", ErrInvalid, err)
	}
	c := &Config{}
	if t := bytes.TrimSpace(js); len(t) > 0 && !bytes.Equal(t, []byte("null")) {
		var generic any
		if err := json.Unmarshal(js, &generic); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		if _, ok := generic.(map[string]any); !ok {
			return nil, fmt.Errorf("%w: the document must be a mapping of keys such as version, gpus, blocks", ErrInvalid)
		}
		var found problems
		found.walk(generic, configSchema, "")
		if err := found.err(); err != nil {
			return nil, err
		}
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.DisallowUnknownFields()
		if err := dec.Decode(c); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, describeJSONError(err))
		}
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// describeJSONError turns encoding/json's type errors into "key: want X".
func describeJSONError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("%s: want %s, got %s", te.Field, te.Type, te.Value)
	}
	return err
}

// Validate checks values. Every message names the key and what is accepted.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.Version != Version {
		bad("version: %q is not supported; write %q", c.Version, Version)
	}
	if !validDomain(c.ResourceDomain) {
		bad("resourceDomain: %q is not a DNS subdomain such as \"nvidia.com\"", c.ResourceDomain)
	}
	if !slices.Contains([]string{MigNone, MigSingle, MigMixed}, c.MigStrategy) {
		bad("migStrategy: %q is not one of none, single, mixed", c.MigStrategy)
	}
	seen := map[string]bool{}
	for i, s := range c.DeviceListStrategy {
		if !slices.Contains([]string{ListCDICRI, ListCDIAnnotations, ListEnvvar}, s) {
			bad("deviceListStrategy[%d]: %q is not one of cdi-cri, cdi-annotations, envvar", i, s)
		}
		if seen[s] {
			bad("deviceListStrategy[%d]: %q is listed twice", i, s)
		}
		seen[s] = true
	}
	switch n := c.Blocks.ResourceName; {
	case !validName(n):
		bad("blocks.resourceName: %q must be a lowercase name such as \"gpu-blocks\" (letters, digits, '-', '.', starting and ending with a letter or digit, no domain)", n)
	case n == "gpu" || strings.HasPrefix(n, "mig-"):
		bad("blocks.resourceName: %q is taken by whole GPUs (gpu) or MIG devices (mig-<profile>); choose another, such as \"gpu-blocks\"", n)
	}
	if c.Blocks.Policy != PolicyBinpack && c.Blocks.Policy != PolicySpread {
		bad("blocks.policy: %q is not one of binpack, spread", c.Blocks.Policy)
	}
	if c.Health.QuietPeriod.Duration < time.Second {
		bad("health.quietPeriod: %s is too short; write at least \"1s\"", c.Health.QuietPeriod.Duration)
	}
	if e := c.Health.DRATaintEffect; e != TaintNoSchedule && e != TaintNoExecute {
		bad("health.draTaintEffect: %q is not one of NoSchedule, NoExecute", e)
	}
	for i, r := range c.GPUs {
		p := fmt.Sprintf("gpus[%d]", i)
		if r.Shape != ShapeWhole && r.Shape != ShapeBlocks {
			bad("%s.shape: %q is not one of whole, blocks (MIG follows the GPU's MIG mode)", p, r.Shape)
		}
		n := 0
		if r.Match.Index != nil {
			n++
		}
		if r.Match.UUID != nil {
			n++
		}
		if r.Match.Model != "" {
			n++
			if _, err := path.Match(r.Match.Model, ""); err != nil {
				bad("%s.match.model: %q is not a valid glob: %v", p, r.Match.Model, err)
			}
		}
		if n != 1 {
			bad("%s.match: set exactly one of index, uuid, model (got %d)", p, n)
		}
		if (r.Match.Index != nil && len(r.Match.Index) == 0) || (r.Match.UUID != nil && len(r.Match.UUID) == 0) {
			bad("%s.match: an empty list matches no GPU; list at least one index or uuid, or remove the rule", p)
		}
		for j, idx := range r.Match.Index {
			if idx < 0 {
				bad("%s.match.index[%d]: %d is negative", p, j, idx)
			}
		}
	}
	if len(errs) > maxReported {
		errs = append(errs[:maxReported], fmt.Errorf("and %d more problems", len(errs)-maxReported))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}

// ResourceName qualifies a bare resource name with the config's domain.
func (c *Config) ResourceName(name string) string { return c.ResourceDomain + "/" + name }

// ShapeFor returns the shape the rules give a GPU (first match wins, no
// match means whole).
func (c *Config) ShapeFor(index int, uuid, model string) string {
	for _, r := range c.GPUs {
		if r.Match.matches(index, uuid, model) {
			return r.Shape
		}
	}
	return ShapeWhole
}

func (m Match) matches(index int, uuid, model string) bool {
	switch {
	case m.Index != nil:
		return slices.Contains(m.Index, index)
	case m.UUID != nil:
		return slices.Contains(m.UUID, uuid)
	case m.Model != "":
		ok, _ := path.Match(m.Model, model)
		return ok
	}
	return false
}

func validDomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if !validLabel(label) {
			return false
		}
	}
	return true
}

func validLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' {
			return false
		}
	}
	return true
}

func validName(s string) bool {
	if s == "" || len(s) > 63 || strings.Contains(s, "/") {
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' && r != '.' {
			return false
		}
	}
	return isAlnum(s[0]) && isAlnum(s[len(s)-1])
}

func isAlnum(b byte) bool { return (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') }
