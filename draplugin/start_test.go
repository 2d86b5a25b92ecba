package draplugin

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	drahealthv1 "k8s.io/kubelet/pkg/apis/dra-health/v1"
	drapbv1 "k8s.io/kubelet/pkg/apis/dra/v1"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/gpublocks/gpublocks/dra"
)

// dial connects to a Unix socket as the kubelet does.
func dial(t *testing.T, path string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// TestStart runs the whole plugin against a fake API server, playing the
// kubelet on its sockets: registration, slices published through the
// ResourceSlice controller, and a claim prepared and unprepared over gRPC.
func TestStart(t *testing.T) {
	e := newEnv(t)
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode, UID: "node-uid"}})
	// The fake API server does not generate names; the controller relies
	// on it.
	var generated atomic.Int64
	client.PrependReactor("create", "resourceslices", func(action k8stesting.Action) (bool, runtime.Object, error) {
		s := action.(k8stesting.CreateAction).GetObject().(*resourceapi.ResourceSlice)
		if s.Name == "" {
			s.Name = fmt.Sprintf("%s%d", s.GenerateName, generated.Add(1))
		}
		return false, nil, nil
	})
	e.opts.KubeClient = client
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	d, err := Start(ctx, e.opts)
	require.NoError(t, err)
	defer d.Stop()
	pool := e.pool(t, nil, nil)
	require.NoError(t, d.Publish(ctx, pool, e.inv))

	// The kubelet finds the registration socket and registers the plugin.
	reg := registerapi.NewRegistrationClient(dial(t, filepath.Join(e.opts.RegistrarDir, dra.DriverName+"-reg.sock")))
	info, err := reg.GetInfo(ctx, &registerapi.InfoRequest{})
	require.NoError(t, err)
	require.Equal(t, registerapi.DRAPlugin, info.Type)
	require.Equal(t, dra.DriverName, info.Name)
	require.Equal(t, filepath.Join(e.opts.PluginsDir, dra.DriverName, "dra.sock"), info.Endpoint)
	require.ElementsMatch(t, []string{drapbv1.DRAPluginService, "v1beta1.DRAPlugin", drahealthv1.DRAResourceHealthService, "v1alpha1.DRAResourceHealth"}, info.SupportedVersions)
	require.False(t, d.Registered())
	_, err = reg.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true})
	require.NoError(t, err)
	require.True(t, d.Registered())

	// The pool reaches the API server as slices named after the node.
	want := len(pool.Slices())
	var slices []resourceapi.ResourceSlice
	require.Eventually(t, func() bool {
		list, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		slices = list.Items
		return len(slices) == want
	}, 30*time.Second, 10*time.Millisecond, "the ResourceSlice controller publishes %d slices", want)
	devices := 0
	for _, s := range slices {
		require.Equal(t, dra.DriverName, s.Spec.Driver)
		require.Equal(t, testNode, s.Spec.Pool.Name)
		require.Equal(t, testNode, *s.Spec.NodeName)
		require.Equal(t, int64(want), s.Spec.Pool.ResourceSliceCount)
		devices += len(s.Spec.Devices)
	}
	require.Equal(t, len(pool.Devices), devices)

	// The kubelet watches the devices' health.
	conn := dial(t, info.Endpoint)
	watch, err := drahealthv1.NewDRAResourceHealthClient(conn).NodeWatchResources(ctx, &drahealthv1.NodeWatchResourcesRequest{})
	require.NoError(t, err)
	health, err := watch.Recv()
	require.NoError(t, err)
	require.Len(t, health.Devices, len(pool.Devices))
	for _, h := range health.Devices {
		require.Equal(t, testNode, h.GetDevice().GetPoolName())
		require.Equal(t, drahealthv1.HealthStatus_HEALTHY, h.GetHealth(), h.GetDevice().GetDeviceName())
	}

	// The kubelet prepares a claim it read from the API server.
	c := claim(uid(1), "train", blocksOf("blocks", "gpu-2-blocks", 30, shareUID(1)))
	_, err = client.ResourceV1().ResourceClaims(c.Namespace).Create(ctx, c, metav1.CreateOptions{})
	require.NoError(t, err)
	draClient := drapbv1.NewDRAPluginClient(conn)
	ref := &drapbv1.Claim{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)}
	prep, err := draClient.NodePrepareResources(ctx, &drapbv1.NodePrepareResourcesRequest{Claims: []*drapbv1.Claim{ref}})
	require.NoError(t, err)
	got := prep.Claims[string(c.UID)]
	require.Empty(t, got.Error)
	require.Len(t, got.Devices, 1)
	require.Equal(t, []string{"gpublocks.io/gpu=" + e.inv.GPUs[2].UUID, "gpublocks.io/claim=" + uid(1) + "-blocks"}, got.Devices[0].CdiDeviceIds)
	require.Equal(t, shareUID(1), got.Devices[0].GetShareId())
	require.Len(t, d.Prepared(), 1)

	unprep, err := draClient.NodeUnprepareResources(ctx, &drapbv1.NodeUnprepareResourcesRequest{Claims: []*drapbv1.Claim{ref}})
	require.NoError(t, err)
	require.Empty(t, unprep.Claims[string(c.UID)].Error)
	require.Empty(t, d.Prepared())

	select {
	case err := <-d.Fatal():
		t.Fatalf("fatal error: %v", err)
	default:
	}
}

func TestHandleError(t *testing.T) {
	e := newEnv(t)
	d := e.unpublished(t)
	ctx := context.Background()
	d.HandleError(ctx, fmt.Errorf("slice rejected: %w", kubeletplugin.ErrRecoverable), "publish")
	select {
	case err := <-d.Fatal():
		t.Fatalf("a recoverable error is not fatal: %v", err)
	default:
	}
	gone := errors.New("listener closed")
	d.HandleError(ctx, gone, "DRA gRPC server failed")
	d.HandleError(ctx, errors.New("second"), "registrar gRPC server failed") // never blocks
	err := <-d.Fatal()
	require.ErrorIs(t, err, gone)
	require.ErrorContains(t, err, "DRA gRPC server failed")
}
