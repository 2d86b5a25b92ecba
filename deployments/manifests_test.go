package deployments

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// serviceMonitor is the subset of monitoring.coreos.com/v1 ServiceMonitor the
// chart writes. Decoding into it strictly catches misspelt or misplaced
// fields among those; it is not the operator's full schema.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// kinds maps "apiVersion/Kind" to a constructor for its typed object: every
// object in deployments/ must be one of these.
var kinds = map[string]func() any{
	"v1/Namespace":      func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount": func() any { return &corev1.ServiceAccount{} },
	"v1/ConfigMap":      func() any { return &corev1.ConfigMap{} },
	"v1/Service":        func() any { return &corev1.Service{} },
	"v1/ResourceQuota":  func() any { return &corev1.ResourceQuota{} },
	"rbac.authorization.k8s.io/v1/ClusterRole":        func() any { return &rbacv1.ClusterRole{} },
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding": func() any { return &rbacv1.ClusterRoleBinding{} },
	"apps/v1/DaemonSet":                               func() any { return &appsv1.DaemonSet{} },
	"monitoring.coreos.com/v1/ServiceMonitor":         func() any { return &serviceMonitor{} },
	"v1/Pod":                         func() any { return &corev1.Pod{} },
	"resource.k8s.io/v1/DeviceClass": func() any { return &resourcev1.DeviceClass{} },
	"resource.k8s.io/v1/ResourceClaimTemplate":                         func() any { return &resourcev1.ResourceClaimTemplate{} },
	"admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy":        func() any { return &admissionregistrationv1.ValidatingAdmissionPolicy{} },
	"admissionregistration.k8s.io/v1/ValidatingAdmissionPolicyBinding": func() any { return &admissionregistrationv1.ValidatingAdmissionPolicyBinding{} },
}

// object is one decoded document and where it came from.
type object struct {
	source string // file (and document number)
	key    string // apiVersion/Kind
	obj    any    // *appsv1.DaemonSet etc.
}

// objects is a set of decoded documents with typed accessors.
type objects []object

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeAll splits a YAML stream into documents and decodes each strictly
// into its k8s.io/api type: an unknown or misplaced field, a duplicate key
// or a wrong value type fails the test.
func decodeAll(t *testing.T, source string, data []byte) objects {
	t.Helper()
	var out objects
	for i, doc := range docSeparator.Split(string(data), -1) {
		if isBlank(doc) {
			continue
		}
		where := fmt.Sprintf("%s (document %d)", source, i+1)
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("%s: not YAML: %v", where, err)
		}
		key := tm.APIVersion + "/" + tm.Kind
		newObj, ok := kinds[key]
		if !ok {
			t.Fatalf("%s: unexpected object %q (apiVersion/kind); add it to kinds if it is meant to be there", where, key)
		}
		obj := newObj()
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s: %s does not decode strictly: %v\n%s", where, key, err, doc)
		}
		out = append(out, object{source: where, key: key, obj: obj})
	}
	return out
}

// isBlank reports whether a document holds only comments and white space
// (Helm renders disabled templates that way).
func isBlank(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

// decodeDir decodes every *.yaml file in dir.
func decodeDir(t *testing.T, dir string) objects {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no YAML files in %s (%v)", dir, err)
	}
	sort.Strings(files)
	var all objects
	for _, f := range files {
		all = append(all, decodeFile(t, f)...)
	}
	return all
}

// decodeFile decodes every document in one file.
func decodeFile(t *testing.T, file string) objects {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return decodeAll(t, file, data)
}

func of[T any](objs objects) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// only returns the single object of type T, failing unless there is exactly one.
func only[T any](t *testing.T, objs objects) T {
	t.Helper()
	all := of[T](objs)
	if len(all) != 1 {
		var zero T
		t.Fatalf("want exactly one %T, got %d", zero, len(all))
	}
	return all[0]
}

// sources lists where the objects came from, for failure messages.
func (objs objects) String() string {
	var b bytes.Buffer
	for _, o := range objs {
		fmt.Fprintf(&b, "  %s: %s\n", o.source, o.key)
	}
	return b.String()
}
