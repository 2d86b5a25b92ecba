package e2e

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/kubernetes/pkg/apis/resource"
	_ "k8s.io/kubernetes/pkg/apis/resource/install"
	resourcev1 "k8s.io/kubernetes/pkg/apis/resource/v1"
	"k8s.io/kubernetes/pkg/apis/resource/validation"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/dra"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/shape"
)

// TestDRASlicesPassAPIValidation runs the API server's own ResourceSlice
// validation over every pool gpublocks builds for the simulated presets,
// with and without shape rules and taints: a slice the API server would
// refuse must fail here, not on a node.
func TestDRASlicesPassAPIValidation(t *testing.T) {
	rules := map[string]string{
		"no rules": "version: v1\n",
		"whole and blocks": `version: v1
gpus:
  - {match: {index: [0, 1]}, shape: blocks}
  - {match: {model: "*"}, shape: whole}
`,
	}
	for _, preset := range sim.Presets() {
		for name, doc := range rules {
			t.Run(preset+"/"+name, func(t *testing.T) {
				b, err := sim.New(preset)
				require.NoError(t, err)
				defer func() { _ = b.Close() }()
				inv, err := gpu.Discover(context.Background(), b)
				require.NoError(t, err)
				cfg, err := config.Parse([]byte(doc))
				require.NoError(t, err)
				unhealthy := map[string]string{inv.GPUs[len(inv.GPUs)-1].UUID: "xid-79"}
				pool := dra.BuildPool(dra.PoolInput{Offers: shape.Offers(inv, cfg, nil), DriverVersion: inv.DriverVersion, Unhealthy: unhealthy})
				slices := pool.ResourceSlices("gpu-node-1", 1)
				require.NotEmpty(t, slices)
				for i := range slices {
					slices[i].Name = fmt.Sprintf("gpu-node-1-%d", i)
					var internal resource.ResourceSlice
					require.NoError(t, resourcev1.Convert_v1_ResourceSlice_To_resource_ResourceSlice(&slices[i], &internal, nil))
					errs := validation.ValidateResourceSlice(&internal)
					require.Empty(t, errs, "slice %d of %s: %v", i, preset, errs.ToAggregate())
				}
			})
		}
	}
}
