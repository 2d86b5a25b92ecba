package deployments

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/mig"
)

func init() {
	// The day/night example's CronJobs.
	kinds["batch/v1/CronJob"] = func() any { return &batchv1.CronJob{} }
}

// pinnedKubectl is registry.k8s.io/kubectl at an exact release.
var pinnedKubectl = regexp.MustCompile(`^registry\.k8s\.io/kubectl:v\d+\.\d+\.\d+$`)

// TestMigDayNight checks the day/night example (DESIGN §10): its configs
// ask an A100 80GB for seven 1g.10gb slices by day and two 3g.40gb by
// night, both placeable on a MIG-enabled GPU of that model; CronJobs flip
// the node label between them with a pinned kubectl; and their RBAC can do
// exactly that.
func TestMigDayNight(t *testing.T) {
	cm := only[*corev1.ConfigMap](t, decodeFile(t, filepath.Join("examples", "mig-day-night.yaml")))
	set := loadConfigMap(t, cm)

	// Two MIG-enabled A100 80GB GPUs with no instances yet.
	simFile := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(simFile, []byte("gpus: [{model: A100-SXM4-80GB, count: 2, mig: []}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := sim.New(simFile)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := gpu.Discover(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	for label, want := range map[string][]string{
		"":      slices.Repeat([]string{"1g.10gb"}, 7), // default: day
		"day":   slices.Repeat([]string{"1g.10gb"}, 7),
		"night": {"3g.40gb", "3g.40gb"},
	} {
		cfg, _, err := set.Pick(label)
		if err != nil {
			t.Fatalf("label %q: %v", label, err)
		}
		for _, g := range inv.GPUs {
			got, _, ok := cfg.MigLayoutFor(g.Index, g.UUID, g.Model)
			if !ok || !slices.Equal(got, want) {
				t.Errorf("label %q: GPU %d (%s) gets layout %v (shape: mig %v), want %v", label, g.Index, g.Model, got, ok, want)
			}
		}
		if err := mig.CheckNode(b.NVML(), inv, cfg, mig.AsLayout); err != nil {
			t.Errorf("label %q: the layout does not apply to an A100 80GB: %v", label, err)
		}
		// Other GPUs stay whole.
		if s := cfg.ShapeFor(0, "GPU-x", "NVIDIA H100 80GB HBM3"); s != "whole" {
			t.Errorf("label %q: an H100 is %s, want whole", label, s)
		}
	}

	objs := decodeFile(t, filepath.Join("examples", "mig-day-night-cronjobs.yaml"))
	sa := only[*corev1.ServiceAccount](t, objs)
	if sa.Namespace != "gpublocks" {
		t.Errorf("ServiceAccount %s in namespace %q, want gpublocks", sa.Name, sa.Namespace)
	}
	role := only[*rbacv1.ClusterRole](t, objs)
	if len(role.Rules) != 1 {
		t.Fatalf("ClusterRole %s: want one rule, got %v", role.Name, role.Rules)
	}
	r := role.Rules[0]
	if !slices.Equal(r.APIGroups, []string{""}) || !slices.Equal(r.Resources, []string{"nodes"}) ||
		!slices.Equal(slices.Sorted(slices.Values(r.Verbs)), []string{"get", "list", "patch"}) || len(r.ResourceNames)+len(r.NonResourceURLs) != 0 {
		t.Errorf("ClusterRole %s rule %+v: want get, list, patch on core nodes only", role.Name, r)
	}
	binding := only[*rbacv1.ClusterRoleBinding](t, objs)
	if binding.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name}) {
		t.Errorf("ClusterRoleBinding roleRef %+v does not name ClusterRole %s", binding.RoleRef, role.Name)
	}
	if want := (rbacv1.Subject{Kind: "ServiceAccount", Name: sa.Name, Namespace: sa.Namespace}); !slices.Equal(binding.Subjects, []rbacv1.Subject{want}) {
		t.Errorf("ClusterRoleBinding subjects %+v, want %+v", binding.Subjects, want)
	}

	jobs := of[*batchv1.CronJob](objs)
	flips := map[string]string{} // config → schedule
	for _, cj := range jobs {
		spec := cj.Spec.JobTemplate.Spec.Template.Spec
		if cj.Namespace != sa.Namespace || spec.ServiceAccountName != sa.Name {
			t.Errorf("CronJob %s/%s runs as %q, want %s/%s", cj.Namespace, cj.Name, spec.ServiceAccountName, sa.Namespace, sa.Name)
		}
		if len(strings.Fields(cj.Spec.Schedule)) != 5 {
			t.Errorf("CronJob %s: schedule %q is not a five-field cron line", cj.Name, cj.Spec.Schedule)
		}
		if cj.Spec.ConcurrencyPolicy != batchv1.ForbidConcurrent {
			t.Errorf("CronJob %s: concurrencyPolicy %q, want Forbid", cj.Name, cj.Spec.ConcurrencyPolicy)
		}
		if len(spec.Containers) != 1 {
			t.Fatalf("CronJob %s: want one container, got %d", cj.Name, len(spec.Containers))
		}
		c := spec.Containers[0]
		if !pinnedKubectl.MatchString(c.Image) {
			t.Errorf("CronJob %s: image %q, want registry.k8s.io/kubectl at a pinned version", cj.Name, c.Image)
		}
		if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("CronJob %s: container securityContext %+v is not locked down", cj.Name, c.SecurityContext)
		}
		cmd := append(append([]string{}, c.Command...), c.Args...)
		if len(cmd) < 3 || cmd[0] != "kubectl" || cmd[1] != "label" || cmd[2] != "nodes" || !slices.Contains(cmd, "--overwrite") ||
			!slices.Contains(cmd, "--selector=gpublocks.io/day-night=enabled") {
			t.Errorf("CronJob %s: command %q is not `kubectl label nodes --selector=gpublocks.io/day-night=enabled gpublocks.io/config=<name> --overwrite`", cj.Name, cmd)
		}
		for _, a := range cmd {
			if name, ok := strings.CutPrefix(a, "gpublocks.io/config="); ok {
				if _, exists := set.Configs[name]; !exists {
					t.Errorf("CronJob %s sets gpublocks.io/config=%s, which the ConfigMap does not hold", cj.Name, name)
				}
				flips[name] = cj.Spec.Schedule
			}
		}
	}
	if len(jobs) != 2 || flips["day"] == "" || flips["night"] == "" || flips["day"] == flips["night"] {
		t.Errorf("want one CronJob setting day and one setting night, on different schedules; got %v", flips)
	}
}
