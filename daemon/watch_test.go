package daemon

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// writeFile writes a config file in place (no rename).
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
}

// idle waits until the config watcher has dealt with every event it got.
func (n *node) idle() {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	require.NoError(n.t, n.d.configIdle(ctx))
}

// waitGeneration waits until the config in force is generation want.
func (n *node) waitGeneration(want int64) {
	n.t.Helper()
	require.Eventually(n.t, func() bool { return n.d.ConfigStatus().Generation == want }, 5*time.Second, 10*time.Millisecond,
		"config generation %d; status %+v", want, n.d.ConfigStatus())
}

// TestConfigFIFOIsRejectedNotHung: a config key that is a named pipe used
// to block the watcher in open(2) forever, with nothing logged and
// config_valid still 1. It is a rejected config now, and the watcher goes
// on to apply the next good one.
func TestConfigFIFOIsRejectedNotHung(t *testing.T) {
	dir := t.TempDir()
	def := filepath.Join(dir, "default")
	writeFile(t, def, "version: v1\n")
	n := startNode(t, "dgxa100", "", func(o *Options) { o.ConfigPath = dir })
	n.waitCount("nvidia.com/gpu", 8)
	// Should the pipe ever be opened for reading, a writer coming and going
	// lets that read end, so that the test fails rather than hangs.
	t.Cleanup(func() {
		if f, err := os.OpenFile(def, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			_ = f.Close()
		}
	})

	fifo := filepath.Join(dir, ".tmp")
	require.NoError(t, syscall.Mkfifo(fifo, 0o644))
	require.NoError(t, os.Rename(fifo, def))
	require.Eventually(t, func() bool { return n.d.ConfigStatus().Errors == 1 }, 5*time.Second, 10*time.Millisecond)
	st := n.d.ConfigStatus()
	require.ErrorContains(t, st.LastError, def+" is a named pipe (FIFO)")
	require.False(t, n.d.metricsSnapshot().Config.Valid, "config_valid reads 0")
	require.EqualValues(t, 1, st.Generation)
	n.waitCount("nvidia.com/gpu", 8)

	// The watcher is not stuck: the next good config applies.
	replaceFile(t, def, "gpus: [{match: {index: [0]}, shape: blocks}]\n")
	n.waitGeneration(2)
	n.waitCount("nvidia.com/gpu-blocks", 100)
	require.NoError(t, n.d.ConfigStatus().LastError)
	require.True(t, n.d.metricsSnapshot().Config.Valid)
}

// TestReplacedConfigDirectoryKeepsBeingWatched: a watch follows the
// directory it was put on, so once the config's directory was replaced,
// later changes used to go unseen until a restart.
func TestReplacedConfigDirectoryKeepsBeingWatched(t *testing.T) {
	renameAway := func(t *testing.T, dir string, write func(dir string)) {
		next := dir + ".next"
		require.NoError(t, os.Mkdir(next, 0o755))
		write(next)
		require.NoError(t, os.Rename(dir, dir+".old"))
		require.NoError(t, os.Rename(next, dir))
	}
	removeAndCreate := func(t *testing.T, dir string, write func(dir string)) {
		require.NoError(t, os.RemoveAll(dir))
		require.NoError(t, os.Mkdir(dir, 0o755))
		write(dir)
	}
	tests := map[string]struct {
		file    string // config file in the directory; "" = the directory is the config
		replace func(t *testing.T, dir string, write func(dir string))
	}{
		"directory config, renamed away":        {replace: renameAway},
		"directory config, removed and created": {replace: removeAndCreate},
		"file config, its directory renamed":    {file: "config.yaml", replace: renameAway},
		"file config, its directory recreated":  {file: "config.yaml", replace: removeAndCreate},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cfg")
			require.NoError(t, os.Mkdir(dir, 0o755))
			key := tc.file
			if key == "" {
				key = "default"
			}
			writeFile(t, filepath.Join(dir, key), "gpus: [{match: {index: [0]}, shape: blocks}]\n")
			n := startNode(t, "dgxa100", "", func(o *Options) { o.ConfigPath = filepath.Join(dir, tc.file) })
			n.waitCount("nvidia.com/gpu-blocks", 100)

			tc.replace(t, dir, func(d string) {
				writeFile(t, filepath.Join(d, key), "gpus: [{match: {index: [0, 1]}, shape: blocks}]\n")
			})
			n.waitCount("nvidia.com/gpu-blocks", 200)
			n.waitGeneration(2)

			// The new directory is watched.
			replaceFile(t, filepath.Join(dir, key), "gpus: [{match: {index: [0, 1, 2]}, shape: blocks}]\n")
			n.waitCount("nvidia.com/gpu-blocks", 300)
			n.waitGeneration(3)
			writeFile(t, filepath.Join(dir, key), "gpus: [{match: {index: [0, 1, 2, 3]}, shape: blocks}]\n")
			n.waitCount("nvidia.com/gpu-blocks", 400)
			n.waitGeneration(4)
		})
	}
}

// TestSingleFileConfigIgnoresItsNeighbours: with a single-file config,
// any file changing in its directory used to reload the config (ten times
// a second next to a busy file). Only the config's own changes count now;
// the reload counter shows it, and a later change of the config itself
// shows that the counter is alive.
func TestSingleFileConfigIgnoresItsNeighbours(t *testing.T) {
	n := startNode(t, "dgxa100", "version: v1\n")
	n.waitCount("nvidia.com/gpu", 8)
	n.idle()
	loads, events := n.d.cw.loads.Load(), n.d.cw.events.Load()

	dir := filepath.Dir(n.configPath)
	writeFile(t, filepath.Join(dir, "neighbour.log"), "busy\n")
	replaceFile(t, filepath.Join(dir, "other.yaml"), "version: v1\n")
	require.NoError(t, os.Mkdir(filepath.Join(dir, "sub"), 0o755))
	require.NoError(t, os.Remove(filepath.Join(dir, "neighbour.log")))
	require.Eventually(t, func() bool { return n.d.cw.events.Load() > events }, 5*time.Second, 10*time.Millisecond,
		"the watcher sees the neighbours change")
	n.idle()
	require.Equal(t, loads, n.d.cw.loads.Load(), "neighbours changing reload nothing")

	replaceFile(t, n.configPath, "gpus: [{match: {index: [0]}, shape: blocks}]\n")
	n.waitGeneration(2)
	n.waitCount("nvidia.com/gpu-blocks", 100)
	n.idle()
	require.Equal(t, loads+1, n.d.cw.loads.Load(), "one change, one reload")
}

// TestConfigMapKeyAsSingleFile: --config naming one key of a mounted
// ConfigMap (key → ..data/key, ..data → ..<timestamp>) follows ..data
// swaps, and an edit of the file the chain ends at.
func TestConfigMapKeyAsSingleFile(t *testing.T) {
	dir := t.TempDir()
	swap := func(stamp, content string) {
		data := filepath.Join(dir, stamp)
		require.NoError(t, os.Mkdir(data, 0o755))
		writeFile(t, filepath.Join(data, "config.yaml"), content)
		require.NoError(t, os.Symlink(stamp, filepath.Join(dir, "..data_tmp")))
		require.NoError(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	}
	swap("..2026_01", "gpus: [{match: {index: [0]}, shape: blocks}]\n")
	key := filepath.Join(dir, "config.yaml")
	require.NoError(t, os.Symlink("..data/config.yaml", key))
	n := startNode(t, "dgxa100", "", func(o *Options) { o.ConfigPath = key })
	n.waitCount("nvidia.com/gpu-blocks", 100)

	swap("..2026_02", "gpus: [{match: {index: [0, 1]}, shape: blocks}]\n")
	n.waitCount("nvidia.com/gpu-blocks", 200)
	require.NoError(t, os.RemoveAll(filepath.Join(dir, "..2026_01")))
	swap("..2026_03", "gpus: [{match: {index: [0, 1, 2]}, shape: blocks}]\n")
	n.waitCount("nvidia.com/gpu-blocks", 300)

	// An edit where the chain ends is seen too.
	writeFile(t, filepath.Join(dir, "..2026_03", "config.yaml"), "gpus: [{match: {index: [0, 1, 2, 3]}, shape: blocks}]\n")
	n.waitCount("nvidia.com/gpu-blocks", 400)
	n.waitGeneration(4)
}

func TestResolveLinks(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "..2026"), 0o755))
	require.NoError(t, os.Symlink("..2026", filepath.Join(dir, "..data")))
	require.NoError(t, os.Symlink("..data/key", filepath.Join(dir, "key")))
	require.NoError(t, os.Symlink(filepath.Join(dir, "key"), filepath.Join(dir, "abs")))
	require.NoError(t, os.Symlink("loop", filepath.Join(dir, "loop")))

	tests := map[string]struct {
		path      string
		wantLinks []string
		wantFinal string
	}{
		"plain path": {path: filepath.Join(dir, "..2026", "key"), wantFinal: filepath.Join(dir, "..2026", "key")},
		"configmap key": {
			path:      filepath.Join(dir, "key"),
			wantLinks: []string{filepath.Join(dir, "key"), filepath.Join(dir, "..data")},
			wantFinal: filepath.Join(dir, "..2026", "key"),
		},
		"absolute link to a key": {
			path:      filepath.Join(dir, "abs"),
			wantLinks: []string{filepath.Join(dir, "abs"), filepath.Join(dir, "key"), filepath.Join(dir, "..data")},
			wantFinal: filepath.Join(dir, "..2026", "key"),
		},
		"missing path": {path: filepath.Join(dir, "none", "x"), wantFinal: filepath.Join(dir, "none", "x")},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			links, final := resolveLinks(tc.path)
			require.Equal(t, tc.wantFinal, final)
			require.Equal(t, tc.wantLinks, links)
		})
	}
	links, final := resolveLinks(filepath.Join(dir, "loop"))
	require.Len(t, links, maxLinks, "a loop ends")
	require.Equal(t, filepath.Join(dir, "loop"), final)
}
