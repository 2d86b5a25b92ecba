package cli

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpublocks/gpublocks/daemon"
	"github.com/gpublocks/gpublocks/gpu/sim"
)

// TestHangupReloadsConfig: SIGHUP used to rescan the GPUs only; it loads
// the config again too now. The daemon does not run here, so no file
// watch can be what loads it.
func TestHangupReloadsConfig(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("version: v1\n"), 0o644))
	o := daemon.Options{ConfigPath: cfg, PluginDir: dir, CDIDir: filepath.Join(dir, "cdi"), DriverRoot: dir, DevRoot: "/"}
	b, err := sim.New("dgxa100")
	require.NoError(t, err)
	d, err := daemon.New(ctx, o, b)
	require.NoError(t, err)
	stop := reloadOnHangup(ctx, d)
	defer stop()

	require.NoError(t, os.WriteFile(cfg, []byte("blocks: {polcy: spread}\n"), 0o644))
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	require.Eventually(t, func() bool { return d.ConfigStatus().Errors == 1 }, 5*time.Second, 10*time.Millisecond)
	require.ErrorContains(t, d.ConfigStatus().LastError, "blocks.polcy")
}
