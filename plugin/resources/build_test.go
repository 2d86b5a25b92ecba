package resources

import (
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/shape"
)

func TestBuild(t *testing.T) {
	// GPU 0 has MIG enabled with two 1g.10gb devices, GPU 1 has MIG disabled.
	mixedNode := []gpu.GPU{migGPU(0, "1g.10gb", "1g.10gb"), migGPU(1)}
	tests := map[string]struct {
		gpus      []gpu.GPU
		config    string
		unhealthy []string
		keep      map[string]string
		// wantShapes are the GPUs' shapes in index order.
		wantShapes []string
		// wantDevices counts each resource's devices.
		wantDevices map[string]int
		// wantUnhealthy lists each resource's unhealthy devices; a resource
		// left out has none.
		wantUnhealthy map[string][]string
		wantCDI       []string
		wantWarning   string // a substring of one warning; "" = no warnings
		wantReason    string // a substring of GPU 0's reason
	}{
		"GPU fault marks every MIG device on it": {
			gpus: mixedNode, config: "migStrategy: mixed\n", unhealthy: []string{"GPU-a"},
			wantShapes:    []string{shape.MIG, shape.Whole},
			wantDevices:   map[string]int{"nvidia.com/gpu": 1, "nvidia.com/mig-1g.10gb": 2},
			wantUnhealthy: map[string][]string{"nvidia.com/mig-1g.10gb": {"GPU-a-MIG-0", "GPU-a-MIG-1"}},
			wantCDI:       []string{"GPU-b"},
		},
		"MIG fault marks only its device": {
			gpus: mixedNode, config: "migStrategy: mixed\n", unhealthy: []string{"GPU-a-MIG-1"},
			wantShapes:    []string{shape.MIG, shape.Whole},
			wantDevices:   map[string]int{"nvidia.com/gpu": 1, "nvidia.com/mig-1g.10gb": 2},
			wantUnhealthy: map[string][]string{"nvidia.com/mig-1g.10gb": {"GPU-a-MIG-1"}},
			wantCDI:       []string{"GPU-b"},
		},
		"MIG fault under none marks the GPU offered whole": {
			gpus: mixedNode, config: "migStrategy: none\n", unhealthy: []string{"GPU-a-MIG-1"},
			wantShapes:    []string{shape.Whole, shape.Whole},
			wantDevices:   map[string]int{"nvidia.com/gpu": 2},
			wantUnhealthy: map[string][]string{"nvidia.com/gpu": {"GPU-a"}},
			wantCDI:       []string{"GPU-a", "GPU-b"},
		},
		"fault of another GPU's MIG device under none": {
			gpus: []gpu.GPU{migGPU(0, "1g.10gb"), migGPU(1, "1g.10gb")}, config: "migStrategy: none\n", unhealthy: []string{"GPU-b-MIG-0"},
			wantShapes:    []string{shape.Whole, shape.Whole},
			wantDevices:   map[string]int{"nvidia.com/gpu": 2},
			wantUnhealthy: map[string][]string{"nvidia.com/gpu": {"GPU-b"}},
			wantCDI:       []string{"GPU-a", "GPU-b"},
		},
		"blocks fault marks the GPU's blocks": {
			gpus: []gpu.GPU{migGPU(0), migGPU(1)}, config: "gpus: [{match: {index: [0, 1]}, shape: blocks}]\n", unhealthy: []string{"GPU-b"},
			wantShapes:  []string{shape.Blocks, shape.Blocks},
			wantDevices: map[string]int{"nvidia.com/gpu-blocks": 200},
			wantUnhealthy: map[string][]string{"nvidia.com/gpu-blocks": func() []string {
				var ids []string
				for n := range 100 {
					ids = append(ids, "GPU-b::"+strconv.Itoa(n))
				}
				return ids
			}()},
			wantCDI: []string{"GPU-a", "GPU-b"},
		},
		"keep pins the old shape": {
			gpus: []gpu.GPU{migGPU(0), migGPU(1)}, config: "gpus: [{match: {index: [0, 1]}, shape: blocks}]\n",
			keep:        map[string]string{"GPU-a": shape.Whole},
			wantShapes:  []string{shape.Whole, shape.Blocks},
			wantDevices: map[string]int{"nvidia.com/gpu": 1, "nvidia.com/gpu-blocks": 100},
			wantCDI:     []string{"GPU-a", "GPU-b"},
			wantReason:  "config asks blocks; kept whole while its devices are allocated",
		},
		"keep does not apply to MIG-enabled GPUs": {
			gpus: mixedNode, config: "migStrategy: mixed\n", keep: map[string]string{"GPU-a": shape.Blocks},
			wantShapes:  []string{shape.MIG, shape.Whole},
			wantDevices: map[string]int{"nvidia.com/gpu": 1, "nvidia.com/mig-1g.10gb": 2},
			wantCDI:     []string{"GPU-b"},
		},
		"single with a MIG-disabled GPU offers no MIG": {
			gpus: mixedNode, config: "migStrategy: single\n",
			wantShapes:  []string{shape.None, shape.Whole},
			wantDevices: map[string]int{"nvidia.com/gpu": 1},
			wantCDI:     []string{"GPU-b"},
			wantWarning: "strategy single needs MIG enabled on every GPU",
		},
		"single offers MIG devices as gpu": {
			gpus: []gpu.GPU{migGPU(0, "1g.10gb"), migGPU(1, "1g.10gb")}, config: "migStrategy: single\n", unhealthy: []string{"GPU-b-MIG-0"},
			wantShapes:    []string{shape.MIG, shape.MIG},
			wantDevices:   map[string]int{"nvidia.com/gpu": 2},
			wantUnhealthy: map[string][]string{"nvidia.com/gpu": {"GPU-b-MIG-0"}},
		},
		"blocks asked of a MIG-enabled GPU": {
			gpus: mixedNode, config: "gpus: [{match: {index: [0]}, shape: blocks}]\n",
			wantShapes:  []string{shape.MIG, shape.Whole},
			wantDevices: map[string]int{"nvidia.com/gpu": 1, "nvidia.com/mig-1g.10gb": 2},
			wantCDI:     []string{"GPU-b"},
			wantWarning: "MIG is enabled on this GPU: offered as MIG devices, not blocks",
			wantReason:  "disable MIG to use blocks",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(tc.config))
			require.NoError(t, err)
			unhealthy := map[string]bool{}
			for _, id := range tc.unhealthy {
				unhealthy[id] = true
			}
			p := shape.Build(shape.Input{
				Inventory: &gpu.Inventory{GPUs: tc.gpus},
				Config:    cfg,
				Keep:      tc.keep,
			})
			resources, warnings := Build(Input{
				Plan:      p,
				Config:    cfg,
				Unhealthy: unhealthy,
				Responders: func(string) Responder {
					return func([]string) *pluginapi.ContainerAllocateResponse { return &pluginapi.ContainerAllocateResponse{} }
				},
			})
			p.Warnings = append(p.Warnings, warnings...)

			var shapes []string
			for _, a := range p.GPUs {
				shapes = append(shapes, a.Shape)
			}
			require.Equal(t, tc.wantShapes, shapes)
			devices, bad := map[string]int{}, map[string][]string{}
			for _, r := range resources {
				devices[r.Name()] = len(r.Devices())
				for _, d := range r.Devices() {
					if d.Health != pluginapi.Healthy {
						bad[r.Name()] = append(bad[r.Name()], d.ID)
					}
				}
			}
			require.Equal(t, tc.wantDevices, devices)
			if tc.wantUnhealthy == nil {
				tc.wantUnhealthy = map[string][]string{}
			}
			require.Equal(t, tc.wantUnhealthy, bad)
			require.Equal(t, tc.wantCDI, p.CDIGPUs)
			if tc.wantWarning == "" {
				require.Empty(t, p.Warnings)
			} else {
				require.Len(t, p.Warnings, 1)
				require.Contains(t, p.Warnings[0], tc.wantWarning)
			}
			if tc.wantReason != "" {
				require.Contains(t, p.GPUs[0].Reason, tc.wantReason)
			}
		})
	}
}

func migGPU(index int, profiles ...string) gpu.GPU {
	g := gpu.GPU{Index: index, UUID: "GPU-" + string(rune('a'+index)), MigEnabled: len(profiles) > 0, MigCapable: true}
	for i, p := range profiles {
		g.MigDevices = append(g.MigDevices, gpu.MigDevice{
			Index: i, UUID: g.UUID + "-MIG-" + string(rune('0'+i)), Profile: p, ParentIndex: index, ParentUUID: g.UUID,
		})
	}
	return g
}
