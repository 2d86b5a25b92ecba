package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "spec.yaml")
	require.NoError(t, os.WriteFile(path, []byte("old"), 0o600))

	// The mode is exact from the first byte, whatever the umask.
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	var modeWhileWriting fs.FileMode
	err := write(path, []byte("new"), 0o644, func(f *os.File, data []byte) error {
		fi, err := f.Stat()
		require.NoError(t, err)
		modeWhileWriting = fi.Mode().Perm()
		return writeAll(f, data)
	})
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o644), modeWhileWriting)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o644), fi.Mode().Perm())
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "new", string(got))
	require.Equal(t, []string{"spec.yaml"}, names(t, dir))

	require.NoError(t, Write(path, []byte("newer"), 0o640))
	fi, err = os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o640), fi.Mode().Perm())
}

// TestWriteFailureLeavesNothing fails each way a write can fail and checks
// that the target keeps its old content and no temporary file remains.
func TestWriteFailureLeavesNothing(t *testing.T) {
	tests := map[string]struct {
		setup     func(t *testing.T, dir string) string // returns the target
		writeData func(*os.File, []byte) error
		wantIs    error
	}{
		"full filesystem half-way through": {
			setup: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, "spec.yaml")
				require.NoError(t, os.WriteFile(p, []byte("old"), 0o644))
				return p
			},
			writeData: func(f *os.File, data []byte) error {
				if _, err := f.Write(data[:len(data)/2]); err != nil {
					return err
				}
				return &fs.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
			},
			wantIs: syscall.ENOSPC,
		},
		"rename onto a directory": {
			setup: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, "spec.yaml")
				require.NoError(t, os.Mkdir(p, 0o755))
				return p
			},
			writeData: writeAll,
			wantIs:    fs.ErrExist,
		},
		"missing directory": {
			setup: func(t *testing.T, dir string) string {
				return filepath.Join(dir, "absent", "spec.yaml")
			},
			writeData: writeAll,
			wantIs:    fs.ErrNotExist,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := tc.setup(t, dir)
			before := names(t, dir)
			var oldContent []byte
			if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() {
				oldContent, _ = os.ReadFile(path)
			}
			for range 3 { // every retry, as a daemon on a full disk would
				err := write(path, []byte("new content"), 0o644, tc.writeData)
				require.ErrorIs(t, err, tc.wantIs)
				require.ErrorContains(t, err, path)
			}
			require.Equal(t, before, names(t, dir), "no temporary file left behind")
			if oldContent != nil {
				got, err := os.ReadFile(path)
				require.NoError(t, err)
				require.Equal(t, oldContent, got)
			}
		})
	}
}

func TestRemoveTemps(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{
		TempPrefix + "gpublocks.io-gpu.yaml.123456",       // ours, this target
		TempPrefix + "gpublocks.io-claim_a.yaml.99",       // ours, another target
		TempPrefix + "gpublocks.io-gpu.yaml.12x",          // not a name Write makes
		"spec.123456.tmp",                                 // the CDI library's
		"nvidia.com-gpu.yaml",                             // someone's spec
		"." + "gpublocks.io-gpu.yaml.4242",                // someone else's temp
		TempPrefix + "gpublocks.io-gpu.yaml.7/inner.yaml", // a directory of that name
	} {
		p := filepath.Join(dir, n)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, nil, 0o600))
	}

	removed, err := RemoveTemps(dir, "gpublocks.io-gpu.yaml")
	require.NoError(t, err)
	require.Equal(t, []string{filepath.Join(dir, TempPrefix+"gpublocks.io-gpu.yaml.123456")}, removed)

	removed, err = RemoveTemps(dir, "gpublocks.io-claim_*.yaml")
	require.NoError(t, err)
	require.Equal(t, []string{filepath.Join(dir, TempPrefix+"gpublocks.io-claim_a.yaml.99")}, removed)

	require.Equal(t, []string{
		".gpublocks-tmp.gpublocks.io-gpu.yaml.12x",
		".gpublocks-tmp.gpublocks.io-gpu.yaml.7",
		".gpublocks.io-gpu.yaml.4242",
		"nvidia.com-gpu.yaml",
		"spec.123456.tmp",
	}, names(t, dir))

	removed, err = RemoveTemps(filepath.Join(dir, "absent"), "*")
	require.NoError(t, err)
	require.Empty(t, removed)
	_, err = RemoveTemps(dir, "[")
	require.ErrorIs(t, err, filepath.ErrBadPattern)
}

// TestRemoveTempsFindsWriteTemps checks that RemoveTemps recognises the
// names Write really creates, by catching one mid-write.
func TestRemoveTempsFindsWriteTemps(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "gpublocks.io-gpu.yaml")
	var removed []string
	err := write(path, []byte("x"), 0o644, func(f *os.File, data []byte) error {
		var err error
		removed, err = RemoveTemps(dir, "gpublocks.io-gpu.yaml")
		require.NoError(t, err)
		return errors.New("stop")
	})
	require.Error(t, err)
	require.Len(t, removed, 1)
	require.Equal(t, filepath.Dir(removed[0]), dir)
}

// TestKilledMidWrite kills (SIGKILL) a process that rewrites a 1 MiB file
// in a loop, several times: the file at the final name is always one whole
// version, never a mix or a truncation.
func TestKilledMidWrite(t *testing.T) {
	if dir := os.Getenv("ATOMICFILE_TEST_WRITER_DIR"); dir != "" {
		writeForever(dir)
		return
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "spec.yaml")
	for i := range 5 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKilledMidWrite$")
		cmd.Env = append(os.Environ(), "ATOMICFILE_TEST_WRITER_DIR="+dir)
		require.NoError(t, cmd.Start())
		// Wait until the child has replaced the file a few times in this
		// round, so the kill lands inside its write loop.
		marker := filepath.Join(dir, "round")
		require.NoError(t, os.WriteFile(marker, []byte(fmt.Sprint(i)), 0o644))
		require.Eventually(t, func() bool {
			_, err := os.Stat(marker)
			return errors.Is(err, fs.ErrNotExist)
		}, 60*time.Second, time.Millisecond)
		require.NoError(t, cmd.Process.Kill())
		_ = cmd.Wait()

		got, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Len(t, got, 1<<20)
		require.True(t, bytes.Equal(got, bytes.Repeat(got[:1], len(got))), "a partial or mixed file at the final name")
	}
}

// writeForever is the child of TestKilledMidWrite: it writes whole files of
// one repeated byte, alternating between two bytes, and removes the parent's
// marker file once it is well into its loop.
func writeForever(dir string) {
	path := filepath.Join(dir, "spec.yaml")
	versions := [][]byte{bytes.Repeat([]byte{'a'}, 1<<20), bytes.Repeat([]byte{'b'}, 1<<20)}
	for i := 0; ; i++ {
		if err := Write(path, versions[i%2], 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if i == 3 {
			_ = os.Remove(filepath.Join(dir, "round"))
		}
	}
}

func names(t *testing.T, dir string) []string {
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
