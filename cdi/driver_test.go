package cdi

import (
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpublocks/gpublocks/gpu"
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
				"usr/lib64/libcuda.so.550.54.15": so("fake"),
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
				"usr/lib64/libcuda.so.535.104.05": so("old"),
				"usr/lib64/libcuda.so.550.54.15":  so("new"),
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
		"gke layout under /usr/local/nvidia": {
			files: tree{
				"usr/local/nvidia/lib64/libcuda.so.550.54.15":      so("fake libcuda"),
				"usr/local/nvidia/lib64/libcuda.so.1":              "->libcuda.so.550.54.15",
				"usr/local/nvidia/lib64/libnvidia-ml.so.550.54.15": so("fake nvml"),
				"usr/local/nvidia/lib64/libnvidia-ml.so.1":         "->libnvidia-ml.so.550.54.15",
				"usr/local/nvidia/bin/nvidia-smi":                  "fake nvidia-smi",
			},
			wantLibs:  gkeLibs,
			wantTools: []DriverFile{{Source: "usr/local/nvidia/bin/nvidia-smi", Paths: []string{"/usr/bin/nvidia-smi"}}},
		},
		"/usr/local/nvidia/lib64 with absolute links from /lib and tools in /usr/bin": {
			// Our H100 test machine: NVML is reachable through /lib, libcuda
			// only in /usr/local/nvidia/lib64.
			files: tree{
				"usr/local/nvidia/lib64/libcuda.so.550.54.15":      so("fake libcuda"),
				"usr/local/nvidia/lib64/libcuda.so.1":              "->libcuda.so.550.54.15",
				"usr/local/nvidia/lib64/libnvidia-ml.so.550.54.15": so("fake nvml"),
				"usr/local/nvidia/lib64/libnvidia-ml.so.1":         "->libnvidia-ml.so.550.54.15",
				"lib/libnvidia-ml.so.1":                            "->/usr/local/nvidia/lib64/libnvidia-ml.so.550.54.15",
				"usr/bin/nvidia-smi":                               "fake nvidia-smi",
			},
			wantLibs:  gkeLibs,
			wantTools: []DriverFile{{Source: "usr/bin/nvidia-smi", Paths: []string{"/usr/bin/nvidia-smi"}}},
		},
		"debian alternatives into nvidia/current": {
			files: tree{
				"usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.550.54.15": so("fake libcuda"),
				"usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.1":         "->libcuda.so.550.54.15",
				"usr/lib/x86_64-linux-gnu/libcuda.so.1":                        "->/etc/alternatives/libcuda.so.1-x86_64-linux-gnu",
				"etc/alternatives/libcuda.so.1-x86_64-linux-gnu":               "->/usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.1",
				"usr/bin/nvidia-smi":                  "->/etc/alternatives/nvidia--nvidia-smi",
				"etc/alternatives/nvidia--nvidia-smi": "->/usr/lib/nvidia/current/nvidia-smi",
				"usr/lib/nvidia/current/nvidia-smi":   "fake nvidia-smi",
			},
			wantLibs: []DriverFile{{Source: "usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.550.54.15", Paths: []string{
				"/usr/lib/x86_64-linux-gnu/libcuda.so.1",
				"/usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.1",
				"/usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.550.54.15",
				"/usr/lib64/libcuda.so.1",
			}}},
			wantTools: []DriverFile{{Source: "usr/lib/nvidia/current/nvidia-smi", Paths: []string{"/usr/bin/nvidia-smi"}}},
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

// TestFindDriverFilesRefusesUnsafeFiles builds driver roots whose files
// with driver names are links to other host files, not shared objects, not
// regular files or not executable. None may be mounted (each would land in
// every GPU container, at a path the link chose), each is named in Skipped
// with its reason, and the driver's good files are still mounted.
func TestFindDriverFilesRefusesUnsafeFiles(t *testing.T) {
	good := tree{
		"usr/lib64/libnvidia-ml.so.550.54.15": so("nvml"),
		"usr/lib64/libnvidia-ml.so.1":         "->libnvidia-ml.so.550.54.15",
	}
	goodLibs := []DriverFile{{Source: "usr/lib64/libnvidia-ml.so.550.54.15", Paths: []string{
		"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
		"/usr/lib64/libnvidia-ml.so.1",
		"/usr/lib64/libnvidia-ml.so.550.54.15",
	}}}
	tests := map[string]struct {
		files     tree
		setup     func(t *testing.T, root string)
		wantTools []DriverFile
		// wantSkipped are substrings of the one Skipped message.
		wantSkipped []string
	}{
		"library linked to /etc/ld.so.preload": {
			files: tree{
				"etc/ld.so.preload": "/tmp/evil.so\n",
				"usr/lib/x86_64-linux-gnu/libnvidia-allocator.so.1": "->/etc/ld.so.preload",
			},
			wantSkipped: []string{"library usr/lib/x86_64-linux-gnu/libnvidia-allocator.so.1 resolves to /etc/ld.so.preload, outside"},
		},
		"library linked to /etc/passwd": {
			files: tree{
				"etc/passwd":             "root:x:0:0:root:/root:/bin/sh\n",
				"usr/lib64/libcuda.so.1": "->/etc/passwd",
			},
			wantSkipped: []string{"library usr/lib64/libcuda.so.1 resolves to /etc/passwd, outside"},
		},
		"relative link climbing to /etc/ld.so.preload": {
			files: tree{
				"etc/ld.so.preload":                           "/tmp/evil.so\n",
				"usr/lib/x86_64-linux-gnu/libnvidia-cfg.so.1": "->../../../../../etc/ld.so.preload",
			},
			wantSkipped: []string{"library usr/lib/x86_64-linux-gnu/libnvidia-cfg.so.1 resolves to /etc/ld.so.preload, outside"},
		},
		"shared object outside the library directories": {
			files: tree{
				"opt/evil/libcuda.so.1":  so("evil"),
				"usr/lib64/libcuda.so.1": "->/opt/evil/libcuda.so.1",
			},
			wantSkipped: []string{"library usr/lib64/libcuda.so.1 resolves to /opt/evil/libcuda.so.1, outside"},
		},
		"library linked to the host's libc": {
			files: tree{
				"usr/lib/x86_64-linux-gnu/libc.so.6":          so("host libc"),
				"usr/lib/x86_64-linux-gnu/libnvidia-cfg.so.1": "->libc.so.6",
			},
			wantSkipped: []string{"library usr/lib/x86_64-linux-gnu/libnvidia-cfg.so.1 resolves to /usr/lib/x86_64-linux-gnu/libc.so.6, which is not a driver library"},
		},
		"regular file named libcuda.so.1 that is not ELF": {
			files:       tree{"usr/lib64/libcuda.so.1": "#!/bin/sh\n"},
			wantSkipped: []string{"library usr/lib64/libcuda.so.1 (/usr/lib64/libcuda.so.1): not an ELF shared object"},
		},
		"ELF executable, not a shared object": {
			files: tree{"usr/lib64/libcuda.so.1": func() string {
				b := []byte(so("exec"))
				b[16] = byte(elf.ET_EXEC)
				return string(b)
			}()},
			wantSkipped: []string{"library usr/lib64/libcuda.so.1 (/usr/lib64/libcuda.so.1): not an ELF shared object: type ET_EXEC"},
		},
		"directory named like a library": {
			setup: func(t *testing.T, root string) {
				require.NoError(t, os.MkdirAll(filepath.Join(root, "usr/lib64/libcuda.so.1"), 0o755))
			},
			wantSkipped: []string{"library usr/lib64/libcuda.so.1 (/usr/lib64/libcuda.so.1): not a regular file (a directory)"},
		},
		"FIFO named like a library": {
			setup: func(t *testing.T, root string) {
				require.NoError(t, syscall.Mkfifo(filepath.Join(root, "usr/lib64/libcuda.so.1"), 0o644))
			},
			wantSkipped: []string{"library usr/lib64/libcuda.so.1 (/usr/lib64/libcuda.so.1): not a regular file (a FIFO)"},
		},
		"tool that is not executable": {
			setup: func(t *testing.T, root string) {
				p := filepath.Join(root, "usr/bin/nvidia-smi")
				require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
				require.NoError(t, os.WriteFile(p, []byte("fake nvidia-smi"), 0o644))
			},
			wantSkipped: []string{"tool usr/bin/nvidia-smi (/usr/bin/nvidia-smi): not executable (mode -rw-r--r--)"},
		},
		"tool linked to /etc/shadow": {
			files: tree{
				"etc/shadow":         "root:$6$secret:19000::::::\n",
				"usr/bin/nvidia-smi": "->/etc/shadow",
			},
			wantSkipped: []string{"tool usr/bin/nvidia-smi resolves to /etc/shadow, outside the driver's tool directories"},
		},
		"tool that is a directory, the next tool directory's copy is used": {
			files: tree{"usr/local/nvidia/bin/nvidia-smi": "fake nvidia-smi"},
			setup: func(t *testing.T, root string) {
				require.NoError(t, os.MkdirAll(filepath.Join(root, "usr/bin/nvidia-smi"), 0o755))
			},
			wantTools:   []DriverFile{{Source: "usr/local/nvidia/bin/nvidia-smi", Paths: []string{"/usr/bin/nvidia-smi"}}},
			wantSkipped: []string{"tool usr/bin/nvidia-smi (/usr/bin/nvidia-smi): not a regular file (a directory)"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			root := t.TempDir()
			makeTree(t, root, good)
			makeTree(t, root, tc.files)
			if tc.setup != nil {
				tc.setup(t, root)
			}
			got, err := findDriverFiles(ctx, root, "amd64")
			require.NoError(t, err)
			require.Equal(t, goodLibs, got.Libraries)
			require.Equal(t, tc.wantTools, got.Tools)
			require.Len(t, got.Skipped, len(tc.wantSkipped), "%v", got.Skipped)
			for i, want := range tc.wantSkipped {
				require.ErrorIs(t, got.Skipped[i], ErrDriverFileSkipped)
				require.ErrorContains(t, got.Skipped[i], want)
			}
		})
	}
}

// gkeLibs are the libraries of the GKE-style fake driver in
// usr/local/nvidia/lib64: each soname also lands in the standard directories.
var gkeLibs = []DriverFile{
	{Source: "usr/local/nvidia/lib64/libcuda.so.550.54.15", Paths: []string{
		"/usr/lib/x86_64-linux-gnu/libcuda.so.1",
		"/usr/lib64/libcuda.so.1",
		"/usr/local/nvidia/lib64/libcuda.so.1",
		"/usr/local/nvidia/lib64/libcuda.so.550.54.15",
	}},
	{Source: "usr/local/nvidia/lib64/libnvidia-ml.so.550.54.15", Paths: []string{
		"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
		"/usr/lib64/libnvidia-ml.so.1",
		"/usr/local/nvidia/lib64/libnvidia-ml.so.1",
		"/usr/local/nvidia/lib64/libnvidia-ml.so.550.54.15",
	}},
}

// TestFindDriverFilesStaysInRoot puts a real driver outside the driver root
// and reaches it through an absolute symlink in the middle of the path
// (usr/local/nvidia -> /elsewhere): the host would resolve that link inside
// the root, so nothing outside may be mounted.
func TestFindDriverFilesStaysInRoot(t *testing.T) {
	outside := t.TempDir()
	makeTree(t, outside, tree{
		"lib64/libcuda.so.550.54.15": so("outside libcuda"),
		"lib64/libcuda.so.1":         "->libcuda.so.550.54.15",
		"bin/nvidia-smi":             "outside nvidia-smi",
	})
	root := t.TempDir()
	makeTree(t, root, tree{"usr/local/nvidia": "->" + outside})

	_, ctx := ktesting.NewTestContext(t)
	got, err := findDriverFiles(ctx, root, "amd64")
	require.NoError(t, err)
	require.True(t, got.Empty(), "found files outside the driver root: %+v", got)

	// The same link target recreated inside the root is what is used.
	makeTree(t, filepath.Join(root, outside), tree{"bin/nvidia-smi": "inside nvidia-smi"})
	got, err = findDriverFiles(ctx, root, "amd64")
	require.NoError(t, err)
	require.Empty(t, got.Libraries)
	require.Equal(t, []DriverFile{{Source: filepath.ToSlash(outside[1:]) + "/bin/nvidia-smi", Paths: []string{"/usr/bin/nvidia-smi"}}}, got.Tools)
}

// TestFindDriverFilesELF builds real shared objects so that the soname
// comes from DT_SONAME (no symlink on disk), a 32-bit copy, as RHEL keeps
// in /usr/lib, is skipped and a soname that is a path is refused.
func TestFindDriverFilesELF(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not found: cannot build test shared objects")
	}
	root := t.TempDir()
	src := filepath.Join(t.TempDir(), "x.c")
	require.NoError(t, os.WriteFile(src, []byte("int nvml_fake(void) { return 0; }\n"), 0o644))
	build := func(out, soname string, args ...string) error {
		p := filepath.Join(root, out)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		return exec.Command("gcc", append([]string{"-shared", "-fPIC", "-nostdlib", "-Wl,-soname," + soname, "-o", p, src}, args...)...).Run()
	}
	require.NoError(t, build("usr/lib64/libnvidia-ml.so.550.54.15", "libnvidia-ml.so.1"))
	has32 := build("usr/lib/libnvidia-ml.so.550.54.15", "libnvidia-ml.so.1", "-m32") == nil
	// A soname is a name in the library's directory, never a path: this
	// one would put libcuda over /etc/ld.so.preload in the container.
	require.NoError(t, build("usr/lib64/libcuda.so.550.54.15", "../../../etc/ld.so.preload"))

	_, ctx := ktesting.NewTestContext(t)
	got, err := findDriverFiles(ctx, root, "amd64")
	require.NoError(t, err)
	want := []DriverFile{
		{Source: "usr/lib64/libcuda.so.550.54.15", Paths: []string{"/usr/lib64/libcuda.so.550.54.15"}},
		{Source: "usr/lib64/libnvidia-ml.so.550.54.15", Paths: []string{
			"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
			"/usr/lib64/libnvidia-ml.so.1",
			"/usr/lib64/libnvidia-ml.so.550.54.15",
		}},
	}
	require.Equal(t, want, got.Libraries)
	require.Len(t, got.Skipped, 1)
	require.ErrorIs(t, got.Skipped[0], ErrDriverFileSkipped)
	require.ErrorContains(t, got.Skipped[0], `libcuda.so.550.54.15): soname "../../../etc/ld.so.preload" is not a libcuda.so.* file name`)
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

// TestRealDriverFiles checks, on a machine where NVML loads, that the
// container gets the driver too: the libraries NVML was found beside,
// libcuda among them, and nvidia-smi.
func TestRealDriverFiles(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	b, err := gpu.NewNVMLBackend(ctx, "/", "/")
	if errors.Is(err, gpu.ErrNoDriver) {
		t.Skipf("no NVIDIA driver on this machine: %v", err)
	}
	require.NoError(t, err)
	require.NoError(t, b.Close())

	files, err := FindDriverFiles(ctx, "/")
	require.NoError(t, err)
	var libs, tools []string
	for _, f := range files.Libraries {
		t.Logf("library %s at %v", f.Source, f.Paths)
		libs = append(libs, f.Paths...)
	}
	for _, f := range files.Tools {
		t.Logf("tool %s at %v", f.Source, f.Paths)
		tools = append(tools, f.Paths...)
	}
	require.Contains(t, libs, "/usr/lib64/libcuda.so.1")
	require.Contains(t, libs, "/usr/lib64/libnvidia-ml.so.1")
	require.Contains(t, tools, "/usr/bin/nvidia-smi")
}
