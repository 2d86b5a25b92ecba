package shape

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
)

// TestBuildMIG checks the plan's MIG groups: which devices are offered under
// which resource name, as plain data (package plugin/resources turns them
// into the device plugin's resources).
func TestBuildMIG(t *testing.T) {
	tests := map[string]struct {
		gpus   []gpu.GPU
		config string
		// want maps each group's resource name to its devices, in the
		// plan's order.
		want    []string
		profile map[string]string // each group's profile
	}{
		"mixed groups by profile": {
			gpus:    []gpu.GPU{migGPU(0, "1g.10gb", "2g.20gb"), migGPU(1, "1g.10gb"), migGPU(2)},
			config:  "migStrategy: mixed\n",
			want:    []string{"nvidia.com/mig-1g.10gb: GPU-a-MIG-0 GPU-b-MIG-0", "nvidia.com/mig-2g.20gb: GPU-a-MIG-1"},
			profile: map[string]string{"nvidia.com/mig-1g.10gb": "1g.10gb", "nvidia.com/mig-2g.20gb": "2g.20gb"},
		},
		"single offers them as gpu": {
			gpus:    []gpu.GPU{migGPU(0, "1g.10gb"), migGPU(1, "1g.10gb")},
			config:  "migStrategy: single\n",
			want:    []string{"nvidia.com/gpu: GPU-a-MIG-0 GPU-b-MIG-0"},
			profile: map[string]string{"nvidia.com/gpu": "1g.10gb"},
		},
		"resource domain names the groups": {
			gpus:    []gpu.GPU{migGPU(0, "1g.10gb")},
			config:  "migStrategy: mixed\nresourceDomain: example.com\n",
			want:    []string{"example.com/mig-1g.10gb: GPU-a-MIG-0"},
			profile: map[string]string{"example.com/mig-1g.10gb": "1g.10gb"},
		},
		"none offers no MIG devices": {
			gpus:   []gpu.GPU{migGPU(0, "1g.10gb"), migGPU(1)},
			config: "migStrategy: none\n",
		},
		"single refused offers no MIG devices": {
			gpus:   []gpu.GPU{migGPU(0, "1g.10gb"), migGPU(1)},
			config: "migStrategy: single\n",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(tc.config))
			require.NoError(t, err)
			p := Build(Input{Inventory: &gpu.Inventory{GPUs: tc.gpus}, Config: cfg})
			var got []string
			profile := map[string]string{}
			for _, g := range p.MIG {
				ids := make([]string, len(g.Devices))
				for i, d := range g.Devices {
					ids[i] = d.UUID
				}
				got = append(got, g.Resource+": "+strings.Join(ids, " "))
				profile[g.Resource] = g.Profile
			}
			require.Equal(t, tc.want, got)
			if tc.profile == nil {
				tc.profile = map[string]string{}
			}
			require.Equal(t, tc.profile, profile)
		})
	}
}

// TestPlanningKnowsNoTransport keeps package shape free of the kubelet's
// device-plugin API and of gpublocks' device-plugin framework (STYLE.md
// "Planning knows no transport"): the device plugin and DRA both consume
// the plan, so it is in neither's terms.
func TestPlanningKnowsNoTransport(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go tool to list the package's dependencies: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", ".").CombinedOutput()
	require.NoError(t, err, "go list -deps: %s", out)
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"k8s.io/kubelet/pkg/apis/deviceplugin", "github.com/gpublocks/gpublocks/plugin"} {
			if dep == banned || strings.HasPrefix(dep, banned+"/") {
				t.Errorf("package shape depends on %s; build device-plugin resources in package plugin/resources instead", dep)
			}
		}
	}
}
