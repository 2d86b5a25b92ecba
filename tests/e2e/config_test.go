package e2e

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const (
	// liveConfigBudget is how quickly a new config must be served.
	liveConfigBudget = 2 * time.Second
	// rejectedConfigHold is how long a rejected config must change nothing.
	rejectedConfigHold = 3 * time.Second
)

// replaceFile replaces path with content atomically, the way a ConfigMap
// update or an editor does: write a temporary file next to it, then rename.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	require.NoError(t, os.WriteFile(tmp, []byte(content), 0o644))
	require.NoError(t, os.Rename(tmp, path))
}

// TestLiveConfig changes the config file under a running `gpublocks serve`
// and watches the kubelet's device manager: a good config is served within
// 2 s by the same process, a bad one is rejected, reported, and changes
// nothing.
func TestLiveConfig(t *testing.T) {
	configFile := writeFile(t, shortTempDir(t), "config.yaml", "version: v1\n")
	metricsAddr := freeLocalAddr(t)
	n := startKubeletNode(t, func(o *pluginOptions) {
		o.config = configFile
		o.metricsAddr = metricsAddr
	})
	// The process started here must serve every change: requireRunning
	// below proves it never exited (no restart, same PID).
	pid := n.plugin.cmd.Process.Pid
	allWhole := map[string]int64{resourceName: dgxa100GPUs}
	withBlocks := map[string]int64{resourceName: dgxa100GPUs - 2, blocksResource: 2 * blocksPerGPU}

	t.Run("starts with every GPU whole", func(t *testing.T) {
		took := n.waitForCapacity(t, allWhole, registerTimeout)
		t.Logf("capacity %v after %s", allWhole, took)
		capacity, _ := n.capacities()
		require.Equal(t, allWhole, capacity)
	})

	t.Run("GPUs 0-1 become blocks within 2s, same process", func(t *testing.T) {
		start := time.Now()
		replaceFile(t, configFile, blocksConfig)
		n.waitForCapacity(t, withBlocks, registerTimeout)
		took := time.Since(start)
		t.Logf("capacity %v %s after the config was replaced", withBlocks, took)
		require.Less(t, took, liveConfigBudget)
		n.plugin.requireRunning(t)
		t.Logf("served by the same process, pid %d", pid)
		// The new resource is usable at once, on GPU 0 or 1.
		gpu := requireBlocksOfOneGPU(t, n.admit(t, blocksPod("live", 10)), 10)
		minor := gpuMinors(t, cdiCache(t, n.opts.cdiDir), []string{gpu})[gpu]
		require.Contains(t, []int{0, 1}, minor, "blocks on GPU %d", minor)
	})

	t.Run("a bad config is rejected, reported and changes nothing", func(t *testing.T) {
		before, beforeAlloc := n.capacities()
		require.Equal(t, withBlocks, before)
		require.Zero(t, configErrors(t, metricsAddr), "config errors before a bad config")
		replaceFile(t, configFile, "version: v1\nblocks: {polcy: spread}\n")

		start := time.Now()
		reported := false
		for time.Since(start) < rejectedConfigHold {
			capacity, allocatable := n.capacities()
			require.Equal(t, before, capacity, "capacity changed after a rejected config")
			require.Equal(t, beforeAlloc, allocatable, "allocatable changed after a rejected config")
			if !reported && strings.Contains(n.plugin.out.String(), "Config rejected") {
				reported = true
				t.Logf("rejection logged %s after the bad config was written", time.Since(start))
			}
			time.Sleep(50 * time.Millisecond)
		}
		out := n.plugin.out.String()
		require.True(t, reported, "no \"Config rejected\" in the log")
		var line string
		for l := range strings.Lines(out) {
			if strings.Contains(l, "Config rejected") {
				line = l
			}
		}
		t.Logf("log: %s", strings.TrimSpace(line))
		require.Contains(t, line, "blocks.polcy", "the rejection should name the unknown key's path")
		errs := configErrors(t, metricsAddr)
		t.Logf("%s %v", configErrorsMetric, errs)
		require.GreaterOrEqual(t, errs, 1.0, "the rejection is not counted in /metrics")
		n.plugin.requireRunning(t)
	})
}

// configErrorsMetric counts rejected configs (DESIGN §7: config errors are
// exposed in metrics).
const configErrorsMetric = "gpublocks_config_errors_total"

// configErrors scrapes /metrics on addr and returns configErrorsMetric.
func configErrors(t *testing.T, addr string) float64 {
	t.Helper()
	return metricSum(t, addr, configErrorsMetric, nil)
}

// freeLocalAddr returns a loopback address with a port nothing listens on
// right now, for a server the test starts next.
func freeLocalAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}
