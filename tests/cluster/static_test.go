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

// TestStaticManifests applies deployments/static/ (device-plugin mode) and
// deployments/static-dra/ (DRA mode) with kubectl, as their headers say,
// changing only what this cluster needs and a user would not: the
// simulated GPUs, the host network (no kube-proxy here) and a free metrics
// port. The DaemonSet becomes Ready and a pod gets a GPU, or 30 blocks of
// one through a claim.
func TestStaticManifests(t *testing.T) {
	needCluster(t)
	for _, tc := range []struct {
		name string
		dir  string
		// pod is the test pod's name; check runs it once the DaemonSet is
		// Ready.
		pod   string
		check func(t *testing.T, ctx context.Context, pod string)
	}{
		{
			name: "device-plugin", dir: "static", pod: "static-one-gpu",
			check: func(t *testing.T, ctx context.Context, pod string) {
				waitCapacity(t, ctx, map[string]int64{gpuResource: dgxa100GPUs})
				devs := runGPUPod(t, ctx, pod, map[string]int64{gpuResource: 1})
				require.Len(t, devs.gpus, 1)
			},
		},
		{
			name: "dra", dir: "static-dra", pod: "static-dra-b30",
			check: func(t *testing.T, ctx context.Context, pod string) {
				d := &draRun{t: t, ctx: ctx, pool: startPoolWatch(t, ctx), shares: map[string]claimShare{}}
				s := d.pool.waitSince(t, "every GPU's gpu-<i> and gpu-<i>-blocks", time.Time{}, changeTimeout, func(s poolState) bool {
					return len(s.devices) == 2*dgxa100GPUs
				})
				d.checkPool(s)
				d.blocksTemplate(30)
				d.startClaimPod(pod, blocksTemplateName(30))
				pc := d.checkClaimPod(pod)
				require.Equal(t, int64(30), pc.blocks)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			applyStatic(t, context.Background(), tc.dir, tc.pod, tc.check)
		})
	}
}

// applyStatic applies the manifests in deployments/<dir>, the DaemonSet
// adapted to this cluster, waits for it to be Ready, runs check, and
// deletes everything again.
func applyStatic(t *testing.T, ctx context.Context, dir, pod string, check func(*testing.T, context.Context, string)) {
	dir, err := filepath.Abs(filepath.Join(repoRoot, "deployments", dir))
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
		if err := cl.DeletePod(ctx, podNamespace, pod, podTimeout); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		sel := metav1.ListOptions{LabelSelector: draLabel + "=dra"}
		if err := cl.Client.ResourceV1().ResourceClaimTemplates(podNamespace).DeleteCollection(ctx, metav1.DeleteOptions{}, sel); err != nil {
			t.Errorf("cleanup: claim templates: %v", err)
		}
		if out, err := cl.Kubectl(ctx, "delete", "-f", dir, "--ignore-not-found", "--wait"); err != nil {
			t.Errorf("cleanup: %v\n%s", err, out)
		}
		if err := cl.Wait(ctx, "the plugin pod gone", podTimeout, func(ctx context.Context) (bool, error) {
			pods, err := cl.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
			return err == nil && len(pods.Items) == 0, nil
		}); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if err := cl.Client.ResourceV1().ResourceSlices().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{FieldSelector: "spec.driver=" + draDriver}); err != nil {
			t.Errorf("cleanup: ResourceSlices: %v", err)
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
	// Fault injection on a free loopback port: on the host network the
	// default 9401 may be taken by another process on this machine.
	c.Args = append(c.Args, "--simulate=dgxa100", "--simulate-addr=127.0.0.1:"+strconv.Itoa(freePort(t)))
	c.Ports[0].ContainerPort = int32(port)
	c.Env = append(c.Env,
		v1.EnvVar{Name: "KUBERNETES_SERVICE_HOST", Value: "127.0.0.1"},
		v1.EnvVar{Name: "KUBERNETES_SERVICE_PORT", Value: strconv.Itoa(cl.APIServerPort)})
	_, err = cl.Client.AppsV1().DaemonSets(ds.Namespace).Create(ctx, &ds, metav1.CreateOptions{})
	require.NoError(t, err)

	start := time.Now()
	ready := waitDaemonSetReadyNamed(t, ctx, ds.Namespace, ds.Name, "")
	t.Logf("static DaemonSet %s/%s Ready: pod %s, image %s, args %v, %s after creation", ds.Namespace, ds.Name, ready.Name, c.Image, c.Args, time.Since(start).Round(time.Millisecond))
	check(t, ctx, pod)
}
