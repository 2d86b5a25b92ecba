package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
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
	// MIG on without instances: every placement of every profile is a
	// device to create on demand (DESIGN §10), 25 per A100 80 GB.
	dir := t.TempDir()
	specs := sim.Presets()
	for name, doc := range map[string]string{
		"mig-placements": "gpus:\n  - model: A100-SXM4-80GB\n    count: 8\n    mig: []\n",
		"mig-mixed":      "gpus:\n  - model: H100-SXM5-80GB\n    mig: [3g.40gb]\n  - model: A100-SXM4-40GB\n    mig: []\n  - model: A30-PCIE-24GB\n    mig: []\n  - model: H200-SXM5-141GB\n    mig: []\n",
	} {
		path := filepath.Join(dir, name+".yaml")
		require.NoError(t, os.WriteFile(path, []byte(doc), 0o600))
		specs = append(specs, path)
	}
	rules["mig allowed"] = "version: v1\ngpus:\n  - {match: {index: [0]}, shape: mig, mig: [1g.10gb]}\n"
	for _, preset := range specs {
		for name, doc := range rules {
			t.Run(filepath.Base(preset)+"/"+name, func(t *testing.T) {
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
