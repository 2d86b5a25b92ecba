package cdi

import (
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2/ktesting"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
	specs "tags.cncf.io/container-device-interface/specs-go"
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
