package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// TestRegistration drives gpublocks through the kubelet's own registration
// server and plugin client, on a temporary socket directory (no root needed).
func TestRegistration(t *testing.T) {
	ctx, _ := testContext(t)
	s := startStack(ctx, t)

	t.Run("ListAndWatch offers 8 healthy GPUs with NUMA topology", func(t *testing.T) {
		seen := map[string]bool{}
		for _, d := range s.devices {
			require.True(t, strings.HasPrefix(d.ID, "GPU-"), "device ID %q is not a GPU UUID", d.ID)
			require.False(t, seen[d.ID], "device ID %q listed twice", d.ID)
			seen[d.ID] = true
			require.Equal(t, pluginapi.Healthy, d.Health, "device %s", d.ID)
			require.NotNil(t, d.Topology, "device %s has no topology", d.ID)
			require.NotEmpty(t, d.Topology.Nodes, "device %s has no NUMA node", d.ID)
		}
		require.Len(t, seen, dgxa100GPUs)
	})

	t.Run("options ask the kubelet for GetPreferredAllocation", func(t *testing.T) {
		opts, err := s.client.API().GetDevicePluginOptions(ctx, &pluginapi.Empty{})
		require.NoError(t, err)
		require.True(t, opts.GetPreferredAllocationAvailable)
	})

	ids := deviceIDs(s.devices)

	t.Run("GetPreferredAllocation answers from the available set", func(t *testing.T) {
		tests := map[string]struct {
			available   []string
			mustInclude []string
			size        int32
		}{
			"two of eight":           {available: ids, size: 2},
			"must include one":       {available: ids, mustInclude: ids[5:6], size: 2},
			"all that are available": {available: ids[2:5], size: 3},
		}
		for name, tc := range tests {
			t.Run(name, func(t *testing.T) {
				resp, err := s.client.API().GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{
					ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{
						AvailableDeviceIDs:   tc.available,
						MustIncludeDeviceIDs: tc.mustInclude,
						AllocationSize:       tc.size,
					}},
				})
				require.NoError(t, err)
				require.Len(t, resp.ContainerResponses, 1)
				got := resp.ContainerResponses[0].DeviceIDs
				require.Len(t, got, int(tc.size))
				require.Subset(t, tc.available, got)
				require.Subset(t, got, tc.mustInclude)
				requireDistinct(t, got)
			})
		}
	})

	t.Run("Allocate answers CDI device names only", func(t *testing.T) {
		resp := allocate(ctx, t, s.client, ids[1], ids[6])
		require.ElementsMatch(t, []string{cdiName(ids[1]), cdiName(ids[6])}, cdiNames(resp.CdiDevices))
		require.Empty(t, resp.Devices, "cdi-cri must not send DeviceSpecs")
		require.Empty(t, resp.Mounts, "cdi-cri must not send Mounts")
	})

	t.Run("Allocate of an unknown ID is InvalidArgument", func(t *testing.T) {
		_, err := s.client.API().Allocate(ctx, &pluginapi.AllocateRequest{
			ContainerRequests: []*pluginapi.ContainerAllocateRequest{{
				DevicesIds: []string{ids[0], "GPU-00000000-0000-0000-0000-000000000000"},
			}},
		})
		require.Error(t, err)
		require.Equal(t, codes.InvalidArgument, status.Code(err), "error: %v", err)
	})

	t.Run("re-registers within 2s after a kubelet restart", func(t *testing.T) {
		pluginSocket := s.client.SocketPath()
		s.kubelet.stop(ctx)
		// What a restarting kubelet leaves behind: no kubelet.sock and no
		// plugin sockets (its start-up cleanup deletes them).
		require.NoError(t, os.RemoveAll(filepath.Join(s.opts.pluginDir, "kubelet.sock")))
		require.NoError(t, removeSockets(s.opts.pluginDir))

		restarted := startKubelet(ctx, t, s.opts.pluginDir, "")
		client, devs, took := restarted.waitForDevices(resourceName, dgxa100GPUs, registerTimeout)
		t.Logf("re-registered %d devices %s after the kubelet restart (old socket %s, new %s)",
			len(devs), took, filepath.Base(pluginSocket), filepath.Base(client.SocketPath()))
		require.Less(t, took, reregisterBudget, "re-registration took %s", took)
		require.ElementsMatch(t, ids, deviceIDs(devs), "device IDs changed across a kubelet restart")
		s.plugin.requireRunning(t)

		// The new connection serves RPCs, not just the stream.
		resp := allocate(ctx, t, client, ids[3])
		require.Equal(t, []string{cdiName(ids[3])}, cdiNames(resp.CdiDevices))
	})
}

// cdiName is the fully qualified CDI name gpublocks hands out for a GPU.
func cdiName(uuid string) string {
	return cdiKind + "=" + uuid
}

// cdiNames flattens an Allocate response's CDI devices.
func cdiNames(devs []*pluginapi.CDIDevice) []string {
	names := make([]string, 0, len(devs))
	for _, d := range devs {
		names = append(names, d.Name)
	}
	return names
}

func requireDistinct(t *testing.T, items []string) {
	t.Helper()
	seen := map[string]bool{}
	for _, it := range items {
		require.False(t, seen[it], "%q appears twice in %v", it, items)
		seen[it] = true
	}
}
