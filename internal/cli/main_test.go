package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
)

// run executes the command line in-process and returns its output.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := NewRootCommand(nil)
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestEnvName(t *testing.T) {
	require.Equal(t, "GPUBLOCKS_DEVICE_PLUGIN_DIR", envName("device-plugin-dir"))
	require.Equal(t, "GPUBLOCKS_SIMULATE", envName("simulate"))
}

func TestFlagsFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "spec.yaml")

	// Every flag reads GPUBLOCKS_<FLAG>.
	t.Setenv("GPUBLOCKS_SIMULATE", "dgxa100")
	t.Setenv("GPUBLOCKS_OUTPUT", out)
	t.Setenv("GPUBLOCKS_DRIVER_ROOT", dir)
	_, err := run(t, "cdi", "generate")
	require.NoError(t, err)
	cache, err := cdiapi.NewCache(cdiapi.WithSpecDirs(dir), cdiapi.WithAutoRefresh(false))
	require.NoError(t, err)
	require.Empty(t, cache.GetErrors())
	require.Len(t, cache.ListDevices(), 16, "8 GPUs by UUID and by index")

	st, err := os.Stat(out)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), st.Mode().Perm())

	// A flag wins over the environment.
	t.Setenv("GPUBLOCKS_SIMULATE", "no-such-preset")
	_, err = run(t, "cdi", "generate", "--simulate", "dgxh100")
	require.NoError(t, err)

	// A bad value in the environment is named.
	_, err = run(t, "cdi", "generate")
	require.ErrorContains(t, err, "no-such-preset")
}

func TestInspect(t *testing.T) {
	out, err := run(t, "inspect", "--simulate", "dgxa100-mig", "--driver-root", t.TempDir())
	require.NoError(t, err)
	for _, want := range []string{"simulated dgxa100-mig", "550.54.15", "nvidia.com/mig-1g.10gb", "3g.40gb", "nvidia.com/gpu "} {
		require.Contains(t, out, want)
	}
}

func TestNoDriverSaysWhatToDo(t *testing.T) {
	_, err := run(t, "inspect", "--driver-root", t.TempDir())
	require.Error(t, err)
	require.ErrorContains(t, err, "--driver-root")
	require.ErrorContains(t, err, "--simulate")
}

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(good, []byte("blocks: {policy: spread}\n"), 0o644))
	require.NoError(t, os.WriteFile(bad, []byte("blocks: {polcy: spread}\n"), 0o644))

	out, err := run(t, "config", "validate", good)
	require.NoError(t, err)
	require.Contains(t, out, "good.yaml: valid")

	_, err = run(t, "config", "validate", bad)
	require.ErrorContains(t, err, "blocks.polcy")

	_, err = run(t, "config", "validate", dir)
	require.ErrorContains(t, err, "bad.yaml")
}

func TestDemo(t *testing.T) {
	out, err := run(t, "demo")
	require.NoError(t, err)
	for _, want := range []string{
		"nvidia.com/gpu               capacity 4",
		"nvidia.com/gpu-blocks        capacity 200",
		"nvidia.com/mig-1g.10gb       capacity 9",
		"/dev/nvidia-caps/nvidia-cap",
		"GPUBLOCKS_BLOCKS=30",
		"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50",
		// Day to night on GPU 1, live, after the process in it ends.
		"== Day -> night",
		"GPU 1 waits: compute processes running",
		"nvidia.com/mig-1g.10gb capacity 2, nvidia.com/mig-3g.40gb capacity 3, no restart",
	} {
		require.Contains(t, out, want)
	}
	// 150 blocks is refused by the plugin's own rule, with a reason.
	tooBig := out[strings.Index(out, "== too-big"):]
	require.Contains(t, tooBig[:strings.Index(tooBig, "\n==")], "refused:")
	require.Contains(t, tooBig[:strings.Index(tooBig, "\n==")], "multiple of 100")
}

func TestVersion(t *testing.T) {
	out, err := run(t, "version")
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(out, "gpublocks "), out)
}

func TestInspectNodeNameOutsideClusterSaysWhatToDo(t *testing.T) {
	_, err := run(t, "inspect", "--simulate", "dgxa100", "--node-name", "gpu-1")
	require.ErrorContains(t, err, "--node-name gpu-1")
	require.ErrorContains(t, err, "drop --node-name")
}

func TestServeRefusesNonLoopbackSimulateAddr(t *testing.T) {
	dir := t.TempDir()
	base := []string{"serve", "--simulate", "dgxa100", "--driver-root", dir, "--dev-root", dir,
		"--device-plugin-dir", filepath.Join(dir, "dp"), "--cdi-dir", filepath.Join(dir, "cdi"), "--metrics-addr", ""}
	_, err := run(t, append(base, "--simulate-addr", "0.0.0.0:9401")...)
	require.ErrorContains(t, err, "--simulate-addr")
	require.ErrorContains(t, err, "loopback")

	t.Setenv("GPUBLOCKS_SIMULATE_ADDR", ":9401")
	_, err = run(t, base...)
	require.ErrorContains(t, err, "--simulate-addr")
	require.ErrorContains(t, err, `":9401" listens on every interface`)
}

func TestConfigValidateChecksMigLayoutsAgainstTheNode(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
		return p
	}
	night := write("night", "gpus: [{match: {index: [1]}, shape: mig, mig: [3g.40gb, 3g.40gb]}]\n")
	tooMuch := write("too-much", "gpus: [{match: {index: [1]}, shape: mig, mig: [4g.40gb, 4g.40gb]}]\n")
	migOff := write("mig-off", "gpus: [{match: {index: [5]}, shape: mig, mig: [7g.80gb]}]\n")

	// Without discovery flags only the file is checked.
	out, err := run(t, "config", "validate", tooMuch)
	require.NoError(t, err)
	require.Contains(t, out, "too-much: valid")

	sim := []string{"--simulate", "dgxa100-mig", "--driver-root", t.TempDir()}
	out, err = run(t, append([]string{"config", "validate", night}, sim...)...)
	require.NoError(t, err)
	require.Contains(t, out, "night: valid")

	_, err = run(t, append([]string{"config", "validate", tooMuch}, sim...)...)
	require.ErrorContains(t, err, "gpus[0] (shape: mig) on GPU 1")
	require.ErrorContains(t, err, "4g.40gb")

	_, err = run(t, append([]string{"config", "validate", migOff}, sim...)...)
	require.ErrorContains(t, err, "GPU 5")
	require.ErrorContains(t, err, "MIG mode is disabled")

	// A directory: each config is checked, the good ones say so.
	out, err = run(t, append([]string{"config", "validate", dir}, sim...)...)
	require.Error(t, err)
	require.Contains(t, out, "night: valid")
	require.NotContains(t, out, "too-much: valid")
	require.ErrorContains(t, err, "too-much")
	require.ErrorContains(t, err, "mig-off")

	// In DRA mode mig: lists allowed profiles, which need not fit together.
	out, err = run(t, append([]string{"config", "validate", tooMuch, "--kubelet-api", "dra"}, sim...)...)
	require.NoError(t, err)
	require.Contains(t, out, "too-much: valid")
}

func TestInspectShowsPendingMigLayout(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "night.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("gpus: [{match: {index: [1]}, shape: mig, mig: [3g.40gb, 3g.40gb]}]\n"), 0o644))
	out, err := run(t, "inspect", "--simulate", "dgxa100-mig", "--driver-root", t.TempDir(), "--config", cfg)
	require.NoError(t, err)
	require.Contains(t, out, "MIG LAYOUT")
	require.Contains(t, out, "[3g.40gb 3g.40gb]  pending: destroy 1g.10gb")
}
