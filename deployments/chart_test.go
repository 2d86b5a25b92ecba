package deployments

import (
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/gpublocks/gpublocks/config"
)

var chartDir = filepath.Join("helm", "gpublocks")

// render renders the chart as `helm template` would for a release, with
// Helm's strict engine (a template reading a value that does not exist is
// an error), and returns the objects and the rendered NOTES.txt.
func render(t *testing.T, release, namespace, values string) (objects, string, error) {
	t.Helper()
	return renderFor(t, "1.37.2", release, namespace, values)
}

// renderFor renders the chart for a cluster of Kubernetes version kube
// (major.minor.patch).
func renderFor(t *testing.T, kube, release, namespace, values string) (objects, string, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("loading the chart: %v", err)
	}
	vals, err := chartutil.ReadValues([]byte(values))
	if err != nil {
		t.Fatalf("test values: %v", err)
	}
	// Render for the Kubernetes release whose API types decode the output
	// (k8s.io/api v0.37); Helm's own default is far older.
	caps := chartutil.DefaultCapabilities.Copy()
	parts := strings.SplitN(kube, ".", 3)
	caps.KubeVersion = chartutil.KubeVersion{Version: "v" + kube, Major: parts[0], Minor: parts[1]}
	if !chartutil.IsCompatibleRange(ch.Metadata.KubeVersion, caps.KubeVersion.String()) {
		t.Fatalf("Chart.yaml kubeVersion %q excludes Kubernetes %s", ch.Metadata.KubeVersion, caps.KubeVersion)
	}
	opts := chartutil.ReleaseOptions{Name: release, Namespace: namespace, Revision: 1, IsInstall: true}
	rv, err := chartutil.ToRenderValues(ch, vals, opts, caps)
	if err != nil {
		return nil, "", err
	}
	files, err := engine.Engine{Strict: true}.Render(ch, rv)
	if err != nil {
		return nil, "", err
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range files {
			if !yield(n) {
				return
			}
		}
	})
	var objs objects
	var notes string
	for _, name := range names {
		switch {
		case strings.HasPrefix(path.Base(name), "_"):
		case strings.HasSuffix(name, "NOTES.txt"):
			notes = files[name]
		default:
			objs = append(objs, decodeAll(t, name, []byte(files[name]))...)
		}
	}
	return objs, notes, nil
}

func mustRender(t *testing.T, release, namespace, values string) (objects, string) {
	t.Helper()
	objs, notes, err := render(t, release, namespace, values)
	if err != nil {
		t.Fatalf("rendering the chart: %v", err)
	}
	for _, o := range objs {
		if m := metaOf(o.obj); m.GetName() == "" || len(m.GetName()) > 63 {
			t.Errorf("%s: bad name %q", o.source, m.GetName())
		}
		switch {
		case clusterScoped(o.obj):
			if ns := metaOf(o.obj).GetNamespace(); ns != "" {
				t.Errorf("%s: cluster-scoped %s has namespace %q", o.source, o.key, ns)
			}
		default:
			if ns := metaOf(o.obj).GetNamespace(); ns != namespace {
				t.Errorf("%s: namespace %q, want the release's %q", o.source, ns, namespace)
			}
		}
	}
	if !strings.Contains(notes, namespace) {
		t.Errorf("NOTES.txt does not name the namespace:\n%s", notes)
	}
	return objs, notes
}

func TestChartDefaults(t *testing.T) {
	objs, notes := mustRender(t, "gpublocks", "gpublocks", "")
	sa := only[*corev1.ServiceAccount](t, objs)
	checkRBAC(t, objs, "gpublocks", sa.Name)
	cm := only[*corev1.ConfigMap](t, objs)
	set := loadConfigMap(t, cm)
	// values.yaml's default config is the product's built-in default,
	// written out: deploying the chart changes nothing until edited.
	got := *set.Configs["default"]
	if len(got.GPUs) == 0 {
		got.GPUs = nil
	}
	if want := config.Default(); !reflect.DeepEqual(&got, want) {
		t.Errorf("values.yaml config.default is not the built-in default:\ngot  %+v\nwant %+v", got, *want)
	}
	w := defaultWant
	w.serviceAccount, w.configMap = sa.Name, cm.Name
	ds := only[*appsv1.DaemonSet](t, objs)
	checkDaemonSet(t, ds, w)
	if spec := ds.Spec.Template.Spec; spec.HostNetwork || spec.DNSPolicy != "" {
		t.Errorf("hostNetwork %v dnsPolicy %q by default: the pod network is the default", spec.HostNetwork, spec.DNSPolicy)
	}
	if img := ds.Spec.Template.Spec.Containers[0].Image; img != "ghcr.io/gpublocks/gpublocks:v0.1.0" {
		t.Errorf("default image %q, want the chart's appVersion", img)
	}
	if len(of[*serviceMonitor](objs)) != 0 {
		t.Errorf("a ServiceMonitor by default: it needs the Prometheus operator's CRDs")
	}
	if svc := only[*corev1.Service](t, objs); svc.Spec.Ports[0].Port != 9400 {
		t.Errorf("metrics Service port %d", svc.Spec.Ports[0].Port)
	}
	if !strings.Contains(notes, "gpublocks.io/config") {
		t.Errorf("NOTES.txt does not say how to pick a config:\n%s", notes)
	}
}

func TestChartOverrides(t *testing.T) {
	objs, _ := mustRender(t, "prod", "gpu-system", `
image: {repository: registry.example.com/gpublocks, tag: v9.9.9, pullPolicy: Always}
imagePullSecrets: [{name: regcred}]
existingConfigMap: site-gpublocks
rbac: {create: false}
serviceAccount: {create: false, name: gpu-sa}
logVerbosity: 4
extraArgs: ["--simulate=dgxa100-mig"]
extraEnv: [{name: GOMEMLIMIT, value: 200MiB}]
hostNetwork: true
paths:
  driverRoot: /run/nvidia/driver
  devicePluginDir: /var/lib/k0s/kubelet/device-plugins
  podResourcesDir: /var/lib/k0s/kubelet/pod-resources
  cdiDir: /etc/cdi
metrics: {port: 9500, service: {enabled: false}, serviceMonitor: {enabled: true, labels: {release: prom}}}
nodeSelector: {node-role.example.com/gpu: "yes"}
podAnnotations: {example.com/team: ml}
podLabels: {example.com/tier: system}
updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 25%}}
`)
	for _, o := range objs {
		switch o.obj.(type) {
		case *corev1.ServiceAccount, *corev1.ConfigMap, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding:
			t.Errorf("%s: %s rendered although it is provided elsewhere", o.source, o.key)
		}
	}
	ds := only[*appsv1.DaemonSet](t, objs)
	checkDaemonSet(t, ds, dsWant{
		namespace:      "gpu-system",
		serviceAccount: "gpu-sa",
		configMap:      "site-gpublocks",
		metricsPort:    9500,
		hostRoot:       "/",
		devicePlugin:   "/var/lib/k0s/kubelet/device-plugins",
		podResources:   "/var/lib/k0s/kubelet/pod-resources",
		cdiDir:         "/etc/cdi",
		driverRoot:     "/host/run/nvidia/driver",
		hostNetwork:    true,
	})
	pod := ds.Spec.Template
	c := pod.Spec.Containers[0]
	if c.Image != "registry.example.com/gpublocks:v9.9.9" || c.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("image %q %q", c.Image, c.ImagePullPolicy)
	}
	args := parseArgs(t, c.Args[1:])
	if args["v"] != "4" || args["simulate"] != "dgxa100-mig" {
		t.Errorf("args %q: want -v=4 and the extra --simulate", c.Args)
	}
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "GOMEMLIMIT" }) {
		t.Errorf("extraEnv missing from %v", c.Env)
	}
	if !pod.Spec.HostNetwork || pod.Spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("hostNetwork %v dnsPolicy %q, want true and ClusterFirstWithHostNet", pod.Spec.HostNetwork, pod.Spec.DNSPolicy)
	}
	if !slices.Equal(pod.Spec.ImagePullSecrets, []corev1.LocalObjectReference{{Name: "regcred"}}) {
		t.Errorf("imagePullSecrets %v", pod.Spec.ImagePullSecrets)
	}
	if pod.Spec.NodeSelector["node-role.example.com/gpu"] != "yes" || pod.Annotations["example.com/team"] != "ml" ||
		pod.Labels["example.com/tier"] != "system" {
		t.Errorf("nodeSelector %v annotations %v labels %v", pod.Spec.NodeSelector, pod.Annotations, pod.Labels)
	}
	if mu := ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable; mu == nil || mu.String() != "25%" {
		t.Errorf("maxUnavailable %v, want 25%%", mu)
	}
	sm := only[*serviceMonitor](t, objs)
	svc := only[*corev1.Service](t, objs) // a ServiceMonitor needs the Service
	if sm.Labels["release"] != "prom" || len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" ||
		!reflect.DeepEqual(sm.Spec.Selector.MatchLabels, filterLabels(svc.Labels, sm.Spec.Selector.MatchLabels)) ||
		svc.Spec.Ports[0].Port != 9500 || svc.Spec.Ports[0].Name != "metrics" {
		t.Errorf("ServiceMonitor %+v does not scrape Service %+v", sm.Spec, svc.Spec)
	}
}

// filterLabels keeps the keys of have that want also has.
func filterLabels(have, want map[string]string) map[string]string {
	out := map[string]string{}
	for k := range want {
		if v, ok := have[k]; ok {
			out[k] = v
		}
	}
	return out
}

// TestChartNamedConfigs: configs given as maps or as YAML strings (with
// comments) all become ConfigMap keys the product accepts.
func TestChartNamedConfigs(t *testing.T) {
	objs, notes := mustRender(t, "gpublocks", "gpublocks", `
config:
  default:
    version: v1
    gpus:
      - match: {index: [0, 1, 2, 3]}
        shape: blocks
  blocks:
    version: v1
    blocks: {policy: spread}
    gpus: [{match: {model: "*"}, shape: blocks}]
  training: |
    # whole GPUs only
    version: v1
    deviceListStrategy: [cdi-cri, envvar]
`)
	set := loadConfigMap(t, only[*corev1.ConfigMap](t, objs))
	if got := set.Names(); !slices.Equal(got, []string{"blocks", "default", "training"}) {
		t.Fatalf("configs %v", got)
	}
	if set.Configs["blocks"].Blocks.Policy != "spread" || set.Configs["default"].ShapeFor(3, "", "") != "blocks" ||
		!slices.Equal(set.Configs["training"].DeviceListStrategy, []string{"cdi-cri", "envvar"}) {
		t.Errorf("configs did not survive rendering: %+v", set.Configs)
	}
	if !strings.Contains(notes, "blocks, default, training") {
		t.Errorf("NOTES.txt does not list the configs:\n%s", notes)
	}
}

// TestChartDriverRoot covers where the driver lives relative to the
// mounted host root, and the values the chart refuses.
func TestChartDriverRoot(t *testing.T) {
	for name, tc := range map[string]struct {
		values, want, wantErr string
	}{
		"host driver":          {values: `paths: {driverRoot: /}`, want: "/host"},
		"gpu operator":         {values: `paths: {driverRoot: /run/nvidia/driver/}`, want: "/host/run/nvidia/driver"},
		"relative driver root": {values: `paths: {driverRoot: run/nvidia}`, wantErr: "must be an absolute host path"},
		"no config":            {values: `config: null`, wantErr: "config must hold at least one named config"},
	} {
		t.Run(name, func(t *testing.T) {
			objs, _, err := render(t, "gpublocks", "gpublocks", tc.values)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := only[*appsv1.DaemonSet](t, objs).Spec.Template.Spec.Containers[0]
			if got := parseArgs(t, c.Args[1:])["driver-root"]; got != tc.want {
				t.Errorf("--driver-root=%s, want %s", got, tc.want)
			}
		})
	}
}

// TestChartValuesDocumented: every value in values.yaml has a row in the
// chart's README.
func TestChartValuesDocumented(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var vals map[string]any
	if err := yaml.Unmarshal(data, &vals); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	// Values whose contents are free-form (Kubernetes fields, configs).
	opaque := map[string]bool{"config": true, "affinity": true, "resources": true, "securityContext": true,
		"podSecurityContext": true, "updateStrategy": true, "nodeSelector": true, "podAnnotations": true,
		"podLabels": true, "serviceAccount.annotations": true, "metrics.serviceMonitor.labels": true}
	var paths []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		m, ok := v.(map[string]any)
		if !ok || opaque[prefix] || len(m) == 0 {
			paths = append(paths, prefix)
			return
		}
		for k, sub := range m {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			walk(p, sub)
		}
	}
	walk("", vals)
	sort.Strings(paths)
	for _, p := range paths {
		if !strings.Contains(string(readme), "`"+p+"`") {
			t.Errorf("value %s is not documented in %s/README.md", p, chartDir)
		}
	}
}
