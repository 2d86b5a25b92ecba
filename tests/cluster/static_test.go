package cluster

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// TestStaticManifests applies deployments/static/ with kubectl, as its
// header says, changing only what this cluster needs and a user would not:
// the simulated GPUs, the host network (no kube-proxy here) and a free
// metrics port. The DaemonSet becomes Ready and a pod gets a GPU.
func TestStaticManifests(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	dir, err := filepath.Abs(filepath.Join(repoRoot, "deployments", "static"))
	require.NoError(t, err)
	require.NoError(t, cl.ImportImage(ctx, imageArchive))
	require.NoError(t, cl.LabelNode(ctx, map[string]string{"gpublocks.io/enabled": "true"}))

	// Everything but the DaemonSet as it is shipped.
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	require.NoError(t, err)
	var dsFile string
	for _, f := range files {
		if strings.HasSuffix(f, "-daemonset.yaml") {
			dsFile = f
			continue
		}
		out, err := cl.Kubectl(ctx, "apply", "-f", f)
		require.NoError(t, err, out)
		t.Logf("kubectl apply -f %s: %s", filepath.Base(f), strings.TrimSpace(out))
	}
	require.NotEmpty(t, dsFile, "no DaemonSet in %s", dir)
	t.Cleanup(func() {
		logWarnings(t, ctx, "gpublocks", podNamespace)
		_ = cl.DeletePod(ctx, podNamespace, "static-one-gpu", podTimeout)
		if out, err := cl.Kubectl(ctx, "delete", "-f", dir, "--ignore-not-found", "--wait"); err != nil {
			t.Errorf("cleanup: %v\n%s", err, out)
		}
	})

	data, err := os.ReadFile(dsFile)
	require.NoError(t, err)
	var ds appsv1.DaemonSet
	require.NoError(t, yaml.UnmarshalStrict(data, &ds))
	port := freePort(t)
	spec := &ds.Spec.Template.Spec
	spec.HostNetwork, spec.DNSPolicy = true, v1.DNSClusterFirstWithHostNet
	c := &spec.Containers[0]
	for i, a := range c.Args {
		if strings.HasPrefix(a, "--metrics-addr=") {
			c.Args[i] = "--metrics-addr=:" + strconv.Itoa(port)
		}
	}
	c.Args = append(c.Args, "--simulate=dgxa100")
	c.Ports[0].ContainerPort = int32(port)
	c.Env = append(c.Env,
		v1.EnvVar{Name: "KUBERNETES_SERVICE_HOST", Value: "127.0.0.1"},
		v1.EnvVar{Name: "KUBERNETES_SERVICE_PORT", Value: strconv.Itoa(cl.APIServerPort)})
	_, err = cl.Client.AppsV1().DaemonSets(ds.Namespace).Create(ctx, &ds, metav1.CreateOptions{})
	require.NoError(t, err)

	start := time.Now()
	pod := waitDaemonSetReadyNamed(t, ctx, ds.Namespace, ds.Name, "")
	t.Logf("static DaemonSet %s/%s Ready: pod %s, image %s, %s after creation", ds.Namespace, ds.Name, pod.Name, c.Image, time.Since(start).Round(time.Millisecond))
	waitCapacity(t, ctx, map[string]int64{gpuResource: dgxa100GPUs})
	devs := runGPUPod(t, ctx, "static-one-gpu", map[string]int64{gpuResource: 1})
	require.Len(t, devs.gpus, 1)
}
