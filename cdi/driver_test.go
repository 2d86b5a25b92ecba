package cdi

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2/ktesting"
)

func TestFindDriverFiles(t *testing.T) {
	tests := map[string]struct {
		files     tree
		noRoot    bool
		wantLibs  []DriverFile
		wantTools []DriverFile
	}{
		"debian layout, merged /usr with absolute /lib link": {
			files: debianDriver,
			wantLibs: []DriverFile{
				{Source: "usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15", Paths: []string{
					"/usr/lib/x86_64-linux-gnu/libcuda.so.1",
					"/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15",
					"/usr/lib64/libcuda.so.1",
				}},
				{Source: "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15", Paths: []string{
					"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
					"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15",
					"/usr/lib64/libnvidia-ml.so.1",
				}},
				{Source: "usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.550.54.15", Paths: []string{
					"/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1",
					"/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.550.54.15",
					"/usr/lib64/libnvidia-ptxjitcompiler.so.1",
				}},
			},
			wantTools: []DriverFile{{Source: "usr/bin/nvidia-smi", Paths: []string{"/usr/bin/nvidia-smi"}}},
		},
		"rhel layout, absolute soname link stays inside the root": {
			files: tree{
				"usr/lib64/libcuda.so.550.54.15": "fake",
				"usr/lib64/libcuda.so.1":         "->/usr/lib64/libcuda.so.550.54.15",
				"lib64":                          "->usr/lib64",
				"bin":                            "->usr/bin",
				"usr/bin/nvidia-smi":             "->/usr/bin/nvidia-smi.real",
				"usr/bin/nvidia-smi.real":        "fake",
			},
			wantLibs: []DriverFile{{Source: "usr/lib64/libcuda.so.550.54.15", Paths: []string{
				"/usr/lib/x86_64-linux-gnu/libcuda.so.1",
				"/usr/lib64/libcuda.so.1",
				"/usr/lib64/libcuda.so.550.54.15",
			}}},
			wantTools: []DriverFile{{Source: "usr/bin/nvidia-smi.real", Paths: []string{"/usr/bin/nvidia-smi"}}},
		},
		"two versions: the host's soname link decides": {
			files: tree{
				"usr/lib64/libcuda.so.535.104.05": "old",
				"usr/lib64/libcuda.so.550.54.15":  "new",
				"usr/lib64/libcuda.so.1":          "->libcuda.so.535.104.05",
			},
			wantLibs: []DriverFile{
				{Source: "usr/lib64/libcuda.so.535.104.05", Paths: []string{
					"/usr/lib/x86_64-linux-gnu/libcuda.so.1",
					"/usr/lib64/libcuda.so.1",
					"/usr/lib64/libcuda.so.535.104.05",
				}},
				{Source: "usr/lib64/libcuda.so.550.54.15", Paths: []string{"/usr/lib64/libcuda.so.550.54.15"}},
			},
		},
		"dangling link and symlink loop are skipped": {
			files: tree{
				"usr/lib64/libcuda.so.1":      "->libcuda.so.550.54.15",
				"usr/lib64/libnvidia-ml.so.1": "->libnvidia-ml.so.1",
			},
		},
		"empty driver root":   {files: tree{}},
		"missing driver root": {noRoot: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			root := t.TempDir()
			if tc.noRoot {
				root = filepath.Join(root, "absent")
			}
			makeTree(t, root, tc.files)
			got, err := findDriverFiles(ctx, root, "amd64")
			require.NoError(t, err)
			require.Equal(t, root, got.Root)
			require.Equal(t, tc.wantLibs, got.Libraries)
			require.Equal(t, tc.wantTools, got.Tools)
			require.Equal(t, len(tc.wantLibs) == 0 && len(tc.wantTools) == 0, got.Empty())
		})
	}
}

// TestFindDriverFilesELF builds real shared objects so that the soname
// comes from DT_SONAME (no symlink on disk) and a 32-bit copy, as RHEL keeps
// in /usr/lib, is skipped.
func TestFindDriverFilesELF(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not found: cannot build test shared objects")
	}
	root := t.TempDir()
	src := filepath.Join(t.TempDir(), "x.c")
	require.NoError(t, os.WriteFile(src, []byte("int nvml_fake(void) { return 0; }\n"), 0o644))
	build := func(out string, args ...string) error {
		p := filepath.Join(root, out)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		return exec.Command("gcc", append([]string{"-shared", "-fPIC", "-nostdlib", "-Wl,-soname,libnvidia-ml.so.1", "-o", p, src}, args...)...).Run()
	}
	require.NoError(t, build("usr/lib64/libnvidia-ml.so.550.54.15"))
	has32 := build("usr/lib/libnvidia-ml.so.550.54.15", "-m32") == nil

	_, ctx := ktesting.NewTestContext(t)
	got, err := findDriverFiles(ctx, root, "amd64")
	require.NoError(t, err)
	want := []DriverFile{{Source: "usr/lib64/libnvidia-ml.so.550.54.15", Paths: []string{
		"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
		"/usr/lib64/libnvidia-ml.so.1",
		"/usr/lib64/libnvidia-ml.so.550.54.15",
	}}}
	require.Equal(t, want, got.Libraries)
	if !has32 {
		t.Log("gcc -m32 unavailable: 32-bit skip not exercised")
	}
}

func TestDriverFilesMountsUseRoot(t *testing.T) {
	files := DriverFiles{
		Root:  "/run/nvidia/driver",
		Tools: []DriverFile{{Source: "usr/bin/nvidia-smi", Paths: []string{"/usr/bin/nvidia-smi"}}},
	}
	mounts := files.Mounts()
	require.Len(t, mounts, 1)
	require.Equal(t, "/run/nvidia/driver/usr/bin/nvidia-smi", mounts[0].HostPath)
	require.Equal(t, []string{"ro", "nosuid", "nodev", "bind"}, mounts[0].Options)
}
