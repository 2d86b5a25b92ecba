package shape

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/gpu"
)

func migGPU(index int, profiles ...string) gpu.GPU {
	g := gpu.GPU{Index: index, UUID: "GPU-" + string(rune('a'+index)), MigEnabled: len(profiles) > 0, MigCapable: true}
	for i, p := range profiles {
		g.MigDevices = append(g.MigDevices, gpu.MigDevice{
			Index: i, UUID: g.UUID + "-MIG-" + string(rune('0'+i)), Profile: p, ParentIndex: index, ParentUUID: g.UUID,
		})
	}
	return g
}

func summary(r migResult) map[string][]string {
	out := map[string][]string{}
	for _, g := range r.Groups {
		for _, d := range g.Devices {
			out[g.Resource] = append(out[g.Resource], d.UUID)
		}
	}
	return out
}

func TestApplyMigStrategy(t *testing.T) {
	capMissing := migGPU(2, "1g.10gb", "1g.10gb")
	capMissing.MigDevices[1].CapErr = errors.New("gpu2/gi9/access not in mig-minors")

	tests := map[string]struct {
		gpus      []gpu.GPU
		strategy  string
		want      map[string][]string
		wantWhole []int
		skipped   []string
		err       string
	}{
		"no mig anywhere": {
			gpus: []gpu.GPU{migGPU(0), migGPU(1)}, strategy: "mixed", want: map[string][]string{},
		},
		"mixed groups by profile": {
			gpus:     []gpu.GPU{migGPU(0, "3g.40gb", "1g.10gb", "1g.10gb+me"), migGPU(1, "1g.10gb"), migGPU(3)},
			strategy: "mixed",
			want: map[string][]string{
				"nvidia.com/mig-3g.40gb":    {"GPU-a-MIG-0"},
				"nvidia.com/mig-1g.10gb":    {"GPU-a-MIG-1", "GPU-b-MIG-0"},
				"nvidia.com/mig-1g.10gb.me": {"GPU-a-MIG-2"},
			},
		},
		"none offers mig gpus whole": {
			gpus: []gpu.GPU{migGPU(0, "1g.10gb"), migGPU(1)}, strategy: "none",
			want: map[string][]string{}, wantWhole: []int{0},
		},
		"single uniform": {
			gpus: []gpu.GPU{migGPU(0, "1g.10gb", "1g.10gb"), migGPU(1, "1g.10gb")}, strategy: "single",
			want: map[string][]string{"nvidia.com/gpu": {"GPU-a-MIG-0", "GPU-a-MIG-1", "GPU-b-MIG-0"}},
		},
		"single non-uniform names gpus and profiles": {
			gpus: []gpu.GPU{migGPU(0, "1g.10gb"), migGPU(1, "2g.20gb")}, strategy: "single",
			err: "1g.10gb on GPU 0; 2g.20gb on GPU 1",
		},
		"single with a mig-disabled gpu": {
			gpus: []gpu.GPU{migGPU(0, "1g.10gb"), migGPU(1)}, strategy: "single",
			err: "GPU 1 have it disabled",
		},
		"missing caps are skipped, never offered": {
			gpus: []gpu.GPU{capMissing}, strategy: "mixed",
			want:    map[string][]string{"nvidia.com/mig-1g.10gb": {"GPU-c-MIG-0"}},
			skipped: []string{"MIG device 2:1 (GPU-c-MIG-1) not offered: gpu2/gi9/access not in mig-minors"},
		},
		"mig enabled without instances is reported": {
			gpus: []gpu.GPU{{Index: 4, UUID: "GPU-e", MigEnabled: true}}, strategy: "mixed",
			want:    map[string][]string{},
			skipped: []string{"GPU 4 (GPU-e) has MIG enabled but no MIG devices: create instances with nvidia-smi mig or a MIG manager"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := applyMigStrategy(tc.gpus, tc.strategy, "nvidia.com")
			if tc.err != "" {
				require.ErrorIs(t, err, ErrMigStrategy)
				require.ErrorContains(t, err, tc.err)
				require.Empty(t, r.Groups)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, summary(r))
			require.Equal(t, tc.wantWhole, r.Whole)
			require.Equal(t, tc.skipped, r.Skipped)
		})
	}
}
