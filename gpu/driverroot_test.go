package gpu_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/gpu"
)

// makeTree creates files under root: a value starting with "->" is a
// symlink target, anything else is file content.
func makeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		if target, ok := strings.CutPrefix(content, "->"); ok {
			require.NoError(t, os.Symlink(target, p))
			continue
		}
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
}

func TestResolveInRoot(t *testing.T) {
	outside := t.TempDir()
	makeTree(t, outside, map[string]string{"lib64/libnvidia-ml.so.1": "outside"})
	root := t.TempDir()
	makeTree(t, root, map[string]string{
		"usr/lib64/libnvidia-ml.so.550.54.15": "nvml",
		"usr/lib64/libnvidia-ml.so.1":         "->libnvidia-ml.so.550.54.15",
		"lib64":                               "->/usr/lib64",
		"lib":                                 "->usr/lib64",
		"usr/lib/abs.so.1":                    "->/usr/lib64/libnvidia-ml.so.1",
		"usr/lib/up.so.1":                     "->../../../../usr/lib64/libnvidia-ml.so.550.54.15",
		"usr/lib/loop":                        "->loop",
		"usr/local/nvidia":                    "->" + outside,
		"opt/file":                            "not a directory",
	})

	tests := map[string]struct {
		rel     string
		want    string
		wantIs  error
		wantErr string
	}{
		"plain file":                 {rel: "usr/lib64/libnvidia-ml.so.550.54.15", want: "usr/lib64/libnvidia-ml.so.550.54.15"},
		"relative link":              {rel: "usr/lib64/libnvidia-ml.so.1", want: "usr/lib64/libnvidia-ml.so.550.54.15"},
		"absolute directory link":    {rel: "lib64/libnvidia-ml.so.1", want: "usr/lib64/libnvidia-ml.so.550.54.15"},
		"relative directory link":    {rel: "lib/libnvidia-ml.so.1", want: "usr/lib64/libnvidia-ml.so.550.54.15"},
		"absolute final link":        {rel: "usr/lib/abs.so.1", want: "usr/lib64/libnvidia-ml.so.550.54.15"},
		"dot-dot stops at the root":  {rel: "usr/lib/up.so.1", want: "usr/lib64/libnvidia-ml.so.550.54.15"},
		"directory itself":           {rel: "lib64", want: "usr/lib64"},
		"root itself":                {rel: ".", want: ""},
		"missing":                    {rel: "usr/lib64/libcuda.so.1", wantIs: fs.ErrNotExist},
		"loop":                       {rel: "usr/lib/loop", wantIs: gpu.ErrTooManyLinks},
		"file used as directory":     {rel: "opt/file/x", wantErr: "not a directory"},
		"intermediate absolute link": {rel: "usr/local/nvidia/lib64/libnvidia-ml.so.1", wantIs: fs.ErrNotExist},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := gpu.ResolveInRoot(root, tc.rel)
			switch {
			case tc.wantIs != nil:
				require.ErrorIs(t, err, tc.wantIs)
			case tc.wantErr != "":
				require.ErrorContains(t, err, tc.wantErr)
			default:
				require.NoError(t, err)
				require.Equal(t, tc.want, got)
			}
		})
	}
}

// TestDriverDirsCoverKnownLayouts pins the layouts NVML loading and the CDI
// mounts must both find.
func TestDriverDirsCoverKnownLayouts(t *testing.T) {
	for _, dir := range []string{
		"usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib", "lib",
		"usr/lib/x86_64-linux-gnu/nvidia/current", "usr/local/nvidia/lib64", "usr/local/nvidia/lib",
	} {
		require.Contains(t, gpu.DriverLibraryDirs, dir)
	}
	for _, dir := range []string{"usr/bin", "usr/local/nvidia/bin", "usr/lib/nvidia/current"} {
		require.Contains(t, gpu.DriverToolDirs, dir)
	}
}

func TestResolveDirs(t *testing.T) {
	root := t.TempDir()
	makeTree(t, root, map[string]string{
		"usr/lib/x86_64-linux-gnu/x": "",
		"lib":                        "->/usr/lib", // merged /usr
		"usr/lib64":                  "->/",        // the root itself
		"usr/local/nvidia/lib64":     "->/opt/nvidia/lib64",
		"opt/nvidia/lib64/x":         "",
		"usr/local/nvidia/lib":       "not a directory",
		"loop":                       "->loop",
	})
	dirs := []string{"usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib64", "lib64", "usr/local/nvidia/lib64", "usr/local/nvidia/lib"}
	got, err := gpu.ResolveDirs(root, dirs)
	require.NoError(t, err)
	require.Equal(t, []string{"usr/lib/x86_64-linux-gnu", "opt/nvidia/lib64"}, got)

	_, err = gpu.ResolveDirs(root, []string{"loop/lib"})
	require.ErrorIs(t, err, gpu.ErrTooManyLinks)
	require.ErrorContains(t, err, "loop/lib")
}
