package deployments

import (
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourcev1 "k8s.io/api/resource/v1"
	dracel "k8s.io/dynamic-resource-allocation/cel"

	"github.com/gpublocks/gpublocks/dra"
)

// deviceTypes maps each DeviceClass the DRA deployments ship to the device
// type (attribute gpu.gpublocks.io/type) it selects (DESIGN §9).
var deviceTypes = map[string]string{
	dra.DriverName:             dra.TypeGPU,
	"blocks." + dra.DriverName: dra.TypeBlocks,
	"mig." + dra.DriverName:    dra.TypeMIG,
}

// classExpression is the selector a DeviceClass for device type typ has.
func classExpression(typ string) string {
	return `device.driver == "` + dra.DriverName + `" && device.attributes["` + dra.DriverName + `"].type == "` + typ + `"`
}

// clusterScoped reports whether obj is a cluster-scoped kind.
func clusterScoped(obj any) bool {
	switch obj.(type) {
	case *corev1.Namespace, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding, *resourcev1.DeviceClass,
		*admissionregistrationv1.ValidatingAdmissionPolicy, *admissionregistrationv1.ValidatingAdmissionPolicyBinding:
		return true
	}
	return false
}

// compileSelector compiles a DRA CEL selector with the scheduler's own
// compiler (consumable capacity on, as in 1.36+).
func compileSelector(t *testing.T, where, expr string) dracel.CompilationResult {
	t.Helper()
	res := dracel.GetCompiler(dracel.Features{EnableConsumableCapacity: true}).CompileCELExpression(expr, dracel.Options{})
	if res.Error != nil {
		t.Fatalf("%s: CEL selector %q does not compile: %v", where, expr, res.Error)
	}
	return res
}

// checkDeviceClasses asserts the three DeviceClasses, each selecting its
// device type with a selector that compiles, and gpu.gpublocks.io naming
// extendedResource ("" for none).
func checkDeviceClasses(t *testing.T, objs objects, extendedResource string) {
	t.Helper()
	classes := of[*resourcev1.DeviceClass](objs)
	var names []string
	for _, c := range classes {
		names = append(names, c.Name)
		typ, ok := deviceTypes[c.Name]
		if !ok {
			t.Errorf("unexpected DeviceClass %s", c.Name)
			continue
		}
		if len(c.Spec.Selectors) != 1 || c.Spec.Selectors[0].CEL == nil {
			t.Errorf("DeviceClass %s: want one CEL selector, got %+v", c.Name, c.Spec.Selectors)
			continue
		}
		expr := c.Spec.Selectors[0].CEL.Expression
		if expr != classExpression(typ) {
			t.Errorf("DeviceClass %s selects %q, want %q", c.Name, expr, classExpression(typ))
		}
		compileSelector(t, "DeviceClass "+c.Name, expr)
		if len(c.Spec.Config) != 0 {
			t.Errorf("DeviceClass %s carries config %+v: the plugin takes none", c.Name, c.Spec.Config)
		}
		want := ""
		if typ == dra.TypeGPU {
			want = extendedResource
		}
		if got := ptrValue(c.Spec.ExtendedResourceName); got != want {
			t.Errorf("DeviceClass %s extendedResourceName %q, want %q", c.Name, got, want)
		}
	}
	slices.Sort(names)
	if want := slices.Sorted(maps.Keys(deviceTypes)); !slices.Equal(names, want) {
		t.Errorf("DeviceClasses %v, want %v", names, want)
	}
}

func ptrValue[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// draRules are the only rules the DRA plugin's ClusterRole may have.
var draRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"resource.k8s.io"}, Resources: []string{"resourceslices"}, Verbs: []string{"create", "delete", "get", "list", "patch", "update", "watch"}},
	{APIGroups: []string{"resource.k8s.io"}, Resources: []string{"resourceclaims"}, Verbs: []string{"get"}},
}

// checkDRARBAC asserts the DRA plugin's least privilege: Node objects
// read-only, ResourceSlices managed, ResourceClaims get, nothing else;
// bound to the plugin's service account.
func checkDRARBAC(t *testing.T, objs objects, namespace, serviceAccount string) {
	t.Helper()
	role := only[*rbacv1.ClusterRole](t, objs)
	var got []rbacv1.PolicyRule
	for _, r := range role.Rules {
		r.Verbs = slices.Sorted(slices.Values(r.Verbs))
		got = append(got, r)
	}
	if !reflect.DeepEqual(got, draRules) {
		t.Errorf("ClusterRole %s rules:\n  %+v\nwant exactly:\n  %+v", role.Name, got, draRules)
	}
	binding := only[*rbacv1.ClusterRoleBinding](t, objs)
	if binding.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name}) {
		t.Errorf("ClusterRoleBinding roleRef %+v does not name ClusterRole %s", binding.RoleRef, role.Name)
	}
	want := rbacv1.Subject{Kind: "ServiceAccount", Name: serviceAccount, Namespace: namespace}
	if !slices.Equal(binding.Subjects, []rbacv1.Subject{want}) {
		t.Errorf("ClusterRoleBinding subjects %+v, want %+v", binding.Subjects, want)
	}
}

// checkSlicePolicy asserts the ValidatingAdmissionPolicy that narrows the
// plugin's ResourceSlice writes to its own node: bound with Deny, failing
// closed, matching every write to ResourceSlices by the plugin's service
// account and no one else's. What it decides is TestSlicePolicyDecisions'.
func checkSlicePolicy(t *testing.T, objs objects, namespace, serviceAccount string) *admissionregistrationv1.ValidatingAdmissionPolicy {
	t.Helper()
	p := only[*admissionregistrationv1.ValidatingAdmissionPolicy](t, objs)
	b := only[*admissionregistrationv1.ValidatingAdmissionPolicyBinding](t, objs)
	if b.Spec.PolicyName != p.Name || !slices.Equal(b.Spec.ValidationActions, []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}) ||
		b.Spec.ParamRef != nil || b.Spec.MatchResources != nil {
		t.Errorf("ValidatingAdmissionPolicyBinding %s: %+v, want policy %s denied everywhere", b.Name, b.Spec, p.Name)
	}
	if p.Spec.FailurePolicy == nil || *p.Spec.FailurePolicy != admissionregistrationv1.Fail {
		t.Errorf("ValidatingAdmissionPolicy %s: failurePolicy %v, want Fail (an error must not let a write through)", p.Name, p.Spec.FailurePolicy)
	}
	mc := p.Spec.MatchConstraints
	if mc == nil || len(mc.ResourceRules) != 1 {
		t.Fatalf("ValidatingAdmissionPolicy %s: want one resource rule, got %+v", p.Name, mc)
	}
	r := mc.ResourceRules[0]
	ops := slices.Sorted(slices.Values(r.Operations))
	if !slices.Equal(r.APIGroups, []string{"resource.k8s.io"}) || !slices.Equal(r.Resources, []string{"resourceslices"}) ||
		!slices.Equal(r.APIVersions, []string{"*"}) ||
		!slices.Equal(ops, []admissionregistrationv1.OperationType{"CREATE", "DELETE", "UPDATE"}) {
		t.Errorf("ValidatingAdmissionPolicy %s matches %+v, want CREATE, UPDATE, DELETE of resource.k8s.io resourceslices, every version", p.Name, r)
	}
	user := "system:serviceaccount:" + namespace + ":" + serviceAccount
	if len(p.Spec.MatchConditions) != 1 || !strings.Contains(p.Spec.MatchConditions[0].Expression, `request.userInfo.username == "`+user+`"`) {
		t.Errorf("ValidatingAdmissionPolicy %s match conditions %+v: want the user %s only", p.Name, p.Spec.MatchConditions, user)
	}
	return p
}

// TestChartDRA renders the chart with kubeletAPI=dra: the DRA plugin's
// arguments and kubelet directories instead of the device-plugin ones,
// its RBAC, the node restriction for ResourceSlices, the DeviceClasses.
func TestChartDRA(t *testing.T) {
	objs, notes := mustRender(t, "gpublocks", "gpublocks", "kubeletAPI: dra")
	sa := only[*corev1.ServiceAccount](t, objs)
	checkDRARBAC(t, objs, "gpublocks", sa.Name)
	checkSlicePolicy(t, objs, "gpublocks", sa.Name)
	checkDeviceClasses(t, objs, "nvidia.com/gpu")
	cm := only[*corev1.ConfigMap](t, objs)
	loadConfigMap(t, cm)
	w := draWant
	w.serviceAccount, w.configMap = sa.Name, cm.Name
	ds := only[*appsv1.DaemonSet](t, objs)
	checkDaemonSet(t, ds, w)
	if got := ds.Spec.Template.Labels["app.kubernetes.io/component"]; got != "dra-kubelet-plugin" {
		t.Errorf("pod component label %q, want dra-kubelet-plugin", got)
	}
	for _, want := range []string{"resourceslices", "deviceclasses", "DRAConsumableCapacity", "nvidia.com/gpu"} {
		if !strings.Contains(notes, want) {
			t.Errorf("NOTES.txt in DRA mode does not mention %s:\n%s", want, notes)
		}
	}
	if strings.Contains(notes, "allocatable") {
		t.Errorf("NOTES.txt in DRA mode points at node allocatable, which DRA does not fill:\n%s", notes)
	}
}

// TestChartDRAValues covers the DRA values: kubelet paths, skipping the
// DeviceClasses, the extended resource and the node restriction, and RBAC
// managed elsewhere.
func TestChartDRAValues(t *testing.T) {
	t.Run("k0s paths and own service account", func(t *testing.T) {
		objs, _ := mustRender(t, "prod", "gpu-system", `
kubeletAPI: dra
serviceAccount: {create: false, name: gpu-sa}
paths:
  kubeletPluginsDir: /var/lib/k0s/kubelet/plugins
  kubeletRegistrarDir: /var/lib/k0s/kubelet/plugins_registry
  cdiDir: /etc/cdi
`)
		checkDRARBAC(t, objs, "gpu-system", "gpu-sa")
		checkSlicePolicy(t, objs, "gpu-system", "gpu-sa")
		w := draWant
		w.namespace, w.serviceAccount, w.configMap, w.cdiDir = "gpu-system", "gpu-sa", "prod-gpublocks-config", "/etc/cdi"
		w.kubeletPlugins, w.kubeletRegistrar = "/var/lib/k0s/kubelet/plugins", "/var/lib/k0s/kubelet/plugins_registry"
		checkDaemonSet(t, only[*appsv1.DaemonSet](t, objs), w)
	})
	t.Run("no DeviceClasses", func(t *testing.T) {
		objs, notes := mustRender(t, "gpublocks", "gpublocks", "kubeletAPI: dra\ndra: {deviceClasses: {create: false}}")
		if n := len(of[*resourcev1.DeviceClass](objs)); n != 0 {
			t.Errorf("%d DeviceClasses rendered with dra.deviceClasses.create=false", n)
		}
		if !strings.Contains(notes, "not installed by this release") {
			t.Errorf("NOTES.txt does not say the DeviceClasses come from elsewhere:\n%s", notes)
		}
	})
	t.Run("no extended resource", func(t *testing.T) {
		objs, _ := mustRender(t, "gpublocks", "gpublocks", "kubeletAPI: dra\ndra: {deviceClasses: {extendedResourceName: \"\"}}")
		checkDeviceClasses(t, objs, "")
	})
	t.Run("no node restriction", func(t *testing.T) {
		objs, _ := mustRender(t, "gpublocks", "gpublocks", "kubeletAPI: dra\ndra: {nodeRestriction: false}")
		if len(of[*admissionregistrationv1.ValidatingAdmissionPolicy](objs))+len(of[*admissionregistrationv1.ValidatingAdmissionPolicyBinding](objs)) != 0 {
			t.Errorf("a ValidatingAdmissionPolicy rendered with dra.nodeRestriction=false:\n%s", objs)
		}
	})
	t.Run("RBAC elsewhere", func(t *testing.T) {
		objs, notes := mustRender(t, "gpublocks", "gpublocks", "kubeletAPI: dra\nrbac: {create: false}")
		if len(of[*rbacv1.ClusterRole](objs))+len(of[*rbacv1.ClusterRoleBinding](objs)) != 0 {
			t.Errorf("RBAC rendered with rbac.create=false:\n%s", objs)
		}
		if !strings.Contains(notes, "resourceslices") || !strings.Contains(notes, "resourceclaims") {
			t.Errorf("NOTES.txt with rbac.create=false does not list the DRA rights:\n%s", notes)
		}
	})
}

// TestChartDevicePluginHasNoDRA: the default mode renders nothing of DRA
// (a node serves one kubelet API, never both).
func TestChartDevicePluginHasNoDRA(t *testing.T) {
	for name, values := range map[string]string{"default": "", "explicit": "kubeletAPI: device-plugin"} {
		t.Run(name, func(t *testing.T) {
			objs, notes := mustRender(t, "gpublocks", "gpublocks", values)
			for _, o := range objs {
				switch o.obj.(type) {
				case *resourcev1.DeviceClass, *admissionregistrationv1.ValidatingAdmissionPolicy, *admissionregistrationv1.ValidatingAdmissionPolicyBinding:
					t.Errorf("%s: %s rendered in device-plugin mode", o.source, o.key)
				}
			}
			checkRBAC(t, objs, "gpublocks", only[*corev1.ServiceAccount](t, objs).Name)
			if strings.Contains(notes, "resourceslices") {
				t.Errorf("NOTES.txt in device-plugin mode talks about DRA:\n%s", notes)
			}
		})
	}
}

// TestChartKubeletAPIRefused: a kubeletAPI the chart does not know, DRA on
// a cluster without resource.k8s.io/v1, or DRA with a surge update (two
// pods on one node) fails `helm template` with a message naming the value
// and what to do.
func TestChartKubeletAPIRefused(t *testing.T) {
	for name, tc := range map[string]struct{ kube, values, want string }{
		"misspelt":            {"1.37.2", "kubeletAPI: deviceplugin", "kubeletAPI (deviceplugin) must be device-plugin"},
		"capitalised":         {"1.37.2", "kubeletAPI: DRA", "kubeletAPI (DRA) must be device-plugin (extended resources such as nvidia.com/gpu) or dra"},
		"empty":               {"1.37.2", `kubeletAPI: ""`, "kubeletAPI () must be"},
		"both":                {"1.37.2", "kubeletAPI: [device-plugin, dra]", "must be device-plugin"},
		"DRA before v1":       {"1.33.4", "kubeletAPI: dra", "kubeletAPI=dra needs Kubernetes >= 1.34 (resource.k8s.io/v1), the cluster is v1.33.4"},
		"DRA pre-release":     {"1.34.0-rc.1", "kubeletAPI: dra", ""},
		"DRA surge":           {"1.37.2", "kubeletAPI: dra\nupdateStrategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}", "updateStrategy.rollingUpdate.maxSurge (1) must be 0 with kubeletAPI=dra"},
		"DRA surge percent":   {"1.37.2", "kubeletAPI: dra\nupdateStrategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 10%, maxUnavailable: 0}}", "maxSurge (10%) must be 0"},
		"DRA no surge":        {"1.37.2", "kubeletAPI: dra\nupdateStrategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 0, maxUnavailable: 2}}", ""},
		"DRA OnDelete":        {"1.37.2", "kubeletAPI: dra\nupdateStrategy: {type: OnDelete, rollingUpdate: null}", ""},
		"device-plugin surge": {"1.37.2", "updateStrategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}", ""},
		"device-plugin 1.29":  {"1.29.0", "", ""},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := renderFor(t, tc.kube, "gpublocks", "gpublocks", tc.values)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestStaticDRA checks deployments/static-dra/, applied with
// `kubectl apply -f deployments/static-dra/`: complete on its own, the same
// shared objects as deployments/static/ (so switching modes replaces only
// what differs), and the same DRA objects as the chart renders.
func TestStaticDRA(t *testing.T) {
	objs := decodeDir(t, "static-dra")
	ns := only[*corev1.Namespace](t, objs)
	for _, o := range objs {
		m := metaOf(o.obj)
		switch {
		case clusterScoped(o.obj):
			if m.GetNamespace() != "" {
				t.Errorf("%s: cluster-scoped %s has namespace %q", o.source, o.key, m.GetNamespace())
			}
		case m.GetNamespace() != ns.Name:
			t.Errorf("%s: %s %s is in namespace %q, want %q", o.source, o.key, m.GetName(), m.GetNamespace(), ns.Name)
		}
	}
	sa := only[*corev1.ServiceAccount](t, objs)
	checkDRARBAC(t, objs, ns.Name, sa.Name)
	checkSlicePolicy(t, objs, ns.Name, sa.Name)
	checkDeviceClasses(t, objs, "nvidia.com/gpu")
	cm := only[*corev1.ConfigMap](t, objs)
	loadConfigMap(t, cm)
	w := draWant
	w.serviceAccount, w.configMap = sa.Name, cm.Name
	ds := only[*appsv1.DaemonSet](t, objs)
	checkDaemonSet(t, ds, w)

	// Shared with the device-plugin manifests, object for object; the
	// DaemonSet and RBAC have the same names, so applying one directory
	// after the other switches the mode.
	dp := decodeDir(t, "static")
	same := func(what string, a, b any) {
		t.Helper()
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s differs between static/ and static-dra/:\n  %+v\n  %+v", what, a, b)
		}
	}
	same("Namespace", only[*corev1.Namespace](t, dp), ns)
	same("ServiceAccount", only[*corev1.ServiceAccount](t, dp), sa)
	same("ConfigMap", only[*corev1.ConfigMap](t, dp), cm)
	same("Service", only[*corev1.Service](t, dp), only[*corev1.Service](t, objs))
	same("DaemonSet name", only[*appsv1.DaemonSet](t, dp).Name, ds.Name)
	same("ClusterRole name", only[*rbacv1.ClusterRole](t, dp).Name, only[*rbacv1.ClusterRole](t, objs).Name)

	// The same DRA deployment as the chart's defaults (release and
	// namespace gpublocks), apart from Helm's labels.
	chart, _ := mustRender(t, "gpublocks", "gpublocks", "kubeletAPI: dra")
	same("ClusterRole rules (chart, static-dra)", only[*rbacv1.ClusterRole](t, chart).Rules, only[*rbacv1.ClusterRole](t, objs).Rules)
	same("ValidatingAdmissionPolicy spec (chart, static-dra)", only[*admissionregistrationv1.ValidatingAdmissionPolicy](t, chart).Spec,
		only[*admissionregistrationv1.ValidatingAdmissionPolicy](t, objs).Spec)
	specs := func(objs objects) map[string]resourcev1.DeviceClassSpec {
		out := map[string]resourcev1.DeviceClassSpec{}
		for _, c := range of[*resourcev1.DeviceClass](objs) {
			out[c.Name] = c.Spec
		}
		return out
	}
	same("DeviceClasses (chart, static-dra)", specs(chart), specs(objs))
	cc, sc := only[*appsv1.DaemonSet](t, chart).Spec.Template.Spec, ds.Spec.Template.Spec
	same("container args (chart, static-dra)", cc.Containers[0].Args, sc.Containers[0].Args)
	same("volume mounts (chart, static-dra)", cc.Containers[0].VolumeMounts, sc.Containers[0].VolumeMounts)
	same("volumes (chart, static-dra)", cc.Volumes, sc.Volumes)
}
