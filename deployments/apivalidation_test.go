package deployments

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	podutil "k8s.io/kubernetes/pkg/api/pod"
	"k8s.io/kubernetes/pkg/apis/admissionregistration"
	_ "k8s.io/kubernetes/pkg/apis/admissionregistration/install"
	admissionvalidation "k8s.io/kubernetes/pkg/apis/admissionregistration/validation"
	"k8s.io/kubernetes/pkg/apis/apps"
	_ "k8s.io/kubernetes/pkg/apis/apps/install"
	appsvalidation "k8s.io/kubernetes/pkg/apis/apps/validation"
	"k8s.io/kubernetes/pkg/apis/batch"
	_ "k8s.io/kubernetes/pkg/apis/batch/install"
	batchvalidation "k8s.io/kubernetes/pkg/apis/batch/validation"
	"k8s.io/kubernetes/pkg/apis/core"
	_ "k8s.io/kubernetes/pkg/apis/core/install"
	corevalidation "k8s.io/kubernetes/pkg/apis/core/validation"
	"k8s.io/kubernetes/pkg/apis/rbac"
	_ "k8s.io/kubernetes/pkg/apis/rbac/install"
	rbacvalidation "k8s.io/kubernetes/pkg/apis/rbac/validation"
	"k8s.io/kubernetes/pkg/apis/resource"
	_ "k8s.io/kubernetes/pkg/apis/resource/install"
	resourcevalidation "k8s.io/kubernetes/pkg/apis/resource/validation"
	"k8s.io/kubernetes/pkg/capabilities"
)

func init() {
	// kube-apiserver --allow-privileged=true, as on every cluster that runs
	// privileged system DaemonSets (kube-proxy, CNI plugins; kubeadm's
	// default). Without it the API server refuses any privileged pod.
	capabilities.Initialize(capabilities.Capabilities{AllowPrivileged: true})
}

// exampleNamespace is where `kubectl apply` puts an example that names no
// namespace (the API server requires one for namespaced objects).
const exampleNamespace = "default"

// apiValidate runs what the API server runs on a create: the object is
// defaulted, converted to the internal type and checked with the API
// server's own validation for its kind (k8s.io/kubernetes v1.37, feature
// gates at their defaults). It returns what the API server would refuse the
// object for; ok is false for a kind without validation here (the
// Prometheus operator's ServiceMonitor).
func apiValidate(t *testing.T, o object) (errs field.ErrorList, ok bool) {
	t.Helper()
	in, isObj := o.obj.(runtime.Object)
	if !isObj {
		return nil, false
	}
	ext := in.DeepCopyObject()
	gvk := ext.GetObjectKind().GroupVersionKind()
	if gvk.Empty() {
		t.Fatalf("%s: no apiVersion/kind", o.source)
	}
	legacyscheme.Scheme.Default(ext)
	internal, err := legacyscheme.Scheme.New(schema.GroupVersionKind{Group: gvk.Group, Version: runtime.APIVersionInternal, Kind: gvk.Kind})
	if err != nil {
		t.Fatalf("%s: %s has no internal type: %v", o.source, o.key, err)
	}
	if err := legacyscheme.Scheme.Convert(ext, internal, nil); err != nil {
		t.Fatalf("%s: converting %s: %v", o.source, o.key, err)
	}
	switch v := internal.(type) {
	case *core.Namespace:
		return corevalidation.ValidateNamespace(v), true
	case *core.ServiceAccount:
		return corevalidation.ValidateServiceAccount(withNamespace(v, &v.ObjectMeta)), true
	case *core.ConfigMap:
		return corevalidation.ValidateConfigMap(withNamespace(v, &v.ObjectMeta)), true
	case *core.Service:
		// The Service registry fills the plural from the singular before
		// it validates a create (an old client's headless clusterIP: None).
		if v.Spec.ClusterIP != "" && len(v.Spec.ClusterIPs) == 0 {
			v.Spec.ClusterIPs = []string{v.Spec.ClusterIP}
		}
		return corevalidation.ValidateServiceCreate(withNamespace(v, &v.ObjectMeta)), true
	case *core.ResourceQuota:
		return corevalidation.ValidateResourceQuota(withNamespace(v, &v.ObjectMeta)), true
	case *core.Pod:
		withNamespace(v, &v.ObjectMeta)
		return corevalidation.ValidatePodCreate(v, podutil.GetValidationOptionsFromPodSpecAndMeta(&v.Spec, nil, &v.ObjectMeta, nil)), true
	case *apps.DaemonSet:
		return appsvalidation.ValidateDaemonSet(v, podutil.GetValidationOptionsFromPodTemplate(&v.Spec.Template, nil)), true
	case *batch.CronJob:
		withNamespace(v, &v.ObjectMeta)
		return batchvalidation.ValidateCronJobCreate(v, podutil.GetValidationOptionsFromPodTemplate(&v.Spec.JobTemplate.Spec.Template, nil)), true
	case *rbac.ClusterRole:
		return rbacvalidation.ValidateClusterRole(v, rbacvalidation.ClusterRoleValidationOptions{}), true
	case *rbac.ClusterRoleBinding:
		return rbacvalidation.ValidateClusterRoleBinding(v), true
	case *resource.DeviceClass:
		return resourcevalidation.ValidateDeviceClass(v), true
	case *resource.ResourceClaimTemplate:
		return resourcevalidation.ValidateResourceClaimTemplate(withNamespace(v, &v.ObjectMeta)), true
	case *admissionregistration.ValidatingAdmissionPolicy:
		return admissionvalidation.ValidateValidatingAdmissionPolicy(v), true
	case *admissionregistration.ValidatingAdmissionPolicyBinding:
		return admissionvalidation.ValidateValidatingAdmissionPolicyBinding(v), true
	}
	t.Fatalf("%s: no API validation wired up for %s (%T); add it to apiValidate", o.source, o.key, internal)
	return nil, false
}

// withNamespace gives a namespaced object without a namespace the one
// kubectl would (examples name none, so they go where they are applied).
func withNamespace[T any](obj T, meta interface {
	GetNamespace() string
	SetNamespace(string)
}) T {
	if meta.GetNamespace() == "" {
		meta.SetNamespace(exampleNamespace)
	}
	return obj
}

// checkAPIValid fails the test for every object the API server would refuse.
func checkAPIValid(t *testing.T, objs objects) {
	t.Helper()
	for _, o := range objs {
		errs, ok := apiValidate(t, o)
		if ok && len(errs) > 0 {
			t.Errorf("%s: the API server would refuse %s %s: %v", o.source, o.key, metaOf(o.obj).GetName(), errs.ToAggregate())
		}
	}
}

// TestAPIValidation runs the API server's validation over every object
// this module ships or renders: static manifests of both modes, every
// example, and the chart in both kubelet APIs with defaults and with
// everything switched on.
func TestAPIValidation(t *testing.T) {
	sets := map[string]func(t *testing.T) objects{
		"static":     func(t *testing.T) objects { return decodeDir(t, "static") },
		"static-dra": func(t *testing.T) objects { return decodeDir(t, "static-dra") },
		"examples":   func(t *testing.T) objects { return decodeDir(t, "examples") },
	}
	for name, values := range chartValueSets {
		sets["chart "+name] = func(t *testing.T) objects {
			objs, _ := mustRender(t, "gpublocks", "gpublocks", values)
			return objs
		}
	}
	for name, load := range sets {
		t.Run(name, func(t *testing.T) {
			objs := load(t)
			checked := 0
			for _, o := range objs {
				if _, ok := apiValidate(t, o); ok {
					checked++
				}
			}
			if checked == 0 {
				t.Fatalf("nothing validated in %s", name)
			}
			checkAPIValid(t, objs)
		})
	}
}

// chartValueSets are the chart's values the API validation covers.
var chartValueSets = map[string]string{
	"device-plugin defaults": "",
	"device-plugin everything": `
metrics: {serviceMonitor: {enabled: true}}
hostNetwork: true
extraEnv: [{name: GOMEMLIMIT, value: 200MiB}]
`,
	"dra defaults": "kubeletAPI: dra",
	"dra everything": `
kubeletAPI: dra
hostNetwork: true
paths: {kubeletPluginsDir: /var/lib/k0s/kubelet/plugins, kubeletRegistrarDir: /var/lib/k0s/kubelet/plugins_registry}
serviceAccount: {name: gpu-sa}
`,
}

// TestAPIValidationCatches proves apiValidate is not vacuous: objects the
// API server refuses are refused here too.
func TestAPIValidationCatches(t *testing.T) {
	for name, tc := range map[string]struct{ doc, want string }{
		"DeviceClass selector not CEL": {
			doc: `apiVersion: resource.k8s.io/v1
kind: DeviceClass
metadata: {name: bad.gpu.gpublocks.io}
spec:
  selectors: [{cel: {expression: 'device.driver ==== "x"'}}]
`, want: "spec.selectors[0].cel.expression"},
		"claim request name not a DNS label": {
			doc: `apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: blocks}
spec:
  spec:
    devices:
      requests:
        - name: Blocks
          exactly: {deviceClassName: blocks.gpu.gpublocks.io}
`, want: "spec.spec.devices.requests[0].name"},
		"ClusterRole rule without verbs": {
			doc: `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: x}
rules: [{apiGroups: [resource.k8s.io], resources: [resourceslices], verbs: []}]
`, want: "rules[0].verbs"},
		"DaemonSet hostPath volume without a path": {
			doc: `apiVersion: apps/v1
kind: DaemonSet
metadata: {name: x, namespace: gpublocks}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers: [{name: c, image: "i:1", volumeMounts: [{name: v, mountPath: /v}]}]
      volumes: [{name: v, hostPath: {path: ""}}]
`, want: "hostPath.path"},
		"ValidatingAdmissionPolicy expression not CEL": {
			doc: `apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: x}
spec:
  matchConstraints:
    resourceRules: [{apiGroups: [resource.k8s.io], apiVersions: ["*"], operations: [CREATE], resources: [resourceslices]}]
  validations: [{expression: "object.spec.?nodeName =="}]
`, want: "spec.validations[0].expression"},
	} {
		t.Run(name, func(t *testing.T) {
			objs := decodeAll(t, name, []byte(tc.doc))
			errs, ok := apiValidate(t, objs[0])
			if !ok || len(errs) == 0 {
				t.Fatalf("no validation error, want one on %s", tc.want)
			}
			if got := errs.ToAggregate().Error(); !containsField(errs, tc.want) {
				t.Errorf("errors %s, want one on %s", got, tc.want)
			}
		})
	}
}

// containsField reports whether one of errs is about a field whose path
// contains path.
func containsField(errs field.ErrorList, path string) bool {
	for _, e := range errs {
		if strings.Contains(e.Field, path) {
			return true
		}
	}
	return false
}
