package deployments

import (
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestExamples decodes every example strictly and loads every example
// config with the product's own parser, so an example cannot drift from
// what the plugin accepts.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("examples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples (%v)", err)
	}
	configs := 0
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			objs := decodeFile(t, f)
			if len(objs) == 0 {
				t.Fatalf("%s holds no object", f)
			}
			for _, cm := range of[*corev1.ConfigMap](objs) {
				if cm.Name != "gpublocks-config" || cm.Namespace != "gpublocks" {
					t.Errorf("%s: ConfigMap %s/%s would not replace the deployed gpublocks/gpublocks-config", f, cm.Namespace, cm.Name)
				}
				loadConfigMap(t, cm)
				configs++
			}
		})
	}
	if configs < 5 {
		t.Errorf("want at least 5 example ConfigMaps (whole, MIG mixed, blocks, half-and-half, multi-config), got %d", configs)
	}
}

// TestExampleLayouts checks that each example does what its name says.
func TestExampleLayouts(t *testing.T) {
	load := func(name string) *corev1.ConfigMap {
		return only[*corev1.ConfigMap](t, decodeFile(t, filepath.Join("examples", name)))
	}
	shapes := func(cm *corev1.ConfigMap, key string) string {
		set := loadConfigMap(t, cm)
		label := key // the node's gpublocks.io/config label
		if key == "default" {
			label = ""
		}
		cfg, _, err := set.Pick(label)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for i := range 8 {
			out = append(out, cfg.ShapeFor(i, "GPU-x", "NVIDIA A100-SXM4-80GB"))
		}
		return strings.Join(out, ",")
	}
	const (
		whole  = "whole,whole,whole,whole,whole,whole,whole,whole"
		blocks = "blocks,blocks,blocks,blocks,blocks,blocks,blocks,blocks"
		half   = "blocks,blocks,blocks,blocks,whole,whole,whole,whole"
	)
	for name, tc := range map[string]struct{ file, key, want string }{
		"whole":                   {"whole.yaml", "default", whole},
		"mig mixed":               {"mig-mixed.yaml", "default", whole},
		"blocks":                  {"blocks.yaml", "default", blocks},
		"half and half":           {"half-and-half.yaml", "default", half},
		"multi default":           {"multi-config.yaml", "default", half},
		"multi labelled blocks":   {"multi-config.yaml", "blocks", blocks},
		"multi labelled training": {"multi-config.yaml", "training", whole},
	} {
		t.Run(name, func(t *testing.T) {
			if got := shapes(load(tc.file), tc.key); got != tc.want {
				t.Errorf("%s[%s] shapes GPUs 0-7 as %s, want %s", tc.file, tc.key, got, tc.want)
			}
		})
	}
	mig := loadConfigMap(t, load("mig-mixed.yaml")).Configs["default"]
	if mig.MigStrategy != "mixed" {
		t.Errorf("mig-mixed.yaml: migStrategy %q", mig.MigStrategy)
	}
	multi := load("multi-config.yaml")
	for _, k := range []string{"default", "blocks", "training"} {
		if _, ok := multi.Data[k]; !ok {
			t.Errorf("multi-config.yaml has no %q config", k)
		}
	}
}

// TestQuota checks the per-namespace quota example: it must count the
// resources the default config advertises, by request (the only form a
// quota accepts for extended resources).
func TestQuota(t *testing.T) {
	objs := decodeFile(t, filepath.Join("examples", "quota.yaml"))
	q := only[*corev1.ResourceQuota](t, objs)
	if q.Namespace == "" || q.Namespace == "gpublocks" {
		t.Errorf("quota namespace %q: it belongs in a team's namespace", q.Namespace)
	}
	blocks := loadConfigMap(t, only[*corev1.ConfigMap](t, decodeFile(t, filepath.Join("examples", "blocks.yaml")))).Configs["default"]
	for _, res := range []string{blocks.ResourceName(blocks.Blocks.ResourceName), blocks.ResourceName("gpu")} {
		name := corev1.ResourceName("requests." + res)
		if v, ok := q.Spec.Hard[name]; !ok || v.IsZero() {
			t.Errorf("quota has no %s (hard: %v)", name, q.Spec.Hard)
		}
	}
	for name := range q.Spec.Hard {
		if strings.HasPrefix(string(name), "limits.nvidia.com/") || !strings.HasPrefix(string(name), "requests.") {
			t.Errorf("quota key %s: extended resources are quota'd as requests.<name> only", name)
		}
	}
}
