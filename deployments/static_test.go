package deployments

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestStatic checks deployments/static/, applied with
// `kubectl apply -f deployments/static/`.
func TestStatic(t *testing.T) {
	objs := decodeDir(t, "static")

	ns := only[*corev1.Namespace](t, objs)
	if ns.Name != "gpublocks" || ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("Namespace %s labels %v: want gpublocks allowing privileged pods", ns.Name, ns.Labels)
	}
	for _, o := range objs {
		m := metaOf(o.obj)
		switch o.obj.(type) {
		case *corev1.Namespace, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding:
			if m.GetNamespace() != "" {
				t.Errorf("%s: cluster-scoped %s has namespace %q", o.source, o.key, m.GetNamespace())
			}
		default:
			if m.GetNamespace() != ns.Name {
				t.Errorf("%s: %s %s is in namespace %q, want %q", o.source, o.key, m.GetName(), m.GetNamespace(), ns.Name)
			}
		}
	}

	sa := only[*corev1.ServiceAccount](t, objs)
	checkRBAC(t, objs, ns.Name, sa.Name)
	cm := only[*corev1.ConfigMap](t, objs)
	set := loadConfigMap(t, cm)
	if cfg := set.Configs["default"]; len(cfg.GPUs) != 0 || cfg.MigStrategy != "mixed" {
		t.Errorf("static default config: want the built-in defaults, got %+v", cfg)
	}
	w := defaultWant
	w.serviceAccount, w.configMap = sa.Name, cm.Name
	ds := only[*appsv1.DaemonSet](t, objs)
	checkDaemonSet(t, ds, w)

	svc := only[*corev1.Service](t, objs)
	if svc.Spec.Selector["app.kubernetes.io/name"] != ds.Spec.Template.Labels["app.kubernetes.io/name"] ||
		len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.StrVal != "metrics" {
		t.Errorf("metrics Service %+v does not select the plugin's metrics port", svc.Spec)
	}
}

// metaOf returns an object's metadata.
func metaOf(obj any) metav1.Object {
	if m, ok := obj.(metav1.Object); ok {
		return m
	}
	if sm, ok := obj.(*serviceMonitor); ok {
		return &sm.ObjectMeta
	}
	panic("no metadata")
}
