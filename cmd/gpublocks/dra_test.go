package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	resourceapi "k8s.io/api/resource/v1"
	"sigs.k8s.io/yaml"
)

// inspect --kubelet-api dra prints the ResourceSlices serve would publish,
// as a YAML stream an operator can review, without an API server.
func TestInspectDRAPrintsResourceSlices(t *testing.T) {
	out, err := run(t, "inspect", "--kubelet-api", "dra", "--simulate", "dgxa100", "--driver-root", t.TempDir())
	require.NoError(t, err)
	docs := strings.Split(out, "---\n")
	var devices, counterSets int
	names := map[string]bool{}
	for _, doc := range docs {
		var s resourceapi.ResourceSlice
		require.NoError(t, yaml.UnmarshalStrict([]byte(doc), &s), doc)
		require.Equal(t, "ResourceSlice", s.Kind)
		require.Equal(t, "gpu.gpublocks.io", s.Spec.Driver)
		require.EqualValues(t, len(docs), s.Spec.Pool.ResourceSliceCount)
		require.NotNil(t, s.Spec.NodeName)
		require.Equal(t, s.Spec.Pool.Name, *s.Spec.NodeName)
		counterSets += len(s.Spec.SharedCounters)
		for _, d := range s.Spec.Devices {
			devices++
			names[d.Name] = true
		}
	}
	require.Equal(t, 8, counterSets)
	require.Equal(t, 16, devices)
	require.True(t, names["gpu-0"] && names["gpu-0-blocks"] && names["gpu-7-blocks"], names)
	require.Contains(t, out, "allowMultipleAllocations: true")
}

func TestInspectDRAFollowsTheConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("gpus: [{match: {model: \"*\"}, shape: blocks}]\n"), 0o644))
	out, err := run(t, "inspect", "--kubelet-api", "dra", "--simulate", "dgxa100", "--driver-root", dir, "--config", cfg)
	require.NoError(t, err)
	names := map[string]bool{}
	for _, doc := range strings.Split(out, "---\n") {
		var s resourceapi.ResourceSlice
		require.NoError(t, yaml.UnmarshalStrict([]byte(doc), &s), doc)
		for _, d := range s.Spec.Devices {
			names[d.Name] = true
		}
	}
	require.True(t, names["gpu-3-blocks"], names)
	require.False(t, names["gpu-3"], "a blocks rule offers no whole GPU")
}

func TestKubeletAPIFlag(t *testing.T) {
	_, err := run(t, "inspect", "--kubelet-api", "csi", "--simulate", "dgxa100", "--driver-root", t.TempDir())
	require.ErrorContains(t, err, `--kubelet-api "csi" is not one of device-plugin, dra`)

	dir := t.TempDir()
	_, err = run(t, "serve", "--kubelet-api", "dra", "--simulate", "dgxa100", "--driver-root", dir, "--cdi-dir", filepath.Join(dir, "cdi"), "--metrics-addr", "")
	require.ErrorContains(t, err, "--kubelet-api dra needs --node-name")

	_, err = run(t, "serve", "--kubelet-api", "dra", "--node-name", "n1", "--kubeconfig", filepath.Join(dir, "missing"),
		"--simulate", "dgxa100", "--driver-root", dir, "--cdi-dir", filepath.Join(dir, "cdi"), "--metrics-addr", "")
	require.ErrorContains(t, err, "--kubeconfig "+filepath.Join(dir, "missing"))
}
