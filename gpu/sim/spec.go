package sim

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"sigs.k8s.io/yaml"
)

// ErrSpec is wrapped by every error about a simulation spec: an unknown
// preset, an unreadable or malformed file, an unknown model or a MIG layout
// the model cannot hold.
var ErrSpec = errors.New("invalid simulation spec")

// File is the YAML format of a simulation file (DESIGN §3):
//
//	gpus:
//	  - model: A100-SXM4-80GB
//	    count: 2
//	    mig: [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb]
//	  - model: A100-SXM4-80GB
//	    count: 6
type File struct {
	// GPUs are groups of identical GPUs, indexed in file order.
	GPUs []Group `json:"gpus"`
}

// Group is Count GPUs of one model, all with the same MIG layout.
type Group struct {
	// Model is one of Models().
	Model string `json:"model"`
	// Count defaults to 1.
	Count *int `json:"count,omitempty"`
	// MIG, when not empty, enables MIG with these instances (NVIDIA profile
	// names, e.g. 1g.10gb); `mig: []` enables MIG with no instances yet (for
	// gpublocks to create them); absent leaves MIG disabled.
	MIG []string `json:"mig,omitempty"`
}

// maxGPUs bounds a simulation: NVML numbers at most this many devices in a
// mig-minors table, and no node has more.
const maxGPUs = 32

// models are the GPU models a simulation accepts, by the name a spec uses.
// Names follow what NVML reports on real hardware (the mock's 40 GB A100
// calls itself "Mock NVIDIA …"; a real one does not).
var models = map[string]gpus.Config{
	"A100-SXM4-40GB":  renamed(gpus.A100_SXM4_40GB, "NVIDIA A100-SXM4-40GB"),
	"A100-SXM4-80GB":  gpus.A100_SXM4_80GB,
	"A100-PCIE-40GB":  gpus.A100_PCIE_40GB,
	"A100-PCIE-80GB":  gpus.A100_PCIE_80GB,
	"A30-PCIE-24GB":   gpus.A30_PCIE_24GB,
	"H100-SXM5-80GB":  gpus.H100_SXM5_80GB,
	"H200-SXM5-141GB": fitMigMemory(gpus.H200_SXM5_141GB),
	"B200-SXM5-180GB": fitMigMemory(gpus.B200_SXM5_180GB),
}

// fitMigMemory caps each GPU instance profile's memory at its share of the
// GPU's memory slices. The mock gives H200 and B200 profiles slightly more
// (1g.18gb a little over an eighth), so go-nvlib, which names a profile by
// its rounded-up share, would call 1g.18gb "1g.35gb" and 3g.71gb "3g.88gb";
// on hardware a profile never exceeds its share.
func fitMigMemory(c gpus.Config) gpus.Config {
	profiles := maps.Clone(c.MIGProfiles.GpuInstanceProfiles)
	for id, p := range profiles {
		if ps := placements8[id]; len(ps) > 0 {
			p.MemorySizeMB = min(p.MemorySizeMB, c.MemoryMB/8*uint64(ps[0].Size))
			profiles[id] = p
		}
	}
	c.MIGProfiles.GpuInstanceProfiles = profiles
	return c
}

func renamed(c gpus.Config, name string) gpus.Config {
	c.Name = name
	return c
}

// Models lists the model names a simulation file accepts, sorted.
func Models() []string { return slices.Sorted(maps.Keys(models)) }

// presets are the built-in simulations, by name.
var presets = map[string]File{
	"dgxa100": {GPUs: []Group{{Model: "A100-SXM4-40GB", Count: ptr(8)}}},
	"dgxh100": {GPUs: []Group{{Model: "H100-SXM5-80GB", Count: ptr(8)}}},
	// A mixed layout on GPU 0, seven equal slices on GPU 1, whole GPUs after.
	"dgxa100-mig": {GPUs: []Group{
		{Model: "A100-SXM4-80GB", MIG: []string{"3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"}},
		{Model: "A100-SXM4-80GB", MIG: slices.Repeat([]string{"1g.10gb"}, 7)},
		{Model: "A100-SXM4-80GB", Count: ptr(6)},
	}},
}

func ptr(n int) *int { return &n }

// Presets lists the built-in simulation names, sorted.
func Presets() []string { return slices.Sorted(maps.Keys(presets)) }

// gpuSpec is one simulated GPU after expanding counts.
type gpuSpec struct {
	model string
	cfg   gpus.Config
	mig   []string
	migOn bool // MIG enabled, even with no instances
	// seed and the GPU's index derive its UUIDs (see expand).
	seed string
}

// spec is a resolved simulation.
type spec struct {
	name string // for logs: "dgxa100" or "file /path"
	gpus []gpuSpec
}

// loadSpec resolves a preset name or reads a YAML file.
func loadSpec(s string) (*spec, error) {
	if f, ok := presets[s]; ok {
		return expand(f, s, func(Group) string { return "preset/" + s })
	}
	data, err := os.ReadFile(s)
	if err != nil {
		return nil, fmt.Errorf("%w: %q is neither a preset (%s) nor a readable file: %w",
			ErrSpec, s, strings.Join(Presets(), ", "), err)
	}
	return parseSpec(data, s)
}

// parseSpec parses a simulation file strictly. source names it in errors.
func parseSpec(data []byte, source string) (*spec, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %s: %w (accepted keys: gpus, and per entry model, count, mig)", ErrSpec, source, err)
	}
	return expand(f, "file "+source, func(g Group) string { return "file/" + g.Model })
}

// expand validates f and lists its GPUs in index order. seed gives the
// UUID seed of each GPU of a group; a GPU's UUID derives from its seed and
// its index on the node. A preset's seed is its name (the UUIDs it has
// always had). A file's is the GPU's model and nothing else from the file,
// so that the IDs the kubelet checkpointed survive edits that leave a GPU
// in place: comments, formatting, another MIG layout, GPUs added at the
// end. Changing a GPU's model or moving it to another index makes it a new
// GPU, as it would be on real hardware.
func expand(f File, name string, seed func(Group) string) (*spec, error) {
	sp := &spec{name: name}
	if len(f.GPUs) == 0 {
		return nil, fmt.Errorf("%w: %s: no gpus listed", ErrSpec, name)
	}
	for i, g := range f.GPUs {
		cfg, ok := models[g.Model]
		if !ok {
			return nil, fmt.Errorf("%w: %s: gpus[%d]: unknown model %q (accepted: %s)",
				ErrSpec, name, i, g.Model, strings.Join(Models(), ", "))
		}
		n := 1
		if g.Count != nil {
			n = *g.Count
		}
		if n < 1 {
			return nil, fmt.Errorf("%w: %s: gpus[%d]: count must be at least 1, got %d", ErrSpec, name, i, n)
		}
		if len(sp.gpus)+n > maxGPUs {
			return nil, fmt.Errorf("%w: %s: more than %d GPUs", ErrSpec, name, maxGPUs)
		}
		for range n {
			sp.gpus = append(sp.gpus, gpuSpec{model: g.Model, cfg: cfg, mig: slices.Clone(g.MIG), migOn: g.MIG != nil, seed: seed(g)})
		}
	}
	return sp, nil
}
