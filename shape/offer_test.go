package shape

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
)

// a30 is a MIG-enabled A30-like GPU (4 memory slices) with the given
// instances.
func a30(instances ...gpu.MigDevice) gpu.GPU {
	g := gpu.GPU{Index: 0, UUID: "GPU-a", MigCapable: true, MigEnabled: true, MigDevices: instances}
	g.MigProfiles = []gpu.MigProfile{
		{Name: "4g.24gb", MemoryMiB: 24000, Placements: []gpu.Placement{{Start: 0, Size: 4}}},
		{Name: "2g.12gb", MemoryMiB: 12000, Placements: []gpu.Placement{{Start: 0, Size: 2}, {Start: 2, Size: 2}}},
		{Name: "1g.6gb", MemoryMiB: 6000, Placements: []gpu.Placement{{Start: 0, Size: 1}, {Start: 1, Size: 1}, {Start: 2, Size: 1}, {Start: 3, Size: 1}}},
	}
	return g
}

func instance(profile string, start, size int) gpu.MigDevice {
	return gpu.MigDevice{UUID: fmt.Sprintf("MIG-%s-%d", profile, start), Profile: profile, ParentUUID: "GPU-a",
		Placement: &gpu.Placement{Start: start, Size: size}}
}

// offered names what a GPU's offer holds: profile@start, with "*" for an
// existing instance.
func offered(o Offer) []string {
	var out []string
	for _, md := range o.MIG {
		s := fmt.Sprintf("%s@%d", md.Profile, md.Placement.Start)
		if md.UUID != "" {
			s += "*"
		}
		out = append(out, s)
	}
	return out
}

func TestOffersMIG(t *testing.T) {
	capErr := instance("1g.6gb", 3, 1)
	capErr.CapErr = errors.New("no mig-minors entry")
	tests := map[string]struct {
		gpu  gpu.GPU
		cfg  string
		want []string
	}{
		"no instances: every placement": {
			gpu:  a30(),
			want: []string{"4g.24gb@0", "2g.12gb@0", "2g.12gb@2", "1g.6gb@0", "1g.6gb@1", "1g.6gb@2", "1g.6gb@3"},
		},
		"allowed profiles only": {
			gpu:  a30(),
			cfg:  "gpus:\n  - match: {index: [0]}\n    shape: mig\n    mig: [2g.12gb]\n",
			want: []string{"2g.12gb@0", "2g.12gb@2"},
		},
		"shape: mig without mig: allows all": {
			gpu:  a30(),
			cfg:  "gpus:\n  - match: {index: [0]}\n    shape: mig\n",
			want: []string{"4g.24gb@0", "2g.12gb@0", "2g.12gb@2", "1g.6gb@0", "1g.6gb@1", "1g.6gb@2", "1g.6gb@3"},
		},
		"an instance is its placement's device; what it overlaps waits": {
			gpu:  a30(instance("2g.12gb", 2, 2)),
			want: []string{"2g.12gb@2*", "2g.12gb@0", "1g.6gb@0", "1g.6gb@1"},
		},
		"an instance of a profile not allowed stays": {
			gpu:  a30(instance("2g.12gb", 2, 2)),
			cfg:  "gpus:\n  - match: {index: [0]}\n    shape: mig\n    mig: [1g.6gb]\n",
			want: []string{"2g.12gb@2*", "1g.6gb@0", "1g.6gb@1"},
		},
		"an instance that cannot be injected is not offered, nor what it overlaps": {
			gpu:  a30(capErr),
			want: []string{"2g.12gb@0", "1g.6gb@0", "1g.6gb@1", "1g.6gb@2"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := config.Default()
			if tc.cfg != "" {
				var err error
				cfg, err = config.Parse([]byte("version: v1\n" + tc.cfg))
				require.NoError(t, err)
			}
			offers := Offers(&gpu.Inventory{GPUs: []gpu.GPU{tc.gpu}}, cfg, nil)
			require.Len(t, offers, 1)
			require.False(t, offers[0].Whole || offers[0].Blocks, "a MIG-enabled GPU runs no work itself")
			require.Equal(t, tc.want, offered(offers[0]))
			for _, md := range offers[0].MIG {
				require.Equal(t, "GPU-a", md.ParentUUID)
				if md.UUID == "" {
					require.Equal(t, -1, md.GI, "a placement to create has no GPU instance yet")
					require.NotZero(t, md.MemoryMiB)
				}
			}
		})
	}
}

// Without NVML's profiles (they could not be read) a GPU offers its
// existing MIG devices, as before DRA created instances.
func TestOffersMIGWithoutProfiles(t *testing.T) {
	g := a30(instance("2g.12gb", 2, 2))
	g.MigProfiles = nil
	offers := Offers(&gpu.Inventory{GPUs: []gpu.GPU{g}}, config.Default(), nil)
	require.Equal(t, []string{"2g.12gb@2*"}, offered(offers[0]))
}
