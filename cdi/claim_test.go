package cdi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpublocks/gpublocks/internal/atomicfile"
)

const claimUID = "3f0a5c1e-7b2d-4c8e-9a61-0d2e4b6f8a10"

func TestClaimDeviceName(t *testing.T) {
	c, err := NewClaimSpecs(t.TempDir(), Kind{})
	require.NoError(t, err)
	tests := map[string]struct{ request, want string }{
		"a DNS label stays as it is":  {"gpu-0", claimUID + "-gpu-0"},
		"a subrequest's / is escaped": {"gpus/big", claimUID + "-gpus_2fbig"},
		"_ is escaped too":            {"a_b", claimUID + "-a_5fb"},
		"so is ':'":                   {"a:b", claimUID + "-a_3ab"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := c.DeviceName(claimUID, tc.request)
			require.Equal(t, tc.want, got)
			require.Equal(t, "gpublocks.io/claim="+tc.want, c.QualifiedName(claimUID, tc.request))
		})
	}
	require.NotEqual(t, c.DeviceName(claimUID, "a/b"), c.DeviceName(claimUID, "a_2fb"), "the mapping is injective")
}

func TestClaimSpecWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cdi") // created by the first write
	c, err := NewClaimSpecs(dir, Kind{Vendor: "example.com", Class: "gpu"})
	require.NoError(t, err)
	require.Equal(t, "example.com/claim", c.Kind().String())
	ctx := context.Background()

	devices := []ClaimDevice{
		{Request: "blocks", Env: map[string]string{"GPUBLOCKS_BLOCKS": "30", "GPUBLOCKS_GPU_UUID": "GPU-a"}},
		{Request: "whole", Env: map[string]string{"GPUBLOCKS_GPU_UUID": "GPU-b"}},
	}
	changed, err := c.Write(ctx, claimUID, devices)
	require.NoError(t, err)
	require.True(t, changed)

	path := c.Path(claimUID)
	require.Equal(t, filepath.Join(dir, "example.com-claim_"+claimUID+".yaml"), path)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, SpecFileMode, fi.Mode().Perm())

	// The CDI library reads it back as a valid spec with these devices.
	raw, err := cdiapi.ReadSpec(path, 0)
	require.NoError(t, err)
	got := raw.Spec
	require.Equal(t, "example.com/claim", got.Kind)
	want, err := specs.MinimumRequiredVersion(got)
	require.NoError(t, err)
	require.Equal(t, want, got.Version, "the lowest version the content needs")
	require.Len(t, got.Devices, 2)
	require.Equal(t, claimUID+"-blocks", got.Devices[0].Name)
	require.Equal(t, []string{"GPUBLOCKS_BLOCKS=30", "GPUBLOCKS_GPU_UUID=GPU-a"}, got.Devices[0].ContainerEdits.Env)
	require.Equal(t, []string{"GPUBLOCKS_GPU_UUID=GPU-b"}, got.Devices[1].ContainerEdits.Env)

	// Unchanged content is not written again.
	old := time.Unix(1, 0)
	require.NoError(t, os.Chtimes(path, old, old))
	changed, err = c.Write(ctx, claimUID, devices)
	require.NoError(t, err)
	require.False(t, changed)
	fi, err = os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, old, fi.ModTime())

	// A file with the wrong mode is rewritten.
	require.NoError(t, os.Chmod(path, 0o600))
	changed, err = c.Write(ctx, claimUID, devices)
	require.NoError(t, err)
	require.True(t, changed)

	uids, err := c.List()
	require.NoError(t, err)
	require.Equal(t, []string{claimUID}, uids)

	removed, err := c.Remove(claimUID)
	require.NoError(t, err)
	require.True(t, removed)
	removed, err = c.Remove(claimUID)
	require.NoError(t, err, "a missing spec is no error")
	require.False(t, removed)
	uids, err = c.List()
	require.NoError(t, err)
	require.Empty(t, uids)
}

func TestClaimSpecInvalid(t *testing.T) {
	c, err := NewClaimSpecs(t.TempDir(), Kind{})
	require.NoError(t, err)
	tests := map[string]struct {
		uid     string
		devices []ClaimDevice
	}{
		"no devices":           {uid: claimUID},
		"a uid with a slash":   {uid: "../etc", devices: []ClaimDevice{{Request: "a", Env: map[string]string{"A": "1"}}}},
		"an empty uid":         {uid: "", devices: []ClaimDevice{{Request: "a", Env: map[string]string{"A": "1"}}}},
		"a device with no env": {uid: claimUID, devices: []ClaimDevice{{Request: "a"}}},
		"an empty request":     {uid: claimUID, devices: []ClaimDevice{{Env: map[string]string{"A": "1"}}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := c.Write(context.Background(), tc.uid, tc.devices)
			require.ErrorIs(t, err, ErrInvalidSpec)
		})
	}
	_, err = NewClaimSpecs(t.TempDir(), Kind{Vendor: "not a vendor", Class: "gpu"})
	require.ErrorIs(t, err, ErrInvalidKind)
}

func TestClaimSpecRemoveTemps(t *testing.T) {
	dir := t.TempDir()
	c, err := NewClaimSpecs(dir, Kind{})
	require.NoError(t, err)
	ours := filepath.Join(dir, atomicfile.TempPrefix+"gpublocks.io-claim_"+claimUID+".yaml.123")
	base := filepath.Join(dir, atomicfile.TempPrefix+"gpublocks.io-gpu.yaml.456")
	for _, p := range []string{ours, base} {
		require.NoError(t, os.WriteFile(p, nil, 0o600))
	}
	require.NoError(t, c.RemoveTemps(context.Background()))
	_, err = os.Stat(ours)
	require.True(t, errors.Is(err, os.ErrNotExist), "a claim spec's temporary file is removed")
	_, err = os.Stat(base)
	require.NoError(t, err, "the base spec's writer sweeps its own")
}
