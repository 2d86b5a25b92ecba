package e2e

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSIGTERM checks a clean shutdown, as when the DaemonSet pod is deleted
// or rolled, and that the next process offers the IDs the kubelet knows.
func TestSIGTERM(t *testing.T) {
	ctx, _ := testContext(t)
	s := startStack(ctx, t)
	pluginSocket := s.client.SocketPath()
	ids := deviceIDs(s.devices)

	t.Run("exits 0 promptly and removes its socket", func(t *testing.T) {
		require.FileExists(t, pluginSocket)
		code, took := s.plugin.terminate(t, 5*time.Second)
		t.Logf("gpublocks exited with %d %s after SIGTERM", code, took)
		require.Equal(t, 0, code)
		_, err := os.Stat(pluginSocket)
		require.True(t, os.IsNotExist(err), "socket %s still there after exit (stat: %v)", pluginSocket, err)
	})

	t.Run("a new process offers the same device IDs", func(t *testing.T) {
		eventually(t, 5*time.Second, func() bool {
			p, _ := s.kubelet.snapshot(resourceName)
			return p == nil
		}, "the kubelet stand-in still holds the old plugin")
		startPlugin(t, s.opts)
		_, devs, took := s.kubelet.waitForDevices(resourceName, dgxa100GPUs, registerTimeout)
		t.Logf("new process registered %s after start", took)
		require.ElementsMatch(t, ids, deviceIDs(devs))
	})
}
