// Package cluster is gpublocks' real-cluster suite: it builds etcd, the
// Kubernetes control plane, a kubelet and containerd from source (cached
// outside the repository), starts them on this machine, imports the
// gpublocks image, installs the Helm chart and runs pods that use simulated
// GPUs through containerd. See README.md.
package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpublocks/gpublocks/tests/cluster/fixture"
)

var (
	// skipReason, when set, is why every test skips (a missing tool).
	skipReason string
	// cl is the running cluster, shared by every test.
	cl *fixture.Cluster
	// imageArchive is the gpublocks image the chart runs.
	imageArchive string
)

// repoRoot is the gpublocks repository, two levels up.
var repoRoot = filepath.Join("..", "..")

func logf(format string, args ...any) {
	fmt.Printf("cluster: "+format+"\n", args...)
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if missing := fixture.Requirements(); len(missing) > 0 {
		skipReason = "the real-cluster suite needs " + strings.Join(missing, "; ")
		logf("skipping: %s", skipReason)
		return m.Run()
	}
	imageArchive = os.Getenv("GPUBLOCKS_IMAGE")
	if imageArchive == "" {
		imageArchive = filepath.Join(repoRoot, "bin", "gpublocks-image.tar")
	}
	if _, err := os.Stat(imageArchive); err != nil {
		logf("the gpublocks image %s is missing: run `make image` in the repository root first, or set GPUBLOCKS_IMAGE to an image archive (%v)", imageArchive, err)
		return 1
	}

	ctx := context.Background()
	start := time.Now()
	bin, err := fixture.BuildBinaries(ctx, ".", logf)
	if err != nil {
		logf("building the cluster's components: %v", err)
		return 1
	}
	logf("components ready in %s (%s)", time.Since(start).Round(time.Millisecond), bin.Dir)

	// Only now, with the slow build done, take the node: the kubelet's
	// paths are fixed, so no other kubelet suite may run meanwhile.
	lock, err := fixture.LockKubelet(func() {
		logf("waiting for %s: another suite that uses %s is running", fixture.KubeletLockPath, fixture.KubeletRoot)
	})
	if err != nil {
		logf("%v", err)
		return 1
	}
	defer lock.Unlock()

	start = time.Now()
	cl, err = fixture.Start(ctx, fixture.Options{Binaries: bin, Logf: logf})
	if err != nil {
		logf("starting the cluster: %v", err)
		return 1
	}
	logf("cluster up in %s; component logs in %s", time.Since(start).Round(time.Millisecond), cl.LogDir)
	code := m.Run()
	if err := cl.Stop(ctx); err != nil {
		logf("teardown: %v", err)
		code = 1
	} else {
		logf("cluster torn down")
	}
	if code == 0 && os.Getenv("GPUBLOCKS_CLUSTER_KEEP_LOGS") == "" {
		_ = os.RemoveAll(cl.LogDir)
	} else {
		logf("component logs kept in %s", cl.LogDir)
	}
	return code
}

// needCluster skips the test when the machine cannot run the cluster.
func needCluster(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}
