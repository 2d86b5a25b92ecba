package draplugin

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/utils/ptr"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/dra"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/shape"
)

const testNode = "node-a"

// env is a test's directories and simulated node.
type env struct {
	opts Options
	inv  *gpu.Inventory
}

// newEnv simulates dgxa100-mig: GPUs 0 and 1 MIG-enabled, 2…7 A100 80 GB
// offered whole and as blocks.
func newEnv(t testing.TB) *env {
	t.Helper()
	b, err := sim.New("dgxa100-mig")
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	inv, err := gpu.Discover(context.Background(), b)
	require.NoError(t, err)
	root := t.TempDir()
	return &env{
		inv: inv,
		opts: Options{
			NodeName:     testNode,
			KubeClient:   fake.NewClientset(),
			RegistrarDir: filepath.Join(root, "plugins_registry"),
			PluginsDir:   filepath.Join(root, "plugins"),
			CDIDir:       filepath.Join(root, "cdi"),
		},
	}
}

// pool builds the node's pool; unhealthy maps GPU or MIG UUIDs to reasons.
func (e *env) pool(t testing.TB, cfg *config.Config, unhealthy map[string]string) dra.Pool {
	t.Helper()
	if cfg == nil {
		cfg = config.Default()
	}
	return dra.BuildPool(dra.PoolInput{Offers: shape.Offers(e.inv, cfg, nil), DriverVersion: e.inv.DriverVersion, Unhealthy: unhealthy})
}

// driver is a Driver over e's directories that serves nothing (no
// helper), with the default pool published.
func (e *env) driver(t testing.TB) *Driver {
	t.Helper()
	d := e.unpublished(t)
	require.NoError(t, d.Publish(context.Background(), e.pool(t, nil, nil), e.inv))
	return d
}

func (e *env) unpublished(t testing.TB) *Driver {
	t.Helper()
	d, err := newDriver(context.Background(), e.opts)
	require.NoError(t, err)
	return d
}

func (e *env) migDevice(t testing.TB, gpuIndex, migIndex int) (string, gpu.MigDevice) {
	t.Helper()
	md := e.inv.GPUs[gpuIndex].MigDevices[migIndex]
	return dra.MIGDeviceName(gpuIndex, md), md
}

// claim builds an allocated claim with the given results.
func claim(uid, name string, results ...resourceapi.DeviceRequestAllocationResult) *resourceapi.ResourceClaim {
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID(uid)},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{
			Devices: resourceapi.DeviceAllocationResult{Results: results},
		}},
	}
}

func uid(n int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", n) }

func whole(request, device string) resourceapi.DeviceRequestAllocationResult {
	return resourceapi.DeviceRequestAllocationResult{Request: request, Driver: dra.DriverName, Pool: testNode, Device: device}
}

func mig(request, device string) resourceapi.DeviceRequestAllocationResult {
	return whole(request, device)
}

// blocksOf is a share of k blocks, as the scheduler records it.
func blocksOf(request, device string, k int64, share string) resourceapi.DeviceRequestAllocationResult {
	r := whole(request, device)
	r.ConsumedCapacity = map[resourceapi.QualifiedName]resource.Quantity{dra.CapacityBlocks: *resource.NewQuantity(k, resource.DecimalSI)}
	r.ShareID = ptr.To(types.UID(share))
	return r
}

func shareUID(n int) string { return fmt.Sprintf("5a000000-0000-4000-8000-%012d", n) }

// prepare prepares one claim and returns its result.
func prepare(t testing.TB, d *Driver, c *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
	t.Helper()
	out, err := d.PrepareResourceClaims(context.Background(), []*resourceapi.ResourceClaim{c})
	require.NoError(t, err)
	require.Len(t, out, 1)
	res, ok := out[c.UID]
	require.True(t, ok)
	return res
}

func mustPrepare(t testing.TB, d *Driver, c *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
	t.Helper()
	res := prepare(t, d, c)
	require.NoError(t, res.Err)
	return res
}

func unprepare(t testing.TB, d *Driver, c *resourceapi.ResourceClaim) error {
	t.Helper()
	out, err := d.UnprepareResourceClaims(context.Background(), []kubeletplugin.NamespacedObject{{
		UID: c.UID, NamespacedName: types.NamespacedName{Namespace: c.Namespace, Name: c.Name},
	}})
	require.NoError(t, err)
	require.Len(t, out, 1)
	e, ok := out[c.UID]
	require.True(t, ok)
	return e
}
