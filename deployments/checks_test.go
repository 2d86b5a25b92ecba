package deployments

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/gpublocks/gpublocks/config"
)

// dsWant is what a deployment's DaemonSet must agree with.
type dsWant struct {
	namespace      string
	serviceAccount string
	configMap      string // the ConfigMap mounted at --config
	metricsPort    int32
	hostRoot       string // host path mounted at /host
	devicePlugin   string // host (and container) device-plugin dir
	podResources   string // host PodResources dir
	cdiDir         string // host (and container) CDI dir
	driverRoot     string // --driver-root as the container sees it
	// hostNetwork is the chart's opt-in for clusters without kube-proxy.
	hostNetwork bool
	// dra: the pod serves the kubelet's DRA API (--kubelet-api=dra) from
	// these host (and container) directories instead of the device-plugin
	// API: devicePlugin and podResources must then be neither passed nor
	// mounted.
	dra              bool
	kubeletPlugins   string
	kubeletRegistrar string
}

var defaultWant = dsWant{
	namespace:    "gpublocks",
	metricsPort:  9400,
	hostRoot:     "/",
	devicePlugin: "/var/lib/kubelet/device-plugins",
	podResources: "/var/lib/kubelet/pod-resources",
	cdiDir:       "/var/run/cdi",
	driverRoot:   "/host",
}

// draWant is defaultWant in DRA mode.
var draWant = dsWant{
	namespace:        "gpublocks",
	metricsPort:      9400,
	hostRoot:         "/",
	cdiDir:           "/var/run/cdi",
	driverRoot:       "/host",
	dra:              true,
	kubeletPlugins:   "/var/lib/kubelet/plugins",
	kubeletRegistrar: "/var/lib/kubelet/plugins_registry",
}

// checkDaemonSet asserts what the plugin needs from its pod: the flags the
// product accepts, the host paths behind them, probes on the metrics port,
// scheduling on GPU nodes ahead of ordinary pods, and API rules that strict
// decoding cannot see (selector matches labels, privileged pods do not deny
// privilege escalation).
func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet, w dsWant) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if ds.Namespace != w.namespace {
		t.Errorf("DaemonSet namespace %q, want %q", ds.Namespace, w.namespace)
	}
	sel, err := metav1LabelSelector(ds)
	if err != nil || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("DaemonSet selector %v does not match its pod labels %v (%v)", ds.Spec.Selector, ds.Spec.Template.Labels, err)
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
		t.Errorf("updateStrategy %q, want RollingUpdate", ds.Spec.UpdateStrategy.Type)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q, want system-node-critical", spec.PriorityClassName)
	}
	if spec.ServiceAccountName != w.serviceAccount {
		t.Errorf("serviceAccountName %q, want %q", spec.ServiceAccountName, w.serviceAccount)
	}
	if spec.HostNetwork != w.hostNetwork || spec.HostPID || spec.HostIPC {
		t.Errorf("the pod shares host namespaces (network %v, PID %v, IPC %v); it needs none (network only when asked: %v)", spec.HostNetwork, spec.HostPID, spec.HostIPC, w.hostNetwork)
	}
	tolerates := func(key string, effect corev1.TaintEffect) bool {
		return slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool {
			return tol.Key == key && tol.Operator == corev1.TolerationOpExists && (tol.Effect == "" || tol.Effect == effect)
		})
	}
	if !tolerates("nvidia.com/gpu", corev1.TaintEffectNoSchedule) {
		t.Errorf("no toleration for nvidia.com/gpu:NoSchedule in %v", spec.Tolerations)
	}
	if !tolerates("CriticalAddonsOnly", "") {
		t.Errorf("no toleration for CriticalAddonsOnly in %v", spec.Tolerations)
	}
	if len(spec.NodeSelector) == 0 && (spec.Affinity == nil || spec.Affinity.NodeAffinity == nil ||
		spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil) {
		t.Errorf("neither a nodeSelector nor a required node affinity: the DaemonSet would run on every node")
	}

	if len(spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(spec.Containers))
	}
	c := spec.Containers[0]
	if !strings.Contains(c.Image, ":") || strings.HasSuffix(c.Image, ":") || strings.HasSuffix(c.Image, ":latest") {
		t.Errorf("image %q has no pinned tag", c.Image)
	}
	if !slices.Equal(c.Command, []string{"gpublocks"}) || len(c.Args) == 0 || c.Args[0] != "serve" {
		t.Fatalf("command %q args %q, want gpublocks serve …", c.Command, c.Args)
	}
	known := serveFlags(t)
	args := parseArgs(t, c.Args[1:])
	for name := range args {
		if !known[name] {
			t.Errorf("--%s is not a flag of gpublocks serve (%s has %v)", name, flagsFile, keys(known))
		}
	}
	wantArgs := map[string]string{
		"config":               "/etc/gpublocks",
		"node-name":            "$(NODE_NAME)",
		"dev-root":             "/host",
		"driver-root":          w.driverRoot,
		"cdi-dir":              w.cdiDir,
		"device-plugin-dir":    w.devicePlugin,
		"pod-resources-socket": w.podResources + "/kubelet.sock",
		"metrics-addr":         ":" + itoa(w.metricsPort),
	}
	if w.dra {
		// The DRA plugin needs neither the device-plugin directory nor
		// PodResources (it knows what it prepared), and has no kubeconfig
		// flag: in-cluster credentials.
		for _, f := range []string{"device-plugin-dir", "pod-resources-socket", "kubeconfig"} {
			delete(wantArgs, f)
			if v, ok := args[f]; ok {
				t.Errorf("--%s=%s in DRA mode", f, v)
			}
		}
		wantArgs["kubelet-api"] = "dra"
		wantArgs["kubelet-plugins-dir"] = w.kubeletPlugins
		wantArgs["kubelet-registrar-dir"] = w.kubeletRegistrar
	} else if v, ok := args["kubelet-api"]; ok {
		t.Errorf("--kubelet-api=%s in device-plugin mode", v)
	}
	for name, want := range wantArgs {
		if got, ok := args[name]; !ok || got != want {
			t.Errorf("--%s=%q, want %q", name, got, want)
		}
	}
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	}) {
		t.Errorf("no NODE_NAME from fieldRef spec.nodeName in %v", c.Env)
	}

	// Probes and the metrics port.
	var port *corev1.ContainerPort
	for i := range c.Ports {
		if c.Ports[i].Name == "metrics" {
			port = &c.Ports[i]
		}
	}
	if port == nil || port.ContainerPort != w.metricsPort {
		t.Errorf("no port named metrics on %d: %v", w.metricsPort, c.Ports)
	}
	for name, probe := range map[string]struct {
		p    *corev1.Probe
		path string
	}{"liveness": {c.LivenessProbe, "/healthz"}, "readiness": {c.ReadinessProbe, "/readyz"}} {
		if probe.p == nil || probe.p.HTTPGet == nil {
			t.Errorf("%s probe: want an HTTP GET of %s", name, probe.path)
			continue
		}
		if probe.p.HTTPGet.Path != probe.path || probe.p.HTTPGet.Port != intstr.FromString("metrics") {
			t.Errorf("%s probe: GET %s on %s, want %s on port metrics", name, probe.p.HTTPGet.Path, probe.p.HTTPGet.Port.String(), probe.path)
		}
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %v: want cpu and memory requests and a memory limit", c.Resources)
	}
	if sc := c.SecurityContext; sc != nil && sc.Privileged != nil && *sc.Privileged &&
		sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		t.Errorf("privileged with allowPrivilegeEscalation=false: the API server rejects that")
	}

	// Volumes: every mount has its volume, and the host paths are right.
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		if _, dup := vols[v.Name]; dup {
			t.Errorf("volume %q defined twice", v.Name)
		}
		vols[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{} // by mount path
	for _, m := range c.VolumeMounts {
		if _, ok := vols[m.Name]; !ok {
			t.Errorf("volumeMount %q has no volume", m.Name)
		}
		if _, dup := mounts[m.MountPath]; dup {
			t.Errorf("two mounts at %s", m.MountPath)
		}
		mounts[m.MountPath] = m
	}
	hostMount := func(containerPath, hostPath string, readOnly bool) *corev1.VolumeMount {
		t.Helper()
		m, ok := mounts[containerPath]
		if !ok {
			t.Errorf("nothing mounted at %s (want host %s)", containerPath, hostPath)
			return nil
		}
		hp := vols[m.Name].HostPath
		if hp == nil || hp.Path != hostPath {
			t.Errorf("%s: volume %q is %v, want hostPath %s", containerPath, m.Name, vols[m.Name].VolumeSource, hostPath)
		}
		if m.ReadOnly != readOnly {
			t.Errorf("%s: readOnly=%v, want %v", containerPath, m.ReadOnly, readOnly)
		}
		return &m
	}
	if w.dra {
		hostMount(w.kubeletPlugins, w.kubeletPlugins, false)
		hostMount(w.kubeletRegistrar, w.kubeletRegistrar, false)
		for _, v := range spec.Volumes {
			if hp := v.HostPath; hp != nil && (strings.HasSuffix(hp.Path, "/device-plugins") || strings.HasSuffix(hp.Path, "/pod-resources")) {
				t.Errorf("volume %q mounts the host's %s in DRA mode: a node serves one kubelet API, never both", v.Name, hp.Path)
			}
		}
	} else {
		hostMount(w.devicePlugin, w.devicePlugin, false)
		hostMount(w.podResources, w.podResources, true)
	}
	hostMount(w.cdiDir, w.cdiDir, false)
	if m := hostMount("/host", w.hostRoot, true); m != nil &&
		(m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer) {
		got := "unset"
		if m.MountPropagation != nil {
			got = string(*m.MountPropagation)
		}
		t.Errorf("/host: mountPropagation %s, want HostToContainer (a driver container mounted later must show)", got)
	}
	if m, ok := mounts["/etc/gpublocks"]; !ok || vols[m.Name].ConfigMap == nil || vols[m.Name].ConfigMap.Name != w.configMap || !m.ReadOnly {
		t.Errorf("/etc/gpublocks: want ConfigMap %q mounted read-only, got %+v", w.configMap, m)
	}
}

// checkRBAC asserts least privilege: one rule, read-only verbs on nodes,
// bound to the plugin's service account.
func checkRBAC(t *testing.T, objs objects, namespace, serviceAccount string) {
	t.Helper()
	role := only[*rbacv1.ClusterRole](t, objs)
	if len(role.Rules) != 1 {
		t.Fatalf("ClusterRole %s: want one rule, got %v", role.Name, role.Rules)
	}
	r := role.Rules[0]
	verbs := slices.Sorted(slices.Values(r.Verbs))
	if !slices.Equal(r.APIGroups, []string{""}) || !slices.Equal(r.Resources, []string{"nodes"}) ||
		!slices.Equal(verbs, []string{"get", "list", "watch"}) || len(r.NonResourceURLs) != 0 {
		t.Errorf("ClusterRole %s rule %+v: want only get, list, watch on core nodes", role.Name, r)
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

// loadConfigMap writes a ConfigMap's keys as files, the way the kubelet
// mounts it (with its ..data link), and loads them with the product's own
// config.LoadDir: every key must be a valid config.
func loadConfigMap(t *testing.T, cm *corev1.ConfigMap) *config.Set {
	t.Helper()
	if len(cm.Data) == 0 || len(cm.BinaryData) != 0 {
		t.Fatalf("ConfigMap %s: want text data keys, one per named config", cm.Name)
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "..2026_11_22_00_00_00.000000001")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(data), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for k, v := range cm.Data {
		if err := os.WriteFile(filepath.Join(data, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..data", k), filepath.Join(dir, k)); err != nil {
			t.Fatal(err)
		}
	}
	set, err := config.LoadDir(dir)
	if err == nil {
		err = set.Err()
	}
	if err != nil {
		t.Fatalf("ConfigMap %s/%s does not load with config.LoadDir: %v", cm.Namespace, cm.Name, err)
	}
	if got, want := set.Names(), keys(cm.Data); !slices.Equal(got, want) {
		t.Errorf("ConfigMap %s: configs %v, keys %v", cm.Name, got, want)
	}
	for k, v := range cm.Data {
		if _, err := config.Parse([]byte(v)); err != nil {
			t.Errorf("ConfigMap %s key %s: config.Parse: %v", cm.Name, k, err)
		}
	}
	if _, src, err := set.Pick(""); err != nil {
		t.Errorf("ConfigMap %s: a node without the %s label gets no config: %v", cm.Name, config.NodeLabel, err)
	} else if src.Name != config.DefaultName {
		t.Errorf("ConfigMap %s: unlabelled nodes get %q, want %q", cm.Name, src.Name, config.DefaultName)
	}
	return set
}
