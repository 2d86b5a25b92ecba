package deployments

import (
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"github.com/gpublocks/gpublocks/config"
)

func TestWarm(t *testing.T) {
	_ = loader.Load
	_ = chartutil.ToRenderValues
	_ = engine.Render
	_ = appsv1.DaemonSet{}
	_ = corev1.ConfigMap{}
	_ = rbacv1.ClusterRole{}
	_ = yaml.UnmarshalStrict
	_ = config.Parse
	_ = klog.InitFlags
}
