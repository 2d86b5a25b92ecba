package cdi

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2/ktesting"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpublocks/gpublocks/internal/atomicfile"
)

func loadCache(t *testing.T, dir string) *cdiapi.Cache {
	t.Helper()
	cache, err := cdiapi.NewCache(cdiapi.WithSpecDirs(dir), cdiapi.WithAutoRefresh(false))
	require.NoError(t, err)
	require.Empty(t, cache.GetErrors())
	return cache
}

func TestWriter(t *testing.T) {
	spec, _, _ := buildTestSpec(t)
	_, ctx := ktesting.NewTestContext(t)
	dir := filepath.Join(t.TempDir(), "cdi") // created by the first write
	w, err := NewWriter(dir, DefaultKind)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, "gpublocks.io-gpu.yaml"), w.Path())

	changed, err := w.Write(ctx, spec)
	require.NoError(t, err)
	require.True(t, changed)
	fi, err := os.Stat(w.Path())
	require.NoError(t, err)
	require.Equal(t, SpecFileMode, fi.Mode().Perm())
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file left behind")

	cache := loadCache(t, dir)
	require.Contains(t, cache.ListDevices(), "gpublocks.io/gpu=2:1")
	require.Len(t, cache.ListDevices(), len(spec.Devices))
	raw := cache.GetVendorSpecs("gpublocks.io")[0].Spec
	min, err := specs.MinimumRequiredVersion(raw)
	require.NoError(t, err)
	require.Equal(t, min, raw.Version)

	t.Run("unchanged content is not rewritten", func(t *testing.T) {
		past := time.Now().Add(-time.Hour).Truncate(time.Second)
		require.NoError(t, os.Chtimes(w.Path(), past, past))
		before := inode(t, w.Path())
		again, _, _ := buildTestSpec(t)
		changed, err := w.Write(ctx, again)
		require.NoError(t, err)
		require.False(t, changed)
		fi, err := os.Stat(w.Path())
		require.NoError(t, err)
		require.Equal(t, past, fi.ModTime())
		require.Equal(t, before, inode(t, w.Path()))
	})

	t.Run("wrong mode is repaired", func(t *testing.T) {
		require.NoError(t, os.Chmod(w.Path(), 0o600))
		changed, err := w.Write(ctx, spec)
		require.NoError(t, err)
		require.True(t, changed)
		fi, err := os.Stat(w.Path())
		require.NoError(t, err)
		require.Equal(t, SpecFileMode, fi.Mode().Perm())
	})

	t.Run("removed device disappears", func(t *testing.T) {
		smaller := *spec
		smaller.Devices = slices.DeleteFunc(slices.Clone(spec.Devices), func(d specs.Device) bool {
			return d.Name == uuidGPU1 || d.Name == "1"
		})
		changed, err := w.Write(ctx, &smaller)
		require.NoError(t, err)
		require.True(t, changed)
		devices := loadCache(t, dir).ListDevices()
		require.NotContains(t, devices, "gpublocks.io/gpu="+uuidGPU1)
		require.NotContains(t, devices, "gpublocks.io/gpu=1")
		require.Contains(t, devices, "gpublocks.io/gpu="+uuidGPU0)
	})

	t.Run("invalid spec is not written", func(t *testing.T) {
		bad := *spec
		bad.Version = "0.3.0"
		_, err := w.Write(ctx, &bad)
		require.ErrorIs(t, err, ErrInvalidSpec)
		other := *spec
		other.Kind = "example.com/gpu"
		_, err = w.Write(ctx, &other)
		require.ErrorIs(t, err, ErrInvalidSpec)
		require.NotEmpty(t, loadCache(t, dir).ListDevices(), "previous file kept")
	})

	t.Run("no devices removes the file", func(t *testing.T) {
		empty := *spec
		empty.Devices = nil
		changed, err := w.Write(ctx, &empty)
		require.NoError(t, err)
		require.True(t, changed)
		require.NoFileExists(t, w.Path())
	})

	t.Run("remove is idempotent", func(t *testing.T) {
		_, err := w.Write(ctx, spec)
		require.NoError(t, err)
		require.NoError(t, w.Remove(ctx))
		require.NoFileExists(t, w.Path())
		require.NoError(t, w.Remove(ctx))
	})
}

func TestWriterErrors(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	_, err := NewWriter(t.TempDir(), Kind{Vendor: "", Class: "gpu"})
	require.ErrorIs(t, err, ErrInvalidKind)

	// A file where the directory should be: the write must fail, wrapped.
	parent := t.TempDir()
	blocker := filepath.Join(parent, "cdi")
	require.NoError(t, os.WriteFile(blocker, nil, 0o644))
	w, err := NewWriter(blocker, DefaultKind)
	require.NoError(t, err)
	spec, _, _ := buildTestSpec(t)
	_, err = w.Write(ctx, spec)
	require.ErrorIs(t, err, ErrWriteSpec)
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestWriterHeals removes or spoils the spec behind the writer's back and
// waits until Heal has put back the last spec written, mode 0644.
func TestWriterHeals(t *testing.T) {
	tests := map[string]func(t *testing.T, dir, path string){
		"file deleted": func(t *testing.T, _, path string) {
			require.NoError(t, os.Remove(path))
		},
		"directory deleted": func(t *testing.T, dir, _ string) {
			// rm -rf races with the healer: a spec restored between the
			// unlink and the rmdir makes the rmdir fail, so try again.
			require.Eventually(t, func() bool { return os.RemoveAll(dir) == nil }, 30*time.Second, time.Millisecond)
		},
		"directory moved away": func(t *testing.T, dir, _ string) {
			require.NoError(t, os.Rename(dir, filepath.Join(t.TempDir(), "moved")))
		},
		"replaced with other content": func(t *testing.T, dir, path string) {
			other := filepath.Join(dir, "other")
			require.NoError(t, os.WriteFile(other, []byte("---\nkind: x\n"), 0o644))
			require.NoError(t, os.Rename(other, path))
		},
		"edited in place": func(t *testing.T, _, path string) {
			require.NoError(t, os.WriteFile(path, []byte("---\n"), 0o644))
		},
		"made unreadable": func(t *testing.T, _, path string) {
			require.NoError(t, os.Chmod(path, 0o600))
		},
	}
	for name, spoil := range tests {
		t.Run(name, func(t *testing.T) {
			spec, _, _ := buildTestSpec(t)
			_, ctx := ktesting.NewTestContext(t)
			dir := filepath.Join(t.TempDir(), "cdi")
			w, err := NewWriter(dir, DefaultKind)
			require.NoError(t, err)
			_, err = w.Write(ctx, spec)
			require.NoError(t, err)
			want, err := os.ReadFile(w.Path())
			require.NoError(t, err)
			startHeal(t, ctx, w)

			for range 3 { // again and again, not once
				spoil(t, dir, w.Path())
				waitForSpec(t, w.Path(), want)
			}
			require.Equal(t, []string{DefaultKind.SpecFileName()}, dirNames(t, dir))
		})
	}
}

// TestWriterHealsLatestSpec checks that Heal restores the last spec
// written, not the first, and nothing once the spec was removed for want of
// devices.
func TestWriterHealsLatestSpec(t *testing.T) {
	spec, _, _ := buildTestSpec(t)
	_, ctx := ktesting.NewTestContext(t)
	dir := t.TempDir()
	w, err := NewWriter(dir, DefaultKind)
	require.NoError(t, err)
	startHeal(t, ctx, w) // before the first write: nothing to restore yet
	_, err = w.Write(ctx, spec)
	require.NoError(t, err)

	smaller := *spec
	smaller.Devices = spec.Devices[:1]
	_, err = w.Write(ctx, &smaller)
	require.NoError(t, err)
	want, err := Marshal(&smaller)
	require.NoError(t, err)
	require.NoError(t, os.Remove(w.Path()))
	waitForSpec(t, w.Path(), want)

	// Removed for want of devices, or by Remove: Heal's check (repair)
	// must not bring it back.
	empty := *spec
	empty.Devices = nil
	_, err = w.Write(ctx, &empty)
	require.NoError(t, err)
	require.NoError(t, w.repair(ctx))
	require.NoFileExists(t, w.Path())
	_, err = w.Write(ctx, spec)
	require.NoError(t, err)
	require.NoError(t, w.Remove(ctx))
	require.NoError(t, w.repair(ctx))
	require.NoFileExists(t, w.Path())
}

func startHeal(t *testing.T, ctx context.Context, w *Writer) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Heal(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// waitForSpec waits until path holds want with mode 0644.
func waitForSpec(t *testing.T, path string, want []byte) {
	t.Helper()
	require.Eventually(t, func() bool {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != SpecFileMode {
			return false
		}
		got, err := os.ReadFile(path)
		return err == nil && bytes.Equal(got, want)
	}, 30*time.Second, 5*time.Millisecond, "spec not restored")
}

// TestWriterFullFilesystem writes a spec in a child process whose file size
// limit (RLIMIT_FSIZE) stops the write half-way, as a full filesystem does,
// several times: every attempt fails with ErrWriteSpec, the old spec stays
// whole and no temporary file is left behind. A stray temporary file of an
// earlier, killed run is removed by the first write; other files are not.
func TestWriterFullFilesystem(t *testing.T) {
	if dir := os.Getenv("GPUBLOCKS_TEST_FSIZE_DIR"); dir != "" {
		writeWithFileSizeLimit(t, dir)
		return
	}
	spec, _, _ := buildTestSpec(t)
	_, ctx := ktesting.NewTestContext(t)
	dir := t.TempDir()
	w, err := NewWriter(dir, DefaultKind)
	require.NoError(t, err)
	smaller := *spec
	smaller.Devices = spec.Devices[:1]
	_, err = w.Write(ctx, &smaller)
	require.NoError(t, err)
	old, err := os.ReadFile(w.Path())
	require.NoError(t, err)
	stray := filepath.Join(dir, atomicfile.TempPrefix+DefaultKind.SpecFileName()+".12345")
	require.NoError(t, os.WriteFile(stray, old[:10], 0o600))
	others := []string{"spec.4242.tmp", "nvidia.com-gpu.yaml"}
	for _, n := range others {
		require.NoError(t, os.WriteFile(filepath.Join(dir, n), nil, 0o644))
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestWriterFullFilesystem$", "-test.v")
	cmd.Env = append(os.Environ(), "GPUBLOCKS_TEST_FSIZE_DIR="+dir)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "3 writes failed", "%s", out)

	got, err := os.ReadFile(w.Path())
	require.NoError(t, err)
	require.Equal(t, old, got, "old spec kept whole")
	require.ElementsMatch(t, append(others, DefaultKind.SpecFileName()), dirNames(t, dir),
		"no temporary file of ours left, nobody else's removed")
}

// writeWithFileSizeLimit is TestWriterFullFilesystem's child. Go ignores
// SIGXFSZ, so a write past the limit fails with EFBIG.
func writeWithFileSizeLimit(t *testing.T, dir string) {
	spec, _, _ := buildTestSpec(t)
	data, err := Marshal(spec)
	require.NoError(t, err)
	limit := uint64(len(data) / 2)
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: limit, Max: limit}))
	_, ctx := ktesting.NewTestContext(t)
	w, err := NewWriter(dir, DefaultKind)
	require.NoError(t, err)
	for range 3 {
		_, err := w.Write(ctx, spec)
		require.ErrorIs(t, err, ErrWriteSpec)
		require.ErrorIs(t, err, syscall.EFBIG)
	}
	fmt.Println("3 writes failed")
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	slices.Sort(out)
	return out
}
